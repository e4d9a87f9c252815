//! The validating webhook on VirtualMachines and VirtualMachineInstances,
//! as a pure function from the request to the response: where the person
//! who wrote the VM is, at `kubectl apply` time. virt-launcher pods are
//! created by KubeVirt's controller, so whatever the pod webhook says about
//! them reaches no one; here a malformed `imds.kubevirt.io/*` annotation,
//! or a near miss of the opt-in (`"True"`, `"yes"`, `" true"`), is refused
//! with a message naming the key and the expected form. The pod webhook
//! stays the backstop (this one may be down: `failurePolicy: Ignore`).

use std::collections::BTreeMap;

use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};
use serde_json::Value;

use super::{annotations, mutation::Outcome};

pub const GROUP: &str = "kubevirt.io";

/// Answers one AdmissionReview request for a VM or VMI.
pub fn review(request: &AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Outcome) {
    let allow = |reason: &str, warnings: Vec<String>| {
        let mut response = AdmissionResponse::from(request);
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        (response, Outcome::Unchanged { reason: reason.into() })
    };
    if request.kind.group != GROUP || request.sub_resource.is_some() {
        return allow("not a KubeVirt VM", Vec::new());
    }
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return allow("not a creation or update", Vec::new());
    }
    let Some(object) = &request.object else {
        return allow("no object in the request", Vec::new());
    };
    let mut warnings = Vec::new();
    let (labels, annotations, place) = match request.kind.kind.as_str() {
        "VirtualMachine" => {
            let own = object.metadata.labels.as_ref();
            if own.is_some_and(|l| l.contains_key(annotations::ENABLED)) {
                warnings.push(format!(
                    "the label {} is on the VirtualMachine itself, where it does nothing: put it on \
                     spec.template.metadata.labels",
                    annotations::ENABLED
                ));
            }
            let template = object.data.pointer("/spec/template/metadata");
            (
                strings(template.and_then(|m| m.get("labels"))),
                strings(template.and_then(|m| m.get("annotations"))),
                "spec.template.metadata",
            )
        }
        "VirtualMachineInstance" => (
            object.metadata.labels.clone().unwrap_or_default(),
            object.metadata.annotations.clone().unwrap_or_default(),
            "metadata",
        ),
        _ => return allow("not a VirtualMachine or VirtualMachineInstance", Vec::new()),
    };
    match check(&labels, &annotations) {
        Err(message) => {
            let message = format!("{place}: {message}");
            let mut response = AdmissionResponse::from(request).deny(&message);
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            (response, Outcome::Refused { message })
        }
        Ok(more) => {
            warnings.extend(more);
            allow("the imds.kubevirt.io settings are valid", warnings)
        }
    }
}

/// The refusal for what is wrong, or the warnings for what is merely odd.
pub fn check(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    for (kind, map) in [("label", labels), ("annotation", annotations)] {
        if let Some(value) = map.get(annotations::ENABLED)
            && value != "true"
            && value != "false"
        {
            return Err(format!(
                "{kind} {} is {value:?}: the opt-in is exactly \"true\" (or \"false\", or no {kind})",
                annotations::ENABLED
            ));
        }
    }
    let mut warnings = annotations::warnings(annotations);
    if annotations::opted_in(labels, annotations) {
        annotations::settings(annotations).map_err(|e| e.to_string())?;
    } else if annotations.keys().any(|k| k.starts_with(annotations::PREFIX) && k != annotations::ENABLED) {
        warnings.push(format!(
            "the {}* annotations do nothing without the label {}: \"true\"",
            annotations::PREFIX,
            annotations::ENABLED
        ));
    }
    Ok(warnings)
}

