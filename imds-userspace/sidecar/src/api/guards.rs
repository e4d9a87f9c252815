//! Request checks that run before any handler, as one layer ([`Guards`])
//! whose future is the handler's own or a ready error: no boxing, no copy
//! of the request, a few hundred instructions per request (`cargo xtask
//! bench --only api` counts them).
//!
//! In order: forwarding headers are refused everywhere (SSRF, as GCP's
//! metadata server does: a request relayed by a proxy in the guest carries
//! them); the `Host` must be the IMDS address everywhere but `/healthz`
//! (DNS rebinding: a page in a guest browser whose name was rebound to
//! 169.254.169.254 sends its own name); `Metadata: true` is required on
//! the IMDS's own endpoints, so a guest application tricked into fetching
//! a URL cannot read the token.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
};

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, Uri, header},
    response::{IntoResponse, Response},
};
use futures_util::future::Either;
use imds_api::{AWS_PATH, GUEST_PATH, HEALTHZ_PATH, IDENTITY_PATH, TOKEN_PATH};
use tower_layer::Layer;
use tower_service::Service;

use super::error::ApiError;

const METADATA: HeaderName = HeaderName::from_static("metadata");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The headers the checks read, found in one pass over the request's: a
/// lookup by name hashes the name each time, and a request carries a
/// handful of headers (at most `Limits::max_headers`).
#[derive(Debug, Default)]
pub struct Seen<'a> {
    forwarded: bool,
    host: Occurrences<'a>,
    metadata: Occurrences<'a>,
}

#[derive(Debug, Default, Clone, Copy)]
enum Occurrences<'a> {
    #[default]
    Absent,
    Once(&'a HeaderValue),
    /// Given more than once: ambiguous, refused wherever it matters.
    Repeated,
}

impl<'a> Occurrences<'a> {
    fn add(&mut self, value: &'a HeaderValue) {
        *self = match self {
            Occurrences::Absent => Occurrences::Once(value),
            _ => Occurrences::Repeated,
        };
    }
}

impl<'a> Seen<'a> {
    pub fn scan(headers: &'a HeaderMap) -> Self {
        let mut seen = Seen::default();
        for (name, value) in headers {
            if name == header::HOST {
                seen.host.add(value);
            } else if name == METADATA {
                seen.metadata.add(value);
            } else if name == X_FORWARDED_FOR || name == FORWARDED {
                seen.forwarded = true;
            }
        }
        seen
    }
}

/// Every check a request passes before routing (or before the fast path,
/// [`super::fast_path`]), in order.
pub fn check(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let seen = Seen::scan(headers);
    check_not_forwarded(&seen)?;
    let path = uri.path();
    // `/healthz` carries nothing: no further check.
    if path == HEALTHZ_PATH {
        return Ok(());
    }
    check_host(&seen, uri)?;
    if needs_metadata_header(path) {
        check_metadata_header(&seen)?;
    }
    Ok(())
}

/// The IMDS's own endpoints, whatever the method: `/v1/token`,
/// `/v1/identity`, `/v1/aws` and the guest downloads (`/v1/guest`,
/// `/v1/guest/`, `/v1/guest/<one segment>`, as `guest_downloads` routes
/// them). Anything else (the cloud flavours' paths, unknown paths) is
/// answered without it, as EC2 and OpenStack clients never send it.
pub fn needs_metadata_header(path: &str) -> bool {
    match path {
        TOKEN_PATH | IDENTITY_PATH | AWS_PATH | GUEST_PATH => true,
        _ => path
            .strip_prefix(GUEST_PATH)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|segment| !segment.contains('/')),
    }
}

/// The layer of [`check`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Guards;

impl<S> Layer<S> for Guards {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
}

impl<S> Service<Request> for Guarded<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match check(request.headers(), request.uri()) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(e) => Either::Left(ready(Ok(e.into_response()))),
        }
    }
}

pub fn check_host(seen: &Seen, uri: &Uri) -> Result<(), ApiError> {
    let is_imds = |authority: &[u8]| {
        let ip = crate::contract::IMDS_HOST.as_bytes();
        authority == ip || authority.strip_prefix(ip) == Some(&b":80"[..])
    };
    let host_ok = match seen.host {
        Occurrences::Absent => true,
        Occurrences::Once(host) => is_imds(host.as_bytes()),
        // Two Host headers: ambiguous by definition (RFC 9112 §3.2).
        Occurrences::Repeated => false,
    };
    // An absolute-form request line names its own authority.
    let uri_ok = uri.authority().is_none_or(|a| is_imds(a.as_str().as_bytes()));
    if host_ok && uri_ok { Ok(()) } else { Err(ApiError::HostNotImds) }
}

