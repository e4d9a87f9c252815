//! The admission decision, as a pure function from the request to the
//! response: which pods change, and the JSONPatch that changes them.

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};
use serde_json::Value;

use super::{
    annotations::{self, ImdsSettings},
    firmware_uuid,
    policy::Policy,
    qos,
    sidecar_spec::{self, AwsHint, DataVolumes, InjectionMode, PodInfo, SidecarTemplate},
    ssh_keys,
};
use crate::contract;

pub const VIRT_LAUNCHER_LABEL: (&str, &str) = ("kubevirt.io", "virt-launcher");
pub const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";
pub const DOMAIN_ANNOTATION: &str = "kubevirt.io/domain";

/// What was decided, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed as is.
    Unchanged { reason: String },
    /// Allowed with the sidecar added.
    Injected { vm_name: String },
    /// A VMI allowed with the SMBIOS hint for cloud-init (what was done).
    Hinted { summary: String },
    /// Denied; the message reaches the user.
    Refused { message: String },
}

/// Whether `review` may need the pod's ServiceAccount: only pods it would
/// inject, so the API is not called for every virt-launcher pod. Returns
/// the namespace and the ServiceAccount's name.
pub fn wants_service_account(request: &AdmissionRequest<DynamicObject>) -> Option<(String, String)> {
    let object = request.object.as_ref()?;
    let labels = object.metadata.labels.as_ref()?;
    let annotations = object.metadata.annotations.as_ref()?;
    let wanted = request.operation == Operation::Create
        && labels.get(VIRT_LAUNCHER_LABEL.0).map(String::as_str) == Some(VIRT_LAUNCHER_LABEL.1)
        && annotations::opted_in(labels, annotations);
    let namespace = request.namespace.clone()?;
    let service_account = object
        .data
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    wanted.then_some((namespace, service_account))
}

/// Answers one AdmissionReview request. `aws` is what the pod's
/// ServiceAccount says about an IRSA role (looked up by the caller).
pub fn review(
    request: &AdmissionRequest<DynamicObject>,
    template: &SidecarTemplate,
    policy: &Policy,
    aws: Option<&AwsHint>,
) -> (AdmissionResponse, Outcome) {
    let allow = AdmissionResponse::from(request);
    let unchanged =
        |reason: &str| (AdmissionResponse::from(request), Outcome::Unchanged { reason: reason.into() });
    let is_pod =
        request.kind.group.is_empty() && request.kind.kind == "Pod" && request.sub_resource.is_none();
    if !is_pod {
        return unchanged("not a pod");
    }
    if request.operation != Operation::Create {
        return unchanged("not a creation");
    }
    let Some(object) = &request.object else {
        return unchanged("no object in the request");
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(e) => {
            let message = format!("the object is not a valid Pod: {e}");
            return (AdmissionResponse::from(request).deny(&message), Outcome::Refused { message });
        }
    };
    let (mut decision, warnings) = decide(&pod, template, policy, aws);
    if matches!(decision, Decision::Inject { .. })
        && let Err(message) = policy.check_creator(&request.user_info.username.clone().unwrap_or_default())
    {
        decision = Decision::Refuse(message);
    }
    let mut response = match &decision {
        Decision::Unchanged(_) => allow,
        Decision::Refuse(message) => allow.deny(message),
        Decision::Inject { patch, .. } => match allow.with_patch(patch.clone()) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("internal error serialising the patch: {e}");
                return (AdmissionResponse::from(request).deny(&message), Outcome::Refused { message });
            }
        },
    };
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    let outcome = match decision {
        Decision::Inject { vm_name, .. } => Outcome::Injected { vm_name },
        Decision::Refuse(message) => Outcome::Refused { message },
        Decision::Unchanged(reason) => Outcome::Unchanged { reason: reason.into() },
    };
    (response, outcome)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Unchanged(&'static str),
    Inject { patch: Patch, vm_name: String },
    Refuse(String),
}

/// The decision for one pod, and warnings for its author.
pub fn decide(
    pod: &Pod,
    template: &SidecarTemplate,
    policy: &Policy,
    aws: Option<&AwsHint>,
) -> (Decision, Vec<String>) {
    let empty = Default::default();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if labels.get(VIRT_LAUNCHER_LABEL.0).map(String::as_str) != Some(VIRT_LAUNCHER_LABEL.1) {
        return (Decision::Unchanged("not a virt-launcher pod"), Vec::new());
    }
    let mut warnings = annotations::warnings(annotations);
    warnings.extend(annotations::label_warning(labels));
    if !annotations::opted_in(labels, annotations) {
        return (Decision::Unchanged("IMDS not enabled for this VM"), warnings);
    }
    let Some(spec) = &pod.spec else {
        return (Decision::Refuse("the pod has no spec".into()), warnings);
    };
    let all_containers = || spec.containers.iter().chain(spec.init_containers.iter().flatten());
    if all_containers().any(|c| c.name == contract::CONTAINER_NAME) {
        return (Decision::Unchanged("already injected"), warnings);
    }
    for ours in [contract::RUN_VOLUME, contract::TOKEN_VOLUME, contract::USER_DATA_VOLUME] {
        if spec.volumes.iter().flatten().any(|v| v.name == ours) {
            let message = format!("the pod already has a volume named {ours:?}, which kubevirt-imds needs");
            return (Decision::Refuse(message), warnings);
        }
    }
    let mut settings = match annotations::settings(annotations) {
        Ok(s) => s,
        Err(e) => return (Decision::Refuse(e.to_string()), warnings),
    };
    // IRSA needs a token for the role's audience: mount it unasked.
    if let Some(aws) = aws
        && !settings.audiences.contains(&aws.audience)
    {
        if settings.audiences.len() >= contract::MAX_AUDIENCES {
            let message = format!(
                "the ServiceAccount's AWS role needs a token for audience {:?}, but annotation {} already \
                 lists the maximum of {} audiences",
                aws.audience,
                annotations::TOKEN_AUDIENCES,
                contract::MAX_AUDIENCES
            );
            return (Decision::Refuse(message), warnings);
        }
        settings.audiences.push(aws.audience.clone());
    }
    // The cluster's allow-list covers every extra audience, the IRSA one too.
    if let Err(message) = policy.check_audiences(&settings.audiences) {
        return (Decision::Refuse(message), warnings);
    }
    // KubeVirt's `template.go` sets the annotation `kubevirt.io/domain` to
    // the VMI's name on every pod; the label `vm.kubevirt.io/name` is
    // deprecated since 1.7 and holds the VMI's hostname (truncated), which
    // differs from the name when the VMI sets one. The label is only read
    // on pods without the annotation.
    let Some(vm_name) = annotations
        .get(DOMAIN_ANNOTATION)
        .or_else(|| labels.get(DOMAIN_ANNOTATION))
        .or_else(|| labels.get(VM_NAME_LABEL))
    else {
        let message = format!(
            "cannot tell the VM's name: the pod has neither the annotation {DOMAIN_ANNOTATION} nor the \
             label {VM_NAME_LABEL}"
        );
        return (Decision::Refuse(message), warnings);
    };
    let firmware_uuid = match annotations.get(firmware_uuid::ANNOTATION) {
        None => firmware_uuid::legacy(vm_name),
        Some(text) => firmware_uuid::normalise(text).unwrap_or_else(|| {
            warnings.push(format!(
                "annotation {} is {text:?}, not a UUID: the IMDS serves KubeVirt's UUID for the VM's name",
                firmware_uuid::ANNOTATION
            ));
            firmware_uuid::legacy(vm_name)
        }),
    };
    let mut data = kubevirt_cloud_init_volumes(spec);
    if sidecar_spec::user_data_volume(&settings).is_some() {
        data.user = Some(contract::USER_DATA_VOLUME.into());
    }
    if !settings.flavors.is_empty() && data.user.is_none() {
        warnings.push(format!(
            "metadata flavours without user-data: set {} or use a cloudInitNoCloud userDataSecretRef \
             (inline userData is not in the pod)",
            annotations::USER_DATA_SECRET
        ));
    }
    // Only the flavours serve keys.
    let key_secrets = match annotations.get(ssh_keys::ANNOTATION) {
        Some(value) if !settings.flavors.is_empty() => ssh_keys::parse(value),
        _ => Vec::new(),
    };
    let ssh_key_volumes = match ssh_keys::pod_volumes(spec, &key_secrets) {
        Ok(volumes) => volumes,
        Err(message) => return (Decision::Refuse(message), warnings),
    };
    let pod_info = PodInfo {
        vm_name: vm_name.clone(),
        firmware_uuid,
        hostname: spec.hostname.clone().unwrap_or_else(|| vm_name.clone()),
        data,
        ssh_key_volumes,
        qos: qos::qos_class(spec),
    };
    match patch(spec, template, &settings, &pod_info, aws) {
        Ok(patch) => (Decision::Inject { patch, vm_name: vm_name.clone() }, warnings),
        Err(e) => (Decision::Refuse(format!("internal error building the patch: {e}")), warnings),
    }
}

