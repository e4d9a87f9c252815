//! The Kubernetes Pod Security Standards (kubernetes website,
//! `content/en/docs/concepts/security/pod-security-standards.md`) as a pure
//! function of a pod's JSON: what the `baseline` and `restricted` levels of
//! Pod Security admission would refuse, one function per control, each
//! message naming the control and the field.
//!
//! As Pod Security admission does (`OverrideCheckIDs` in
//! `k8s.io/pod-security-admission/policy`), the restricted forms of the
//! Seccomp and Capabilities controls, and Volume Types, replace their
//! baseline counterparts (Seccomp, Capabilities, HostPath Volumes) at the
//! restricted level, so that one broken rule is reported once.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Baseline,
    Restricted,
    /// Restricted, with `image` volumes among the allowed types. Kubernetes
    /// 1.33 is reported to allow them (kubernetes PR #130394; the
    /// kyverno/pod-security-admission copy of `policy/check_restrictedVolumes.go`
    /// has `volume.Image != nil` among the allowed cases); not verified
    /// against an upstream release here, so [`Level::Restricted`] does not.
    RestrictedAllowingImageVolumes,
}

impl Level {
    fn restricted(self) -> bool {
        self != Level::Baseline
    }
}

type Control = fn(&Value, Level) -> Vec<String>;

const BASELINE: [Control; 12] = [
    host_process,
    host_namespaces,
    privileged_containers,
    baseline_capabilities,
    host_path_volumes,
    host_ports,
    host_probes_and_lifecycle_hooks,
    app_armor,
    se_linux,
    proc_mount_type,
    baseline_seccomp,
    sysctls,
];

const RESTRICTED: [Control; 6] = [
    volume_types,
    privilege_escalation,
    running_as_non_root,
    running_as_non_root_user,
    restricted_seccomp,
    restricted_capabilities,
];

/// Everything `pod` (a Pod as JSON) does that `level` forbids; empty when
/// Pod Security admission at that level would admit it.
pub fn violations(pod: &Value, level: Level) -> Vec<String> {
    let controls = BASELINE.iter().chain(if level.restricted() { &RESTRICTED[..] } else { &[] });
    controls.flat_map(|control| control(pod, level)).collect()
}

/// Every container, with its path: containers, initContainers (native
/// sidecars included) and ephemeralContainers.
fn containers(pod: &Value) -> Vec<(String, &Value)> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|list| items(&pod["spec"][list]).map(move |(i, c)| (format!("spec.{list}[{i}]"), c)))
        .collect()
}

fn items(array: &Value) -> impl Iterator<Item = (usize, &Value)> {
    array.as_array().into_iter().flatten().enumerate()
}

/// The pod's security context and every container's, with their paths.
fn security_contexts(pod: &Value) -> Vec<(String, &Value)> {
    let mut all = vec![("spec.securityContext".to_owned(), &pod["spec"]["securityContext"])];
    for (path, c) in containers(pod) {
        all.push((format!("{path}.securityContext"), &c["securityContext"]));
    }
    all
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

fn set(v: &Value) -> bool {
    !v.is_null() && v.as_str() != Some("")
}

// --- baseline ---------------------------------------------------------------

fn host_process(pod: &Value, _: Level) -> Vec<String> {
    security_contexts(pod)
        .into_iter()
        .filter(|(_, sc)| is_true(&sc["windowsOptions"]["hostProcess"]))
        .map(|(path, _)| format!("HostProcess: {path}.windowsOptions.hostProcess must be unset or false"))
        .collect()
}

fn host_namespaces(pod: &Value, _: Level) -> Vec<String> {
    ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|field| is_true(&pod["spec"][field]))
        .map(|field| format!("Host Namespaces: spec.{field} must be unset or false"))
        .collect()
}

fn privileged_containers(pod: &Value, _: Level) -> Vec<String> {
    containers(pod)
        .into_iter()
        .filter(|(_, c)| is_true(&c["securityContext"]["privileged"]))
        .map(|(path, _)| {
            format!("Privileged Containers: {path}.securityContext.privileged must be unset or false")
        })
        .collect()
}

const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added_capabilities_outside(pod: &Value, allowed: &[&str], control: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (path, c) in containers(pod) {
        for (i, cap) in items(&c["securityContext"]["capabilities"]["add"]) {
            if !cap.as_str().is_some_and(|cap| allowed.contains(&cap)) {
                found.push(format!(
                    "{control}: {path}.securityContext.capabilities.add[{i}] = {cap} is not one of {allowed:?}"
                ));
            }
        }
    }
    found
}

