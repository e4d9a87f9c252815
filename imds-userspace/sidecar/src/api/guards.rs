//! Request checks that run before any handler.

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName},
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
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"true") => Ok(()),
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
    fn metadata_header_rules() {
        assert_eq!(check_metadata_header(&headers(&[("Metadata", "true")])), Ok(()));
        assert_eq!(check_metadata_header(&headers(&[("metadata", "TRUE")])), Ok(()));
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
