//! The VM's SSH public keys, from its `accessCredentials`, for the metadata
//! flavours.
//!
//! Which ones: `sshPublicKey` credentials propagated by `noCloud` or
//! `configDrive`, the keys KubeVirt itself puts into its cloud-init disks'
//! metadata (`pkg/cloud-init/cloud-init.go`, `isNoCloudAccessCredential`,
//! `isConfigDriveAccessCredential`): the IMDS serves the guest what its own
//! disk would. Keys propagated by `qemuGuestAgent` are not served: the
//! guest agent installs those for the users the VM names, and cloud-init
//! would install them for the image's default user, often a sudoer, which
//! the VM's owner did not ask for.
//!
//! How they get to the sidecar: KubeVirt mounts every access credential's
//! Secret into the virt-launcher pod as the volume `<secret>-access-cred`
//! (`pkg/virt-controller/services/rendervolumes.go`,
//! `withAccessCredentials`), password Secrets too, and the pod does not say
//! which is which. So the VMI webhook records the key Secrets' names in
//! [`ANNOTATION`] (KubeVirt copies it onto the pod, as it does
//! `firmware_uuid::ANNOTATION`), always overwriting what the VMI carried,
//! and the pod webhook mounts those volumes into the sidecar. The sidecar
//! serves only lines that look like public keys, whatever it is given.

use json_patch::{AddOperation, PatchOperation, RemoveOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;

/// Set by the webhook on VMIs: the `sshPublicKey` Secrets, comma separated,
/// in the order of `spec.accessCredentials`.
pub const ANNOTATION: &str = "imds.kubevirt.io/ssh-key-secrets";

/// KubeVirt's name for a credential's pod volume: `<secret>` + this.
pub const VOLUME_SUFFIX: &str = "-access-cred";

/// The key Secrets of a VMI (`data` is the object without its metadata),
/// each once, in order. Malformed entries are skipped: KubeVirt's own
/// admitter refuses them before the VMI exists.
pub fn from_vmi(data: &Value) -> Vec<String> {
    let mut secrets: Vec<String> = Vec::new();
    let credentials = data.pointer("/spec/accessCredentials").and_then(Value::as_array);
    for credential in credentials.into_iter().flatten() {
        let Some(key) = credential.get("sshPublicKey") else { continue };
        let method = key.get("propagationMethod");
        let for_cloud_init = ["noCloud", "configDrive"]
            .iter()
            .any(|m| method.and_then(|p| p.get(m)).is_some_and(|v| !v.is_null()));
        let secret = key.pointer("/source/secret/secretName").and_then(Value::as_str);
        if let (true, Some(secret)) = (for_cloud_init, secret)
            && !secret.is_empty()
            && !secrets.iter().any(|s| s == secret)
        {
            secrets.push(secret.to_owned());
        }
    }
    secrets
}

/// The patch that makes the VMI's [`ANNOTATION`] say `secrets` (removing
/// one the VMI carried when there are none), or `None` if nothing changes.
pub fn annotation_op(current: Option<&String>, secrets: &[String]) -> Option<PatchOperation> {
    let path = PointerBuf::from_tokens(["metadata", "annotations", ANNOTATION]);
    let wanted = secrets.join(",");
    match current {
        Some(value) if *value == wanted => None,
        Some(_) if secrets.is_empty() => Some(PatchOperation::Remove(RemoveOperation { path })),
        _ if secrets.is_empty() => None,
        _ => Some(PatchOperation::Add(AddOperation { path, value: Value::from(wanted) })),
    }
}

/// The Secrets the pod's [`ANNOTATION`] names.
pub fn parse(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The pod volumes holding `secrets`, in order. An error names the first
/// Secret KubeVirt did not mount: the VM would boot without its keys.
pub fn pod_volumes(spec: &PodSpec, secrets: &[String]) -> Result<Vec<String>, String> {
    secrets
        .iter()
        .map(|secret| {
            let name = format!("{secret}{VOLUME_SUFFIX}");
            let mounted = spec.volumes.iter().flatten().any(|v| {
                v.name == name && v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret)
            });
            if mounted {
                Ok(name)
            } else {
                Err(format!(
                    "annotation {ANNOTATION} names the SSH key Secret {secret:?}, but the pod has no Secret volume \
                     {name:?} for it (KubeVirt adds one per accessCredentials entry)"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn credential(secret: &str, method: Value) -> Value {
        json!({"sshPublicKey": {"source": {"secret": {"secretName": secret}}, "propagationMethod": method}})
    }

    #[test]
    fn only_keys_kubevirt_would_put_in_cloud_init_metadata() {
        let vmi = json!({"spec": {"accessCredentials": [
            credential("laptop", json!({"noCloud": {}})),
            {"userPassword": {"source": {"secret": {"secretName": "root-password"}},
                              "propagationMethod": {"qemuGuestAgent": {}}}},
            credential("agent-only", json!({"qemuGuestAgent": {"users": ["ops"]}})),
            credential("drive", json!({"configDrive": {}})),
            credential("laptop", json!({"configDrive": {}})),
            credential("", json!({"noCloud": {}})),
            {"sshPublicKey": {"propagationMethod": {"noCloud": {}}}},
            "hostile",
        ]}});
        assert_eq!(from_vmi(&vmi), ["laptop", "drive"]);
        assert!(from_vmi(&json!({"spec": {}})).is_empty());
        assert!(from_vmi(&json!({"spec": {"accessCredentials": "x"}})).is_empty());
    }

    #[test]
    fn the_annotation_always_says_what_the_spec_holds() {
        let keys = vec!["a".to_owned(), "b".to_owned()];
        assert!(matches!(annotation_op(None, &keys), Some(PatchOperation::Add(op)) if op.value == "a,b"));
        assert!(annotation_op(Some(&"a,b".into()), &keys).is_none());
        // A value the user wrote is replaced, or removed when there are no keys.
        assert!(matches!(annotation_op(Some(&"password".into()), &keys), Some(PatchOperation::Add(_))));
        assert!(matches!(annotation_op(Some(&"password".into()), &[]), Some(PatchOperation::Remove(_))));
        assert!(annotation_op(None, &[]).is_none());
        assert_eq!(parse(" a, ,b "), ["a", "b"]);
    }

    #[test]
    fn volumes_must_be_kubevirt_s_for_that_secret() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": [], "volumes": [
            {"name": "laptop-access-cred", "secret": {"secretName": "laptop"}},
            {"name": "other-access-cred", "secret": {"secretName": "not-other"}},
        ]}))
        .unwrap();
        assert_eq!(pod_volumes(&spec, &["laptop".into()]).unwrap(), ["laptop-access-cred"]);
        let err = pod_volumes(&spec, &["laptop".into(), "other".into()]).unwrap_err();
        assert!(err.contains("\"other\"") && err.contains(ANNOTATION), "{err}");
        assert!(pod_volumes(&spec, &[]).unwrap().is_empty());
    }
}
