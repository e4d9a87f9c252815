//! Any body a client of the webhook can POST (no credentials are needed to
//! reach it), through what the server does with it: the JSON budget, the
//! head fast path, the decoding into an AdmissionReview, and the pod, VMI
//! and validation reviews (pure functions). Checked: no panic; a body over
//! the budget is never decoded.
#![no_main]

use imds_webhook::{
    admission_head::{ReviewHead, pod_needs_review},
    json_budget, mutation,
    policy::Policy,
    server::{BUDGET, decode},
    sidecar_resources::SidecarResources,
    sidecar_spec::{InjectionMode, SidecarTemplate},
    validation, vmi,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if json_budget::check(data, BUDGET).is_err() {
        return;
    }
    if let Ok(ReviewHead { request: Some(request), .. }) = ReviewHead::parse(data) {
        let _ = pod_needs_review(&request);
    }
    let Ok(request) = decode(data) else { return };
    let template = SidecarTemplate {
        image: "registry.example/kubevirt-imds:0".into(),
        image_pull_policy: "IfNotPresent".into(),
        resources: SidecarResources::defaults(),
        mode: InjectionMode::NativeSidecar,
        region: None,
        availability_zone: None,
    };
    let _ = mutation::review(&request, &template, &Policy::default(), None);
    let _ = vmi::review(&request);
    let _ = validation::review(&request);
});
