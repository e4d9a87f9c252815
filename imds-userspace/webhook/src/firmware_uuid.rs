//! The VM's firmware UUID, which the IMDS serves as its instance-id (and
//! OpenStack's `uuid`), as KubeVirt's own cloud-init disks do
//! (`pkg/cloud-init/cloud-init.go`, `cloudInitUUIDFromVMI`): a VM that moves
//! from KubeVirt's NoCloud disk to the IMDS keeps its instance-id, and
//! cloud-init does not run first boot again.
//!
//! The pod does not carry the UUID; the VMI does (`spec.domain.firmware.uuid`,
//! set by KubeVirt for every VM). So the VMI webhook records it in the
//! annotation [`ANNOTATION`], KubeVirt copies VMI annotations onto the
//! virt-launcher pod (`pkg/virt-controller/services/template.go`,
//! `filterVMIAnnotationsForPod`), and the pod webhook hands it to the
//! sidecar. A pod without it (the VMI webhook not installed, or a VMI
//! created before it was) gets the UUID KubeVirt's VM controller gives a VM
//! without one: [`legacy`].

/// Set by the webhook on VMIs: the firmware UUID the IMDS serves.
pub const ANNOTATION: &str = "imds.kubevirt.io/firmware-uuid";

/// `CalculateLegacyUUID` of KubeVirt's `pkg/virt-controller/watch/vm/firmware.go`:
/// a UUIDv5 (SHA-1) of the VM's name in this namespace.
const KUBEVIRT_FIRMWARE_NAMESPACE: uuid::Uuid = uuid::uuid!("6a1a24a1-4061-4607-8bf4-a3963d0c5895");

/// The firmware UUID KubeVirt's VM controller gives VM `name` when its
/// template has none.
pub fn legacy(name: &str) -> String {
    uuid::Uuid::new_v5(&KUBEVIRT_FIRMWARE_NAMESPACE, name.as_bytes()).hyphenated().to_string()
}

/// `text` as KubeVirt writes a UUID (lower-case, hyphenated), or `None` if
/// it is not one.
pub fn normalise(text: &str) -> Option<String> {
    uuid::Uuid::try_parse(text.trim()).ok().map(|u| u.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_is_kubevirt_s_uuid_v5_of_the_name() {
        // Python's uuid.uuid5(UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895"),
        // "fedora-42"): the RFC 4122 algorithm Go's uuid.NewSHA1 implements.
        assert_eq!(legacy("fedora-42"), "5e4ecff7-2e97-5584-b3fd-d5a73bdaa195");
        assert_ne!(legacy("fedora-43"), legacy("fedora-42"));
    }

    #[test]
    fn only_uuids_pass() {
        assert_eq!(
            normalise(" D6B1C2A4-8E3F-4B5A-9C7D-1E2F3A4B5C6D ").as_deref(),
            Some("d6b1c2a4-8e3f-4b5a-9c7d-1e2f3a4b5c6d")
        );
        for bad in
            ["", "fedora-42.vm-team", "d6b1c2a4-8e3f-4b5a-9c7d", "d6b1c2a4-8e3f-4b5a-9c7d-1e2f3a4b5c6d-x"]
        {
            assert_eq!(normalise(bad), None, "{bad:?}");
        }
    }
}
