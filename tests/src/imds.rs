//! The IMDS as a node runs it: the real `kubevirt-imds-agent` (root, with its
//! own kubelet-like directory and bpffs), and in the pod's network namespace
//! the real `kubevirt-imds-sidecar` as KubeVirt's non-root user 107 with no
//! capabilities, in the pod's cgroup, with its socket in the pod's emptyDir.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    kubelet::{CgroupLayout, KubeletPod, Node, make_traversable},
    netns::{Netns, run},
    process::Process,
};

/// The line the agent logs once it watches for pods.
pub const AGENT_READY: &str = "kubevirt-imds agent watching for pods";
/// The sidecar's lines (`imds_sidecar::log_lines`).
pub use imds_sidecar::log_lines::{LOG_READY as SIDECAR_READY, LOG_SERVING as SIDECAR_LISTENING};

/// How long a test waits for the IMDS to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn sidecar_binary() -> PathBuf {
    crate::built_binary("IMDS_SIDECAR_BIN", "kubevirt-imds-sidecar")
}

pub fn agent_binary() -> PathBuf {
    crate::built_binary("IMDS_AGENT_BIN", "kubevirt-imds-agent")
}

/// Who the VM is.
pub struct Identity<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub vm_name: &'a str,
}

/// How the harness's bpffs mount points are named: `imds-bpffs-<pid>-…`.
pub const BPFFS_PREFIX: &str = "imds-bpffs-";

/// A private bpffs, unmounted (and every pin in it freed) on drop.
pub struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> anyhow::Result<Self> {
        // The pid in the name lets `netns::sweep_leftovers` tell a mount
        // left by a killed run from one in use.
        let dir =
            tempfile::Builder::new().prefix(&format!("{}{}-", BPFFS_PREFIX, std::process::id())).tempdir()?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir.path()))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // A process still reading the directory makes `umount` fail with
        // EBUSY; a CI run once found such a mount left behind. Detach it
        // lazily then: the pins are freed when the last user goes.
        if run(Command::new("umount").arg(self.dir.path())).is_err() {
            let _ = run(Command::new("umount").arg("--lazy").arg(self.dir.path()));
        }
    }
}

/// The node agent, with the node's directories (they outlive restarts).
pub struct Agent {
    pub node: Node,
    pub bpffs: Bpffs,
    extra: Vec<String>,
    process: Option<Process>,
}

impl Agent {
    pub fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let mut agent = Self {
            node: Node::new()?,
            bpffs: Bpffs::mount()?,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            process: None,
        };
        agent.restart()?;
        Ok(agent)
    }

    /// Starts the agent again on the same node (after [`Agent::kill9`] or
    /// [`Agent::terminate`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(agent_binary());
        command
            .arg("--kubelet-root-dir")
            .arg(self.node.root())
            .arg("--bpffs-dir")
            .arg(self.pins_dir())
            .args(["--node-name", "test-node"]);
        // Tests scan often so that pods are found quickly; a caller that
        // passes its own interval (the benchmark: production's) keeps it.
        if !self.extra.iter().any(|a| a.starts_with("--scan-interval")) {
            command.args(["--scan-interval", "50ms"]);
        }
        command.args(&self.extra).env("RUST_LOG", "info,imds_agent=debug");
        let mut process = Process::spawn("agent", command)?;
        process.wait_for_log(AGENT_READY, Duration::from_secs(10))?;
        self.process = Some(process);
        Ok(())
    }

    /// Where the agent pins (`<bpffs>/kubevirt-imds`, as in production).
    pub fn pins_dir(&self) -> PathBuf {
        self.bpffs.path().join("kubevirt-imds")
    }

    pub fn process(&mut self) -> anyhow::Result<&mut Process> {
        self.process.as_mut().context("the agent is not running")
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }

    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.process.take() {
            p.kill9()?;
        }
        Ok(())
    }

    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut p = self.process.take().context("the agent is not running")?;
        p.terminate()
    }
}

