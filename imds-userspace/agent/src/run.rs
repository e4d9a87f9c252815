//! The agent's main loop: scan the kubelet's directory, start a worker for
//! every opted-in pod that appears, stop the worker of every pod that goes.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use imds_common::{errors::chain, kernel};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::AgentArgs,
    datapath::loader::kernel_has_tcx,
    discovery::{self, LocateError},
    netns::Netns,
    pins::{PinRoot, check_bpffs},
    pod::{self, Shared, Stop, Timings, Worker},
};

/// The line logged once the agent scans for pods (the test harness waits for it).
pub const LOG_READY: &str = "kubevirt-imds agent watching for pods";
/// How long to wait for a sidecar's socket to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Between two attempts on a pod whose worker failed or could not start.
const RETRY_AFTER: Duration = Duration::from_secs(2);

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.bpffs_dir)
        .with_context(|| format!("creating {}", args.bpffs_dir.display()))?;
    check_bpffs(&args.bpffs_dir).context("the pin directory")?;
    let tcx = kernel_has_tcx();
    if !tcx {
        tracing::warn!(
            kernel = %kernel::running_release(),
            degraded = "links cannot be pinned in bpffs; the filters outlive the agent in the kernel, and a \
                        restarted agent adopts them by program id",
            "{}",
            kernel::LOG_LEGACY_TC
        );
    }
    let shared = Arc::new(Shared {
        node: args.node_name.clone(),
        kubelet_root: args.kubelet_root_dir.clone(),
        pins: PinRoot::new(args.bpffs_dir.clone()),
        ebpf_log: args.ebpf_log,
        probe_netns: Netns::create().context("creating the probe namespace")?,
        timings: Timings::default(),
    });
    forget_vanished_pods(&shared);

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let mut not_before: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(args.scan_interval);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %args.node_name,
        kubelet = %args.kubelet_root_dir.display(),
        pins = %args.bpffs_dir.display(),
        tcx,
        programs = ?pod::programs(),
        "{LOG_READY}"
    );
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: exiting; every pod keeps its data path"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: exiting; every pod keeps its data path"); break; }
            _ = tick.tick() => {}
        }
        let seen = match discovery::scan(&args.kubelet_root_dir) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kubelet's pods directory");
                continue;
            }
        };
        // Pods that went.
        let gone: Vec<String> = workers.keys().filter(|uid| !seen.contains_key(*uid)).cloned().collect();
        for uid in gone {
            if let Some(worker) = workers.remove(&uid) {
                tracing::info!(%uid, "pod gone");
                worker.stop(Stop::PodGone);
                tokio::task::spawn_blocking(move || worker.join());
            }
        }
        // Workers that gave up: try again later.
        let finished: Vec<String> =
            workers.iter().filter(|(_, w)| w.is_finished()).map(|(u, _)| u.clone()).collect();
        for uid in finished {
            if let Some(worker) = workers.remove(&uid) {
                worker.join();
                not_before.insert(uid, Instant::now() + RETRY_AFTER);
            }
        }
        // Pods that came.
        for (uid, found) in &seen {
            if workers.contains_key(uid) || not_before.get(uid).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            match start(uid, found, &shared).await {
                Ok(worker) => {
                    not_before.remove(uid);
                    workers.insert(uid.clone(), worker);
                }
                Err(e) => {
                    tracing::debug!(%uid, error = %chain(e.as_ref()), "pod not plumbed yet");
                    not_before.insert(uid.clone(), Instant::now() + RETRY_AFTER.min(args.scan_interval * 4));
                }
            }
        }
        not_before.retain(|uid, _| seen.contains_key(uid));
    }
    for worker in workers.values() {
        worker.stop(Stop::AgentExit);
    }
    for (_, worker) in workers {
        worker.join();
    }
    Ok(())
}

/// Finds the pod's namespace (through its sidecar, or through its cgroup
/// when the sidecar is down but the pod was plumbed before) and starts its
/// worker.
async fn start(
    uid: &str,
    found: &discovery::SeenPod,
    shared: &Arc<Shared>,
) -> Result<Worker, Box<dyn std::error::Error>> {
    let through_socket = match &found.socket {
        Some(socket) => Some(discovery::locate(socket, uid, CONNECT_TIMEOUT).await),
        None => None,
    };
    let (netns, stream, pid) = match through_socket {
        Some(Ok(located)) => (located.netns, Some(located.stream.into_std()?), located.pid),
        Some(Err(e @ LocateError::WrongPod { .. })) => {
            tracing::warn!(%uid, error = %e, "ignored a socket that does not belong to its pod");
            return Err(e.into());
        }
        other => {
            // A pod plumbed before (its pins are there) whose sidecar is
            // down: adopt it through any process of its cgroup.
            if shared.pins.pod(uid).generations()?.is_empty() {
                return Err(match other {
                    Some(Err(e)) => e.into(),
                    _ => "no sidecar socket yet".into(),
                });
            }
            let (netns, pid) = discovery::locate_by_cgroup(uid)?;
            (netns, None, pid)
        }
    };
    tracing::info!(%uid, pid, netns = ?netns.id().ok(), "found a pod");
    Ok(Worker::spawn(uid.to_owned(), netns, stream, shared.clone())?)
}

/// Pins of pods that went while no agent ran.
fn forget_vanished_pods(shared: &Shared) {
    match shared.pins.pods() {
        Ok(uids) => {
            for uid in uids.iter().filter(|uid| !pod::pod_present(shared, uid)) {
                match shared.pins.pod(uid).remove() {
                    Ok(()) => tracing::info!(%uid, "removed the pins of a pod that is gone"),
                    Err(e) => {
                        tracing::warn!(%uid, error = %e, "could not remove the pins of a pod that is gone")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the pinned pods"),
    }
}
