//! The webhook's HTTP routes: `POST /mutate` (pods), `POST /mutate-vmi`,
//! `POST /validate` (VMs and VMIs), AdmissionReview in and out, every body
//! bounded before it is read (size, deadline, JSON budget); `GET /healthz`
//! and `GET /readyz`.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use serde_json::{Value, json};

use super::{
    admission_head::{self, ReviewHead},
    aws::ServiceAccounts,
    json_budget::{self, Budget},
    mutation::{self, Outcome},
    policy::Policy,
    sidecar_spec::SidecarTemplate,
    validation, vmi,
};

/// The API server sends objects of at most ~3 MiB; room for the envelope.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The whole body must arrive within this (the API server's own webhook
/// timeout is 10 s at most): a trickled body holds a connection no longer.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// What a body may hold before it is deserialised. The virt-launcher pods
/// of `tests/fixtures/` are 250–280 values and 9–10 levels deep (a few more
/// in the review around them); this leaves room for pods with hundreds of
/// volumes and keeps a fully built review (values, then a typed Pod) to
/// tens of MiB.
pub const BUDGET: Budget = Budget { max_values: 50_000, max_depth: 64 };
/// Reviews built in full at once: with [`BUDGET`] and [`MAX_BODY_BYTES`],
/// what keeps the webhook inside its 64Mi limit under any load.
pub const FULL_REVIEWS_AT_ONCE: usize = 2;
const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// Where the MutatingWebhookConfiguration sends pods and VMIs.
pub const MUTATE_PODS_PATH: &str = "/mutate";
pub const MUTATE_VMIS_PATH: &str = "/mutate-vmi";
/// Where the ValidatingWebhookConfiguration sends VMs and VMIs.
pub const VALIDATE_PATH: &str = "/validate";

/// What the routes share.
pub struct WebhookState {
    pub template: SidecarTemplate,
    pub policy: Policy,
    /// `None`: IRSA hints are off.
    pub service_accounts: Option<ServiceAccounts>,
    /// Permits for building a review in full ([`FULL_REVIEWS_AT_ONCE`]).
    pub full_reviews: tokio::sync::Semaphore,
}

impl WebhookState {
    pub fn new(template: SidecarTemplate, policy: Policy, service_accounts: Option<ServiceAccounts>) -> Self {
        Self {
            template,
            policy,
            service_accounts,
            full_reviews: tokio::sync::Semaphore::new(FULL_REVIEWS_AT_ONCE),
        }
    }
}

pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate))
        .route(MUTATE_VMIS_PATH, post(mutate_vmi))
        .route(VALIDATE_PATH, post(validate))
        .route("/healthz", get(|| async { "OK" }))
        .route("/readyz", get(|| async { "OK" }))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no such endpoint; the webhook serves POST {MUTATE_PODS_PATH}, {MUTATE_VMIS_PATH} and {VALIDATE_PATH}"
                ),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The body, whole within [`BODY_DEADLINE`] and [`MAX_BODY_BYTES`] and
/// inside [`BUDGET`], or the error response that says which limit it broke.
async fn read_body(body: Body) -> Result<Bytes, Response> {
    let bytes = match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => {
            tracing::warn!(deadline = ?BODY_DEADLINE, "refused a body that did not arrive in time");
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the body did not arrive within {} s", BODY_DEADLINE.as_secs()),
            ));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "refused a body");
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body could not be read (at most {MAX_BODY_BYTES} bytes): {e}"),
            ));
        }
        Ok(Ok(bytes)) => bytes,
    };
    if let Err(e) = json_budget::check(&bytes, BUDGET) {
        tracing::warn!(error = %e, bytes = bytes.len(), "refused a body");
        let (status, message) = match e {
            json_budget::BudgetError::NotJson(_) => {
                (StatusCode::BAD_REQUEST, format!("the body is not an AdmissionReview: {e}"))
            }
            json_budget::BudgetError::TooDeep(_) => (StatusCode::BAD_REQUEST, e.to_string()),
            json_budget::BudgetError::TooManyValues(_) => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        };
        return Err(error(status, &message));
    }
    Ok(bytes)
}

/// The request of an AdmissionReview body, or why the body is not one (a 400).
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| {
        tracing::warn!(error = %e, "refused a body that is not an AdmissionReview");
        format!("the body is not an AdmissionReview: {e}")
    })?;
    if review.types.api_version != ADMISSION_API_VERSION || review.types.kind != "AdmissionReview" {
        let message = format!(
            "expected kind AdmissionReview of apiVersion {ADMISSION_API_VERSION}, got {} {}",
            review.types.kind, review.types.api_version
        );
        tracing::warn!(%message, "refused a request");
        return Err(message);
    }
    review.try_into().map_err(|_| "the AdmissionReview carries no request".to_owned())
}

