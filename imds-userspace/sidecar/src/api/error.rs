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
    /// `Host` names something other than the IMDS address (DNS rebinding).
    HostNotImds,
    /// No `/v1` route and no metadata flavour of this VM has the path.
    NotFound,
    /// A metadata flavour's path that resolves to nothing, or data (user-,
    /// network-data) the VM does not have.
    MetadataNotFound,
    /// The path exists; `allow` is what it answers (the `Allow` header).
    MethodNotAllowed {
        allow: &'static str,
    },
    /// The token cannot be served right now; the reason is safe to show the
    /// guest (it names no host path).
    TokenUnavailable(&'static str),
    /// The token file holds a token past its expiry: the kubelet has not
    /// refreshed it.
    TokenExpired {
        expired_at: String,
    },
    /// The `audience` parameter is malformed (the reason says how).
    AudienceInvalid(String),
    /// No token is configured for this audience.
    AudienceNotConfigured {
        configured: Vec<String>,
    },
    /// `/v1/token` without `audience`, on a VM without the API-server token.
    DefaultTokenDisabled {
        configured: Vec<String>,
    },
    AwsNotConfigured,
    /// The EC2 TTL header of a session request is missing or out of range.
    Ec2TtlInvalid(crate::cloud::imdsv2::TtlError),
    /// The presented IMDSv2 session token is unknown or expired.
    Ec2SessionInvalid,
    /// IMDSv2 is required for this VM and no session token was presented.
    Ec2SessionRequired,
    /// User-, vendor- or network-data could not be read.
    MetadataUnavailable,
    /// OpenStack's `password`: this service stores none, whatever the method.
    PasswordNotStored,
    /// Not one of the guest helper's builds this sidecar serves.
    GuestBinaryNotFound {
        served: Vec<&'static str>,
    },
    /// A served build changed or vanished on disk since the sidecar started.
    GuestBinaryUnavailable,
}

/// What every read-only path answers.
pub const GET_HEAD: &str = "GET, HEAD";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MetadataHeaderMissing | ApiError::MetadataHeaderInvalid => StatusCode::BAD_REQUEST,
            ApiError::ForwardedRequest | ApiError::HostNotImds => StatusCode::FORBIDDEN,
            ApiError::NotFound
            | ApiError::MetadataNotFound
            | ApiError::AudienceNotConfigured { .. }
            | ApiError::DefaultTokenDisabled { .. }
            | ApiError::AwsNotConfigured
            | ApiError::PasswordNotStored
            | ApiError::GuestBinaryNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::AudienceInvalid(_) | ApiError::Ec2TtlInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Ec2SessionInvalid | ApiError::Ec2SessionRequired => StatusCode::UNAUTHORIZED,
            ApiError::MetadataUnavailable | ApiError::GuestBinaryUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TokenUnavailable(_) | ApiError::TokenExpired { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MetadataHeaderMissing => "metadata_header_missing",
            ApiError::MetadataHeaderInvalid => "metadata_header_invalid",
            ApiError::ForwardedRequest => "forwarded_request_refused",
            ApiError::HostNotImds => "host_refused",
            ApiError::NotFound | ApiError::MetadataNotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::TokenUnavailable(_) => "token_unavailable",
            ApiError::TokenExpired { .. } => "token_expired",
            ApiError::AudienceInvalid(_) => "audience_invalid",
            ApiError::AudienceNotConfigured { .. } => "audience_not_configured",
            ApiError::DefaultTokenDisabled { .. } => "default_token_disabled",
            ApiError::AwsNotConfigured => "aws_not_configured",
            ApiError::Ec2TtlInvalid(_) => "ec2_token_ttl_invalid",
            ApiError::Ec2SessionInvalid => "ec2_session_invalid",
            ApiError::Ec2SessionRequired => "ec2_session_required",
            ApiError::MetadataUnavailable => "metadata_unavailable",
            ApiError::PasswordNotStored => "password_not_stored",
            ApiError::GuestBinaryNotFound { .. } => "guest_binary_not_found",
            ApiError::GuestBinaryUnavailable => "guest_binary_unavailable",
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
            ApiError::HostNotImds => {
                "the Host header must be 169.254.169.254 (or absent): a request for another \
                                     name reaching this address is a DNS rebinding attempt"
                    .into()
            }
            ApiError::NotFound => {
                "no such endpoint; the API has GET /v1/token, GET /v1/identity, GET /v1/aws, \
                                   GET /v1/guest/ and GET /healthz, and the cloud metadata flavours the VM was given \
                                   (annotation imds.kubevirt.io/metadata-flavors)"
                    .into()
            }
            ApiError::MetadataNotFound => {
                "no such metadata: the path is not in this flavour, or the VM has no such data".into()
            }
            ApiError::MethodNotAllowed { allow } => format!("method not allowed: this path answers {allow}"),
            ApiError::TokenUnavailable(reason) => {
                format!("the ServiceAccount token is unavailable ({reason}); retry shortly")
            }
            ApiError::TokenExpired { expired_at } => format!(
                "the ServiceAccount token expired at {expired_at} and has not been refreshed by the kubelet; \
                 retry shortly"
            ),
            ApiError::AudienceInvalid(reason) => format!("invalid `audience` parameter: {reason}"),
            ApiError::AudienceNotConfigured { .. } => {
                "no token is configured for this audience; configuredAudiences lists those that are \
                 (annotation imds.kubevirt.io/token-audiences)"
                    .into()
            }
            ApiError::DefaultTokenDisabled { .. } => {
                "this VM gets no token for the Kubernetes API (annotation imds.kubevirt.io/default-token \
                 is \"false\"); ask for one of configuredAudiences with ?audience="
                    .into()
            }
            ApiError::AwsNotConfigured => {
                "no AWS role: the VM's ServiceAccount has no eks.amazonaws.com/role-arn annotation".into()
            }
            ApiError::Ec2TtlInvalid(e) => e.to_string(),
            ApiError::Ec2SessionInvalid => {
                "the X-aws-ec2-metadata-token is unknown or expired; get a new one with PUT /latest/api/token"
                    .into()
            }
            ApiError::Ec2SessionRequired => "this VM requires IMDSv2: PUT /latest/api/token with \
                                             X-aws-ec2-metadata-token-ttl-seconds, then send the token in \
                                             X-aws-ec2-metadata-token"
                .into(),
            ApiError::MetadataUnavailable => "the metadata cannot be read right now; retry shortly".into(),
            ApiError::PasswordNotStored => "this metadata service stores no passwords and accepts none; \
                                            set credentials through user-data"
                .into(),
            ApiError::GuestBinaryNotFound { served } if served.is_empty() => {
                "no such guest helper build: this sidecar's image carries none".into()
            }
            ApiError::GuestBinaryNotFound { served } => format!(
                "no such guest helper build; served: {} (each with .sha256 beside it)",
                served.join(", ")
            ),
            ApiError::GuestBinaryUnavailable => {
                "the guest helper build changed since the sidecar started; it is not served until it restarts"
                    .into()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code(), "message": self.message() });
        if let ApiError::AudienceNotConfigured { configured }
        | ApiError::DefaultTokenDisabled { configured } = &self
        {
            body["configuredAudiences"] = json!(configured);
        }
        let body = Json(body);
        let mut response = (self.status(), body).into_response();
        if let ApiError::MethodNotAllowed { allow } = self {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}
