//! The admission decision for VirtualMachineInstances, as a pure function
//! from the request to the response: a VMI that opted in and asks for a
//! cloud metadata flavour gets the SMBIOS hint that makes its image's
//! cloud-init use it ([`super::datasource_hint`]), and every VMI that opted
//! in gets its firmware UUID recorded for the sidecar's instance-id
//! ([`super::firmware_uuid`]) and the Secrets of its SSH keys
//! ([`super::ssh_keys`]).
//!
//! Only at creation: KubeVirt refuses spec changes to a VMI by anyone but
//! its own service accounts (`vmi-update-admitter.go`), and the VMI's
//! annotations reach the virt-launcher pod (`template.go`
//! `generatePodAnnotations`), where the pod webhook reads the same
//! settings.

use json_patch::Patch;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};
use serde_json::Value;

use super::{
    annotations,
    datasource_hint::{self, Smbios},
    firmware_uuid,
    mutation::Outcome,
    ssh_keys,
};

pub const GROUP: &str = "kubevirt.io";
pub const KIND: &str = "VirtualMachineInstance";

/// Answers one AdmissionReview request for a VMI.
pub fn review(request: &AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Outcome) {
    let unchanged =
        |reason: &str| (AdmissionResponse::from(request), Outcome::Unchanged { reason: reason.into() });
    if request.kind.group != GROUP || request.kind.kind != KIND || request.sub_resource.is_some() {
        return unchanged("not a VirtualMachineInstance");
    }
    if request.operation != Operation::Create {
        return unchanged("not a creation");
    }
    let Some(object) = &request.object else {
        return unchanged("no object in the request");
    };
    let empty = Default::default();
    let annotations = object.metadata.annotations.as_ref().unwrap_or(&empty);
    let labels = object.metadata.labels.as_ref().unwrap_or(&empty);
    let mut warnings = annotations::warnings(annotations);
    warnings.extend(annotations::label_warning(labels));
    let with_warnings = |mut response: AdmissionResponse| {
        if !warnings.is_empty() {
            response.warnings = Some(warnings.clone());
        }
        response
    };
    if !annotations::opted_in(labels, annotations) {
        return (
            with_warnings(AdmissionResponse::from(request)),
            Outcome::Unchanged { reason: "IMDS not enabled for this VM".into() },
        );
    }
    let refuse = |message: String| {
        (with_warnings(AdmissionResponse::from(request).deny(&message)), Outcome::Refused { message })
    };
    let settings = match annotations::settings(annotations) {
        Ok(s) => s,
        Err(e) => return refuse(e.to_string()),
    };
    // `data` holds everything of the object but its type and metadata.
    let smbios = match Smbios::read(&object.data) {
        Ok(s) => s,
        Err(message) => return refuse(message),
    };
    let name = match (&request.namespace, &object.metadata.name) {
        (Some(namespace), Some(name)) => Ok((namespace.as_str(), name.as_str())),
        // generateName: the API server names the object after admission.
        _ => Err(request.uid.as_str()),
    };
    let mut warnings = warnings.clone();
    let mut ops = Vec::new();
    let flavor = settings.datasource_hint.resolve(&settings.flavors);
    let change = flavor.map(|flavor| datasource_hint::apply(flavor, &smbios, name));
    if let Some(change) = &change {
        ops.extend(change.ops.iter().cloned());
        ops.push(datasource_hint::add(
            &["metadata", "annotations", annotations::DATASOURCE_HINT_APPLIED],
            Value::from(change.summary.clone()),
        ));
        warnings.extend(change.warning.clone());
    }
    // The UUID the guest ends up with, for the sidecar's instance-id (see
    // `firmware_uuid`). None: the pod webhook falls back to KubeVirt's
    // UUID for the VM's name.
    let final_uuid = change.as_ref().and_then(|c| c.firmware_uuid.clone()).or(smbios.uuid.clone());
    match final_uuid.as_deref().map(|u| (u, firmware_uuid::normalise(u))) {
        Some((_, Some(uuid))) => ops.push(datasource_hint::add(
            &["metadata", "annotations", firmware_uuid::ANNOTATION],
            Value::from(uuid),
        )),
        Some((text, None)) => warnings.push(format!(
            "spec.domain.firmware.uuid {text:?} is not a UUID: the IMDS serves an instance-id of its own"
        )),
        None => {}
    }
    let key_secrets = ssh_keys::from_vmi(&object.data);
    ops.extend(ssh_keys::annotation_op(annotations.get(ssh_keys::ANNOTATION), &key_secrets));
    let summary = match &change {
        Some(change) => change.summary.clone(),
        None => "no datasource hint wanted (no metadata flavour, or the hint is none)".into(),
    };
    if ops.is_empty() {
        return (
            with_warnings_of(AdmissionResponse::from(request), &warnings),
            Outcome::Unchanged { reason: summary },
        );
    }
    let mut response = match AdmissionResponse::from(request).with_patch(Patch(ops)) {
        Ok(r) => r,
        Err(e) => return refuse(format!("internal error serialising the patch: {e}")),
    };
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    match change {
        Some(change) => (response, Outcome::Hinted { summary: change.summary }),
        None => (
            response,
            Outcome::Unchanged { reason: format!("{summary}; firmware UUID and SSH key Secrets recorded") },
        ),
    }
}