/// The AdmissionReview answer, and the decision's log line.
fn answer(
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
    outcome: &Outcome,
) -> Response {
    let object =
        request.object.as_ref().and_then(|o| o.metadata.name.clone().or(o.metadata.generate_name.clone()));
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let kind = request.kind.kind.as_str();
    match outcome {
        Outcome::Injected { vm_name } => {
            tracing::info!(uid = %request.uid, kind, namespace, ?object, vm = %vm_name, decision = "injected", "admission")
        }
        Outcome::Hinted { summary } => {
            tracing::info!(uid = %request.uid, kind, namespace, ?object, decision = "hinted", summary, "admission")
        }
        Outcome::Unchanged { reason } => {
            tracing::info!(uid = %request.uid, kind, namespace, ?object, decision = "unchanged", reason, "admission")
        }
        Outcome::Refused { message } => {
            tracing::warn!(uid = %request.uid, kind, namespace, ?object, decision = "refused", reason = message, "admission")
        }
    }
    match wire_review(response) {
        Ok(body) => Json(body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("serialising the response: {e}")),
    }
}

/// `POST /mutate`: virt-launcher pods get the sidecar. Only a pod that
/// carries our annotations is read in full (see [`admission_head`]).
async fn mutate(State(state): State<Arc<WebhookState>>, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    if let Ok(head) = ReviewHead::parse(&body)
        && let Some(request) = &head.request
        && head.api_version == ADMISSION_API_VERSION
        && head.kind == "AdmissionReview"
        && let Err(reason) = admission_head::pod_needs_review(request)
    {
        let metadata = request.object.as_ref().and_then(|o| o.metadata.as_ref());
        let object = metadata.and_then(|m| m.name.clone().or(m.generate_name.clone()));
        let namespace = request.namespace.as_deref().unwrap_or_default();
        tracing::info!(uid = %request.uid, kind = request.kind.kind, namespace, ?object, decision = "unchanged", reason, "admission");
        return match wire_review(admission_head::allow(&head, request)) {
            Ok(body) => Json(body).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("serialising the response: {e}")),
        };
    }
    let Ok(_permit) = state.full_reviews.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the webhook is shutting down");
    };
    let request = match decode(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let aws = match (&state.service_accounts, mutation::wants_service_account(&request)) {
        (Some(service_accounts), Some((namespace, name))) => {
            match service_accounts.aws_hint(&namespace, &name).await {
                Ok(hint) => hint,
                Err(e) => {
                    // Admitted all the same: the VM gets its IMDS, without the AWS hint.
                    tracing::warn!(uid = %request.uid, error = %crate::errors::chain(&e), "admitting without the AWS role hint");
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(aws) = &aws {
        tracing::info!(uid = %request.uid, aws_role = %aws.role_arn, "the ServiceAccount names an AWS role");
    }
    let (response, outcome) = mutation::review(&request, &state.template, &state.policy, aws.as_ref());
    answer(&request, response, &outcome)
}

/// `POST /mutate-vmi`: VirtualMachineInstances get the SMBIOS hint that
/// points their cloud-init at the IMDS.
async fn mutate_vmi(State(state): State<Arc<WebhookState>>, body: Body) -> Response {
    review_in_full(&state, body, vmi::review).await
}

/// `POST /validate`: VMs and VMIs with malformed `imds.kubevirt.io`
/// settings are refused where their author sees it.
async fn validate(State(state): State<Arc<WebhookState>>, body: Body) -> Response {
    review_in_full(&state, body, validation::review).await
}

/// A bounded body, decoded under a full-review permit, answered by `review`.
async fn review_in_full(
    state: &WebhookState,
    body: Body,
    review: fn(&AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Outcome),
) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let Ok(_permit) = state.full_reviews.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the webhook is shutting down");
    };
    let request = match decode(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let (response, outcome) = review(&request);
    answer(&request, response, &outcome)
}

/// The AdmissionReview response as the API server reads it. The API types
/// `patch` as bytes, which JSON carries as a base64 string; kube-rs
/// serialises its `Vec<u8>` as an array of numbers (kube-rs#1781), so the
/// field is re-encoded here.
pub fn wire_review(response: AdmissionResponse) -> Result<Value, serde_json::Error> {
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review())?;
    if let Some(bytes) = patch {
        review["response"]["patch"] = Value::String(STANDARD.encode(bytes));
    }
    Ok(review)
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};

    #[test]
    fn patch_travels_as_base64() {
        let patch = Patch(vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels", "a"]),
            value: json!("b"),
        })]);
        let response = AdmissionResponse::invalid("x").with_patch(patch.clone()).unwrap();
        let wire = wire_review(response).unwrap();
        assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(wire["kind"], "AdmissionReview");
        assert_eq!(wire["response"]["patchType"], "JSONPatch");
        let b64 = wire["response"]["patch"].as_str().expect("a base64 string");
        let decoded: Patch = serde_json::from_slice(&STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(decoded, patch);
    }
}
