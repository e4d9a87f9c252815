//! `kubevirt-imds-webhook`: see the library's documentation.

use std::io::IsTerminal as _;

use clap::{Parser, ValueEnum};
use imds_webhook::WebhookArgs;
use tracing_subscriber::{EnvFilter, fmt};

#[derive(Debug, Parser)]
#[command(
    name = "kubevirt-imds-webhook",
    version,
    about = "Injects the kubevirt-imds sidecar into VMs that ask for it"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = imds_common::contract::ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    webhook: WebhookArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS provider for the whole process (the server, kube's client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(imds_webhook::run(cli.webhook))
}