fn baseline_capabilities(pod: &Value, level: Level) -> Vec<String> {
    if level.restricted() {
        return Vec::new(); // restricted_capabilities checks a narrower list
    }
    added_capabilities_outside(pod, &BASELINE_CAPABILITIES, "Capabilities")
}

fn host_path_volumes(pod: &Value, level: Level) -> Vec<String> {
    if level.restricted() {
        return Vec::new(); // volume_types allows no hostPath either
    }
    items(&pod["spec"]["volumes"])
        .filter(|(_, v)| !v["hostPath"].is_null())
        .map(|(i, _)| format!("HostPath Volumes: spec.volumes[{i}].hostPath must be unset"))
        .collect()
}

fn host_ports(pod: &Value, _: Level) -> Vec<String> {
    let mut found = Vec::new();
    for (path, c) in containers(pod) {
        for (i, port) in items(&c["ports"]) {
            if port["hostPort"].as_i64().is_some_and(|p| p != 0) {
                found.push(format!("Host Ports: {path}.ports[{i}].hostPort must be unset or 0"));
            }
        }
    }
    found
}

fn host_probes_and_lifecycle_hooks(pod: &Value, _: Level) -> Vec<String> {
    let mut found = Vec::new();
    for (path, c) in containers(pod) {
        let handlers = [
            ("livenessProbe", &c["livenessProbe"]),
            ("readinessProbe", &c["readinessProbe"]),
            ("startupProbe", &c["startupProbe"]),
            ("lifecycle.postStart", &c["lifecycle"]["postStart"]),
            ("lifecycle.preStop", &c["lifecycle"]["preStop"]),
        ];
        for (name, handler) in handlers {
            for kind in ["httpGet", "tcpSocket"] {
                if set(&handler[kind]["host"]) {
                    found.push(format!(
                        "Host Probes / Lifecycle Hooks: {path}.{name}.{kind}.host must be unset or empty"
                    ));
                }
            }
        }
    }
    found
}

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

fn app_armor(pod: &Value, _: Level) -> Vec<String> {
    let mut found: Vec<String> = security_contexts(pod)
        .into_iter()
        .filter(|(_, sc)| {
            sc["appArmorProfile"]["type"]
                .as_str()
                .is_some_and(|t| !matches!(t, "RuntimeDefault" | "Localhost"))
        })
        .map(|(path, _)| {
            format!("AppArmor: {path}.appArmorProfile.type must be unset, RuntimeDefault or Localhost")
        })
        .collect();
    for (key, value) in pod["metadata"]["annotations"].as_object().into_iter().flatten() {
        let allowed = value.as_str().is_some_and(|v| v == "runtime/default" || v.starts_with("localhost/"));
        if key.starts_with(APPARMOR_ANNOTATION_PREFIX) && !allowed {
            found.push(format!(
                "AppArmor: metadata.annotations[{key}] = {value} must be runtime/default or localhost/*"
            ));
        }
    }
    found
}

const SELINUX_TYPES: [&str; 5] =
    ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

fn se_linux(pod: &Value, _: Level) -> Vec<String> {
    let mut found = Vec::new();
    for (path, sc) in security_contexts(pod) {
        let options = &sc["seLinuxOptions"];
        if let Some(t) = options["type"].as_str().filter(|t| !SELINUX_TYPES.contains(t)) {
            found.push(format!("SELinux: {path}.seLinuxOptions.type = {t} is not one of {SELINUX_TYPES:?}"));
        }
        for field in ["user", "role"] {
            if set(&options[field]) {
                found.push(format!("SELinux: {path}.seLinuxOptions.{field} must be unset"));
            }
        }
    }
    found
}

fn proc_mount_type(pod: &Value, _: Level) -> Vec<String> {
    containers(pod)
        .into_iter()
        .filter(|(_, c)| c["securityContext"]["procMount"].as_str().is_some_and(|m| m != "Default"))
        .map(|(path, _)| {
            format!("/proc Mount Type: {path}.securityContext.procMount must be unset or Default")
        })
        .collect()
}

fn baseline_seccomp(pod: &Value, level: Level) -> Vec<String> {
    if level.restricted() {
        return Vec::new(); // restricted_seccomp refuses Unconfined too
    }
    security_contexts(pod)
        .into_iter()
        .filter(|(_, sc)| sc["seccompProfile"]["type"] == "Unconfined")
        .map(|(path, _)| format!("Seccomp: {path}.seccompProfile.type must not be Unconfined"))
        .collect()
}