pub fn check_not_forwarded(seen: &Seen) -> Result<(), ApiError> {
    if seen.forwarded { Err(ApiError::ForwardedRequest) } else { Ok(()) }
}

pub fn check_metadata_header(seen: &Seen) -> Result<(), ApiError> {
    match seen.metadata {
        Occurrences::Absent => Err(ApiError::MetadataHeaderMissing),
        // Exactly `true`, as documented (Azure's clients send that).
        Occurrences::Once(v) if v.as_bytes() == b"true" => Ok(()),
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

    /// `rule` on the checks' view of these headers.
    fn with<R>(pairs: &[(&'static str, &'static str)], rule: impl FnOnce(&Seen) -> R) -> R {
        let headers = headers(pairs);
        rule(&Seen::scan(&headers))
    }

    #[test]
    fn only_the_imds_address_as_host() {
        let plain: Uri = "/v1/token".parse().unwrap();
        for good in [&[][..], &[("Host", "169.254.169.254")], &[("host", "169.254.169.254:80")]] {
            assert_eq!(with(good, |seen| check_host(seen, &plain)), Ok(()), "{good:?}");
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
            assert_eq!(with(bad, |seen| check_host(seen, &plain)), Err(ApiError::HostNotImds), "{bad:?}");
        }
        let absolute: Uri = "http://attacker.example/v1/token".parse().unwrap();
        assert_eq!(
            with(&[("Host", "169.254.169.254")], |seen| check_host(seen, &absolute)),
            Err(ApiError::HostNotImds)
        );
        let ours: Uri = "http://169.254.169.254/v1/token".parse().unwrap();
        assert_eq!(with(&[], |seen| check_host(seen, &ours)), Ok(()));
    }

    #[test]
    fn metadata_header_rules() {
        assert_eq!(with(&[("Metadata", "true")], check_metadata_header), Ok(()));
        // The header's name is case-insensitive (HTTP), its value is not.
        assert_eq!(with(&[("metadata", "true")], check_metadata_header), Ok(()));
        assert_eq!(
            with(&[("Metadata", "TRUE")], check_metadata_header),
            Err(ApiError::MetadataHeaderInvalid)
        );
        assert_eq!(
            with(&[("Metadata", "True")], check_metadata_header),
            Err(ApiError::MetadataHeaderInvalid)
        );
        assert_eq!(with(&[], check_metadata_header), Err(ApiError::MetadataHeaderMissing));
        for bad in ["false", "1", "", "true ", "yes"] {
            assert_eq!(
                with(&[("Metadata", bad)], check_metadata_header),
                Err(ApiError::MetadataHeaderInvalid),
                "{bad:?}"
            );
        }
        assert_eq!(
            with(&[("Metadata", "true"), ("Metadata", "true")], check_metadata_header),
            Err(ApiError::MetadataHeaderInvalid)
        );
    }

    #[test]
    fn the_imds_endpoints_and_only_they_need_the_metadata_header() {
        for path in ["/v1/token", "/v1/identity", "/v1/aws", "/v1/guest", "/v1/guest/", "/v1/guest/x.sha256"]
        {
            assert!(needs_metadata_header(path), "{path}");
        }
        for path in [
            "/healthz",
            "/",
            "/v1/token/",
            "/v1/tokens",
            "/v1/guestx",
            "/v1/guest/a/b",
            "/latest/meta-data/",
            "/openstack/latest/meta_data.json",
        ] {
            assert!(!needs_metadata_header(path), "{path}");
        }
    }

    #[test]
    fn forwarding_headers_are_refused() {
        assert_eq!(with(&[], check_not_forwarded), Ok(()));
        assert_eq!(
            with(&[("X-Forwarded-For", "10.0.0.1")], check_not_forwarded),
            Err(ApiError::ForwardedRequest)
        );
        assert_eq!(with(&[("X-Forwarded-For", "")], check_not_forwarded), Err(ApiError::ForwardedRequest));
        assert_eq!(
            with(&[("Forwarded", "for=10.0.0.1")], check_not_forwarded),
            Err(ApiError::ForwardedRequest)
        );
    }
}
