//! `kubevirt-imds-sidecar`: see [`imds_sidecar::cli`].

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use imds_sidecar::{
    cli::{Cli, Command, LogFormat},
    commands,
};
use tracing_subscriber::{EnvFilter, fmt};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: a VM asks for little, and every thread costs memory on
    // every VM of the node.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kubevirt-imds-sidecar: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => {
            init_logging(args.log.log_format);
            exit(runtime.block_on(commands::run::run(args)))
        }
        Command::Serve(args) => {
            init_logging(args.log.log_format);
            exit(runtime.block_on(commands::serve::serve(args)))
        }
        Command::Probe(args) => {
            // The kubelet shows this line in the pod's events.
            let verdict = runtime.block_on(commands::probe::probe(&args));
            println!("{}", verdict.line);
            ExitCode::from(verdict.exit_code())
        }
    }
}

fn init_logging(format: LogFormat) {
    // RUST_LOG overrides; the default keeps a sidecar per VM quiet.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            ExitCode::FAILURE
        }
    }
}
