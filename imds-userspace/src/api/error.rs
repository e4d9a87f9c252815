//! Every refusal the API makes, with its status and JSON body.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    MetadataHeaderMissing,
    MetadataHeaderInvalid,
    ForwardedRequest,
    NotFound,
    MethodNotAllowed,
    /// The token cannot be served right now; the reason is safe to show the
    /// guest (it names no host path).
    TokenUnavailable(&'static str),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MetadataHeaderMissing | ApiError::MetadataHeaderInvalid => StatusCode::BAD_REQUEST,
            ApiError::ForwardedRequest => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TokenUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MetadataHeaderMissing => "metadata_header_missing",
            ApiError::MetadataHeaderInvalid => "metadata_header_invalid",
            ApiError::ForwardedRequest => "forwarded_request_refused",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::TokenUnavailable(_) => "token_unavailable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::MetadataHeaderMissing => {
                "missing header `Metadata: true`: every endpoint except /healthz requires it".into()
            }
            ApiError::MetadataHeaderInvalid => {
                "header `Metadata` must be exactly `true` (and sent once)".into()
            }
            ApiError::ForwardedRequest => {
                "requests carrying X-Forwarded-For or Forwarded are refused: the metadata service \
                 only answers the VM directly, never through a proxy"
                    .into()
            }
            ApiError::NotFound => {
                "no such endpoint; the API has GET /v1/token, GET /v1/identity and GET /healthz".into()
            }
            ApiError::MethodNotAllowed => "method not allowed: the API only answers GET (and HEAD)".into(),
            ApiError::TokenUnavailable(reason) => {
                format!("the ServiceAccount token is unavailable ({reason}); retry shortly")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.code(), "message": self.message() }));
        let mut response = (self.status(), body).into_response();
        if self == ApiError::MethodNotAllowed {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}
