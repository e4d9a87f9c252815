//! `cargo xtask …`: the project's build, test and demo entry points.

mod bench;
mod build;
mod certs;
mod cmd;
mod demo;
mod fuzz;
mod kernel_node;
mod manifests;
mod setup;
pub(crate) mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; quick when done).
    Setup,
    /// Build the eBPF object (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build the eBPF object, then the three binaries (the agent embeds the object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run every test, the privileged ones included (needs root).
    Test {
        /// Instead, run the data-path tests on a QEMU node booting this
        /// kernel (6.1, 5.10; repeat for several). Arguments after `--` then
        /// go to each test binary (a name filter, `--exact`).
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Write a CA, the webhook's TLS Secret and the caBundle patch (for
    /// clusters without cert-manager).
    GenerateCerts {
        /// Namespace the webhook runs in.
        #[arg(long, default_value = "kubevirt-imds")]
        namespace: String,
        /// Name of the webhook's Service.
        #[arg(long, default_value = "kubevirt-imds-webhook")]
        service: String,
        /// Validity of the serving certificate.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Validity of a new CA (the output directory's CA is kept until
        /// --rotate-ca).
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        ca_days: u32,
        /// Make a new CA; the bundle carries the previous one too until the
        /// next rotation.
        #[arg(long)]
        rotate_ca: bool,
        /// Output directory (default: the self-signed overlay's).
        #[arg(long, default_value = "deploy/overlays/self-signed/generated")]
        out_dir: std::path::PathBuf,
    },
    /// Measure the IMDS path, the alternatives, the cost to other traffic,
    /// the per-VM footprint and the agent at scale (needs root); writes a
    /// Markdown report.
    Bench(bench::Options),
    /// Render deploy/ with kustomize and validate it against the Kubernetes schemas.
    ValidateManifests,
    /// Boot a real VM in a virt-launcher-like namespace and show what it
    /// gets from 169.254.169.254 (needs root).
    Demo,
    /// Run every fuzz target (tests/fuzz, cargo-fuzz on nightly) for a
    /// bounded time each; fails on a crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
        seconds: u32,
        /// Only these targets (repeat); default all.
        #[arg(long = "target")]
        targets: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => {
            setup::ensure()?;
            build::ebpf().map(drop)
        }
        Command::Build { release } => {
            setup::ensure()?;
            let built = build::all(release)?;
            for bin in [&built.sidecar, &built.agent, &built.webhook] {
                println!("built {}", bin.display());
            }
            Ok(())
        }
        Command::Test { kernels, cargo_args } if kernels.is_empty() => test::run(&cargo_args),
        Command::Test { kernels, cargo_args } => test::run_on_kernels(&kernels, &cargo_args),
        Command::Demo => demo::run(),
        Command::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
        Command::Bench(options) => bench::run(options),
        Command::ValidateManifests => {
            setup::ensure()?;
            manifests::run()
        }
        Command::GenerateCerts { namespace, service, days, ca_days, rotate_ca, out_dir } => {
            let out_dir = if out_dir.is_absolute() { out_dir } else { cmd::workspace_root().join(out_dir) };
            certs::generate(&certs::Request {
                namespace: &namespace,
                service: &service,
                days,
                ca_days,
                rotate_ca,
                out_dir: &out_dir,
            })
        }
    }
}
