//! The agent's work for one pod, on a thread of its own inside the pod's
//! network namespace: plumb it, load or adopt its programs, keep them
//! attached to whatever interfaces KubeVirt creates, prove the path with a
//! probe whenever the sidecar is not yet ready, and let go when the pod is
//! gone.

use std::{
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use imds_common::{channel::PodSettings, contract, errors::chain};
use imds_ebpf::abi::{Config, Counter, IMDS_ADDR};
use tokio::{net::UnixStream, sync::watch};

use crate::{
    datapath::{
        loader::{EbpfLogLevel, PodDatapath},
        plan::{self, Role, Selector},
    },
    discovery,
    net::{
        links::{self, LinkEvents},
        sidecar_link::{self, Ensured, SidecarLink},
        sysctl, tc_filters,
    },
    netns::Netns,
    pins::PinRoot,
    probe,
    session::Session,
};

/// What every pod worker shares.
pub struct Shared {
    pub node: String,
    pub kubelet_root: PathBuf,
    pub pins: PinRoot,
    pub ebpf_log: EbpfLogLevel,
    pub probe_netns: Netns,
    pub timings: Timings,
}

#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Between looks at the sidecar (and probe retries while it is not ready).
    pub heartbeat: Duration,
    /// Deadline of one request to the sidecar, and of the probe's exchange.
    pub request_timeout: Duration,
    /// Between counter log lines (only when they changed).
    pub counters: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            counters: Duration::from_secs(60),
        }
    }
}

/// Why a worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The kubelet removed the pod's volume: unpin everything of the pod.
    PodGone,
    /// The agent is exiting (restart, upgrade): leave everything in place;
    /// the pinned programs go on serving the VM.
    AgentExit,
}