/// A JSON object's string values (KubeVirt's types allow nothing else; the
/// API server refuses the rest after us).
fn strings(map: Option<&Value>) -> BTreeMap<String, String> {
    map.and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{ENABLED, METADATA_FLAVORS, TOKEN_AUDIENCES, TOKEN_EXPIRATION_SECONDS};
    use serde_json::json;

    const CIRROS: &str = include_str!("../../../tests/fixtures/vm/vm-cirros.json");

    fn request(kind: &str, object: Value, operation: &str) -> AdmissionRequest<DynamicObject> {
        let resource = if kind == "VirtualMachine" { "virtualmachines" } else { "virtualmachineinstances" };
        crate::test_requests::request((GROUP, "v1", kind, resource), "vm-team", object, operation)
    }

    fn vm(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
        let mut vm: Value = serde_json::from_str(CIRROS).unwrap();
        for (k, v) in labels {
            vm["spec"]["template"]["metadata"]["labels"][*k] = json!(v);
        }
        for (k, v) in annotations {
            vm["spec"]["template"]["metadata"]["annotations"][*k] = json!(v);
        }
        vm
    }

    #[test]
    fn good_vms_are_allowed() {
        for vm in [
            vm(&[], &[]),
            vm(&[(ENABLED, "true")], &[]),
            vm(
                &[(ENABLED, "true")],
                &[(METADATA_FLAVORS, "nocloud,ec2"), (TOKEN_EXPIRATION_SECONDS, "7200")],
            ),
            vm(&[(ENABLED, "false")], &[]),
        ] {
            for operation in ["CREATE", "UPDATE"] {
                let (response, outcome) = review(&request("VirtualMachine", vm.clone(), operation));
                assert!(response.allowed, "{outcome:?}");
            }
        }
    }

    #[test]
    fn near_misses_of_the_opt_in_are_refused_naming_the_key() {
        for value in ["True", "yes", " true", "1", "on", ""] {
            for (labels, annotations) in [(vec![(ENABLED, value)], vec![]), (vec![], vec![(ENABLED, value)])]
            {
                let (response, _) = review(&request("VirtualMachine", vm(&labels, &annotations), "CREATE"));
                assert!(!response.allowed, "{value:?}");
                let message = &response.result.message;
                assert!(message.contains(ENABLED) && message.contains("exactly \"true\""), "{message}");
                assert!(message.starts_with("spec.template.metadata"), "{message}");
            }
        }
    }

    #[test]
    fn each_malformed_setting_is_refused_naming_its_key() {
        for (key, value) in [
            (TOKEN_EXPIRATION_SECONDS, "soon"),
            (TOKEN_EXPIRATION_SECONDS, "60"),
            (METADATA_FLAVORS, "nocloud,gce"),
            (TOKEN_AUDIENCES, "a,,b\u{7}"),
            (crate::annotations::DEFAULT_TOKEN, "no"),
            (crate::annotations::EC2_IMDSV2, "always"),
            (crate::annotations::DATASOURCE_HINT, "azure"),
        ] {
            let (response, _) =
                review(&request("VirtualMachine", vm(&[(ENABLED, "true")], &[(key, value)]), "CREATE"));
            assert!(!response.allowed, "{key}={value:?}");
            assert!(response.result.message.contains(key), "{key}: {}", response.result.message);
        }
    }

    #[test]
    fn vmis_are_checked_on_their_own_metadata() {
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "labels": {ENABLED: "yes"}}, "spec": {"domain": {}}});
        let (response, _) = review(&request("VirtualMachineInstance", vmi, "CREATE"));
        assert!(!response.allowed);
        assert!(response.result.message.starts_with("metadata: label"), "{}", response.result.message);
    }

    #[test]
    fn mistakes_that_do_no_harm_are_warned_about() {
        let mut misplaced = vm(&[], &[]);
        misplaced["metadata"]["labels"] = json!({ENABLED: "true"});
        let (response, _) = review(&request("VirtualMachine", misplaced, "CREATE"));
        assert!(response.allowed);
        let w = response.warnings.unwrap_or_default();
        assert!(w.iter().any(|w| w.contains("spec.template.metadata.labels")), "{w:?}");
        let (response, _) =
            review(&request("VirtualMachine", vm(&[], &[(METADATA_FLAVORS, "nocloud")]), "CREATE"));
        assert!(response.allowed);
        assert!(
            response.warnings.unwrap_or_default().iter().any(|w| w.contains("do nothing without the label"))
        );
    }
}
