//! The webhook's HTTP routes: `POST /mutate` (AdmissionReview in and out),
//! `GET /healthz` and `GET /readyz`.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
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
    aws::ServiceAccounts,
    mutation::{self, Outcome},
    sidecar_spec::SidecarTemplate,
    vmi,
};

/// The API server sends objects of at most ~3 MiB; room for the envelope.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// Where the MutatingWebhookConfiguration sends pods and VMIs.
pub const MUTATE_PODS_PATH: &str = "/mutate";
pub const MUTATE_VMIS_PATH: &str = "/mutate-vmi";

/// What `/mutate` needs.
pub struct WebhookState {
    pub template: SidecarTemplate,
    /// `None`: IRSA hints are off.
    pub service_accounts: Option<ServiceAccounts>,
}

pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate))
        .route(MUTATE_VMIS_PATH, post(mutate_vmi))
        .route("/healthz", get(|| async { "OK" }))
        .route("/readyz", get(|| async { "OK" }))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no such endpoint; the webhook serves POST {MUTATE_PODS_PATH} and {MUTATE_VMIS_PATH}"
                ),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The request of an AdmissionReview body, or why the body is not one (a 400).
fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
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

/// `POST /mutate`: virt-launcher pods get the sidecar.
async fn mutate(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
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
    let (response, outcome) = mutation::review(&request, &state.template, aws.as_ref());
    answer(&request, response, &outcome)
}

/// `POST /mutate-vmi`: VirtualMachineInstances get the SMBIOS hint that
/// points their cloud-init at the IMDS.
async fn mutate_vmi(body: Bytes) -> Response {
    let request = match decode(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let (response, outcome) = vmi::review(&request);
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
