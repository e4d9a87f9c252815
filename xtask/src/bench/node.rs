//! A node as the per-VM figures need it: the agent as production runs it,
//! and pods laid out as virt-launcher lays them out (an uplink `eth0`, the
//! bridge `k6t-eth0` with the VM's TAP `tap0` on it), each with its
//! unprivileged sidecar in the pod's cgroup and network namespace.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use imds_sidecar::log_lines::LOG_READY;
use imds_tests::{
    imds::{Agent, Sidecar, agent_binary},
    kubelet::{CgroupLayout, KubeletPod},
    netns::Netns,
    topology::{BRIDGE, TAP},
};

use super::{ID, logs};

/// The agent's log messages (`imds_agent::datapath::loader`), each followed
/// by its first field.
const ATTACHED: &str = "attached program=";
const DETACHED: &str = "detached program=";

pub struct BenchNode {
    pub agent: Agent,
    /// Holds the node end of every pod's eth0.
    uplinks: Netns,
    pods_made: usize,
}

/// Fields drop in order: the sidecar leaves the pod's cgroup before the
/// cgroup goes, and the namespace last.
pub struct BenchPod {
    sidecar: Option<Sidecar>,
    pub kubelet: KubeletPod,
    pub netns: Netns,
    /// When the sidecar's process was started.
    started: SystemTime,
}

/// One TAP made the way virt-launcher makes it, until the agent attached to it.
#[derive(Clone, Copy, Debug)]
pub struct TapSample {
    /// From just before `ip` ran to the agent's "attached" line, by its log clock.
    pub attach_ms: f64,
    /// How long `ip` itself took (included in `attach_ms`).
    pub ip_ms: f64,
}

impl BenchNode {
    /// The agent, scanning as often as it does by default: the harness's
    /// faster scan would inflate the idle CPU and shorten start-up.
    pub fn start() -> anyhow::Result<Self> {
        let interval = default_scan_interval()?;
        Ok(Self {
            agent: Agent::start(&["--scan-interval", &interval])?,
            uplinks: Netns::new("uplinks")?,
            pods_made: 0,
        })
    }

    pub fn agent_pid(&mut self) -> anyhow::Result<u32> {
        self.agent.process()?.pid().context("the agent has no pid")
    }

    /// A pod's namespace and the kubelet's view of it, without its sidecar
    /// (the agent only finds a pod through its sidecar's socket).
    pub fn add_pod(&mut self) -> anyhow::Result<BenchPod> {
        let netns = Netns::new("scale")?;
        let peer = format!("p{}", self.pods_made);
        self.pods_made += 1;
        ip_batch(
            &netns,
            &[
                format!("link add eth0 type veth peer name {peer} netns {}", self.uplinks.name()),
                "link set eth0 up".into(),
                format!("link add {BRIDGE} type bridge"),
                format!("addr add 10.0.2.1/24 dev {BRIDGE}"),
                format!("link set {BRIDGE} up"),
                format!("tuntap add dev {TAP} mode tap"),
                format!("link set {TAP} master {BRIDGE} up"),
            ],
        )?;
        let kubelet = KubeletPod::new(&self.agent.node, CgroupLayout::SystemdV2)?;
        Ok(BenchPod { sidecar: None, kubelet, netns, started: SystemTime::now() })
    }

    /// Starts `pod`'s sidecar (returns at once; see [`BenchPod::wait_ready`]).
    /// The sidecar as the image runs it: it serves the guest helper's
    /// builds in `guest_binaries` (and so hashes them at start).
    pub fn start_sidecar(
        &self,
        pod: &mut BenchPod,
        token_dir: &Path,
        guest_binaries: &Path,
    ) -> anyhow::Result<()> {
        pod.started = SystemTime::now();
        let args = ["--guest-binaries-dir", guest_binaries.to_str().context("guest binaries path")?];
        pod.sidecar = Some(Sidecar::start(&pod.netns, &pod.kubelet, &ID, token_dir, &args)?);
        Ok(())
    }

