//! Which pod a process belongs to, from its `/proc/<pid>/cgroup`, the way
//! the kubelet names pod cgroups.
//!
//! The kubelet puts every pod under `kubepods` (Guaranteed pods directly,
//! the others under `burstable`/`besteffort`) in a cgroup named `pod<UID>`
//! (`pkg/kubelet/cm/pod_container_manager_linux.go`, `GetPodContainerName`).
//! With the systemd cgroup driver the path is converted to slices, with the
//! UID's `-` escaped to `_` (`cgroup_manager_linux.go`, `ToSystemd`):
//!
//! ```text
//! cgroupfs: /kubepods/burstable/pod1234-ab/<container id>
//! systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_ab.slice/cri-containerd-<id>.scope
//!           (CRI-O: crio-<id>.scope)
//! ```
//!
//! cgroup v2 has one line `0::<path>`, v1 one line per hierarchy
//! (`4:memory:<path>`); either names the pod.

/// Whether the contents of a `/proc/<pid>/cgroup` file put the process in
/// pod `pod_uid`'s cgroup.
pub fn belongs_to_pod(proc_cgroup: &str, pod_uid: &str) -> bool {
    !pod_uid.is_empty()
        && proc_cgroup.lines().filter_map(cgroup_path).any(|path| path_names_pod(path, pod_uid))
}

/// The path of one `/proc/<pid>/cgroup` line (`id:controllers:path`).
fn cgroup_path(line: &str) -> Option<&str> {
    let mut fields = line.splitn(3, ':');
    let (_id, _controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
    Some(path)
}

/// A path component naming the pod: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_>.slice` (systemd).
fn path_names_pod(path: &str, pod_uid: &str) -> bool {
    let escaped = pod_uid.replace('-', "_");
    path.split('/').any(|component| {
        component.strip_prefix("pod").is_some_and(|uid| uid == pod_uid)
            || component
                .strip_suffix(".slice")
                .and_then(|slice| slice.rsplit_once("-pod"))
                .is_some_and(|(parent, uid)| parent.starts_with("kubepods") && uid == escaped)
    })
}

/// A pod UID as the kubelet writes it in paths (`pods/<uid>`): a UUID.
/// Anything else found under the kubelet's directory is ignored.
pub fn is_pod_uid(name: &str) -> bool {
    name.len() == 36
        && name.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn cgroup_v2_with_the_systemd_driver() {
        let burstable = "0::/kubepods.slice/kubepods-burstable.slice/\
                         kubepods-burstable-pod0c1e7f0a_2d3b_4c5d_8e9f_0a1b2c3d4e5f.slice/\
                         cri-containerd-8a9b.scope\n";
        assert!(belongs_to_pod(burstable, UID));
        let guaranteed =
            "0::/kubepods.slice/kubepods-pod0c1e7f0a_2d3b_4c5d_8e9f_0a1b2c3d4e5f.slice/crio-77aa.scope\n";
        assert!(belongs_to_pod(guaranteed, UID));
        // Another pod, and a near miss on the escaping.
        assert!(!belongs_to_pod(&burstable.replace("0a1b2c3d4e5f", "0a1b2c3d4e50"), UID));
        assert!(!belongs_to_pod(&burstable.replace('_', "-"), UID));
    }

    #[test]
    fn cgroup_v1_with_the_cgroupfs_driver() {
        let v1 = "12:pids:/kubepods/besteffort/pod0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f/4f5e\n\
                  4:memory:/kubepods/besteffort/pod0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f/4f5e\n\
                  1:name=systemd:/kubepods/besteffort/pod0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f/4f5e\n";
        assert!(belongs_to_pod(v1, UID));
        let guaranteed_v1 = "3:cpuset:/kubepods/pod0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f/4f5e\n";
        assert!(belongs_to_pod(guaranteed_v1, UID));
    }

    #[test]
    fn processes_outside_pods_do_not_belong() {
        for text in [
            "0::/\n",
            "0::/system.slice/containerd.service\n",
            // conmon of CRI-O runs next to, not in, the pod's cgroup by default.
            "0::/system.slice/crio-conmon-1a5b.scope\n",
            // The UID as a substring of something else.
            "0::/user.slice/xpod0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f\n",
            "0::/pod0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5fx\n",
            "",
            "garbage without colons",
        ] {
            assert!(!belongs_to_pod(text, UID), "{text:?}");
        }
        assert!(!belongs_to_pod("0::/kubepods/burstable/pod/x\n", ""), "an empty UID matches nothing");
    }

    #[test]
    fn pod_uids() {
        assert!(is_pod_uid(UID));
        for bad in [
            "",
            "..",
            "0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5",
            "0c1e7f0a_2d3b_4c5d_8e9f_0a1b2c3d4e5f",
            "../../../../etc/x",
        ] {
            assert!(!is_pod_uid(bad), "{bad}");
        }
    }
}
