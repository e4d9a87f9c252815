//! The agent's command line (every flag with an environment variable).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::datapath::loader::EbpfLogLevel;

/// Plumb the opted-in virt-launcher pods of this node.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// This node's name, for log lines (downward API `spec.nodeName`).
    #[arg(long, env = "IMDS_NODE_NAME", default_value = "-")]
    pub node_name: String,

    /// The kubelet's root directory (pods' volumes are under `pods/`).
    #[arg(long, env = "IMDS_KUBELET_ROOT_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_root_dir: PathBuf,

    /// Where the programs, maps and links of every pod are pinned; must be
    /// on the node's bpffs so that they outlive the agent.
    #[arg(long, env = "IMDS_BPFFS_DIR", default_value = "/sys/fs/bpf/kubevirt-imds")]
    pub bpffs_dir: PathBuf,

    /// How often the kubelet's directory is scanned for pods that came or went.
    #[arg(long, env = "IMDS_SCAN_INTERVAL", default_value = "250ms", value_parser = interval)]
    pub scan_interval: Duration,

    /// Verbosity of the eBPF programs' own log messages (for programs this
    /// agent loads; adopted ones keep theirs).
    #[arg(long, env = "IMDS_EBPF_LOG", value_enum, default_value_t = EbpfLogLevel::Off)]
    pub ebpf_log: EbpfLogLevel,
}

fn interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. `250ms`)"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
        return Err("must be between 10ms and 60s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    #[test]
    fn defaults_and_bad_values() {
        let a = Cli::try_parse_from(["x"]).unwrap().args;
        assert_eq!(a.kubelet_root_dir, PathBuf::from("/var/lib/kubelet"));
        assert_eq!(a.bpffs_dir, PathBuf::from("/sys/fs/bpf/kubevirt-imds"));
        assert_eq!(a.scan_interval, Duration::from_millis(250));
        assert_eq!(a.ebpf_log, EbpfLogLevel::Off);
        for bad in [&["--scan-interval", "1ms"][..], &["--scan-interval", "soon"], &["--ebpf-log", "loud"]] {
            let err =
                Cli::try_parse_from(std::iter::once("x").chain(bad.iter().copied())).err().expect("accepted");
            assert!(err.to_string().contains("invalid value"), "{bad:?}: {err}");
        }
    }
}
