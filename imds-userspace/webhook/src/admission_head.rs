//! The little of an AdmissionReview that decides whether the rest is read:
//! the envelope, the request's kind and operation, and the object's labels
//! and annotations. Everything else is skipped by the parser without being
//! built, so a pod that never asked for the IMDS is answered without
//! converting it to a typed Pod: a pod our types cannot read is not denied
//! for it, and it costs no memory.

use std::collections::BTreeMap;

use kube::core::{TypeMeta, admission::AdmissionResponse};
use serde::Deserialize;

use crate::{annotations, mutation::VIRT_LAUNCHER_LABEL};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewHead {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub request: Option<RequestHead>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestHead {
    pub uid: String,
    pub kind: Kind,
    pub operation: String,
    pub sub_resource: Option<String>,
    pub namespace: Option<String>,
    pub object: Option<ObjectHead>,
}

#[derive(Debug, Deserialize)]
pub struct Kind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
pub struct ObjectHead {
    pub metadata: Option<MetadataHead>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataHead {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ReviewHead {
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// Whether the pod review needs the whole request, or why not. Only the
/// creation of a virt-launcher pod that carries our opt-in label or one of
/// our annotations does: enabled, or a near miss whose warning
/// `mutation::decide` gives.
pub fn pod_needs_review(request: &RequestHead) -> Result<(), &'static str> {
    if !(request.kind.group.is_empty() && request.kind.kind == "Pod" && request.sub_resource.is_none()) {
        return Err("not a pod");
    }
    if request.operation != "CREATE" {
        return Err("not a creation");
    }
    let metadata = request.object.as_ref().and_then(|o| o.metadata.as_ref());
    let Some(metadata) = metadata else {
        return Err("no object in the request");
    };
    let labels = metadata.labels.as_ref();
    if labels.and_then(|l| l.get(VIRT_LAUNCHER_LABEL.0)).map(String::as_str) != Some(VIRT_LAUNCHER_LABEL.1) {
        return Err("not a virt-launcher pod");
    }
    // The opt-in label (even a near miss, for its warning) or any of our
    // annotations.
    let ours = labels.is_some_and(|l| l.contains_key(annotations::ENABLED))
        || metadata.annotations.iter().flatten().any(|(key, _)| key.starts_with(annotations::PREFIX));
    if !ours {
        return Err("IMDS not enabled for this VM");
    }
    Ok(())
}

/// "Allowed, unchanged" for a request read only as far as its head.
pub fn allow(review: &ReviewHead, request: &RequestHead) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid("");
    response.types = TypeMeta { api_version: review.api_version.clone(), kind: review.kind.clone() };
    response.uid = request.uid.clone();
    response.allowed = true;
    response.result = Default::default();
    response
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn head(object: serde_json::Value) -> RequestHead {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "object": object,
            }
        });
        ReviewHead::parse(review.to_string().as_bytes()).unwrap().request.unwrap()
    }

    #[test]
    fn only_virt_launcher_pods_with_our_annotations_are_read_further() {
        let launcher = |annotations: serde_json::Value| json!({"metadata": {"labels": {"kubevirt.io": "virt-launcher"}, "annotations": annotations}});
        assert_eq!(pod_needs_review(&head(launcher(json!({"imds.kubevirt.io/enabled": "true"})))), Ok(()));
        let labelled = json!({"metadata": {"labels": {"kubevirt.io": "virt-launcher", "imds.kubevirt.io/enabled": "true"}}});
        assert_eq!(pod_needs_review(&head(labelled)), Ok(()));
        // A near miss still gets the full review (and its warning).
        assert_eq!(pod_needs_review(&head(launcher(json!({"imds.kubevirt.io/enabled": "yes"})))), Ok(()));
        assert_eq!(
            pod_needs_review(&head(launcher(json!({"kubevirt.io/domain": "vm"})))),
            Err("IMDS not enabled for this VM")
        );
        assert_eq!(
            pod_needs_review(&head(
                json!({"metadata": {"annotations": {"imds.kubevirt.io/enabled": "true"}}})
            )),
            Err("not a virt-launcher pod")
        );
    }

    #[test]
    fn what_the_typed_pod_could_not_read_does_not_matter_to_a_pod_that_did_not_ask() {
        // `containers` as a string is no Pod; the head never looks at it.
        let request = head(
            json!({"metadata": {"labels": {"kubevirt.io": "virt-launcher"}}, "spec": {"containers": "x"}}),
        );
        assert_eq!(pod_needs_review(&request), Err("IMDS not enabled for this VM"));
    }

    #[test]
    fn the_answer_carries_the_request_s_uid_and_envelope() {
        let review = ReviewHead::parse(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"abc","kind":{"kind":"Pod"},"operation":"DELETE"}}"#,
        )
        .unwrap();
        let request = review.request.as_ref().unwrap();
        let wire = crate::server::wire_review(allow(&review, request)).unwrap();
        assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(wire["kind"], "AdmissionReview");
        assert_eq!(wire["response"]["uid"], "abc");
        assert_eq!(wire["response"]["allowed"], true);
        assert!(wire["response"].get("patch").is_none());
    }
}