/// A running worker.
pub struct Worker {
    stop: watch::Sender<Option<Stop>>,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Starts the worker of pod `uid` in `netns`; `stream` is the sidecar's
    /// connection when the pod was found through it.
    pub fn spawn(
        uid: String,
        netns: Netns,
        stream: Option<std::os::unix::net::UnixStream>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = watch::channel(None);
        let name = format!("pod-{}", &uid[..8.min(uid.len())]);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let span = tracing::info_span!("pod", uid = %uid);
            let _entered = span.enter();
            if let Err(e) = netns.enter() {
                tracing::error!(error = %e, "cannot enter the pod's network namespace");
                return;
            }
            // The descriptor is no longer needed: the thread itself now
            // keeps the namespace alive while it works in it.
            drop(netns);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the pod's runtime");
                    return;
                }
            };
            let worker = PodWork { uid, shared, session: None, settings: None, ready: false };
            runtime.block_on(worker.run(stream, stop_rx));
        })?;
        Ok(Self { stop, thread })
    }

    pub fn stop(&self, why: Stop) {
        let _ = self.stop.send(Some(why));
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread (after [`Worker::stop`]).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Legacy tc only (TCX links go with their pins): removes the pod's
/// filters while its network namespace may still be there, since unpinning
/// the programs would not detach them.
async fn detach_legacy_filters(handle: &rtnetlink::Handle, datapath: &mut PodDatapath) {
    if !datapath.is_legacy_tc() {
        return;
    }
    let Ok(links) = links::dump(handle).await else { return };
    let Ok(filters) = tc_filters::dump(handle, &links).await else { return };
    let Ok(attached) = datapath.attached(&filters) else { return };
    let changes = plan::Changes { attach: Vec::new(), detach: attached.into_iter().collect() };
    for e in datapath.apply(&changes, &filters) {
        tracing::warn!(error = %chain(&e), "pod gone, but a filter could not be removed");
    }
}

struct PodWork {
    uid: String,
    shared: Arc<Shared>,
    session: Option<Session>,
    settings: Option<PodSettings>,
    /// The sidecar last said it was ready (no probe needed).
    ready: bool,
}

impl PodWork {
    async fn run(
        mut self,
        stream: Option<std::os::unix::net::UnixStream>,
        mut stop: watch::Receiver<Option<Stop>>,
    ) {
        if let Some(stream) = stream {
            self.connect(stream).await;
        }
        let why = match self.serve(&mut stop).await {
            Ok(why) => why,
            Err(e) => {
                tracing::error!(error = %chain(e.as_ref()), "giving up on the pod; retried on the next scan");
                return;
            }
        };
        if why == Stop::PodGone {
            match self.shared.pins.pod(&self.uid).remove() {
                Ok(()) => tracing::info!("pod gone: its programs, maps and links are unpinned"),
                Err(e) => tracing::warn!(error = %e, "pod gone, but its pins could not all be removed"),
            }
        } else {
            tracing::info!("agent exiting: the pod's data path stays in place");
        }
    }

    /// Plumbs the pod and keeps it plumbed until told to stop.
    async fn serve(
        &mut self,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<Stop, Box<dyn std::error::Error>> {
        sysctl::allow_unprivileged_ports()
            .map_err(|e| format!("setting net.ipv4.ip_unprivileged_port_start: {e}"))?;
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        // Subscribe before the first look, so nothing created in between is missed.
        let mut events = LinkEvents::subscribe()?;
        let mut counters_tick = tokio::time::interval(self.shared.timings.counters);
        let mut heartbeat = tokio::time::interval(self.shared.timings.heartbeat);
        let mut last_counters = Vec::new();
        let mut plumbing: Option<(SidecarLink, PodDatapath)> = None;
        loop {
            let stopping = *stop.borrow();
            if let Some(why) = stopping {
                if why == Stop::PodGone
                    && let Some((_, datapath)) = plumbing.as_mut()
                {
                    detach_legacy_filters(&handle, datapath).await;
                }
                return Ok(why);
            }
            let links = links::dump(&handle).await?;
            let veth_intact = plumbing.as_ref().is_some_and(|(link, _)| {
                links.iter().any(|l| l.index == link.sidecar_index && l.name == contract::SIDECAR_IF)
                    && links.iter().any(|l| l.index == link.redirect_index && l.name == contract::REDIRECT_IF)
            });
            if !veth_intact {
                plumbing = Some(self.plumb(&handle).await?);
                continue;
            }
            if let Some((_, datapath)) = plumbing.as_mut() {
                self.reconcile(&handle, datapath, &links).await;
                if !self.ready {
                    self.check_sidecar(&handle, datapath).await;
                }
            }
            tokio::select! {
                _ = stop.changed() => {}
                changed = events.changed() => {
                    if changed.is_none() {
                        return Err("the link event subscription ended".into());
                    }
                }
                _ = heartbeat.tick() => {
                    if self.ready {
                        self.check_sidecar_alive().await;
                    }
                }
                _ = counters_tick.tick() => {
                    if let Some((_, datapath)) = &plumbing
                        && let Ok(now) = datapath.counters()
                        && now != last_counters
                    {
                        log_counters(&now);
                        last_counters = now;
                    }
                }
            }
        }
    }

    /// The veth, the programs of its generation attached where the plan
    /// says, then the IMDS address and its route: by the time anything can
    /// reach the address, the pod's loopback and uplinks are guarded.
    async fn plumb(
        &mut self,
        handle: &rtnetlink::Handle,
    ) -> Result<(SidecarLink, PodDatapath), Box<dyn std::error::Error>> {
        let (link, ensured) = sidecar_link::ensure_pair(handle).await?;
        let pod_pins = self.shared.pins.pod(&self.uid);
        let generation = pod_pins.generation(link.redirect_index);
        // Programs of another generation point at a veth that is gone.
        for stale in pod_pins.generations()?.into_iter().filter(|g| *g != link.redirect_index) {
            pod_pins.generation(stale).remove()?;
            tracing::info!(generation = stale, "removed the pins of a previous veth");
        }
        let config = Config {
            redirect_ifindex: link.redirect_index,
            imds_addr: IMDS_ADDR,
            imds_port: contract::IMDS_PORT.to_be_bytes(),
            sidecar_mac: link.sidecar_mac,
        };
        let (mut datapath, fresh) = PodDatapath::open_or_load(&generation, &config, self.shared.ebpf_log)?;
        let failed = self.reconcile(handle, &mut datapath, &links::dump(handle).await?).await;
        if failed > 0 {
            // No address until every guard is on: a guest is never served
            // by a half-plumbed pod (the sidecar stays not ready).
            return Err(format!("{failed} attachment(s) failed; the IMDS address is not added").into());
        }
        sidecar_link::ensure_address(handle, &link, contract::IMDS_IP).await?;
        tracing::info!(
            veth = if ensured == Ensured::Adopted { "adopted" } else { "created" },
            programs = if fresh { "loaded" } else { "adopted" },
            pins = %generation.path().display(),
            "pod plumbed"
        );
        // A new veth means the sidecar must rebind: prove the path again.
        self.ready = false;
        Ok((link, datapath))
    }

    fn selector(&self) -> Selector {
        Selector {
            bridge: self.settings.as_ref().and_then(|s| s.bridge.clone()),
            guest_port_prefix: self
                .settings
                .as_ref()
                .map_or_else(|| "tap".to_owned(), |s| s.guest_port_prefix.clone()),
            redirect_ifname: contract::REDIRECT_IF.to_owned(),
        }
    }

    /// Makes the attachments what the plan says; returns how many changes failed.
    async fn reconcile(
        &self,
        handle: &rtnetlink::Handle,
        datapath: &mut PodDatapath,
        links: &[links::LinkSummary],
    ) -> usize {
        let wanted = plan::plan(links, &self.selector());
        // Legacy tc keeps nothing in bpffs: what is attached is what the
        // kernel lists.
        let filters = if datapath.is_legacy_tc() {
            match tc_filters::dump(handle, links).await {
                Ok(filters) => filters,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "cannot list the tc filters");
                    return 1;
                }
            }
        } else {
            Vec::new()
        };
        match datapath.attached(&filters) {
            Ok(attached) => {
                let errors = datapath.apply(&plan::diff(&attached, &wanted), &filters);
                for e in &errors {
                    tracing::warn!(error = %chain(e), "attach failed; retrying on the next link event");
                }
                errors.len()
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot tell what is attached");
                1
            }
        }
    }

    /// (Re)connects to the sidecar if needed, asks how it is, and probes
    /// the data path while it is not ready.
    async fn check_sidecar(&mut self, handle: &rtnetlink::Handle, datapath: &mut PodDatapath) {
        if self.session.is_none() {
            let socket = contract::kubelet_socket_path(&self.shared.kubelet_root, &self.uid);
            match discovery::connect(&socket, self.shared.timings.request_timeout).await {
                Ok(stream) => match stream.into_std() {
                    Ok(stream) => self.connect(stream).await,
                    Err(e) => tracing::debug!(error = %e, "sidecar connection"),
                },
                Err(e) => tracing::debug!(socket = %socket.display(), error = %e, "sidecar not reachable"),
            }
        }
        let Some(session) = self.session.as_mut() else { return };
        match session.status().await {
            Ok(status) if status.ready => {
                self.ready = true;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(error = %chain(&e), "lost the sidecar; reconnecting");
                self.session = None;
                return;
            }
        }
        let nonce = nonce();
        let started = Instant::now();
        match probe::run(
            handle,
            datapath,
            &self.shared.probe_netns,
            &nonce,
            self.shared.timings.request_timeout,
        )
        .await
        {
            Ok(()) => {
                let Some(session) = self.session.as_mut() else { return };
                match session.probe_succeeded(&nonce).await {
                    Ok(()) => {
                        tracing::info!(took = ?started.elapsed(), "the data path answered the probe: the sidecar is ready");
                        self.ready = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "the sidecar did not take the probe's result")
                    }
                }
            }
            // Usually the sidecar is not listening yet: retried every heartbeat.
            Err(e) => tracing::debug!(error = %chain(&e), "probe failed"),
        }
    }

    /// While ready, only notices a sidecar that went away (it restarted:
    /// the new process must be probed again).
    async fn check_sidecar_alive(&mut self) {
        let alive = match self.session.as_mut() {
            Some(session) => session.status().await.is_ok_and(|s| s.ready),
            None => false,
        };
        if !alive {
            tracing::info!("the sidecar went away or is not ready; probing again once it is back");
            self.session = None;
            self.ready = false;
        }
    }

    async fn connect(&mut self, stream: std::os::unix::net::UnixStream) {
        let stream = match stream.set_nonblocking(true).and_then(|()| UnixStream::from_std(stream)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the sidecar's connection");
                return;
            }
        };
        let mut session = Session::new(stream, self.shared.timings.request_timeout);
        match session.hello(&self.shared.node).await {
            Ok(settings) => {
                if self.settings.as_ref() != Some(&settings) {
                    tracing::info!(
                        namespace = %settings.namespace,
                        pod = settings.pod_name.as_deref().unwrap_or("-"),
                        vm = %settings.vm_name,
                        bridge = settings.bridge.as_deref().unwrap_or("k6t-*"),
                        "sidecar connected"
                    );
                }
                self.settings = Some(settings);
                self.session = Some(session);
            }
            Err(e) => tracing::warn!(error = %chain(&e), "the sidecar's hello failed"),
        }
    }
}

/// Unique enough to tell this probe from any other the sidecar saw.
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:x}-{:x}-{:x}", std::process::id(), now.as_nanos(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn log_counters(values: &[(Counter, u64)]) {
    let text: Vec<String> = values.iter().map(|(c, v)| format!("{}={v}", c.name())).collect();
    tracing::info!(counters = %text.join(" "), "data path counters");
}

/// Whether the pod's volume is still there.
pub fn pod_present(shared: &Shared, uid: &str) -> bool {
    discovery::still_there(&shared.kubelet_root, uid)
}

/// The program names, for a log line at start.
pub fn programs() -> Vec<&'static str> {
    Role::ALL.iter().map(|r| r.program()).collect()
}