/// KubeVirt mounts a cloud-init `userDataSecretRef`/`networkDataSecretRef`
/// (NoCloud or ConfigDrive) into `compute` as subPaths `userdata`/`userData`
/// (`networkdata`/`networkData`) of a Secret volume under this directory.
const KUBEVIRT_SECRET_DIR: &str = "/var/run/kubevirt-private/secret/";

fn kubevirt_cloud_init_volumes(spec: &PodSpec) -> DataVolumes {
    let is_secret_volume =
        |name: &str| spec.volumes.iter().flatten().any(|v| v.name == name && v.secret.is_some());
    let mut found = DataVolumes::default();
    for mount in spec.containers.iter().flat_map(|c| c.volume_mounts.iter().flatten()) {
        if !mount.mount_path.starts_with(KUBEVIRT_SECRET_DIR) || !is_secret_volume(&mount.name) {
            continue;
        }
        let slot = match mount.sub_path.as_deref() {
            Some("userdata" | "userData") => &mut found.user,
            Some("networkdata" | "networkData") => &mut found.network,
            _ => continue,
        };
        slot.get_or_insert_with(|| mount.name.clone());
    }
    found
}

fn patch(
    spec: &PodSpec,
    template: &SidecarTemplate,
    settings: &ImdsSettings,
    pod: &PodInfo,
    aws: Option<&AwsHint>,
) -> Result<Patch, serde_json::Error> {
    let container = serde_json::to_value(sidecar_spec::container(template, settings, pod, aws))?;
    let mut ops = Vec::new();
    let (field, existing) = match template.mode {
        // Last among the init containers: KubeVirt's own ones are not delayed.
        InjectionMode::NativeSidecar => ("initContainers", spec.init_containers.is_some()),
        InjectionMode::Container => ("containers", true),
    };
    ops.push(append(&["spec", field], existing, container));
    let mut volumes_exist = spec.volumes.is_some();
    let ours = [
        Some(sidecar_spec::run_volume()),
        sidecar_spec::token_volume(settings),
        sidecar_spec::user_data_volume(settings),
    ];
    for volume in ours.into_iter().flatten() {
        ops.push(append(&["spec", "volumes"], volumes_exist, serde_json::to_value(volume)?));
        volumes_exist = true;
    }
    ops.push(add(
        &["metadata", "annotations", annotations::INJECTED],
        Value::from(env!("CARGO_PKG_VERSION")),
    ));
    Ok(Patch(ops))
}

