//! `kubevirt-imds-sidecar run`: serve this pod's VM. The node agent does
//! all the plumbing; this process only listens, on the channel socket for
//! the agent and the startup probe, and on the agent's veth end for guests.
//! It creates no network state, so on SIGTERM there is only the socket
//! file to remove.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use imds_common::{
    channel::{PROTOCOL, PodSettings},
    contract::{IMDS_IP, IMDS_PORT, SIDECAR_IF, SOCKET_NAME},
    errors::chain,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    api,
    channel_server::{self, ChannelLimits},
    cli::RunArgs,
    interface::{InterfaceIndex, SYSFS_NET},
    listen_loop::{ListenLoop, Timing},
    log_lines,
    readiness::SharedReadiness,
    request_tally, token_watch,
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // First, so that a SIGTERM during start-up is still a clean exit.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = %args.api.namespace,
        pod = args.pod_name.as_deref().unwrap_or("-"),
        vm = %args.api.vm_name,
        service_account = %args.api.service_account_name,
        "kubevirt-imds sidecar starting"
    );
    let state = args.api.state();
    for file in state.tokens.files() {
        if let Err(e) = file.read() {
            tracing::warn!(error = %chain(&e), "token not readable yet; it is answered with 503 until it is");
        }
    }
    let _watch = token_watch::start_or_warn(&state.tokens);

    let readiness = SharedReadiness::default();
    let socket = args.run_dir.join(SOCKET_NAME);
    let channel = channel_server::bind(&socket)
        .with_context(|| format!("listening on the channel socket {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "{}", log_lines::LOG_CHANNEL_LISTENING);
    let _socket_file = RemoveOnDrop(socket);

    let stop = CancellationToken::new();
    let channel = tokio::spawn(channel_server::serve(
        channel,
        pod_settings(&args),
        readiness.clone(),
        ChannelLimits::default(),
        stop.clone(),
    ));
    let listen = ListenLoop {
        interface: InterfaceIndex::new(Path::new(SYSFS_NET), SIDECAR_IF),
        device: SIDECAR_IF.to_owned(),
        addr: SocketAddrV4::new(IMDS_IP, IMDS_PORT),
        hop_limit: args.hop_limit,
        app: request_tally::Tally::new(api::Api::new(Arc::new(state)), readiness.clone()),
        limits: args.api.limits(),
        readiness,
        timing: Timing::default(),
    };
    let listen = listen.run(stop.clone());
    tokio::pin!(listen);

    let (outcome, listen_ended) = tokio::select! {
        ended = &mut listen => (ended.context("serving the IMDS"), true),
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); (Ok(()), false) }
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); (Ok(()), false) }
    };
    stop.cancel();
    if !listen_ended {
        // Lets in-flight requests finish (up to the drain timeout).
        let _ = listen.await;
    }
    let _ = channel.await;
    outcome
}

/// What the agent needs from this pod's settings.
fn pod_settings(args: &RunArgs) -> PodSettings {
    PodSettings {
        protocol: PROTOCOL,
        bridge: args.bridge.clone(),
        guest_port_prefix: args.guest_port_prefix.clone(),
        namespace: args.api.namespace.clone(),
        pod_name: args.pod_name.clone(),
        vm_name: args.api.vm_name.clone(),
    }
}

/// The channel socket's file, removed however `run` ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => tracing::debug!(socket = %self.0.display(), "removed the channel socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.0.display(), error = %e, "could not remove the channel socket")
            }
        }
    }
}
