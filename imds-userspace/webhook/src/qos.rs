//! A pod's Kubernetes QoS class, computed as Kubernetes does
//! (`ComputePodQOS`, kubernetes `pkg/apis/core/v1/helper/qos/qos.go`), so
//! that the sidecar can be sized to keep it: KubeVirt makes a VM with
//! dedicated CPUs Guaranteed on purpose (every container's requests equal
//! its limits, `pkg/virt-controller/services/renderresources.go`), and the
//! CPU manager pins CPUs for Guaranteed pods only.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{PodSpec, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};

use crate::quantity::{self, Nanos};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container (init containers and native sidecars included) has
    /// cpu and memory limits, and the requests equal them.
    Guaranteed,
    Burstable,
    /// No container asks for or is limited in cpu or memory.
    BestEffort,
}

/// The resources QoS looks at; others (ephemeral storage, devices) do not count.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// The QoS class of a pod with `spec`: pod-level resources alone when set,
/// else each container and init container's class (ephemeral containers do
/// not count), Burstable as soon as two differ. A quantity that does not
/// parse counts as absent (the API server would have refused the pod).
pub fn qos_class(spec: &PodSpec) -> QosClass {
    if let Some(pod_level) = &spec.resources {
        return class_of(Some(pod_level));
    }
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let mut classes = containers.map(|c| class_of(c.resources.as_ref()));
    let first = classes.next().unwrap_or(QosClass::BestEffort);
    if classes.all(|c| c == first) { first } else { QosClass::Burstable }
}

/// The class of one set of requirements. A request left unset defaults to
/// the limit: the API server's defaulting, which a pod has been through by
/// the time a webhook sees it, applied again for pods that were not.
fn class_of(resources: Option<&ResourceRequirements>) -> QosClass {
    let amount = |list: Option<&BTreeMap<String, Quantity>>, name: &str| {
        list.and_then(|l| l.get(name)).and_then(|q| quantity::parse(&q.0)).filter(|v| *v > 0)
    };
    let per_resource = QOS_RESOURCES.map(|name| {
        let limit: Option<Nanos> = amount(resources.and_then(|r| r.limits.as_ref()), name);
        let request = amount(resources.and_then(|r| r.requests.as_ref()), name).or(limit);
        match (request, limit) {
            (None, None) => QosClass::BestEffort,
            (r, l) if r == l => QosClass::Guaranteed,
            _ => QosClass::Burstable,
        }
    });
    if per_resource.iter().all(|c| *c == per_resource[0]) { per_resource[0] } else { QosClass::Burstable }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;
    use serde_json::json;

    fn container(name: &str, resources: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": name, "resources": resources})).unwrap()
    }

    fn spec(containers: Vec<Container>, init: Vec<Container>) -> PodSpec {
        PodSpec { containers, init_containers: (!init.is_empty()).then_some(init), ..Default::default() }
    }

    fn both(cpu: &str, memory: &str) -> serde_json::Value {
        json!({"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}})
    }

    #[test]
    fn requests_equal_to_limits_everywhere_is_guaranteed() {
        // KubeVirt's dedicated-CPU pod: compute, guest-console-log, a container-disk init container.
        let compute = container(
            "compute",
            json!({"requests": {"cpu": "2", "memory": "2428Mi", "devices.kubevirt.io/kvm": "1", "ephemeral-storage": "50M"},
                   "limits": {"cpu": "2", "memory": "2428Mi", "devices.kubevirt.io/kvm": "1"}}),
        );
        let console = container("guest-console-log", both("15m", "60M"));
        let disk = container("volumecontainerdisk", both("10m", "40M"));
        assert_eq!(
            qos_class(&spec(vec![compute.clone()], vec![console.clone(), disk])),
            QosClass::Guaranteed
        );
        // The same amount written differently is still equal.
        let console_written_otherwise = container(
            "guest-console-log",
            json!({"requests": {"cpu": "0.015", "memory": "60000k"}, "limits": {"cpu": "15m", "memory": "60M"}}),
        );
        assert_eq!(
            qos_class(&spec(vec![compute.clone()], vec![console_written_otherwise])),
            QosClass::Guaranteed
        );
        // Limits alone: the requests default to them.
        let limits_only = container("x", json!({"limits": {"cpu": "1", "memory": "1Gi"}}));
        assert_eq!(qos_class(&spec(vec![compute, limits_only], vec![])), QosClass::Guaranteed);
    }

    #[test]
    fn one_container_short_of_guaranteed_makes_the_pod_burstable() {
        let compute = container("compute", both("1", "1Gi"));
        let variants = [
            // Requests and a memory limit only (the sidecar before it knew QoS classes).
            container(
                "kubevirt-imds",
                json!({"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}),
            ),
            // Requests below limits.
            container(
                "x",
                json!({"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"cpu": "10m", "memory": "16Mi"}}),
            ),
            // No cpu limit.
            container(
                "x",
                json!({"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}}),
            ),
            // No resources at all.
            container("x", json!({})),
        ];
        for other in variants {
            assert_eq!(
                qos_class(&spec(vec![compute.clone()], vec![other.clone()])),
                QosClass::Burstable,
                "{other:?}"
            );
            assert_eq!(qos_class(&spec(vec![compute.clone(), other.clone()], vec![])), QosClass::Burstable);
        }
        // A pod with requests and no limits, as KubeVirt renders a VM without dedicated CPUs.
        let requests_only = container("compute", json!({"requests": {"cpu": "100m", "memory": "1294Mi"}}));
        assert_eq!(qos_class(&spec(vec![requests_only], vec![])), QosClass::Burstable);
    }

    #[test]
    fn nothing_asked_for_is_best_effort() {
        assert_eq!(qos_class(&spec(vec![container("a", json!({}))], vec![])), QosClass::BestEffort);
        // Resources QoS does not look at, and zero quantities, do not count.
        let devices = container(
            "compute",
            json!({"requests": {"devices.kubevirt.io/kvm": "1", "ephemeral-storage": "50M", "cpu": "0"},
                   "limits": {"devices.kubevirt.io/kvm": "1"}}),
        );
        assert_eq!(qos_class(&spec(vec![devices], vec![])), QosClass::BestEffort);
        // Any request at all is enough for Burstable.
        let one = container("a", json!({"requests": {"memory": "1Mi"}}));
        assert_eq!(qos_class(&spec(vec![one], vec![])), QosClass::Burstable);
    }

    #[test]
    fn pod_level_resources_decide_alone() {
        let mut pod = spec(vec![container("a", json!({"requests": {"cpu": "1"}}))], vec![]);
        pod.resources = Some(serde_json::from_value(both("2", "2Gi")).unwrap());
        assert_eq!(qos_class(&pod), QosClass::Guaranteed);
        pod.resources = Some(serde_json::from_value(json!({"requests": {"cpu": "1"}})).unwrap());
        assert_eq!(qos_class(&pod), QosClass::Burstable);
    }
}