impl Drop for Agent {
    /// The agent goes before its bpffs is unmounted (fields drop in
    /// declaration order, which would unmount under a running agent).
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// The sidecar process of one pod.
pub struct Sidecar {
    process: Process,
}

impl Sidecar {
    /// Starts `kubevirt-imds-sidecar run` in `netns` as uid/gid 107 with no
    /// capabilities and no way to gain any, in `pod`'s cgroups.
    pub fn start(
        netns: &Netns,
        pod: &KubeletPod,
        id: &Identity,
        token_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_in_cgroups(netns, pod.run_dir(), &pod.cgroup_procs(), id, token_dir, extra)
    }

    /// [`Sidecar::start`] with its socket in `run_dir` but its process in
    /// the cgroups of `cgroup_procs` (another pod's, to test the agent).
    pub fn start_in_cgroups(
        netns: &Netns,
        run_dir: &Path,
        cgroup_procs: &[PathBuf],
        id: &Identity,
        token_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        make_traversable(token_dir)?;
        // Paths among the arguments (`--user-data-dir`, …) are in test
        // temporaries too: uid 107 must reach them as it would its volumes.
        for arg in extra.iter().map(Path::new).filter(|p| p.is_absolute() && p.exists()) {
            make_traversable(arg)?;
        }
        let procs: Vec<String> = cgroup_procs.iter().map(|p| p.display().to_string()).collect();
        // The shell joins the pod's cgroups before it becomes the sidecar, so
        // the agent never sees the sidecar outside its pod.
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                "for f in $IMDS_TEST_CGROUPS; do echo $$ > \"$f\" || exit 97; done; exec \"$@\"",
                "sh",
            ])
            .env("IMDS_TEST_CGROUPS", procs.join(" "))
            .args(["ip", "netns", "exec", netns.name()])
            .args(["setpriv", "--reuid=107", "--regid=107", "--clear-groups"])
            .args(["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"])
            .arg(sidecar_binary())
            .args(["run", "--namespace", id.namespace, "--service-account-name", id.service_account])
            .args(["--vm-name", id.vm_name, "--pod-name", "virt-launcher-test", "--token-dir"])
            .arg(token_dir)
            .arg("--run-dir")
            .arg(run_dir)
            .args(extra)
            .env("RUST_LOG", "info");
        Ok(Self { process: Process::spawn("sidecar", command)? })
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Agent, pod and sidecar together: what most tests need.
pub struct Imds {
    pub pod: KubeletPod,
    pub sidecar: Option<Sidecar>,
    pub agent: Agent,
    identity: (String, String, String),
    token_dir: PathBuf,
    sidecar_args: Vec<String>,
}

impl Imds {
    /// The agent and, in `pod`, the sidecar; returns once the sidecar says
    /// it serves guests (the agent plumbed the pod and probed the path).
    pub fn start(
        pod: &Netns,
        id: &Identity,
        token_dir: &Path,
        sidecar_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(pod, id, token_dir, sidecar_args, &[], CgroupLayout::SystemdV2)
    }

    pub fn start_with(
        netns: &Netns,
        id: &Identity,
        token_dir: &Path,
        sidecar_args: &[&str],
        agent_args: &[&str],
        layout: CgroupLayout,
    ) -> anyhow::Result<Self> {
        let agent = Agent::start(agent_args)?;
        let pod = KubeletPod::new(&agent.node, layout)?;
        let sidecar = Sidecar::start(netns, &pod, id, token_dir, sidecar_args)?;
        let mut imds = Self {
            pod,
            sidecar: Some(sidecar),
            agent,
            identity: (id.namespace.to_owned(), id.service_account.to_owned(), id.vm_name.to_owned()),
            token_dir: token_dir.to_owned(),
            sidecar_args: sidecar_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        imds.wait_ready()?;
        Ok(imds)
    }

    /// Waits until the (current) sidecar says it serves guests.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let sidecar = self.sidecar.as_mut().context("no sidecar running")?;
        let waited = sidecar.process().wait_for_log(SIDECAR_READY, START_TIMEOUT);
        // The agent's log as it is after the wait, where its errors are.
        waited.with_context(|| format!("agent log:\n{}", self.agent.log()))
    }

