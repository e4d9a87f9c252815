//! What the sidecar asks the kubelet for, chosen so that the pod keeps the
//! QoS class KubeVirt gave it.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::ResourceRequirements, apimachinery::pkg::api::resource::Quantity};

use crate::qos::QosClass;

/// Burstable pods (KubeVirt's default): what the sidecar has always asked for.
pub const DEFAULT_CPU_REQUEST: &str = "5m";
pub const DEFAULT_MEMORY_REQUEST: &str = "16Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "64Mi";

/// Guaranteed pods: 10m, because the sidecar idles between guest requests
/// and KubeVirt gives its own support containers the same order there
/// (container-disk 10m, guest-console-log 15m).
pub const DEFAULT_GUARANTEED_CPU: &str = "10m";
/// Guaranteed pods: the sidecar's idle RSS target is 4 MiB; a limit is a
/// hard wall (an OOM kill), so eight times that leaves room for a burst of
/// guest connections (each up to a 16 KiB request head) and the page cache
/// of the token files. KubeVirt's support containers get 40M and 60M there.
pub const DEFAULT_GUARANTEED_MEMORY: &str = "32Mi";

/// The sidecar's resources per QoS class of the pod it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarResources {
    /// For Burstable pods (KubeVirt's default): requests, and a memory
    /// limit, which cannot make a Burstable pod anything else.
    pub burstable: ResourceRequirements,
    /// For Guaranteed pods (dedicated CPUs, `guaranteed` QoS asked for):
    /// limits equal to the requests, or the pod would become Burstable and
    /// lose its pinned CPUs.
    pub guaranteed: ResourceRequirements,
}

impl SidecarResources {
    /// From quantities such as `5m`, `16Mi` (checked by the caller).
    pub fn new(burstable: Burstable<'_>, guaranteed: Guaranteed<'_>) -> Self {
        let list = |entries: &[(&str, &str)]| {
            Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let fixed = list(&[("cpu", guaranteed.cpu), ("memory", guaranteed.memory)]);
        Self {
            burstable: ResourceRequirements {
                requests: list(&[("cpu", burstable.cpu_request), ("memory", burstable.memory_request)]),
                limits: list(&[("memory", burstable.memory_limit)]),
                ..Default::default()
            },
            guaranteed: ResourceRequirements { requests: fixed.clone(), limits: fixed, ..Default::default() },
        }
    }

    /// The defaults above (the webhook's flags start from them).
    pub fn defaults() -> Self {
        Self::new(
            Burstable {
                cpu_request: DEFAULT_CPU_REQUEST,
                memory_request: DEFAULT_MEMORY_REQUEST,
                memory_limit: DEFAULT_MEMORY_LIMIT,
            },
            Guaranteed { cpu: DEFAULT_GUARANTEED_CPU, memory: DEFAULT_GUARANTEED_MEMORY },
        )
    }

    /// What to give the sidecar in a pod of `class`: nothing at all in a
    /// BestEffort pod (not a virt-launcher pod in practice, but any request
    /// would make it Burstable).
    pub fn for_class(&self, class: QosClass) -> Option<ResourceRequirements> {
        match class {
            QosClass::Guaranteed => Some(self.guaranteed.clone()),
            QosClass::Burstable => Some(self.burstable.clone()),
            QosClass::BestEffort => None,
        }
    }
}

pub struct Burstable<'a> {
    pub cpu_request: &'a str,
    pub memory_request: &'a str,
    pub memory_limit: &'a str,
}

pub struct Guaranteed<'a> {
    pub cpu: &'a str,
    pub memory: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos::qos_class;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use serde_json::json;

    fn pod(resources: serde_json::Value) -> PodSpec {
        let compute: Container =
            serde_json::from_value(json!({"name": "compute", "resources": resources})).unwrap();
        PodSpec { containers: vec![compute], ..Default::default() }
    }

    /// Every class survives adding the sidecar sized for it.
    #[test]
    fn the_sidecar_keeps_the_class_of_the_pod() {
        let resources = SidecarResources::defaults();
        let pods = [
            pod(
                json!({"requests": {"cpu": "2", "memory": "2428Mi"}, "limits": {"cpu": "2", "memory": "2428Mi"}}),
            ),
            pod(json!({"requests": {"cpu": "100m", "memory": "1294Mi"}})),
            pod(json!({})),
        ];
        for (spec, class) in
            pods.into_iter().zip([QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort])
        {
            assert_eq!(qos_class(&spec), class);
            let sidecar = Container {
                name: "kubevirt-imds".into(),
                resources: resources.for_class(class),
                ..Default::default()
            };
            let mut with_sidecar = spec.clone();
            with_sidecar.init_containers = Some(vec![sidecar]);
            assert_eq!(qos_class(&with_sidecar), class);
        }
        // And the class is what it is because of the sidecar's resources:
        // the Burstable sizing would demote a Guaranteed pod.
        let mut guaranteed = pods_guaranteed();
        guaranteed.init_containers = Some(vec![Container {
            name: "kubevirt-imds".into(),
            resources: resources.for_class(QosClass::Burstable),
            ..Default::default()
        }]);
        assert_eq!(qos_class(&guaranteed), QosClass::Burstable);
    }

    fn pods_guaranteed() -> PodSpec {
        pod(json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}))
    }
}
