//! `kubevirt-imds-sidecar`'s command line: `run` in a virt-launcher pod,
//! `probe` as its startup probe, `serve` for benchmarks and development.
//! Every flag of `run` also reads an environment variable (the webhook sets
//! them from the pod's annotations and the downward API).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{config::ApiArgs, contract};

#[derive(Debug, Parser)]
#[command(name = "kubevirt-imds-sidecar", version, about = "The kubevirt-imds metadata server of one VM")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve 169.254.169.254:80 to this pod's VM, on the interface the
    /// kubevirt-imds agent plumbs.
    Run(RunArgs),
    /// The container's startup probe: exit 0 iff the sidecar is serving
    /// guests, else 1 (2 for usage errors); prints why.
    Probe(ProbeArgs),
    /// The API on a plain address, without the data path: for benchmarks
    /// and development.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options of the subcommands that log.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format (RUST_LOG sets the level; default `info`).
    #[arg(long, env = contract::ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    /// This pod's name, for the agent's log lines (downward API).
    #[arg(long, env = contract::ENV_POD_NAME)]
    pub pod_name: Option<String>,

    /// Serve only the VM behind this bridge instead of every `k6t-*`
    /// bridge (handed to the agent, which attaches the programs).
    #[arg(long, env = contract::ENV_BRIDGE_NAME, value_parser = interface_name)]
    pub bridge: Option<String>,

    /// Bridge ports whose names start with this are the VM's TAP devices
    /// (handed to the agent).
    #[arg(long, env = ENV_GUEST_PORT_PREFIX, default_value = "tap", value_parser = interface_name)]
    pub guest_port_prefix: String,

    /// IP TTL of every packet the IMDS sends, the connection's SYN-ACK
    /// included: 1 serves the guest's own processes only (a container
    /// behind a NAT inside the guest cannot even connect); 2 lets it in.
    #[arg(long, env = contract::ENV_HOP_LIMIT, default_value_t = contract::DEFAULT_HOP_LIMIT,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(contract::MAX_HOP_LIMIT)))]
    pub hop_limit: u8,

    /// Directory of the channel socket (`sidecar.sock`), shared with the
    /// agent through the pod's run volume.
    #[arg(long, env = contract::ENV_RUN_DIR, default_value = contract::RUN_DIR)]
    pub run_dir: PathBuf,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Not in the contract: only the sidecar reads it (the webhook sets no
/// value today and the default is the KubeVirt naming).
pub const ENV_GUEST_PORT_PREFIX: &str = "IMDS_GUEST_PORT_PREFIX";

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Directory of the channel socket.
    #[arg(long, env = contract::ENV_RUN_DIR, default_value = contract::RUN_DIR)]
    pub run_dir: PathBuf,

    /// Give up after this long (e.g. `2s`).
    #[arg(long, default_value = "2s", value_parser = timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub api: ApiArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

fn interface_name(s: &str) -> Result<String, String> {
    contract::check_interface_name(s).map(|()| s.to_owned()).map_err(str::to_owned)
}

fn timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. `2s` or `500ms`)"))?;
    if d.is_zero() || d > Duration::from_secs(600) {
        return Err("must be between 1ms and 10m".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: [&str; 6] = ["--namespace", "ns", "--service-account-name", "sa", "--vm-name", "vm"];

    fn run(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["kubevirt-imds-sidecar", "run"].into_iter().chain(API).chain(extra.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_defaults() {
        let a = run(&[]).unwrap();
        assert_eq!(a.guest_port_prefix, "tap");
        assert_eq!(a.bridge, None);
        assert_eq!(a.pod_name, None);
        assert_eq!(a.run_dir, PathBuf::from(contract::RUN_DIR));
        assert_eq!(a.log.log_format, LogFormat::Text);
        assert_eq!(a.api.namespace, "ns");
    }

    #[test]
    fn run_flags_are_read() {
        let a = run(&[
            "--bridge",
            "k6t-eth0",
            "--guest-port-prefix",
            "vnet",
            "--pod-name",
            "virt-launcher-vm-x",
            "--run-dir",
            "/tmp/r",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(a.bridge.as_deref(), Some("k6t-eth0"));
        assert_eq!(a.guest_port_prefix, "vnet");
        assert_eq!(a.pod_name.as_deref(), Some("virt-launcher-vm-x"));
        assert_eq!(a.run_dir, PathBuf::from("/tmp/r"));
        assert_eq!(a.log.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_run_values_are_refused_with_a_reason() {
        for bad in [
            &["--bridge", "this-name-is-far-too-long"][..],
            &["--bridge", "a/b"],
            &["--bridge", ""],
            &["--bridge", "a:b"],
            &["--guest-port-prefix", "t p"],
            &["--guest-port-prefix", ".."],
            &["--log-format", "xml"],
        ] {
            let err = run(bad).expect_err(&format!("{bad:?} accepted"));
            assert!(err.to_string().contains("invalid value"), "{bad:?}: {err}");
        }
        let err = run(&["--bridge", "a/b"]).unwrap_err();
        assert!(err.to_string().contains("not a valid interface name"), "{err}");
    }

    #[test]
    fn run_is_an_explicit_subcommand() {
        let err = Cli::try_parse_from(["kubevirt-imds-sidecar"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["kubevirt-imds-sidecar", "--namespace", "ns"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn probe_needs_nothing_and_checks_its_timeout() {
        let Command::Probe(p) = Cli::try_parse_from(["kubevirt-imds-sidecar", "probe"]).unwrap().command
        else {
            panic!("not probe");
        };
        assert_eq!((p.run_dir, p.timeout), (PathBuf::from(contract::RUN_DIR), Duration::from_secs(2)));
        let argv = ["kubevirt-imds-sidecar", "probe", "--run-dir", "/r", "--timeout", "500ms"];
        let Command::Probe(p) = Cli::try_parse_from(argv).unwrap().command else { panic!("not probe") };
        assert_eq!((p.run_dir, p.timeout), (PathBuf::from("/r"), Duration::from_millis(500)));
        for bad in ["0s", "soon", "1h"] {
            let err = Cli::try_parse_from(["kubevirt-imds-sidecar", "probe", "--timeout", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn serve_needs_an_address() {
        let argv = ["kubevirt-imds-sidecar", "serve", "--listen", "127.0.0.1:8080"].into_iter().chain(API);
        let Command::Serve(s) = Cli::try_parse_from(argv).unwrap().command else { panic!("not serve") };
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        let argv = ["kubevirt-imds-sidecar", "serve"].into_iter().chain(API);
        assert!(Cli::try_parse_from(argv).unwrap_err().to_string().contains("--listen"));
    }
}
