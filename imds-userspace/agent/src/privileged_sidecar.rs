//! `kubevirt-imds sidecar`: sets up the veth, serves the API, then keeps the
//! tc programs attached to whatever bridges and TAPs KubeVirt creates.
//!
//! Order matters: the server is answering (checked with a real request)
//! before the first program is attached, so a guest is never redirected to
//! nothing; on SIGTERM the programs go first, then the server, then the veth.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use imds_ebpf::abi::{Config, IMDS_ADDR};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    datapath::{
        loader::Datapath,
        plan::{self, Selector},
    },
    errors::chain,
    http_server,
    net::{REDIRECT_IF, SIDECAR_IF, links, sidecar_link},
};
use clap::Args;
use imds_sidecar::config::ApiArgs;
use imds_sidecar::{
    api::{self, ImdsState},
    listener, probe,
};

use crate::contract;

/// Serve the IMDS to the VM of this virt-launcher pod.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    /// This pod's name, for log lines (downward API).
    #[arg(long, env = contract::ENV_POD_NAME)]
    pub pod_name: Option<String>,

    /// Serve only the VM behind this bridge instead of every `k6t-*` bridge.
    #[arg(long, env = contract::ENV_BRIDGE_NAME, value_parser = interface_name)]
    pub bridge: Option<String>,

    /// Bridge ports whose names start with this are the VM's TAP devices.
    #[arg(long, env = "IMDS_GUEST_PORT_PREFIX", default_value = "tap", value_parser = interface_name)]
    pub guest_port_prefix: String,

    /// Verbosity of the eBPF programs' own log messages.
    #[arg(long, env = "IMDS_EBPF_LOG", value_enum, default_value_t = crate::datapath::loader::EbpfLogLevel::Off)]
    pub ebpf_log: crate::datapath::loader::EbpfLogLevel,
}

fn interface_name(s: &str) -> Result<String, String> {
    contract::check_interface_name(s).map(|()| s.to_owned()).map_err(str::to_owned)
}

pub const IMDS_PORT: u16 = 80;
const COUNTER_LOG_INTERVAL: Duration = Duration::from_secs(60);

pub async fn run(args: SidecarArgs) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = %args.api.namespace,
        pod = args.pod_name.as_deref().unwrap_or("-"),
        vm = %args.api.vm_name,
        service_account = %args.api.service_account_name,
        "kubevirt-imds sidecar starting"
    );
    let imds_ip = Ipv4Addr::from(IMDS_ADDR);
    let state = args.api.state();
    for file in state.tokens.files() {
        if let Err(e) = file.read() {
            tracing::warn!(error = %chain(&e), "token not readable yet; it is answered with 503 until it is");
        }
    }

    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    sidecar_link::remove(&handle).await.context("removing a previous run's leftovers")?;
    let result = serve(&args, &handle, imds_ip, state).await;
    if let Err(e) = sidecar_link::remove(&handle).await {
        tracing::error!(error = %chain(&e), "could not remove the sidecar's veth and rule");
    } else {
        tracing::info!("removed the sidecar's veth and rule");
    }
    result
}

