//! Request checks that run before any handler.

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::ApiError;

const METADATA: HeaderName = HeaderName::from_static("metadata");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// SSRF defence (as GCP's metadata server does): a request relayed by a proxy
/// in the guest carries forwarding headers; the IMDS refuses it everywhere.
pub async fn refuse_forwarded(request: Request, next: Next) -> Response {
    match check_not_forwarded(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Every endpoint but `/healthz` requires `Metadata: true`, so a guest
/// application tricked into fetching a URL cannot read the token.
pub async fn require_metadata_header(request: Request, next: Next) -> Response {
    match check_metadata_header(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// DNS rebinding defence: a page in a guest browser whose name was rebound
/// to 169.254.169.254 sends its own name as `Host`. Only the IMDS address
/// (with or without `:80`) or no `Host` at all (HTTP/1.0) is answered;
/// `/healthz` is exempt (it carries nothing).
pub async fn require_imds_host(request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    match check_host(request.headers(), request.uri()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

pub fn check_host(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let is_imds = |authority: &[u8]| {
        let ip = crate::contract::IMDS_HOST.as_bytes();
        authority == ip || authority.strip_prefix(ip) == Some(&b":80"[..])
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (None, _) => true,
        (Some(host), None) => is_imds(host.as_bytes()),
        // Two Host headers: ambiguous by definition (RFC 9112 §3.2).
        _ => false,
    };
    // An absolute-form request line names its own authority.
    let uri_ok = uri.authority().is_none_or(|a| is_imds(a.as_str().as_bytes()));
    if host_ok && uri_ok { Ok(()) } else { Err(ApiError::HostNotImds) }
}

pub fn check_not_forwarded(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(X_FORWARDED_FOR) || headers.contains_key(FORWARDED) {
        return Err(ApiError::ForwardedRequest);
    }
    Ok(())
}

pub fn check_metadata_header(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut values = headers.get_all(METADATA).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(ApiError::MetadataHeaderMissing),
        // Exactly `true`, as documented (Azure's clients send that).
        (Some(v), None) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(ApiError::MetadataHeaderInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_imds_address_as_host() {
        let plain: Uri = "/v1/token".parse().unwrap();
        for good in [&[][..], &[("Host", "169.254.169.254")], &[("host", "169.254.169.254:80")]] {
            assert_eq!(check_host(&headers(good), &plain), Ok(()), "{good:?}");
        }
        for bad in [
            &[("Host", "attacker.example")][..],
            &[("Host", "attacker.example:80")],
            &[("Host", "169.254.169.254:8080")],
            &[("Host", "169.254.169.254.nip.io")],
            &[("Host", "169.254.169.2540")],
            &[("Host", "")],
            &[("Host", "[::ffff:169.254.169.254]")],
            &[("Host", "169.254.169.254"), ("Host", "169.254.169.254")],
        ] {
            assert_eq!(check_host(&headers(bad), &plain), Err(ApiError::HostNotImds), "{bad:?}");
        }
        let absolute: Uri = "http://attacker.example/v1/token".parse().unwrap();
        assert_eq!(
            check_host(&headers(&[("Host", "169.254.169.254")]), &absolute),
            Err(ApiError::HostNotImds)
        );
        let ours: Uri = "http://169.254.169.254/v1/token".parse().unwrap();
        assert_eq!(check_host(&headers(&[]), &ours), Ok(()));
    }

    #[test]
    fn metadata_header_rules() {
        assert_eq!(check_metadata_header(&headers(&[("Metadata", "true")])), Ok(()));
        // The header's name is case-insensitive (HTTP), its value is not.
        assert_eq!(check_metadata_header(&headers(&[("metadata", "true")])), Ok(()));
        assert_eq!(
            check_metadata_header(&headers(&[("Metadata", "TRUE")])),
            Err(ApiError::MetadataHeaderInvalid)
        );
        assert_eq!(
            check_metadata_header(&headers(&[("Metadata", "True")])),
            Err(ApiError::MetadataHeaderInvalid)
        );
        assert_eq!(check_metadata_header(&headers(&[])), Err(ApiError::MetadataHeaderMissing));
        for bad in ["false", "1", "", "true ", "yes"] {
            assert_eq!(
                check_metadata_header(&headers(&[("Metadata", bad)])),
                Err(ApiError::MetadataHeaderInvalid),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_metadata_header(&headers(&[("Metadata", "true"), ("Metadata", "true")])),
            Err(ApiError::MetadataHeaderInvalid)
        );
    }

    #[test]
    fn forwarding_headers_are_refused() {
        assert_eq!(check_not_forwarded(&headers(&[])), Ok(()));
        assert_eq!(
            check_not_forwarded(&headers(&[("X-Forwarded-For", "10.0.0.1")])),
            Err(ApiError::ForwardedRequest)
        );
        assert_eq!(
            check_not_forwarded(&headers(&[("X-Forwarded-For", "")])),
            Err(ApiError::ForwardedRequest)
        );
        assert_eq!(
            check_not_forwarded(&headers(&[("Forwarded", "for=10.0.0.1")])),
            Err(ApiError::ForwardedRequest)
        );
    }
}
