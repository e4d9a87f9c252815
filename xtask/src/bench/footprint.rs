//! What one VM's IMDS costs on its own: the sidecar's memory and binary,
//! how long it takes from its start to serving guests, and how soon the
//! agent puts `imds_from_guest` on a new TAP. Each repetition is a fresh
//! pod on a node with no other, removed at the end.

use std::{path::Path, process::Command, time::Duration};

use imds_sidecar::log_lines::{LOG_CHANNEL_LISTENING, LOG_READY, LOG_SERVING};

use super::{
    Context as Bench,
    node::BenchNode,
    procfs::Memory,
    report::{Footprint, Report},
    stats::Summary,
};
use crate::cmd;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let mut node = BenchNode::start()?;
    let mut samples: [Vec<f64>; 10] = Default::default();
    let [channel, found, listening, ready, rss, anon, private, pss, peak, attach] = &mut samples;
    for i in 0..bench.options.repetitions() {
        let mut pod = node.add_pod()?;
        node.start_sidecar(&mut pod, bench.volume.dir(), &bench.binaries.guest_dir)?;
        pod.wait_ready(READY_TIMEOUT)?;
        let log = pod.sidecar_log();
        channel.push(pod.since_start_ms(&log, &[LOG_CHANNEL_LISTENING])?);
        found.push(pod.since_start_ms(&node.agent.log(), &["found a pod", pod.uid()])?);
        listening.push(pod.since_start_ms(&log, &[LOG_SERVING])?);
        ready.push(pod.since_start_ms(&log, &[LOG_READY])?);
        // Idle: settled after start-up, before any request.
        std::thread::sleep(Duration::from_secs(1));
        let m = Memory::read(pod.sidecar_pid()?)?;
        for (v, x) in [
            (&mut *rss, m.rss),
            (&mut *anon, m.anon),
            (&mut *private, m.private),
            (&mut *pss, m.pss),
            (&mut *peak, m.peak),
        ] {
            v.push(x);
        }
        attach.push(node.tap_to_attached(&pod, &format!("tapf{i}"))?.attach_ms);
        node.remove_pod(pod)?;
    }
    let f = &mut report.footprint;
    f.to_channel_ms = Summary::of(channel);
    f.to_found_ms = Summary::of(found);
    f.to_listening_ms = Summary::of(listening);
    f.to_ready_ms = Summary::of(ready);
    f.rss_idle = Summary::of(rss);
    f.anon_idle = Summary::of(anon);
    f.private_idle = Summary::of(private);
    f.pss_idle = Summary::of(pss);
    f.startup_peak = Summary::of(peak);
    f.attach_ms = Summary::of(attach);
    binary_sizes(&bench.binaries.sidecar, bench.scratch.path(), f)
}

fn binary_sizes(binary: &Path, scratch: &Path, f: &mut Footprint) -> anyhow::Result<()> {
    let stripped = scratch.join("kubevirt-imds-sidecar.stripped");
    std::fs::copy(binary, &stripped)?;
    cmd::run(Command::new("strip").arg(&stripped))?;
    let mib = |p: &Path| -> anyhow::Result<f64> { Ok(std::fs::metadata(p)?.len() as f64 / 1_048_576.0) };
    f.binary = Some(mib(binary)?);
    f.binary_stripped = Some(mib(&stripped)?);
    Ok(())
}