    /// Waits until the agent's log contains `needle` (attachments: e.g.
    /// `program="imds_from_guest"`).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.agent.process()?.wait_for_log(needle, timeout)
    }

    /// Waits until the agent has attached the guest's program to a TAP: its
    /// log line `attached program="imds_from_guest" …`
    /// (`imds_agent::datapath::loader`).
    pub fn wait_until_guest_attached(&mut self) -> anyhow::Result<()> {
        let needle = format!("program=\"{}\"", imds_ebpf::abi::PROG_FROM_GUEST);
        self.wait_for_log(&needle, Duration::from_secs(10))
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- agent:\n{}\n--- sidecar:\n{}",
            self.agent.log(),
            self.sidecar.as_ref().map(Sidecar::log).unwrap_or_default()
        )
    }

    /// Kills the sidecar (SIGKILL: an OOM kill looks the same).
    pub fn kill_sidecar(&mut self) -> anyhow::Result<()> {
        if let Some(mut s) = self.sidecar.take() {
            s.process().kill9()?;
        }
        Ok(())
    }

    /// Starts the sidecar again in the same pod (a container restart) and
    /// waits until it serves.
    pub fn restart_sidecar(&mut self, netns: &Netns) -> anyhow::Result<()> {
        let (namespace, service_account, vm_name) = &self.identity;
        let id = Identity { namespace, service_account, vm_name };
        let args: Vec<&str> = self.sidecar_args.iter().map(String::as_str).collect();
        self.sidecar = Some(Sidecar::start(netns, &self.pod, &id, &self.token_dir, &args)?);
        self.wait_ready()
    }

    /// The pinned counters map of this pod.
    pub fn counters_pin(&self) -> anyhow::Result<PathBuf> {
        self.map_pin(imds_ebpf::abi::MAP_COUNTERS)
    }

    pub fn flows_pin(&self) -> anyhow::Result<PathBuf> {
        self.map_pin(imds_ebpf::abi::MAP_FLOWS)
    }

    /// Where the agent pinned the pod's map `name` (its current generation).
    fn map_pin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let pod = self.agent.pins_dir().join(self.pod.uid());
        let generation = std::fs::read_dir(&pod)
            .with_context(|| format!("reading {}", pod.display()))?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("gen-"))
            .context("no generation pinned")?;
        Ok(generation.path().join(format!("map_{name}")))
    }
}

/// A namespace guest of a virt-launcher-like pod, served: a token published
/// kubelet-style, the node agent and a sidecar started with extra flags,
/// the guest's program attached.
pub struct ServedGuest {
    pub layout: crate::topology::PodLayout,
    pub volume: crate::tokens::ProjectedVolume,
    /// The token the volume holds.
    pub token: String,
    pub imds: Imds,
    _dir: tempfile::TempDir,
}

impl ServedGuest {
    pub fn start(
        binding: crate::topology::Binding,
        id: &Identity,
        sidecar_args: &[&str],
    ) -> anyhow::Result<Self> {
        crate::netns::require_root();
        let layout = crate::topology::PodLayout::build(binding, crate::topology::GuestKind::Namespace)?;
        let dir = tempfile::tempdir()?;
        let volume = crate::tokens::ProjectedVolume::new(&dir.path().join("token"))?;
        let token = crate::tokens::jwt(id.namespace, id.service_account, crate::tokens::EXP, "first");
        volume.publish(&token)?;
        let mut imds = Imds::start(&layout.pod, id, volume.dir(), sidecar_args)?;
        imds.wait_until_guest_attached()?;
        Ok(Self { layout, volume, token, imds, _dir: dir })
    }

    pub fn guest(&self) -> &crate::netns::Netns {
        self.layout.guest()
    }

    /// A counter of this pod's pinned IMDS_COUNTERS (panics when it cannot
    /// be read: a broken test set-up).
    pub fn counter(&self, name: &str) -> u64 {
        let pin = self.imds.counters_pin().expect("the pod's counters are pinned");
        crate::bpf::counter_at(&pin, name).unwrap_or_else(|e| panic!("counter {name}: {e:#}"))
    }
}
