//! What the injection does to a virt-launcher pod's Pod Security level and
//! QoS class, on every pod of `tests/fixtures/`. The webhook's pure
//! `mutation::review` answers AdmissionReviews built as the API server
//! builds them (no process, no TLS, no root: the webhook over TLS, and the
//! Pod schema of what it returns, are `tests/webhook.rs`'s).

use std::collections::BTreeSet;

use imds_tests::{
    fixtures::{LAUNCHER_PODS, LauncherPod, V1_9_DEDICATED_CPU, V1_9_MASQUERADE, V1_9_RESTRICTED},
    pod_security::{Level, violations},
    webhook::{POD, admission_review},
};
use imds_webhook::{
    contract,
    mutation::{self, Outcome},
    qos::{QosClass, qos_class},
    sidecar_resources::SidecarResources,
    sidecar_spec::{InjectionMode, SidecarTemplate},
};
use k8s_openapi::api::core::v1::PodSpec;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionReview},
};
use serde_json::{Value, json};

const LEVELS: [Level; 3] = [Level::Baseline, Level::Restricted, Level::RestrictedAllowingImageVolumes];
const MODES: [InjectionMode; 2] = [InjectionMode::NativeSidecar, InjectionMode::Container];

fn template(mode: InjectionMode) -> SidecarTemplate {
    SidecarTemplate {
        image: "registry.example/kubevirt-imds:0.1.0".into(),
        image_pull_policy: "IfNotPresent".into(),
        resources: SidecarResources::defaults(),
        mode,
        region: None,
        availability_zone: None,
    }
}

/// The opted-in pod of `fixture` as the webhook returns it.
fn mutated(fixture: &LauncherPod, mode: InjectionMode) -> (Value, Value) {
    let pod = fixture.enabled();
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(&admission_review(&POD, pod.clone(), "vm-team", "admission.k8s.io/v1"))
            .unwrap();
    let request: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
    let (response, outcome) =
        mutation::review(&request, &template(mode), &imds_webhook::policy::Policy::default(), None);
    assert!(matches!(outcome, Outcome::Injected { .. }), "{}: {outcome:?}", fixture.file);
    let patch: json_patch::Patch = serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    (pod, patched)
}

fn found(pod: &Value, level: Level) -> BTreeSet<String> {
    violations(pod, level).into_iter().collect()
}

fn sidecar(patched: &Value) -> Value {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| patched["spec"][list].as_array().into_iter().flatten())
        .find(|c| c["name"] == contract::CONTAINER_NAME)
        .expect("the sidecar")
        .clone()
}

fn qos(pod: &Value) -> QosClass {
    let spec: PodSpec = serde_json::from_value(pod["spec"].clone()).unwrap();
    qos_class(&spec)
}

#[test]
fn the_injection_adds_no_violation_at_any_level() {
    for fixture in &LAUNCHER_PODS {
        for mode in MODES {
            let (original, patched) = mutated(fixture, mode);
            for level in LEVELS {
                let before = found(&original, level);
                let added: Vec<_> = found(&patched, level).difference(&before).cloned().collect();
                assert!(
                    added.is_empty(),
                    "{} ({mode:?}) at {level:?}: the injection added {added:#?}",
                    fixture.file
                );
            }
        }
    }
}

#[test]
fn the_openshift_pods_were_outside_baseline_already() {
    // SYS_PTRACE on compute, the virt_launcher.process SELinux type: the
    // comparison above is against pods the checker does flag.
    for fixture in &LAUNCHER_PODS[..2] {
        let controls: BTreeSet<_> = violations(&fixture.pod(), Level::Baseline)
            .into_iter()
            .map(|v| v.split_once(": ").unwrap().0.to_owned())
            .collect();
        assert_eq!(
            controls,
            BTreeSet::from(["Capabilities".to_owned(), "SELinux".to_owned()]),
            "{}",
            fixture.file
        );
    }
}

#[test]
fn the_restricted_kubevirt_pod_stays_restricted() {
    for mode in MODES {
        let (original, patched) = mutated(&V1_9_RESTRICTED, mode);
        assert_eq!(violations(&original, Level::Restricted), Vec::<String>::new());
        assert_eq!(violations(&patched, Level::Restricted), Vec::<String>::new(), "{mode:?}");
    }
}

#[test]
fn the_default_kubevirt_pod_stays_baseline() {
    for mode in MODES {
        let (original, patched) = mutated(&V1_9_MASQUERADE, mode);
        assert_eq!(violations(&original, Level::Baseline), Vec::<String>::new());
        assert_eq!(violations(&patched, Level::Baseline), Vec::<String>::new(), "{mode:?}");
        // Short of restricted only through KubeVirt's own containers (no
        // seccomp profile: KubeVirt sets none by default) and image volumes.
        let after = violations(&patched, Level::Restricted);
        assert!(!after.is_empty());
        for v in &after {
            let kubevirts = v.starts_with("Volume Types: ")
                || (v.starts_with("Seccomp (restricted): spec.")
                    && ["containers[0]", "initContainers[0]", "initContainers[1]"]
                        .iter()
                        .any(|c| v.contains(&format!("spec.{c}."))));
            assert!(kubevirts, "{v}");
        }
    }
}

#[test]
fn the_sidecar_alone_meets_every_restricted_container_rule() {
    for fixture in &LAUNCHER_PODS {
        let (_, patched) = mutated(fixture, InjectionMode::NativeSidecar);
        // In a pod that sets nothing itself: no pod-level runAsNonRoot or
        // seccomp profile to lean on, no volumes.
        let alone = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sidecar-alone"},
            "spec": {"containers": [sidecar(&patched)]}
        });
        for level in LEVELS {
            assert_eq!(violations(&alone, level), Vec::<String>::new(), "{} at {level:?}", fixture.file);
        }
    }
}

#[test]
fn the_qos_class_is_kept() {
    let expected = |fixture: &LauncherPod| {
        if fixture.file == V1_9_DEDICATED_CPU.file { QosClass::Guaranteed } else { QosClass::Burstable }
    };
    for fixture in &LAUNCHER_PODS {
        for mode in MODES {
            let (original, patched) = mutated(fixture, mode);
            assert_eq!(qos(&original), expected(fixture), "{}", fixture.file);
            assert_eq!(qos(&patched), expected(fixture), "{} ({mode:?})", fixture.file);
        }
    }
    // The OpenShift pods say so themselves: the API server recorded their class.
    for fixture in &LAUNCHER_PODS[..2] {
        assert_eq!(fixture.pod()["status"]["qosClass"], "Burstable");
    }
}
