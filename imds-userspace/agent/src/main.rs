//! `kubevirt-imds-agent`: see the library's documentation.

use std::io::IsTerminal as _;

use clap::{Parser, ValueEnum};
use imds_agent::config::AgentArgs;
use tracing_subscriber::{EnvFilter, fmt};

#[derive(Debug, Parser)]
#[command(
    name = "kubevirt-imds-agent",
    version,
    about = "Plumbs the kubevirt-imds data path of this node's VMs"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = imds_common::contract::ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// aya-log records carry the eBPF crate's module path as their target.
const EBPF_LOG_DIRECTIVE: &str = "imds_ebpf=trace";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The programs' own messages are gated by --ebpf-log at load time;
    // once enabled there, show them whatever RUST_LOG says.
    let filter = filter.add_directive(EBPF_LOG_DIRECTIVE.parse()?);
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    // The main loop is light (a directory scan); every pod has a thread of
    // its own inside its network namespace.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(imds_agent::run(cli.agent))
}