fn with_warnings_of(mut response: AdmissionResponse, warnings: &[String]) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings.to_vec());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        annotations::{DATASOURCE_HINT, ENABLED, METADATA_FLAVORS},
        contract::SEED_SERIAL,
    };
    use serde_json::json;

    const FROM_VM: &str = include_str!("../../../tests/fixtures/vmi/vmi-from-vm-v1.9.json");
    const DIRECT: &str = include_str!("../../../tests/fixtures/vmi/vmi-masquerade-direct.json");

    fn request(object: Value, operation: &str) -> AdmissionRequest<DynamicObject> {
        crate::test_requests::request(
            (GROUP, "v1", KIND, "virtualmachineinstances"),
            "vm-team",
            object,
            operation,
        )
    }

    fn fixture(text: &str, annotations: &[(&str, &str)]) -> Value {
        let mut vmi: Value = serde_json::from_str(text).unwrap();
        for (k, v) in annotations {
            vmi["metadata"]["annotations"][*k] = json!(v);
        }
        vmi
    }

    fn apply(vmi: &Value, response: &AdmissionResponse) -> Value {
        let patch: Patch = serde_json::from_slice(response.patch.as_ref().expect("a patch")).unwrap();
        let mut doc = vmi.clone();
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        doc
    }

    #[test]
    fn a_vm_asking_for_nocloud_gets_the_seed_after_kubevirts_serial() {
        let vmi = fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud,ec2")]);
        let original_serial = vmi["spec"]["domain"]["firmware"]["serial"].as_str().unwrap().to_owned();
        let (response, outcome) = review(&request(vmi.clone(), "CREATE"));
        assert!(response.allowed, "{:?}", response.result);
        assert!(matches!(outcome, Outcome::Hinted { .. }), "{outcome:?}");
        let patched = apply(&vmi, &response);
        assert_eq!(
            patched["spec"]["domain"]["firmware"]["serial"],
            json!(format!("{original_serial} {SEED_SERIAL}"))
        );
        // Nothing else of the spec changes.
        let mut expected = vmi.clone();
        expected["spec"]["domain"]["firmware"]["serial"] =
            patched["spec"]["domain"]["firmware"]["serial"].clone();
        assert_eq!(patched["spec"], expected["spec"]);
        assert!(
            patched["metadata"]["annotations"][annotations::DATASOURCE_HINT_APPLIED]
                .as_str()
                .unwrap()
                .starts_with("nocloud:")
        );
        // A second pass (reinvocation) changes nothing more.
        let (again, _) = review(&request(patched.clone(), "CREATE"));
        assert_eq!(apply(&patched, &again)["spec"], patched["spec"]);
    }

    #[test]
    fn openstack_and_ec2_hints() {
        let vmi = fixture(DIRECT, &[(ENABLED, "true"), (METADATA_FLAVORS, "openstack")]);
        let patched = apply(&vmi, &review(&request(vmi.clone(), "CREATE")).0);
        assert_eq!(patched["spec"]["domain"]["chassis"]["asset"], "OpenStack Nova");
        assert!(patched["spec"]["domain"].get("firmware").is_none());

        let vmi = fixture(
            FROM_VM,
            &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud,ec2"), (DATASOURCE_HINT, "ec2")],
        );
        let patched = apply(&vmi, &review(&request(vmi.clone(), "CREATE")).0);
        let firmware = &patched["spec"]["domain"]["firmware"];
        assert!(firmware["uuid"].as_str().unwrap().starts_with("ec2"));
        assert_eq!(firmware["uuid"], firmware["serial"]);
    }

    #[test]
    fn vmis_that_did_not_ask_are_allowed_untouched() {
        for (vmi, operation) in [
            (fixture(FROM_VM, &[]), "CREATE"),
            (fixture(FROM_VM, &[(ENABLED, "True"), (METADATA_FLAVORS, "nocloud")]), "CREATE"),
            (fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud")]), "UPDATE"),
        ] {
            let (response, outcome) = review(&request(vmi, operation));
            assert!(response.allowed && response.patch.is_none(), "{outcome:?}");
            assert!(matches!(outcome, Outcome::Unchanged { .. }));
        }
    }

    /// The UUID KubeVirt gave the fixture (`spec.domain.firmware.uuid`).
    const FROM_VM_UUID: &str = "d6b1c2a4-8e3f-4b5a-9c7d-1e2f3a4b5c6d";

    #[test]
    fn every_vmi_that_opted_in_has_its_firmware_uuid_recorded_and_nothing_else_without_a_hint() {
        for annotations in [
            &[(ENABLED, "true")][..],
            &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud"), (DATASOURCE_HINT, "none")],
        ] {
            let vmi = fixture(FROM_VM, annotations);
            let (response, outcome) = review(&request(vmi.clone(), "CREATE"));
            assert!(response.allowed, "{outcome:?}");
            let patched = apply(&vmi, &response);
            assert_eq!(patched["metadata"]["annotations"][firmware_uuid::ANNOTATION], FROM_VM_UUID);
            assert_eq!(patched["spec"], vmi["spec"], "the SMBIOS changed without a hint");
            assert!(matches!(outcome, Outcome::Unchanged { .. }), "{outcome:?}");
        }
    }

    #[test]
    fn the_recorded_uuid_is_the_one_the_guest_gets() {
        let nocloud = fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud")]);
        let patched = apply(&nocloud, &review(&request(nocloud.clone(), "CREATE")).0);
        assert_eq!(patched["metadata"]["annotations"][firmware_uuid::ANNOTATION], FROM_VM_UUID);
        // EC2's hint rewrites the UUID: the recorded one follows it.
        let ec2 = fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "ec2")]);
        let patched = apply(&ec2, &review(&request(ec2.clone(), "CREATE")).0);
        let uuid = &patched["spec"]["domain"]["firmware"]["uuid"];
        assert!(uuid.as_str().unwrap().starts_with("ec2"), "{uuid}");
        assert_eq!(&patched["metadata"]["annotations"][firmware_uuid::ANNOTATION], uuid);
        // No firmware UUID at all (a VMI created directly): nothing recorded,
        // the pod webhook derives KubeVirt's UUID for the name.
        let mut direct = fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud")]);
        direct["spec"]["domain"].as_object_mut().unwrap().remove("firmware");
        let patched = apply(&direct, &review(&request(direct.clone(), "CREATE")).0);
        assert!(patched["metadata"]["annotations"].get(firmware_uuid::ANNOTATION).is_none());
    }

    #[test]
    fn malformed_settings_are_refused_naming_the_annotation() {
        for (annotation, value) in [
            (METADATA_FLAVORS, "nocloud,gce"),
            (DATASOURCE_HINT, "azure"),
            // A hint for a flavour that is not served.
            (DATASOURCE_HINT, "openstack"),
        ] {
            let vmi =
                fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud"), (annotation, value)]);
            let vmi = if annotation == METADATA_FLAVORS {
                fixture(FROM_VM, &[(ENABLED, "true"), (annotation, value)])
            } else {
                vmi
            };
            let (response, outcome) = review(&request(vmi, "CREATE"));
            assert!(!response.allowed, "{annotation}={value}");
            let Outcome::Refused { message } = outcome else { panic!("{annotation}={value}: {outcome:?}") };
            assert!(message.contains(annotation), "{message}");
        }
        let mut vmi = fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud")]);
        vmi["spec"]["domain"]["firmware"]["serial"] = json!(7);
        let (response, _) = review(&request(vmi, "CREATE"));
        assert!(!response.allowed);
    }

    #[test]
    fn the_ssh_key_secrets_are_recorded_and_a_forged_record_is_replaced() {
        let mut vmi = fixture(FROM_VM, &[(ENABLED, "true"), (METADATA_FLAVORS, "nocloud")]);
        vmi["spec"]["accessCredentials"] = json!([
            {"sshPublicKey": {"source": {"secret": {"secretName": "laptop"}},
                              "propagationMethod": {"noCloud": {}}}},
            {"userPassword": {"source": {"secret": {"secretName": "root-password"}},
                              "propagationMethod": {"qemuGuestAgent": {}}}},
        ]);
        let (response, _) = review(&request(vmi.clone(), "CREATE"));
        assert!(response.allowed, "{:?}", response.result);
        assert_eq!(apply(&vmi, &response)["metadata"]["annotations"][ssh_keys::ANNOTATION], json!("laptop"));

        // A user naming the password Secret gets the spec's truth instead.
        vmi["metadata"]["annotations"][ssh_keys::ANNOTATION] = json!("root-password");
        let (response, _) = review(&request(vmi.clone(), "CREATE"));
        assert_eq!(apply(&vmi, &response)["metadata"]["annotations"][ssh_keys::ANNOTATION], json!("laptop"));
        vmi["spec"]["accessCredentials"] = json!([]);
        let (response, _) = review(&request(vmi.clone(), "CREATE"));
        let annotations = &apply(&vmi, &response)["metadata"]["annotations"];
        assert!(annotations.get(ssh_keys::ANNOTATION).is_none(), "{annotations}");
    }
}
