//! A node as the agent finds it: the kubelet's pods directory, each pod with
//! its emptyDir volumes, and each pod's processes in cgroups named the way
//! the kubelet names them (`pkg/kubelet/cm/`), under a real cgroup v2 or v1
//! hierarchy of this machine.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use imds_common::contract;

/// How the node's kubelet names cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v2, systemd driver, containerd:
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`.
    SystemdV2,
    /// cgroup v1 (the `memory` and `pids` hierarchies), cgroupfs driver:
    /// `kubepods/besteffort/pod<uid>/<id>`.
    CgroupfsV1,
    /// cgroup v2, systemd driver, CRI-O, a Guaranteed pod:
    /// `kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope`.
    SystemdV2Guaranteed,
}

/// The kubelet's root directory (`pods/` below it).
pub struct Node {
    root: tempfile::TempDir,
}

impl Node {
    pub fn new() -> anyhow::Result<Self> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("pods"))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

/// One pod on the node.
pub struct KubeletPod {
    uid: String,
    run_dir: PathBuf,
    pod_dir: PathBuf,
    /// The pod's cgroups: (hierarchy root, path below it).
    cgroups: Vec<(PathBuf, PathBuf)>,
}

impl KubeletPod {
    /// The pod's directories and cgroups (no process yet).
    pub fn new(node: &Node, layout: CgroupLayout) -> anyhow::Result<Self> {
        let uid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?.trim().to_owned();
        let run_dir = contract::kubelet_empty_dir(node.root(), &uid, contract::RUN_VOLUME);
        std::fs::create_dir_all(&run_dir)?;
        // As the kubelet makes emptyDirs (with the pod's fsGroup): the
        // sidecar, uid 107, writes its socket there.
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o777))?;
        make_traversable(&run_dir)?;
        let container = uid.replace('-', "").chars().take(12).collect::<String>();
        let escaped = uid.replace('-', "_");
        let relative = |parts: &[String]| parts.iter().collect::<PathBuf>();
        let mut cgroups = Vec::new();
        match layout {
            CgroupLayout::SystemdV2 | CgroupLayout::SystemdV2Guaranteed => {
                let v2 = mount_point(|fstype, _| fstype == "cgroup2")?;
                let parts: Vec<String> = if layout == CgroupLayout::SystemdV2 {
                    vec![
                        "kubepods.slice".into(),
                        "kubepods-burstable.slice".into(),
                        format!("kubepods-burstable-pod{escaped}.slice"),
                        format!("cri-containerd-{container}.scope"),
                    ]
                } else {
                    vec![
                        "kubepods.slice".into(),
                        format!("kubepods-pod{escaped}.slice"),
                        format!("crio-{container}.scope"),
                    ]
                };
                cgroups.push((v2, relative(&parts)));
            }
            CgroupLayout::CgroupfsV1 => {
                for controller in ["memory", "pids"] {
                    let v1 = mount_point(|fstype, options| {
                        fstype == "cgroup" && options.split(',').any(|o| o == controller)
                    })?;
                    let parts =
                        vec!["kubepods".into(), "besteffort".into(), format!("pod{uid}"), container.clone()];
                    cgroups.push((v1, relative(&parts)));
                }
            }
        }
        for (root, path) in &cgroups {
            let cgroup = root.join(path);
            std::fs::create_dir_all(&cgroup)
                .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        }
        let pod_dir = node.root().join("pods").join(&uid);
        Ok(Self { uid, run_dir, pod_dir, cgroups })
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The pod's `kubevirt-imds-run` emptyDir.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The `cgroup.procs` files a process of the pod is written to.
    pub fn cgroup_procs(&self) -> Vec<PathBuf> {
        self.cgroups.iter().map(|(root, path)| root.join(path).join("cgroup.procs")).collect()
    }

    /// The pod's sandbox process (the "pause" container every runtime but
    /// CRI-O without an infra container starts first): a process of the
    /// pod's cgroup in its network namespace, alive for as long as the pod.
    pub fn start_sandbox(&self, netns: &crate::netns::Netns) -> anyhow::Result<crate::netns::Background> {
        let procs: Vec<String> = self.cgroup_procs().iter().map(|p| p.display().to_string()).collect();
        let script = format!(
            "for f in {}; do echo $$ > \"$f\" || exit 97; done; exec ip netns exec {} sleep 86400",
            procs.join(" "),
            netns.name()
        );
        let mut command = std::process::Command::new("sh");
        command.args(["-c", &script]);
        crate::netns::Background::spawn(command)
    }

    /// What the kubelet does once the pod's containers are gone: the
    /// volumes go, then the pod's directory.
    pub fn remove_volumes(&self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.pod_dir)?;
        Ok(())
    }
}

impl Drop for KubeletPod {
    fn drop(&mut self) {
        // Deepest first, up to the hierarchy's root: rmdir removes only
        // empty cgroups, so a level another pod still uses stays.
        for (root, path) in &self.cgroups {
            for level in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
                let _ = std::fs::remove_dir(root.join(level));
            }
        }
    }
}

/// Where a cgroup hierarchy matching `wanted(fstype, super options)` is mounted.
pub(crate) fn mount_point(wanted: impl Fn(&str, &str) -> bool) -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // "<id> <parent> <dev> <root> <mount point> <options> [optional…] - <fstype> <source> <super options>"
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mount = left.split(' ').nth(4);
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next(), right.next(), right.next().unwrap_or(""));
        if let (Some(mount), Some(fstype)) = (mount, fstype)
            && wanted(fstype, options)
        {
            return Ok(PathBuf::from(mount));
        }
    }
    bail!("this machine has no such cgroup hierarchy mounted (see /proc/self/mountinfo)")
}

/// Lets an unprivileged process reach `path`: every temporary-directory
/// ancestor of it gets `o+x` (tempfile makes them 0700).
pub fn make_traversable(path: &Path) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir();
    for dir in path.ancestors().filter(|d| d.starts_with(&tmp) && *d != tmp) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o755))?;
    }
    Ok(())
}
