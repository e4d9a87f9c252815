//! The HTTP API, as an axum [`Router`] over [`ImdsState`]. No sockets here:
//! [`crate::http_server`] serves it, tests call it in-process.

pub mod error;
mod guards;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use crate::{
    metadata::Identity,
    token::{TokenError, TokenFile},
};
use error::ApiError;

/// What the handlers read.
#[derive(Debug)]
pub struct ImdsState {
    pub identity: Identity,
    pub token: TokenFile,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    token: String,
    expiration_timestamp: String,
}

pub fn router(state: Arc<ImdsState>) -> Router {
    let metadata = Router::new()
        .route("/v1/token", get(token))
        .route("/v1/identity", get(identity))
        .route_layer(middleware::from_fn(guards::require_metadata_header));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(metadata)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(guards::refuse_forwarded))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "OK"
}

async fn identity(State(state): State<Arc<ImdsState>>) -> Json<Identity> {
    Json(state.identity.clone())
}

async fn token(State(state): State<Arc<ImdsState>>) -> Response {
    match state.token.read().await {
        Ok(token) => {
            let body = TokenResponse { expiration_timestamp: token.expiration_timestamp(), token: token.jwt };
            let mut response = Json(body).into_response();
            // A credential: no cache along the way may keep it.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            tracing::warn!(error = %crate::errors::chain(&e), "GET /v1/token answered 503");
            ApiError::TokenUnavailable(public_reason(&e)).into_response()
        }
    }
}

/// What the guest is told; the log line carries the path and details.
fn public_reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::Missing(_) => "the token file is not there yet",
        TokenError::Unreadable { .. } => "the token file cannot be read",
        TokenError::TooLarge { .. } | TokenError::NotAJwt { .. } => "the token file does not hold a JWT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::jwt_with_claims;
    use axum::{
        body::{Body, to_bytes},
        http::{Method, Request, StatusCode},
    };
    use serde_json::Value;
    use tower::ServiceExt as _;

    struct Fixture {
        _dir: tempfile::TempDir,
        token_path: std::path::PathBuf,
        app: Router,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        let state = ImdsState {
            identity: Identity {
                namespace: "vms".into(),
                service_account_name: "builder".into(),
                vm_name: "fedora-1".into(),
            },
            token: TokenFile::new(&token_path),
        };
        Fixture { app: router(Arc::new(state)), token_path, _dir: dir }
    }

    async fn call(
        app: &Router,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Response) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        (response.status(), response)
    }

    async fn json(response: Response) -> Value {
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}"))
    }

    const MD: (&str, &str) = ("Metadata", "true");

    #[tokio::test]
    async fn healthz_needs_no_header() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, "/healthz", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&to_bytes(response.into_body(), 100).await.unwrap()[..], b"OK");
    }

    #[tokio::test]
    async fn identity_reports_the_configured_names() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, "/v1/identity", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(response).await,
            serde_json::json!({"namespace": "vms", "serviceAccountName": "builder", "vmName": "fedora-1"})
        );
    }

    #[tokio::test]
    async fn token_is_served_with_its_expiry_and_follows_the_file() {
        let f = fixture();
        let first = jwt_with_claims(r#"{"exp":1795000000}"#);
        std::fs::write(&f.token_path, &first).unwrap();
        let (status, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            json(response).await,
            serde_json::json!({"token": first, "expirationTimestamp": "2026-11-18T11:06:40Z"})
        );

        let second = jwt_with_claims(r#"{"exp":1795003600}"#);
        std::fs::write(&f.token_path, &second).unwrap();
        let (_, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(json(response).await["token"], second);
    }

    #[tokio::test]
    async fn broken_token_file_is_503_and_recovers() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body = json(response).await;
        assert_eq!(body["error"], "token_unavailable");
        assert!(!body["message"].as_str().unwrap().contains(f.token_path.to_str().unwrap()));

        std::fs::write(&f.token_path, "garbage").unwrap();
        let (status, _) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        std::fs::write(&f.token_path, jwt_with_claims(r#"{"exp":1}"#)).unwrap();
        let (status, _) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metadata_header_is_required_except_on_healthz() {
        let f = fixture();
        std::fs::write(&f.token_path, jwt_with_claims(r#"{"exp":1}"#)).unwrap();
        for path in ["/v1/token", "/v1/identity"] {
            let (status, response) = call(&f.app, Method::GET, path, &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            let body = json(response).await;
            assert_eq!(body["error"], "metadata_header_missing");
            assert!(body["message"].as_str().unwrap().contains("Metadata: true"));

            let (status, response) = call(&f.app, Method::GET, path, &[("Metadata", "false")]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(json(response).await["error"], "metadata_header_invalid");
        }
    }

    #[tokio::test]
    async fn forwarded_requests_are_refused_everywhere() {
        let f = fixture();
        for path in ["/healthz", "/v1/token", "/v1/identity", "/nope"] {
            let (status, response) =
                call(&f.app, Method::GET, path, &[MD, ("X-Forwarded-For", "1.2.3.4")]).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            assert_eq!(json(response).await["error"], "forwarded_request_refused");
        }
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_get_json_errors() {
        let f = fixture();
        for path in ["/", "/v1", "/v1/token/", "/latest/meta-data/", "/../../etc/passwd", "/v1/%2e%2e/token"]
        {
            let (status, response) = call(&f.app, Method::GET, path, &[MD]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(json(response).await["error"], "not_found");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let (status, response) = call(&f.app, method.clone(), "/v1/token", &[MD]).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
            assert_eq!(json(response).await["error"], "method_not_allowed");
        }
        let (status, _) = call(&f.app, Method::HEAD, "/healthz", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
}