    /// What the kubelet does to a deleted pod: its containers stop, its
    /// volumes go; returns once the agent has unpinned everything of it.
    pub fn remove_pod(&mut self, mut pod: BenchPod) -> anyhow::Result<()> {
        if let Some(mut sidecar) = pod.sidecar.take() {
            sidecar.process().kill9()?;
        }
        pod.kubelet.remove_volumes()?;
        let pins = self.agent.pins_dir().join(pod.kubelet.uid());
        super::wait_for(|| !pins.exists(), "the agent unpinning a deleted pod")
    }

    /// A TAP `tap` created and enslaved in `pod` as virt-launcher does, then
    /// deleted again once the agent attached to it (and detached).
    pub fn tap_to_attached(&mut self, pod: &BenchPod, tap: &str) -> anyhow::Result<TapSample> {
        let detached_before = self.agent.log().matches(DETACHED).count();
        let before = SystemTime::now();
        let started = Instant::now();
        // One `ip` for both steps: a process start less in the figure.
        ip_batch(
            &pod.netns,
            &[format!("tuntap add dev {tap} mode tap"), format!("link set {tap} master {BRIDGE} up")],
        )?;
        let ip_ms = started.elapsed().as_secs_f64() * 1000.0;
        let ifname = format!("ifname=\"{tap}\"");
        self.agent.process()?.wait_for_log(&ifname, Duration::from_secs(10))?;
        let attach_ms = logs::delay_ms(&self.agent.log(), &[ATTACHED, &ifname], before)?;
        pod.netns.ip(&format!("link del {tap}"))?;
        // The next sample starts on a quiet agent.
        self.agent.process()?.wait_for_log_count(DETACHED, detached_before + 1, Duration::from_secs(10))?;
        Ok(TapSample { attach_ms, ip_ms })
    }
}

impl BenchPod {
    pub fn uid(&self) -> &str {
        self.kubelet.uid()
    }

    pub fn sidecar_pid(&mut self) -> anyhow::Result<u32> {
        self.sidecar.as_mut().and_then(|s| s.process().pid()).context("no sidecar running")
    }

    pub fn sidecar_log(&self) -> String {
        self.sidecar.as_ref().map(Sidecar::log).unwrap_or_default()
    }

    /// Waits until the sidecar says the agent plumbed the pod and probed it.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let sidecar = self.sidecar.as_mut().context("no sidecar started")?;
        sidecar.process().wait_for_log(LOG_READY, timeout)
    }

    /// From the sidecar's start to the first line of `log` with every one of `needles`.
    pub fn since_start_ms(&self, log: &str, needles: &[&str]) -> anyhow::Result<f64> {
        logs::delay_ms(log, needles, self.started)
    }
}

/// `ip -n <ns> -batch -`: several changes for the cost of one process.
fn ip_batch(ns: &Netns, lines: &[String]) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ip -batch")?;
    child.stdin.take().context("ip's stdin")?.write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {} -batch failed ({}): {}\n{lines:#?}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The agent's own default `--scan-interval`, from its `--help` (defined
/// once, in the agent).
fn default_scan_interval() -> anyhow::Result<String> {
    let out = Command::new(agent_binary()).arg("-h").output().context("kubevirt-imds-agent -h")?;
    let help = String::from_utf8_lossy(&out.stdout);
    scan_interval_in_help(&help).with_context(|| format!("no default --scan-interval in:\n{help}"))
}

fn scan_interval_in_help(help: &str) -> Option<String> {
    let after = &help[help.find("--scan-interval")?..];
    let default = &after[after.find("[default: ")? + "[default: ".len()..];
    Some(default[..default.find(']')?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_scan_interval_is_read_from_the_help() {
        let help = "Options:\n      --bpffs-dir <BPFFS_DIR>  Where … [env: IMDS_BPFFS_DIR=] [default: /sys/fs/bpf/kubevirt-imds]\n      \
                    --scan-interval <SCAN_INTERVAL>  How often … [env: IMDS_SCAN_INTERVAL=50ms] [default: 250ms]\n";
        assert_eq!(scan_interval_in_help(help).as_deref(), Some("250ms"));
        assert_eq!(scan_interval_in_help("--scan-interval <X>  no default\n"), None);
    }
}
