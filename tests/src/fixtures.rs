//! The virt-launcher pods of `tests/fixtures/` (where they come from: its
//! README), as the webhook's tests feed them.

use serde_json::{Value, json};

pub struct LauncherPod {
    pub file: &'static str,
    pub json: &'static str,
    /// The VM's name, as the webhook reads it from the pod.
    pub vm: &'static str,
}

pub const OPENSHIFT: LauncherPod = LauncherPod {
    file: "virt-launcher-pod-openshift.json",
    json: include_str!("../fixtures/virt-launcher-pod-openshift.json"),
    vm: "fedora02",
};
pub const OPENSHIFT_CAT8KV: LauncherPod = LauncherPod {
    file: "virt-launcher-pod-openshift-cat8kv.json",
    json: include_str!("../fixtures/virt-launcher-pod-openshift-cat8kv.json"),
    vm: "cat8kv-01",
};
pub const V1_9_MASQUERADE: LauncherPod = LauncherPod {
    file: "virt-launcher-v1.9-masquerade.json",
    json: include_str!("../fixtures/virt-launcher-v1.9-masquerade.json"),
    vm: "fedora-imds",
};
pub const V1_9_RESTRICTED: LauncherPod = LauncherPod {
    file: "virt-launcher-v1.9-restricted.json",
    json: include_str!("../fixtures/virt-launcher-v1.9-restricted.json"),
    vm: "rhel9-db",
};
pub const V1_9_DEDICATED_CPU: LauncherPod = LauncherPod {
    file: "virt-launcher-v1.9-dedicated-cpu.json",
    json: include_str!("../fixtures/virt-launcher-v1.9-dedicated-cpu.json"),
    vm: "latency-01",
};
pub const V1_9_BRIDGE: LauncherPod = LauncherPod {
    file: "virt-launcher-v1.9-bridge.json",
    json: include_str!("../fixtures/virt-launcher-v1.9-bridge.json"),
    vm: "web-bridge",
};
pub const V1_9_MIGRATION_TARGET: LauncherPod = LauncherPod {
    file: "virt-launcher-v1.9-migration-target.json",
    json: include_str!("../fixtures/virt-launcher-v1.9-migration-target.json"),
    vm: "fedora-imds",
};

pub const LAUNCHER_PODS: [LauncherPod; 7] = [
    OPENSHIFT,
    OPENSHIFT_CAT8KV,
    V1_9_MASQUERADE,
    V1_9_RESTRICTED,
    V1_9_DEDICATED_CPU,
    V1_9_BRIDGE,
    V1_9_MIGRATION_TARGET,
];

impl LauncherPod {
    /// The pod as KubeVirt created it.
    pub fn pod(&self) -> Value {
        serde_json::from_str(self.json).unwrap_or_else(|e| panic!("{}: {e}", self.file))
    }

    /// The pod of a VM that asked for the IMDS.
    pub fn enabled(&self) -> Value {
        let mut pod = self.pod();
        pod["metadata"]["annotations"][imds_webhook::annotations::ENABLED] = json!("true");
        pod
    }
}
