//! The agent at scale: one node, 1, 10, 100 plumbed pods (`--pods`), each
//! with its own namespace, bridge, TAP and running sidecar. At each count:
//! the agent's CPU while it plumbs the pods just added, then its memory and
//! its idle CPU (and the sidecars') with every pod plumbed, the kernel
//! objects pinned, and how soon it attaches to a TAP that appears in one of
//! the pods.

use std::time::{Duration, Instant};

use imds_sidecar::log_lines::LOG_READY;

use super::{
    Context as Bench, bpf,
    node::{BenchNode, BenchPod},
    procfs::{Memory, cpu_ticks, ticks_per_second},
    report::{Report, ScalePoint},
    stats::Summary,
};

/// Plumbing waits: probes run one at a time, so allow for each pod.
const READY_BASE: Duration = Duration::from_secs(30);
const READY_PER_POD: Duration = Duration::from_secs(1);
/// After the last pod is ready: its probe's veth goes, the agent settles.
const SETTLE: Duration = Duration::from_secs(2);

pub fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let hz = ticks_per_second()?;
    let mut node = BenchNode::start()?;
    let agent = node.agent_pid()?;
    let mut pods: Vec<BenchPod> = Vec::new();
    let mut taps_made = 0;
    for n in bench.options.pod_counts() {
        eprintln!("bench: scale: {n} pods");
        // The namespaces first: the agent only sees a pod once its sidecar
        // listens, so the CPU below is the agent's plumbing alone.
        let mut batch = (pods.len()..n).map(|_| node.add_pod()).collect::<anyhow::Result<Vec<_>>>()?;
        let cpu_before = cpu_ticks(agent)?;
        let started = Instant::now();
        for pod in &mut batch {
            node.start_sidecar(pod, bench.volume.dir(), &bench.binaries.guest_dir)?;
        }
        let deadline = started + READY_BASE + READY_PER_POD * batch.len() as u32;
        for pod in &mut batch {
            pod.wait_ready(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))?;
        }
        let plumb_wall_s = started.elapsed().as_secs_f64();
        let plumb_cpu_s = cpu_ticks(agent)?.saturating_sub(cpu_before) as f64 / hz;
        let ready_ms = batch
            .iter()
            .map(|p| p.since_start_ms(&p.sidecar_log(), &[LOG_READY]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let plumbed = batch.len();
        pods.extend(batch);
        std::thread::sleep(SETTLE);

        // Idle, every pod plumbed: the agent's scans and heartbeats, and
        // the sidecars answering them.
        let sidecars = pods.iter_mut().map(BenchPod::sidecar_pid).collect::<anyhow::Result<Vec<_>>>()?;
        let agent_before = cpu_ticks(agent)?;
        let sidecars_before = sidecars.iter().map(|p| cpu_ticks(*p)).collect::<anyhow::Result<Vec<_>>>()?;
        let window = Instant::now();
        std::thread::sleep(bench.options.idle_window());
        let agent_after = cpu_ticks(agent)?;
        let sidecars_after = sidecars.iter().map(|p| cpu_ticks(*p)).collect::<anyhow::Result<Vec<_>>>()?;
        let idle_window_s = window.elapsed().as_secs_f64();
        let share = |ticks: u64| ticks as f64 / hz / idle_window_s * 100.0;
        let sidecar_ticks: u64 =
            sidecars_after.iter().zip(&sidecars_before).map(|(a, b)| a.saturating_sub(*b)).sum();

        let memories = sidecars.iter().map(|p| Memory::read(*p)).collect::<anyhow::Result<Vec<_>>>()?;
        let of = |pick: fn(&Memory) -> f64| Summary::of(&memories.iter().map(pick).collect::<Vec<_>>());
        let pinned = bpf::pinned_under(&node.agent.pins_dir())?;
        let agent_memory = Memory::read(agent)?;

        let mut attach_ms = Vec::new();
        let mut ip_ms = Vec::new();
        for i in 0..bench.options.tap_samples() {
            let sample = node.tap_to_attached(&pods[i % n], &format!("tapb{taps_made}"))?;
            taps_made += 1;
            attach_ms.push(sample.attach_ms);
            ip_ms.push(sample.ip_ms);
        }
        report.scale.push(ScalePoint {
            pods: n,
            plumbed,
            plumb_wall_s,
            plumb_cpu_s,
            ready_ms: Summary::of(&ready_ms),
            agent: agent_memory,
            agent_idle_cpu_pct: share(agent_after.saturating_sub(agent_before)),
            sidecars_idle_cpu_pct: share(sidecar_ticks),
            idle_window_s,
            sidecar_rss: of(|m| m.rss),
            sidecar_private: of(|m| m.private),
            sidecar_pss: of(|m| m.pss),
            pinned,
            attach_ms,
            ip_ms: Summary::of(&ip_ms),
        });
    }
    Ok(())
}
