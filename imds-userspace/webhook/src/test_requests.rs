//! AdmissionRequests as the API server sends them, for the unit tests of
//! every review (pods, VMIs, validation): one builder, so that the shape
//! of a request is written once.

use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionReview},
};
use serde_json::{Value, json};

/// The user KubeVirt's controller acts as (tests change it where it matters).
pub const CONTROLLER: &str = "system:serviceaccount:kubevirt:kubevirt-controller";

/// What is being admitted: group, version, kind and resource.
pub type Subject<'a> = (&'a str, &'a str, &'a str, &'a str);

pub fn request(
    subject: Subject,
    namespace: &str,
    object: Value,
    operation: &str,
) -> AdmissionRequest<DynamicObject> {
    let (group, version, kind, resource) = subject;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": CONTROLLER},
            "object": object,
            "dryRun": false
        }
    });
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(review).unwrap();
    review.try_into().unwrap()
}
