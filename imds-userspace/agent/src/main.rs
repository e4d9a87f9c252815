//! The single binary: `kubevirt-imds sidecar`, `webhook`, `serve` and `probe`.

use std::io::IsTerminal as _;

use clap::{Parser, Subcommand, ValueEnum};
use imds_agent::{net, privileged_sidecar as sidecar};
use imds_sidecar::probe;
use tracing_subscriber::{EnvFilter, fmt};

#[derive(Debug, Parser)]
#[command(name = "kubevirt-imds", version, about = "Instance metadata service for KubeVirt VMs")]
struct Cli {
    /// Log format.
    #[arg(long, env = imds_common::contract::ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run in a virt-launcher pod: serve 169.254.169.254 to its VM.
    Sidecar(sidecar::SidecarArgs),
    /// Serve the mutating admission webhook that injects the sidecar.
    Webhook(imds_webhook::WebhookArgs),
    /// The IMDS HTTP API on a plain address, without the eBPF data path:
    /// for benchmarks against other ways of intercepting 169.254.169.254,
    /// and for development.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        api: imds_sidecar::config::ApiArgs,
    },
    /// Exit 0 if this pod's IMDS answers `GET /healthz` (the container's
    /// startup probe; needs CAP_NET_ADMIN, as the sidecar has).
    Probe {
        /// Give up after this long (e.g. `2s`).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// aya-log records carry the eBPF crate's module path as their target.
const EBPF_LOG_DIRECTIVE: &str = "imds_ebpf=trace";

/// A sidecar serves one VM: a couple of workers answer a guest far faster
/// than it asks, and one thread per node core (tokio's default) would cost
/// every VM on a large node memory for nothing.
const SIDECAR_WORKER_THREADS: usize = 2;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if !matches!(cli.command, Command::Webhook(_)) {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        runtime.worker_threads(cores.min(SIDECAR_WORKER_THREADS));
    }
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS provider for the whole process (the webhook's server, kube's client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // RUST_LOG overrides; the default keeps a sidecar per VM quiet.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The eBPF programs' own messages are gated by --ebpf-log at load time;
    // once enabled there, show them whatever RUST_LOG says.
    let filter = filter.add_directive(EBPF_LOG_DIRECTIVE.parse()?);
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli.command {
        Command::Sidecar(args) => sidecar::run(args).await,
        Command::Webhook(args) => imds_webhook::run(args).await,
        Command::Serve { listen, api } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(%listen, "IMDS API serving (no data path)");
            let stop = tokio_util::sync::CancellationToken::new();
            let server = imds_common::http_server::serve(
                listener,
                imds_sidecar::api::router(std::sync::Arc::new(api.state())),
                api.limits(),
                imds_common::http_server::Plain,
                stop.clone(),
            );
            tokio::select! {
                _ = server => {}
                _ = tokio::signal::ctrl_c() => stop.cancel(),
            }
            Ok(())
        }
        Command::Probe { timeout } => {
            let addr = std::net::SocketAddrV4::new(imds_ebpf::abi::IMDS_ADDR.into(), sidecar::IMDS_PORT);
            probe::healthz(addr, net::SIDECAR_IF, timeout).await?;
            println!("OK");
            Ok(())
        }
    }
}