/// Appends to the array at `path`, creating it if the pod has none.
fn append(path: &[&str], array_exists: bool, value: Value) -> PatchOperation {
    if array_exists {
        let mut tokens = path.to_vec();
        tokens.push("-");
        add(&tokens, value)
    } else {
        add(path, Value::Array(vec![value]))
    }
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(path.iter().copied()), value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        annotations::{BRIDGE_NAME, ENABLED, INJECTED, TOKEN_EXPIRATION_SECONDS},
        qos::{QosClass, qos_class},
    };
    use serde_json::json;
    use std::collections::HashSet;

    const OPENSHIFT: &str = include_str!("../../../tests/fixtures/virt-launcher-pod-openshift.json");
    const CAT8KV: &str = include_str!("../../../tests/fixtures/virt-launcher-pod-openshift-cat8kv.json");
    const V1_9_MASQUERADE: &str = include_str!("../../../tests/fixtures/virt-launcher-v1.9-masquerade.json");
    const V1_9_RESTRICTED: &str = include_str!("../../../tests/fixtures/virt-launcher-v1.9-restricted.json");
    const V1_9_DEDICATED_CPU: &str =
        include_str!("../../../tests/fixtures/virt-launcher-v1.9-dedicated-cpu.json");

    fn template(mode: InjectionMode) -> SidecarTemplate {
        SidecarTemplate {
            image: "registry.example/kubevirt-imds:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            resources: crate::sidecar_resources::SidecarResources::defaults(),
            mode,
            region: None,
            availability_zone: None,
        }
    }

    fn fixture(text: &str, annotations: &[(&str, &str)]) -> Value {
        let mut pod: Value = serde_json::from_str(text).unwrap();
        for (k, v) in annotations {
            pod["metadata"]["annotations"][*k] = json!(v);
        }
        pod
    }

    fn enabled_fixtures() -> Vec<Value> {
        fixtures_named().into_iter().map(|(pod, _, _)| pod).collect()
    }

    /// Every fixture, opted in, with its VM's name and its QoS class.
    fn fixtures_named() -> Vec<(Value, &'static str, QosClass)> {
        [
            (OPENSHIFT, "fedora02", QosClass::Burstable),
            (CAT8KV, "cat8kv-01", QosClass::Burstable),
            (V1_9_MASQUERADE, "fedora-imds", QosClass::Burstable),
            (V1_9_RESTRICTED, "rhel9-db", QosClass::Burstable),
            (V1_9_DEDICATED_CPU, "latency-01", QosClass::Guaranteed),
        ]
        .into_iter()
        .map(|(text, vm, class)| (fixture(text, &[(ENABLED, "true")]), vm, class))
        .collect()
    }

    fn request_for(
        object: Value,
        kind: (&str, &str, &str),
        operation: &str,
    ) -> AdmissionRequest<DynamicObject> {
        crate::test_requests::request((kind.0, kind.1, kind.2, "pods"), "default", object, operation)
    }

    fn run(pod: &Value, mode: InjectionMode) -> (AdmissionResponse, Outcome) {
        run_with(pod, &template(mode), &Policy::default(), None)
    }

    /// The creation of `pod` by KubeVirt's controller, reviewed.
    fn run_with(
        pod: &Value,
        template: &SidecarTemplate,
        policy: &Policy,
        aws: Option<&AwsHint>,
    ) -> (AdmissionResponse, Outcome) {
        review(&request_for(pod.clone(), ("", "v1", "Pod"), "CREATE"), template, policy, aws)
    }

    /// Applies the response's JSONPatch to `pod`.
    fn apply(pod: &Value, response: &AdmissionResponse) -> Value {
        let patch: Patch = serde_json::from_slice(response.patch.as_ref().expect("a patch")).unwrap();
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        doc
    }

    /// What must hold for every pod the webhook returns.
    fn check_valid(original: &Value, patched: &Value, mode: InjectionMode) {
        let pod: Pod = serde_json::from_value(patched.clone()).expect("still a Pod");
        let spec = pod.spec.as_ref().unwrap();
        let containers: Vec<_> =
            spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
        let names: HashSet<_> = containers.iter().map(|c| &c.name).collect();
        assert_eq!(names.len(), containers.len(), "container names are not unique");
        let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| &v.name).collect();
        assert_eq!(
            volumes.iter().collect::<HashSet<_>>().len(),
            volumes.len(),
            "volume names are not unique"
        );
        for c in &containers {
            for m in c.volume_mounts.iter().flatten() {
                assert!(volumes.contains(&&m.name), "{} mounts missing volume {}", c.name, m.name);
                if m.name == contract::TOKEN_VOLUME || m.name == contract::RUN_VOLUME {
                    assert_eq!(c.name, contract::CONTAINER_NAME, "{} mounted into {}", m.name, c.name);
                }
            }
        }
        // The run volume: a small emptyDir, after the pod's own volumes.
        let run_volume = spec.volumes.iter().flatten().find(|v| v.name == contract::RUN_VOLUME).unwrap();
        assert_eq!(
            serde_json::to_value(run_volume).unwrap(),
            json!({"name": contract::RUN_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}})
        );
        if let Some(original_volumes) = original["spec"]["volumes"].as_array() {
            assert_eq!(
                &patched["spec"]["volumes"].as_array().unwrap()[..original_volumes.len()],
                &original_volumes[..]
            );
        }
        // The pod keeps its QoS class.
        let original_spec: PodSpec = serde_json::from_value(original["spec"].clone()).unwrap();
        assert_eq!(qos_class(spec), qos_class(&original_spec), "the QoS class changed");
        // The original containers are untouched, byte for byte.
        let original_containers = original["spec"]["containers"].as_array().unwrap();
        let patched_containers = patched["spec"]["containers"].as_array().unwrap();
        assert_eq!(&patched_containers[..original_containers.len()], &original_containers[..]);
        if let Some(original_init) = original["spec"]["initContainers"].as_array() {
            assert_eq!(
                &patched["spec"]["initContainers"].as_array().unwrap()[..original_init.len()],
                &original_init[..]
            );
        }
        let sidecar =
            containers.iter().find(|c| c.name == contract::CONTAINER_NAME).expect("sidecar injected");
        let in_init = spec.init_containers.iter().flatten().any(|c| c.name == contract::CONTAINER_NAME);
        assert_eq!(in_init, mode == InjectionMode::NativeSidecar);
        assert_eq!(
            sidecar.restart_policy.as_deref(),
            (mode == InjectionMode::NativeSidecar).then_some("Always")
        );
        // Unprivileged whatever the pod says: every field set on the container itself.
        assert_eq!(
            serde_json::to_value(sidecar.security_context.as_ref().unwrap()).unwrap(),
            json!({
                "runAsUser": 107, "runAsGroup": 107, "runAsNonRoot": true,
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            })
        );
        assert_eq!(
            sidecar.command.as_deref(),
            Some(&[contract::SIDECAR_BINARY_PATH.to_owned(), "run".into()][..])
        );
        assert_eq!(sidecar.args, None);
        assert_eq!(
            serde_json::to_value(sidecar.startup_probe.as_ref().unwrap()).unwrap(),
            json!({"exec": {"command": [contract::SIDECAR_BINARY_PATH, "probe"]},
                   "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 300})
        );
        let run_mount =
            sidecar.volume_mounts.iter().flatten().find(|m| m.name == contract::RUN_VOLUME).unwrap();
        assert_eq!((run_mount.mount_path.as_str(), run_mount.read_only), (contract::RUN_DIR, None));
        assert!(
            !sidecar.env.iter().flatten().any(|e| e.name == contract::ENV_RUN_DIR),
            "the run directory is the sidecar's default"
        );
        assert_eq!(patched["metadata"]["annotations"][INJECTED], env!("CARGO_PKG_VERSION"));
    }

    fn env_of(patched: &Value) -> Vec<(String, Value)> {
        let pod: Pod = serde_json::from_value(patched.clone()).unwrap();
        let spec = pod.spec.unwrap();
        let sidecar = spec
            .init_containers
            .into_iter()
            .flatten()
            .chain(spec.containers)
            .find(|c| c.name == contract::CONTAINER_NAME)
            .unwrap();
        sidecar
            .env
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.name,
                    e.value.map(Value::from).unwrap_or_else(|| serde_json::to_value(e.value_from).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn fixtures_get_the_sidecar_and_its_token_volume() {
        for (pod, vm, _) in &fixtures_named() {
            for mode in [InjectionMode::NativeSidecar, InjectionMode::Container] {
                let (response, outcome) = run(pod, mode);
                assert!(response.allowed, "{:?}", response.result);
                assert_eq!(outcome, Outcome::Injected { vm_name: (*vm).into() });
                let patched = apply(pod, &response);
                check_valid(pod, &patched, mode);
                let ours: Vec<_> = patched["spec"]["volumes"].as_array().unwrap()
                    [pod["spec"]["volumes"].as_array().unwrap().len()..]
                    .iter()
                    .map(|v| v["name"].as_str().unwrap())
                    .collect();
                assert_eq!(ours, [contract::RUN_VOLUME, contract::TOKEN_VOLUME]);
                let volume = patched["spec"]["volumes"].as_array().unwrap().last().unwrap().clone();
                assert_eq!(
                    volume,
                    json!({"name": contract::TOKEN_VOLUME, "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}})
                );
                let env = env_of(&patched);
                assert!(env.contains(&(contract::ENV_VM_NAME.into(), json!(vm))));
                assert!(env.contains(&(
                    contract::ENV_SERVICE_ACCOUNT_NAME.into(),
                    json!({"fieldRef": {"fieldPath": "spec.serviceAccountName"}})
                )));
                assert!(env.contains(&(
                    contract::ENV_NAMESPACE.into(),
                    json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
                )));
                assert!(env.contains(&(
                    contract::ENV_POD_NAME.into(),
                    json!({"fieldRef": {"fieldPath": "metadata.name"}})
                )));
                assert!(!env.iter().any(|(k, _)| k == contract::ENV_BRIDGE_NAME));
            }
        }
    }

    #[test]
    fn applying_twice_changes_nothing_the_second_time() {
        for pod in enabled_fixtures() {
            let once = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
            let (response, outcome) = run(&once, InjectionMode::NativeSidecar);
            assert!(response.allowed && response.patch.is_none());
            assert_eq!(outcome, Outcome::Unchanged { reason: "already injected".into() });
            // Also when the first injection was a plain container.
            let once = apply(&pod, &run(&pod, InjectionMode::Container).0);
            assert!(run(&once, InjectionMode::NativeSidecar).0.patch.is_none());
        }
    }

    #[test]
    fn pods_that_did_not_ask_are_allowed_untouched() {
        let cases = [
            fixture(OPENSHIFT, &[]),
            fixture(OPENSHIFT, &[(ENABLED, "false")]),
            fixture(OPENSHIFT, &[(ENABLED, "True")]),
            fixture(OPENSHIFT, &[(ENABLED, "yes")]),
            {
                let mut p = fixture(OPENSHIFT, &[(ENABLED, "true")]);
                p["metadata"]["labels"].as_object_mut().unwrap().remove("kubevirt.io");
                p
            },
            {
                let mut p = fixture(OPENSHIFT, &[(ENABLED, "true")]);
                p["metadata"]["labels"]["kubevirt.io"] = json!("virt-handler");
                p
            },
        ];
        for pod in cases {
            let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
            assert!(response.allowed && response.patch.is_none(), "{outcome:?}");
            assert!(matches!(outcome, Outcome::Unchanged { .. }));
        }
        let (response, _) = run(&fixture(OPENSHIFT, &[(ENABLED, "True")]), InjectionMode::NativeSidecar);
        assert!(response.warnings.unwrap()[0].contains("only exactly \"true\""));
    }

    #[test]
    fn malformed_annotations_are_refused_with_the_annotation_named() {
        for (annotation, value) in
            [(TOKEN_EXPIRATION_SECONDS, "soon"), (TOKEN_EXPIRATION_SECONDS, "60"), (BRIDGE_NAME, "k6t/eth0")]
        {
            let pod = fixture(OPENSHIFT, &[(ENABLED, "true"), (annotation, value)]);
            let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
            assert!(!response.allowed);
            assert!(response.patch.is_none());
            assert!(response.result.message.contains(annotation), "{}", response.result.message);
            assert!(response.result.message.contains("expected"), "{}", response.result.message);
            assert!(matches!(outcome, Outcome::Refused { .. }));
        }
    }

    #[test]
    fn settings_reach_the_sidecar() {
        let pod = fixture(
            CAT8KV,
            &[(ENABLED, "true"), (TOKEN_EXPIRATION_SECONDS, "7200"), (BRIDGE_NAME, "k6t-net1")],
        );
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        assert!(env_of(&patched).contains(&(contract::ENV_BRIDGE_NAME.into(), json!("k6t-net1"))));
        let volume = patched["spec"]["volumes"].as_array().unwrap().last().unwrap();
        assert_eq!(volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 7200);
    }

    #[test]
    fn the_clusters_placement_reaches_sidecars_that_serve_metadata() {
        let mut placed = template(InjectionMode::NativeSidecar);
        placed.region = Some("us-east-1".into());
        placed.availability_zone = Some("us-east-1a".into());
        let pod = fixture(CAT8KV, &[(ENABLED, "true"), (crate::annotations::METADATA_FLAVORS, "ec2")]);
        let env = env_of(&apply(&pod, &run_with(&pod, &placed, &Policy::default(), None).0));
        assert!(env.contains(&(contract::ENV_REGION.into(), json!("us-east-1"))), "{env:?}");
        assert!(env.contains(&(contract::ENV_AVAILABILITY_ZONE.into(), json!("us-east-1a"))), "{env:?}");
        // Without a flavour there is no metadata to place.
        let pod = fixture(CAT8KV, &[(ENABLED, "true")]);
        let env = env_of(&apply(&pod, &run_with(&pod, &placed, &Policy::default(), None).0));
        assert!(!env.iter().any(|(k, _)| k == contract::ENV_REGION), "{env:?}");
    }

    #[test]
    fn existing_init_containers_and_volumes_are_kept_first() {
        let mut pod = fixture(OPENSHIFT, &[(ENABLED, "true")]);
        pod["spec"]["initContainers"] = json!([
            {"name": "container-disk-binary", "image": "quay.io/kubevirt/virt-launcher:v1.1.0", "command": ["/usr/bin/cp"]},
            {"name": "volumecontainerdisk-init", "image": "quay.io/containerdisks/fedora:39"}
        ]);
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        let init = patched["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 3);
        assert_eq!(init[2]["name"], contract::CONTAINER_NAME);
        let volumes = patched["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), pod["spec"]["volumes"].as_array().unwrap().len() + 2);
    }

    #[test]
    fn pods_without_init_containers_or_volumes_get_the_arrays() {
        let mut pod = fixture(OPENSHIFT, &[(ENABLED, "true")]);
        let spec = pod["spec"].as_object_mut().unwrap();
        spec.remove("volumes");
        spec.remove("initContainers");
        for c in spec["containers"].as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("volumeMounts");
        }
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        assert_eq!(patched["spec"]["volumes"].as_array().unwrap().len(), 2);
    }

    /// KubeVirt's `template.go`: the annotation `kubevirt.io/domain` is the
    /// VMI's name; the deprecated label `vm.kubevirt.io/name` its hostname.
    #[test]
    fn the_vm_name_is_kubevirt_s_domain_annotation_and_the_label_only_a_fallback() {
        let mut pod = fixture(OPENSHIFT, &[(ENABLED, "true"), (DOMAIN_ANNOTATION, "from-domain")]);
        pod["metadata"]["labels"][VM_NAME_LABEL] = json!("a-hostname");
        let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
        assert_eq!(outcome, Outcome::Injected { vm_name: "from-domain".into() });
        check_valid(&pod, &apply(&pod, &response), InjectionMode::NativeSidecar);

        pod["metadata"]["annotations"].as_object_mut().unwrap().remove(DOMAIN_ANNOTATION);
        pod["metadata"]["labels"].as_object_mut().unwrap().remove(DOMAIN_ANNOTATION);
        let (_, outcome) = run(&pod, InjectionMode::NativeSidecar);
        assert_eq!(outcome, Outcome::Injected { vm_name: "a-hostname".into() });

        pod["metadata"]["labels"].as_object_mut().unwrap().remove(VM_NAME_LABEL);
        let (response, _) = run(&pod, InjectionMode::NativeSidecar);
        assert!(!response.allowed);
        assert!(response.result.message.contains(DOMAIN_ANNOTATION), "{}", response.result.message);
    }

    #[test]
    fn the_label_alone_opts_in_as_the_object_selector_matches_it() {
        let mut pod = fixture(V1_9_MASQUERADE, &[]);
        pod["metadata"]["labels"][annotations::ENABLED] = json!("true");
        let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
        assert_eq!(outcome, Outcome::Injected { vm_name: "fedora-imds".into() }, "{:?}", response.result);
        // A near miss of the label is named, and nothing is injected.
        pod["metadata"]["labels"][annotations::ENABLED] = json!("True");
        let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
        assert!(matches!(outcome, Outcome::Unchanged { .. }), "{outcome:?}");
        let warnings = response.warnings.unwrap_or_default();
        assert!(warnings.iter().any(|w| w.contains("label imds.kubevirt.io/enabled")), "{warnings:?}");
    }

    #[test]
    fn only_kubevirt_s_controller_gets_pods_injected() {
        let pod = fixture(V1_9_MASQUERADE, &[(ENABLED, "true")]);
        let mut request = request_for(pod.clone(), ("", "v1", "Pod"), "CREATE");
        request.user_info.username = Some("system:serviceaccount:vm-team:default".into());
        let (response, outcome) =
            review(&request, &template(InjectionMode::NativeSidecar), &Policy::default(), None);
        assert!(!response.allowed, "{outcome:?}");
        assert!(
            response.result.message.contains("system:serviceaccount:vm-team:default"),
            "{}",
            response.result.message
        );
        // The same pod from a controller the cluster names is injected.
        let openshift = "system:serviceaccount:openshift-cnv:kubevirt-controller";
        request.user_info.username = Some(openshift.into());
        let policy = Policy::new(vec![openshift.into()], vec!["*".into()]);
        let (response, _) = review(&request, &template(InjectionMode::NativeSidecar), &policy, None);
        assert!(response.allowed && response.patch.is_some(), "{:?}", response.result);
        // A pod that did not opt in is allowed whoever creates it.
        let plain = fixture(V1_9_MASQUERADE, &[]);
        let mut request = request_for(plain, ("", "v1", "Pod"), "CREATE");
        request.user_info.username = Some("alice".into());
        let (response, _) =
            review(&request, &template(InjectionMode::NativeSidecar), &Policy::default(), None);
        assert!(response.allowed && response.patch.is_none());
    }

    #[test]
    fn audiences_outside_the_cluster_s_allow_list_are_refused_naming_them() {
        use crate::annotations::TOKEN_AUDIENCES;
        let policy = Policy::new(vec![crate::policy::DEFAULT_CONTROLLER_USER.into()], vec!["vault".into()]);
        let review_with = |audiences: &str, aws: Option<&AwsHint>| {
            let pod = fixture(OPENSHIFT, &[(ENABLED, "true"), (TOKEN_AUDIENCES, audiences)]);
            review(
                &request_for(pod, ("", "v1", "Pod"), "CREATE"),
                &template(InjectionMode::NativeSidecar),
                &policy,
                aws,
            )
            .0
        };
        assert!(review_with("vault", None).allowed);
        let refused = review_with("vault,sts.amazonaws.com", None);
        assert!(!refused.allowed);
        assert!(refused.result.message.contains("\"sts.amazonaws.com\""), "{}", refused.result.message);
        // The IRSA audience the ServiceAccount brings is held to the same list.
        let aws = AwsHint { role_arn: "arn:aws:iam::1:role/r".into(), audience: "sts.amazonaws.com".into() };
        assert!(!review_with("vault", Some(&aws)).allowed);
    }

    #[test]
    fn the_sidecar_serves_the_firmware_uuid_the_vmi_webhook_recorded() {
        let recorded = "d6b1c2a4-8e3f-4b5a-9c7d-1e2f3a4b5c6d";
        let env_for = |annotations: &[(&str, &str)]| {
            let pod = fixture(V1_9_MASQUERADE, annotations);
            let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
            assert!(response.allowed, "{outcome:?}");
            (env_of(&apply(&pod, &response)), response.warnings.unwrap_or_default())
        };
        let uuid_in = |env: &[(String, Value)]| {
            env.iter().find(|(k, _)| k == contract::ENV_FIRMWARE_UUID).map(|(_, v)| v.clone())
        };
        let (env, _) = env_for(&[(ENABLED, "true"), (firmware_uuid::ANNOTATION, recorded)]);
        assert_eq!(uuid_in(&env), Some(json!(recorded)));
        // None recorded: KubeVirt's UUID for the VM's name (the VMI's name).
        let (env, _) = env_for(&[(ENABLED, "true")]);
        assert_eq!(uuid_in(&env), Some(json!(firmware_uuid::legacy("fedora-imds"))));
        // Something that is not a UUID: the same fallback, and a warning.
        let (env, warnings) = env_for(&[(ENABLED, "true"), (firmware_uuid::ANNOTATION, "$(reboot)")]);
        assert_eq!(uuid_in(&env), Some(json!(firmware_uuid::legacy("fedora-imds"))));
        assert!(warnings.iter().any(|w| w.contains("not a UUID")), "{warnings:?}");
    }

    #[test]
    fn a_conflicting_volume_name_is_refused() {
        for ours in [contract::RUN_VOLUME, contract::TOKEN_VOLUME, contract::USER_DATA_VOLUME] {
            let mut pod = fixture(V1_9_MASQUERADE, &[(ENABLED, "true")]);
            pod["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": ours, "emptyDir": {}}));
            let (response, _) = run(&pod, InjectionMode::NativeSidecar);
            assert!(!response.allowed, "{ours}");
            assert!(response.result.message.contains(ours), "{}", response.result.message);
        }
    }

    fn resources_of(patched: &Value) -> Value {
        serde_json::to_value(sidecar_of(patched).resources).unwrap()
    }

    #[test]
    fn the_sidecar_is_sized_to_keep_the_pods_qos_class() {
        for (pod, vm, class) in fixtures_named() {
            let original: Pod = serde_json::from_value(pod.clone()).unwrap();
            assert_eq!(qos_class(original.spec.as_ref().unwrap()), class, "{vm}");
            let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
            check_valid(&pod, &patched, InjectionMode::NativeSidecar);
            let expected = match class {
                QosClass::Guaranteed => {
                    json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "10m", "memory": "32Mi"}})
                }
                _ => json!({"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}),
            };
            assert_eq!(resources_of(&patched), expected, "{vm}");
        }
        // A BestEffort pod (not a virt-launcher pod in practice) stays one: no resources at all.
        let mut pod = fixture(V1_9_MASQUERADE, &[(ENABLED, "true")]);
        for list in ["containers", "initContainers"] {
            for c in pod["spec"][list].as_array_mut().unwrap() {
                c.as_object_mut().unwrap().remove("resources");
            }
        }
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        assert_eq!(resources_of(&patched), Value::Null);
        let patched: Pod = serde_json::from_value(patched).unwrap();
        assert_eq!(qos_class(patched.spec.as_ref().unwrap()), QosClass::BestEffort);
    }

    #[test]
    fn a_root_pod_does_not_make_the_sidecar_root() {
        // KubeVirt's Root feature gate: the pod runs as uid 0, compute too,
        // without runAsNonRoot (template.go, computePodSecurityContext).
        let mut pod = fixture(V1_9_MASQUERADE, &[(ENABLED, "true")]);
        pod["spec"]["securityContext"] = json!({"runAsUser": 0, "fsGroup": 107});
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        // check_valid holds the sidecar to uid 107, runAsNonRoot, its own seccomp profile.
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
    }

    #[test]
    fn other_kinds_and_operations_are_allowed_untouched() {
        let pod = fixture(OPENSHIFT, &[(ENABLED, "true")]);
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}});
        for request in [
            request_for(deployment, ("apps", "v1", "Deployment"), "CREATE"),
            request_for(pod.clone(), ("", "v1", "Pod"), "UPDATE"),
            request_for(pod.clone(), ("", "v1", "Pod"), "DELETE"),
        ] {
            let (response, outcome) =
                review(&request, &template(InjectionMode::NativeSidecar), &Policy::default(), None);
            assert!(response.allowed && response.patch.is_none(), "{outcome:?}");
        }
        // A pod-shaped object that is not a valid Pod is refused, not crashed on.
        let broken = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "nope"}});
        let (response, _) = review(
            &request_for(broken, ("", "v1", "Pod"), "CREATE"),
            &template(InjectionMode::NativeSidecar),
            &Policy::default(),
            None,
        );
        assert!(!response.allowed);
    }

    fn sources(patched: &Value) -> Vec<Value> {
        let volume = patched["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == contract::TOKEN_VOLUME)
            .cloned();
        volume.map(|v| v["projected"]["sources"].as_array().unwrap().clone()).unwrap_or_default()
    }

    #[test]
    fn audiences_become_projected_sources_next_to_the_default_token() {
        use crate::annotations::TOKEN_AUDIENCES;
        let pod =
            fixture(OPENSHIFT, &[(ENABLED, "true"), (TOKEN_AUDIENCES, " sts.amazonaws.com, vault ,vault")]);
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        assert_eq!(
            sources(&patched),
            vec![
                json!({"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}),
                json!({"serviceAccountToken": {"path": "audience-0", "audience": "sts.amazonaws.com", "expirationSeconds": 3600}}),
                json!({"serviceAccountToken": {"path": "audience-1", "audience": "vault", "expirationSeconds": 3600}}),
            ]
        );
        assert!(
            env_of(&patched)
                .contains(&(contract::ENV_TOKEN_AUDIENCES.into(), json!("sts.amazonaws.com,vault")))
        );
        // Still idempotent.
        assert!(run(&patched, InjectionMode::NativeSidecar).0.patch.is_none());
        // None without the annotation.
        let plain = enabled_fixtures().remove(0);
        let patched = apply(&plain, &run(&plain, InjectionMode::NativeSidecar).0);
        assert_eq!(sources(&patched).len(), 1);
        assert!(!env_of(&patched).iter().any(|(k, _)| k == contract::ENV_TOKEN_AUDIENCES));
    }

    #[test]
    fn without_the_default_token_the_api_audience_is_not_mounted() {
        use crate::annotations::{DEFAULT_TOKEN, TOKEN_AUDIENCES};
        let pod =
            fixture(OPENSHIFT, &[(ENABLED, "true"), (TOKEN_AUDIENCES, "vault"), (DEFAULT_TOKEN, "false")]);
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        assert_eq!(
            sources(&patched),
            vec![
                json!({"serviceAccountToken": {"path": "audience-0", "audience": "vault", "expirationSeconds": 3600}})
            ]
        );
        assert!(env_of(&patched).contains(&(contract::ENV_DEFAULT_TOKEN.into(), json!("false"))));

        // No token at all: no volume and no mount, identity only.
        let pod = fixture(OPENSHIFT, &[(ENABLED, "true"), (DEFAULT_TOKEN, "false")]);
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        let pod_typed: Pod = serde_json::from_value(patched.clone()).unwrap();
        assert!(!pod_typed.spec.unwrap().volumes.unwrap().iter().any(|v| v.name == contract::TOKEN_VOLUME));
    }

    #[test]
    fn malformed_audience_annotations_are_refused() {
        use crate::annotations::{DEFAULT_TOKEN, TOKEN_AUDIENCES};
        for (annotation, value) in
            [(TOKEN_AUDIENCES, "vault,,sts"), (TOKEN_AUDIENCES, "a\u{1}b"), (DEFAULT_TOKEN, "no")]
        {
            let pod = fixture(CAT8KV, &[(ENABLED, "true"), (annotation, value)]);
            let (response, _) = run(&pod, InjectionMode::NativeSidecar);
            assert!(!response.allowed, "{annotation}={value:?}");
            assert!(response.result.message.contains(annotation), "{}", response.result.message);
        }
    }

    #[test]
    fn an_irsa_role_reaches_the_sidecar_with_its_token() {
        let aws = AwsHint {
            role_arn: "arn:aws:iam::111122223333:role/vm".into(),
            audience: "sts.amazonaws.com".into(),
        };
        let pod = enabled_fixtures().remove(1);
        let request = request_for(pod.clone(), ("", "v1", "Pod"), "CREATE");
        assert_eq!(wants_service_account(&request), Some(("default".into(), "default".into())));
        let (response, _) =
            review(&request, &template(InjectionMode::NativeSidecar), &Policy::default(), Some(&aws));
        let patched = apply(&pod, &response);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        let env = env_of(&patched);
        assert!(
            env.contains(&(contract::ENV_AWS_ROLE_ARN.into(), json!("arn:aws:iam::111122223333:role/vm")))
        );
        assert!(env.contains(&(contract::ENV_AWS_AUDIENCE.into(), json!("sts.amazonaws.com"))));
        assert!(env.contains(&(contract::ENV_TOKEN_AUDIENCES.into(), json!("sts.amazonaws.com"))));
        assert_eq!(sources(&patched)[1]["serviceAccountToken"]["audience"], "sts.amazonaws.com");

        // Not added twice when the user listed it already.
        use crate::annotations::TOKEN_AUDIENCES;
        let pod = fixture(OPENSHIFT, &[(ENABLED, "true"), (TOKEN_AUDIENCES, "sts.amazonaws.com")]);
        let (response, _) =
            run_with(&pod, &template(InjectionMode::NativeSidecar), &Policy::default(), Some(&aws));
        assert_eq!(sources(&apply(&pod, &response)).len(), 2);
    }

    #[test]
    fn only_pods_to_inject_trigger_a_service_account_lookup() {
        for pod in [fixture(OPENSHIFT, &[]), fixture(OPENSHIFT, &[(ENABLED, "false")])] {
            assert_eq!(wants_service_account(&request_for(pod, ("", "v1", "Pod"), "CREATE")), None);
        }
        let mut pod = fixture(OPENSHIFT, &[(ENABLED, "true")]);
        pod["spec"]["serviceAccountName"] = json!("builder");
        assert_eq!(
            wants_service_account(&request_for(pod.clone(), ("", "v1", "Pod"), "CREATE")),
            Some(("default".into(), "builder".into()))
        );
        assert_eq!(wants_service_account(&request_for(pod, ("", "v1", "Pod"), "UPDATE")), None);
    }

    fn sidecar_of(patched: &Value) -> k8s_openapi::api::core::v1::Container {
        let pod: Pod = serde_json::from_value(patched.clone()).unwrap();
        let spec = pod.spec.unwrap();
        spec.init_containers
            .into_iter()
            .flatten()
            .chain(spec.containers)
            .find(|c| c.name == contract::CONTAINER_NAME)
            .unwrap()
    }

    fn mounts_of(patched: &Value) -> Vec<(String, String)> {
        sidecar_of(patched).volume_mounts.unwrap().into_iter().map(|m| (m.name, m.mount_path)).collect()
    }

    /// A fixture as KubeVirt renders a VM with cloudInitNoCloud
    /// `userDataSecretRef` and `networkDataSecretRef` (rendervolumes.go).
    fn with_kubevirt_cloud_init(mut pod: Value) -> Value {
        pod["spec"]["volumes"].as_array_mut().unwrap().extend([
            json!({"name": "cloudinitdisk-udata", "secret": {"secretName": "vm-userdata"}}),
            json!({"name": "cloudinitdisk-ndata", "secret": {"secretName": "vm-networkdata"}}),
        ]);
        let compute = &mut pod["spec"]["containers"][0]["volumeMounts"];
        for (volume, key) in [
            ("cloudinitdisk-udata", "userdata"),
            ("cloudinitdisk-udata", "userData"),
            ("cloudinitdisk-ndata", "networkdata"),
            ("cloudinitdisk-ndata", "networkData"),
        ] {
            compute.as_array_mut().unwrap().push(json!({
                "name": volume, "mountPath": format!("/var/run/kubevirt-private/secret/cloudinitdisk/{key}"),
                "subPath": key, "readOnly": true}));
        }
        pod
    }

    #[test]
    fn the_user_data_secret_is_mounted_into_the_sidecar_only() {
        use crate::annotations::{METADATA_FLAVORS, USER_DATA_SECRET};
        let pod = fixture(
            OPENSHIFT,
            &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud,ec2"), (USER_DATA_SECRET, "fedora02-userdata")],
        );
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        let volume = patched["spec"]["volumes"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            volume,
            json!({"name": contract::USER_DATA_VOLUME, "secret": {"secretName": "fedora02-userdata"}})
        );
        assert!(
            mounts_of(&patched)
                .contains(&(contract::USER_DATA_VOLUME.into(), contract::USER_DATA_DIR.into()))
        );
        let env = env_of(&patched);
        for (k, v) in [
            (contract::ENV_METADATA_FLAVORS, "nocloud,ec2"),
            (contract::ENV_HOSTNAME, "fedora02"),
            (contract::ENV_USER_DATA_DIR, contract::USER_DATA_DIR),
        ] {
            assert!(env.contains(&(k.into(), json!(v))), "{k}: {env:?}");
        }
        // Nothing else changed: the original volumes are all still there, first and as they were.
        let original = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(&patched["spec"]["volumes"].as_array().unwrap()[..original.len()], &original[..]);
        // Still idempotent.
        assert!(run(&patched, InjectionMode::NativeSidecar).0.patch.is_none());
    }

    #[test]
    fn kubevirts_own_cloud_init_secrets_are_mounted_whole_into_the_sidecar() {
        use crate::annotations::{EC2_IMDSV2, METADATA_FLAVORS};
        let pod = with_kubevirt_cloud_init(fixture(
            CAT8KV,
            &[(ENABLED, "true"), (METADATA_FLAVORS, "openstack"), (EC2_IMDSV2, "required")],
        ));
        let patched = apply(&pod, &run(&pod, InjectionMode::NativeSidecar).0);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        let mounts = mounts_of(&patched);
        assert!(
            mounts.contains(&("cloudinitdisk-udata".into(), contract::USER_DATA_DIR.into())),
            "{mounts:?}"
        );
        assert!(
            mounts.contains(&("cloudinitdisk-ndata".into(), contract::NETWORK_DATA_DIR.into())),
            "{mounts:?}"
        );
        // Whole volumes: no subPath, so Secret updates reach the sidecar.
        assert!(sidecar_of(&patched).volume_mounts.unwrap().iter().all(|m| m.sub_path.is_none()));
        let env = env_of(&patched);
        assert!(env.contains(&(contract::ENV_NETWORK_DATA_DIR.into(), json!(contract::NETWORK_DATA_DIR))));
        assert!(env.contains(&(contract::ENV_EC2_IMDSV2.into(), json!("required"))));
        // No new volume but the run directory and the token.
        assert_eq!(
            patched["spec"]["volumes"].as_array().unwrap().len(),
            pod["spec"]["volumes"].as_array().unwrap().len() + 2
        );
    }

    #[test]
    fn the_cloud_init_secret_of_a_kubevirt_v1_9_pod_is_found() {
        use crate::annotations::METADATA_FLAVORS;
        let pod = fixture(V1_9_RESTRICTED, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud")]);
        let (response, _) = run(&pod, InjectionMode::NativeSidecar);
        assert!(response.warnings.is_none(), "{:?}", response.warnings);
        let patched = apply(&pod, &response);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        assert!(
            mounts_of(&patched).contains(&("cloudinitdisk-udata".into(), contract::USER_DATA_DIR.into()))
        );
    }

    #[test]
    fn without_flavours_no_user_data_is_mounted() {
        use crate::annotations::USER_DATA_SECRET;
        let pod = with_kubevirt_cloud_init(fixture(OPENSHIFT, &[(ENABLED, "true"), (USER_DATA_SECRET, "s")]));
        let (response, _) = run(&pod, InjectionMode::NativeSidecar);
        let patched = apply(&pod, &response);
        assert_eq!(
            mounts_of(&patched),
            vec![
                (contract::RUN_VOLUME.to_owned(), contract::RUN_DIR.to_owned()),
                (contract::TOKEN_VOLUME.to_owned(), contract::TOKEN_DIR.to_owned())
            ]
        );
        assert!(!env_of(&patched).iter().any(|(k, _)| k == contract::ENV_METADATA_FLAVORS));
        assert!(response.warnings.unwrap().iter().any(|w| w.contains("no effect")));
    }

    #[test]
    fn flavours_without_any_user_data_are_warned_about() {
        use crate::annotations::METADATA_FLAVORS;
        let pod = fixture(OPENSHIFT, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud")]);
        let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
        assert!(matches!(outcome, Outcome::Injected { .. }));
        assert!(response.warnings.unwrap().iter().any(|w| w.contains("without user-data")));
        let bad = fixture(OPENSHIFT, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud,azure")]);
        let (response, _) = run(&bad, InjectionMode::NativeSidecar);
        assert!(!response.allowed);
        assert!(
            response.result.message.contains(METADATA_FLAVORS)
                && response.result.message.contains("nocloud, openstack, ec2")
        );
    }

    /// A fixture as KubeVirt renders a VM with access credentials
    /// (rendervolumes.go `withAccessCredentials`): one Secret volume per
    /// credential, mounted into `compute`.
    fn with_access_credentials(mut pod: Value, secrets: &[&str]) -> Value {
        for secret in secrets {
            let volume = format!("{secret}{}", ssh_keys::VOLUME_SUFFIX);
            pod["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": volume, "secret": {"secretName": secret}}));
            pod["spec"]["containers"][0]["volumeMounts"].as_array_mut().unwrap().push(json!({
                "name": volume, "mountPath": format!("/var/run/kubevirt-private/secret/{volume}"),
                "readOnly": true}));
        }
        pod
    }

    #[test]
    fn the_ssh_key_secrets_the_vmi_webhook_recorded_reach_the_sidecar_in_order() {
        use crate::annotations::METADATA_FLAVORS;
        let pod = with_access_credentials(
            fixture(
                V1_9_RESTRICTED,
                &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud,ec2"), (ssh_keys::ANNOTATION, "laptop,ci")],
            ),
            &["ci", "root-password", "laptop"],
        );
        let (response, outcome) = run(&pod, InjectionMode::NativeSidecar);
        assert!(matches!(outcome, Outcome::Injected { .. }), "{outcome:?}");
        let patched = apply(&pod, &response);
        check_valid(&pod, &patched, InjectionMode::NativeSidecar);
        let mounts = mounts_of(&patched);
        let key_mounts: Vec<&(String, String)> =
            mounts.iter().filter(|(_, path)| path.starts_with(contract::SSH_KEYS_DIR)).collect();
        let dir = |n: usize| format!("{}/{n}", contract::SSH_KEYS_DIR);
        assert_eq!(
            key_mounts,
            [&("laptop-access-cred".to_owned(), dir(0)), &("ci-access-cred".to_owned(), dir(1))]
        );
        assert!(sidecar_of(&patched).volume_mounts.unwrap().iter().all(|m| m.read_only != Some(false)));
        assert!(
            env_of(&patched)
                .contains(&(contract::ENV_SSH_KEY_DIRS.into(), json!(format!("{},{}", dir(0), dir(1)))))
        );
        // The password Secret stays out of the sidecar.
        assert!(!mounts.iter().any(|(volume, _)| volume == "root-password-access-cred"));

        // Without flavours nothing serves keys: nothing is mounted.
        let plain = with_access_credentials(
            fixture(V1_9_RESTRICTED, &[(ENABLED, "true"), (ssh_keys::ANNOTATION, "laptop")]),
            &["laptop"],
        );
        let patched = apply(&plain, &run(&plain, InjectionMode::NativeSidecar).0);
        assert!(!env_of(&patched).iter().any(|(k, _)| k == contract::ENV_SSH_KEY_DIRS));

        // A Secret KubeVirt did not mount: refused, naming it, rather than a VM without its keys.
        let missing = with_access_credentials(
            fixture(
                V1_9_RESTRICTED,
                &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud"), (ssh_keys::ANNOTATION, "gone")],
            ),
            &["laptop"],
        );
        let (response, _) = run(&missing, InjectionMode::NativeSidecar);
        assert!(!response.allowed);
        assert!(response.result.message.contains("\"gone\""), "{}", response.result.message);
    }
}