const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

fn sysctls(pod: &Value, _: Level) -> Vec<String> {
    items(&pod["spec"]["securityContext"]["sysctls"])
        .filter(|(_, s)| !s["name"].as_str().is_some_and(|name| SAFE_SYSCTLS.contains(&name)))
        .map(|(i, s)| {
            format!("Sysctls: spec.securityContext.sysctls[{i}].name = {} is not a safe sysctl", s["name"])
        })
        .collect()
}

// --- restricted --------------------------------------------------------------

const RESTRICTED_VOLUME_TYPES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn volume_types(pod: &Value, level: Level) -> Vec<String> {
    let allowed = |t: &str| {
        RESTRICTED_VOLUME_TYPES.contains(&t)
            || (t == "image" && level == Level::RestrictedAllowingImageVolumes)
    };
    let mut found = Vec::new();
    for (i, volume) in items(&pod["spec"]["volumes"]) {
        for (source, _) in volume.as_object().into_iter().flatten().filter(|(k, _)| *k != "name") {
            if !allowed(source) {
                found.push(format!("Volume Types: spec.volumes[{i}].{source} is not an allowed volume type"));
            }
        }
    }
    found
}

fn privilege_escalation(pod: &Value, _: Level) -> Vec<String> {
    containers(pod)
        .into_iter()
        .filter(|(_, c)| c["securityContext"]["allowPrivilegeEscalation"] != false)
        .map(|(path, _)| {
            format!("Privilege Escalation: {path}.securityContext.allowPrivilegeEscalation must be false")
        })
        .collect()
}

fn running_as_non_root(pod: &Value, _: Level) -> Vec<String> {
    let pod_level = is_true(&pod["spec"]["securityContext"]["runAsNonRoot"]);
    containers(pod)
        .into_iter()
        .filter(|(_, c)| {
            let own = &c["securityContext"]["runAsNonRoot"];
            !(is_true(own) || (pod_level && own.is_null()))
        })
        .map(|(path, _)| {
            format!(
                "Running as Non-root: {path}.securityContext.runAsNonRoot must be true (or unset with \
                 spec.securityContext.runAsNonRoot true)"
            )
        })
        .collect()
}

fn running_as_non_root_user(pod: &Value, _: Level) -> Vec<String> {
    security_contexts(pod)
        .into_iter()
        .filter(|(_, sc)| sc["runAsUser"] == 0)
        .map(|(path, _)| format!("Running as Non-root user: {path}.runAsUser must not be 0"))
        .collect()
}