async fn serve(
    args: &SidecarArgs,
    handle: &rtnetlink::Handle,
    imds_ip: Ipv4Addr,
    state: ImdsState,
) -> anyhow::Result<()> {
    let link = sidecar_link::create(handle, imds_ip).await.context("creating the sidecar's veth")?;
    let addr = SocketAddrV4::new(imds_ip, IMDS_PORT);

    let listener = listener::bind(addr, SIDECAR_IF, link.sidecar_index)
        .with_context(|| format!("listening on {addr} ({SIDECAR_IF})"))?;
    let stop_server = CancellationToken::new();
    let server = tokio::spawn(http_server::serve(
        listener,
        api::router(Arc::new(state)),
        args.api.limits(),
        http_server::Plain,
        stop_server.clone(),
    ));
    probe::healthz(addr, SIDECAR_IF, Duration::from_secs(5))
        .await
        .context("the server did not answer its own health check")?;
    tracing::info!(%addr, "IMDS serving");

    let config = Config {
        redirect_ifindex: link.redirect_index,
        imds_addr: IMDS_ADDR,
        imds_port: IMDS_PORT.to_be_bytes(),
        sidecar_mac: link.sidecar_mac,
    };
    let mut datapath = Datapath::load(&config, args.ebpf_log).context("loading the eBPF programs")?;
    tracing::info!(programs = ?datapath.program_ids(), "eBPF programs loaded");
    let selector = Selector {
        bridge: args.bridge.clone(),
        guest_port_prefix: args.guest_port_prefix.clone(),
        redirect_ifname: REDIRECT_IF.to_owned(),
    };

    let outcome = follow_links(handle, &mut datapath, &selector).await;

    datapath.detach_all();
    log_counters(&datapath);
    drop(datapath);
    stop_server.cancel();
    let _ = server.await;
    outcome
}

/// Re-plans on every link event until SIGTERM/SIGINT.
async fn follow_links(
    handle: &rtnetlink::Handle,
    datapath: &mut Datapath,
    selector: &Selector,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Subscribe before the first dump, so nothing created in between is missed.
    let mut events = links::LinkEvents::subscribe().context("subscribing to link events")?;
    let mut counter_tick = tokio::time::interval(COUNTER_LOG_INTERVAL);
    let mut last_counters = Vec::new();
    let mut warned_missing_bridge = false;
    loop {
        match links::dump(handle).await {
            Ok(all) => {
                let wanted = plan::plan(&all, selector);
                if !warned_missing_bridge && !wanted.iter().any(|a| a.role == plan::Role::Guard) {
                    tracing::info!(bridge = ?selector.bridge, "no VM bridge yet; waiting for KubeVirt to create it");
                    warned_missing_bridge = true;
                }
                for e in datapath.apply(plan::diff(&datapath.attached(), &wanted)) {
                    tracing::warn!(error = %chain(&e), "attach failed; retrying on the next link event");
                }
            }
            Err(e) => tracing::warn!(error = %chain(&e), "could not list links"),
        }
        if !datapath.attached().iter().any(|(role, _)| *role == plan::Role::ToGuest) {
            anyhow::bail!("the reply program is not attached to {REDIRECT_IF} (was the veth deleted?)");
        }
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
            changed = events.changed() => {
                if changed.is_none() {
                    anyhow::bail!("the link event subscription ended");
                }
            }
            _ = counter_tick.tick() => {
                if let Ok(now) = datapath.counters() && now != last_counters {
                    log_counter_values(&now);
                    last_counters = now;
                }
            }
        }
    }
}

fn log_counters(datapath: &Datapath) {
    match datapath.counters() {
        Ok(values) => log_counter_values(&values),
        Err(e) => tracing::warn!(error = %chain(&e), "could not read the counters"),
    }
}

fn log_counter_values(values: &[(imds_ebpf::abi::Counter, u64)]) {
    let text: Vec<String> = values.iter().map(|(c, v)| format!("{}={v}", c.name())).collect();
    tracing::info!(counters = %text.join(" "), "data path counters");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SidecarArgs,
    }

    fn parse(extra: &[&str]) -> Result<SidecarArgs, clap::Error> {
        let base = ["x", "--namespace", "ns", "--service-account-name", "sa", "--vm-name", "vm"];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    #[test]
    fn data_path_defaults_and_bad_values() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.guest_port_prefix, "tap");
        assert_eq!(a.bridge, None);
        assert_eq!(a.ebpf_log, crate::datapath::loader::EbpfLogLevel::Off);
        for bad in [
            &["--bridge", "this-name-is-far-too-long"][..],
            &["--bridge", "a/b"],
            &["--bridge", ""],
            &["--guest-port-prefix", "t p"],
            &["--ebpf-log", "loud"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} accepted"));
            assert!(err.to_string().contains("invalid value"), "{bad:?}: {err}");
        }
    }
}