fn restricted_seccomp(pod: &Value, _: Level) -> Vec<String> {
    let confined = |profile: &Value| matches!(profile["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
    let pod_profile = &pod["spec"]["securityContext"]["seccompProfile"];
    let mut found = Vec::new();
    if !pod_profile.is_null() && !confined(pod_profile) {
        found.push("Seccomp (restricted): spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost".into());
    }
    for (path, c) in containers(pod) {
        let own = &c["securityContext"]["seccompProfile"];
        let ok = if own.is_null() { confined(pod_profile) } else { confined(own) };
        if !ok {
            found.push(format!(
                "Seccomp (restricted): {path}.securityContext.seccompProfile.type must be RuntimeDefault or \
                 Localhost (or unset with the pod's set so)"
            ));
        }
    }
    found
}

fn restricted_capabilities(pod: &Value, _: Level) -> Vec<String> {
    let mut found = added_capabilities_outside(pod, &["NET_BIND_SERVICE"], "Capabilities (restricted)");
    for (path, c) in containers(pod) {
        let drops_all = items(&c["securityContext"]["capabilities"]["drop"]).any(|(_, cap)| cap == "ALL");
        if !drops_all {
            found.push(format!(
                "Capabilities (restricted): {path}.securityContext.capabilities.drop must contain ALL"
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The least a pod needs to pass restricted.
    fn minimal() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "minimal"},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app",
                    "image": "registry.example/app:1",
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
                }],
                "volumes": [{"name": "scratch", "emptyDir": {}}]
            }
        })
    }

    #[test]
    fn the_minimal_pod_passes_every_level() {
        for level in [Level::Baseline, Level::Restricted, Level::RestrictedAllowingImageVolumes] {
            assert_eq!(violations(&minimal(), level), Vec::<String>::new(), "{level:?}");
        }
    }

    type Break = fn(&mut Value);

    /// `(what it breaks, the change, the control named at baseline (None:
    /// allowed there), the control named at restricted, a field path the
    /// message must name)`.
    fn variants() -> Vec<(&'static str, Break, Option<&'static str>, &'static str, &'static str)> {
        vec![
            (
                "pod hostProcess",
                |p| p["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true}),
                Some("HostProcess"),
                "HostProcess",
                "spec.securityContext.windowsOptions.hostProcess",
            ),
            (
                "container hostProcess",
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["windowsOptions"] =
                        json!({"hostProcess": true})
                },
                Some("HostProcess"),
                "HostProcess",
                "spec.containers[0].securityContext.windowsOptions.hostProcess",
            ),
            (
                "hostNetwork",
                |p| p["spec"]["hostNetwork"] = json!(true),
                Some("Host Namespaces"),
                "Host Namespaces",
                "spec.hostNetwork",
            ),
            (
                "hostPID",
                |p| p["spec"]["hostPID"] = json!(true),
                Some("Host Namespaces"),
                "Host Namespaces",
                "spec.hostPID",
            ),
            (
                "hostIPC",
                |p| p["spec"]["hostIPC"] = json!(true),
                Some("Host Namespaces"),
                "Host Namespaces",
                "spec.hostIPC",
            ),
            (
                "privileged",
                |p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true),
                Some("Privileged Containers"),
                "Privileged Containers",
                "spec.containers[0].securityContext.privileged",
            ),
            (
                "SYS_ADMIN added",
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                        json!(["SYS_ADMIN"])
                },
                Some("Capabilities"),
                "Capabilities (restricted)",
                "spec.containers[0].securityContext.capabilities.add[0]",
            ),
            (
                "CHOWN added",
                |p| p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["CHOWN"]),
                None,
                "Capabilities (restricted)",
                "spec.containers[0].securityContext.capabilities.add[0]",
            ),
            (
                "ALL not dropped",
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] = json!(["NET_RAW"])
                },
                None,
                "Capabilities (restricted)",
                "spec.containers[0].securityContext.capabilities.drop",
            ),
            (
                "hostPath volume",
                |p| p["spec"]["volumes"][0] = json!({"name": "h", "hostPath": {"path": "/"}}),
                Some("HostPath Volumes"),
                "Volume Types",
                "spec.volumes[0].hostPath",
            ),
            (
                "nfs volume",
                |p| p["spec"]["volumes"][0] = json!({"name": "n", "nfs": {"server": "s", "path": "/"}}),
                None,
                "Volume Types",
                "spec.volumes[0].nfs",
            ),
            (
                "hostPort",
                |p| p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]),
                Some("Host Ports"),
                "Host Ports",
                "spec.containers[0].ports[0].hostPort",
            ),
            (
                "probe host",
                |p| {
                    p["spec"]["containers"][0]["readinessProbe"] =
                        json!({"httpGet": {"host": "10.0.0.1", "port": 80}})
                },
                Some("Host Probes / Lifecycle Hooks"),
                "Host Probes / Lifecycle Hooks",
                "spec.containers[0].readinessProbe.httpGet.host",
            ),
            (
                "lifecycle hook host",
                |p| {
                    p["spec"]["containers"][0]["lifecycle"] =
                        json!({"preStop": {"tcpSocket": {"host": "h", "port": 1}}})
                },
                Some("Host Probes / Lifecycle Hooks"),
                "Host Probes / Lifecycle Hooks",
                "spec.containers[0].lifecycle.preStop.tcpSocket.host",
            ),
            (
                "AppArmor unconfined",
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
                        json!({"type": "Unconfined"})
                },
                Some("AppArmor"),
                "AppArmor",
                "spec.containers[0].securityContext.appArmorProfile.type",
            ),
            (
                "AppArmor annotation",
                |p| {
                    p["metadata"]["annotations"] =
                        json!({"container.apparmor.security.beta.kubernetes.io/app": "unconfined"})
                },
                Some("AppArmor"),
                "AppArmor",
                "metadata.annotations[container.apparmor.security.beta.kubernetes.io/app]",
            ),
            (
                "SELinux type",
                |p| p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "virt_launcher.process"}),
                Some("SELinux"),
                "SELinux",
                "spec.securityContext.seLinuxOptions.type",
            ),
            (
                "SELinux user",
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] =
                        json!({"user": "system_u"})
                },
                Some("SELinux"),
                "SELinux",
                "spec.containers[0].securityContext.seLinuxOptions.user",
            ),
            (
                "procMount",
                |p| p["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked"),
                Some("/proc Mount Type"),
                "/proc Mount Type",
                "spec.containers[0].securityContext.procMount",
            ),
            (
                "seccomp unconfined",
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                        json!({"type": "Unconfined"})
                },
                Some("Seccomp"),
                "Seccomp (restricted)",
                "spec.containers[0].securityContext.seccompProfile.type",
            ),
            (
                "unsafe sysctl",
                |p| {
                    p["spec"]["securityContext"]["sysctls"] = json!([{"name": "kernel.msgmax", "value": "1"}])
                },
                Some("Sysctls"),
                "Sysctls",
                "spec.securityContext.sysctls[0].name",
            ),
            (
                "privilege escalation",
                |p| {
                    p["spec"]["containers"][0]["securityContext"]
                        .as_object_mut()
                        .unwrap()
                        .remove("allowPrivilegeEscalation");
                },
                None,
                "Privilege Escalation",
                "spec.containers[0].securityContext.allowPrivilegeEscalation",
            ),
            (
                "runAsNonRoot unset",
                |p| {
                    p["spec"]["securityContext"].as_object_mut().unwrap().remove("runAsNonRoot");
                },
                None,
                "Running as Non-root",
                "spec.containers[0].securityContext.runAsNonRoot",
            ),
            (
                "runAsNonRoot false on a container",
                |p| p["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false),
                None,
                "Running as Non-root",
                "spec.containers[0].securityContext.runAsNonRoot",
            ),
            (
                "runAsUser 0",
                |p| p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0),
                None,
                "Running as Non-root user",
                "spec.containers[0].securityContext.runAsUser",
            ),
            (
                "no seccomp profile",
                |p| {
                    p["spec"]["securityContext"].as_object_mut().unwrap().remove("seccompProfile");
                },
                None,
                "Seccomp (restricted)",
                "spec.containers[0].securityContext.seccompProfile.type",
            ),
        ]
    }

    fn control_of(message: &str) -> &str {
        message.split_once(": ").unwrap().0
    }

    #[test]
    fn each_variant_breaks_exactly_one_control() {
        for (what, breaks, baseline, restricted, path) in variants() {
            let mut pod = minimal();
            breaks(&mut pod);
            let found = violations(&pod, Level::Baseline);
            match baseline {
                Some(control) => {
                    assert_eq!(found.len(), 1, "{what} at baseline: {found:?}");
                    assert_eq!(control_of(&found[0]), control, "{what}: {found:?}");
                    assert!(found[0].contains(path), "{what}: {found:?} does not name {path}");
                }
                None => assert!(found.is_empty(), "{what} is allowed at baseline: {found:?}"),
            }
            for level in [Level::Restricted, Level::RestrictedAllowingImageVolumes] {
                let found = violations(&pod, level);
                assert_eq!(found.len(), 1, "{what} at {level:?}: {found:?}");
                assert_eq!(control_of(&found[0]), restricted, "{what}: {found:?}");
                assert!(found[0].contains(path), "{what}: {found:?} does not name {path}");
            }
        }
    }

    #[test]
    fn image_volumes_pass_only_where_allowed() {
        let mut pod = minimal();
        pod["spec"]["volumes"][0] =
            json!({"name": "disk", "image": {"reference": "quay.io/containerdisks/debian:12"}});
        assert!(violations(&pod, Level::Baseline).is_empty());
        assert!(violations(&pod, Level::RestrictedAllowingImageVolumes).is_empty());
        let found = violations(&pod, Level::Restricted);
        assert_eq!(found, ["Volume Types: spec.volumes[0].image is not an allowed volume type"]);
    }

    #[test]
    fn every_kind_of_container_is_checked() {
        for list in ["initContainers", "ephemeralContainers"] {
            let mut pod = minimal();
            let mut other = pod["spec"]["containers"][0].clone();
            other["securityContext"]["privileged"] = json!(true);
            pod["spec"][list] = json!([other]);
            let found = violations(&pod, Level::Baseline);
            assert_eq!(
                found,
                [format!(
                    "Privileged Containers: spec.{list}[0].securityContext.privileged must be unset or false"
                )]
            );
            // Without the pod-level profile, each container must bring its own.
            let mut pod = minimal();
            pod["spec"]["securityContext"].as_object_mut().unwrap().remove("seccompProfile");
            pod["spec"][list] = json!([pod["spec"]["containers"][0].clone()]);
            pod["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({"type": "Localhost", "localhostProfile": "p.json"});
            let found = violations(&pod, Level::Restricted);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].contains(&format!("spec.{list}[0]")), "{found:?}");
        }
    }
}
