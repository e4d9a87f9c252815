//! `cargo xtask bench`'s options and the sections they select.

use std::{path::PathBuf, time::Duration};

use anyhow::ensure;

/// Measure the IMDS path, the alternatives, the cost to other traffic, the
/// per-VM footprint and the agent at scale (needs root); writes a Markdown report.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Seconds per measurement (wrk, iperf3); the agent's idle CPU is
    /// measured over 12 times this (a minute at the default).
    #[arg(long = "duration", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration_secs: u64,
    /// Repetitions of every measurement (the median is reported); the scale
    /// section times 20 TAPs per repetition at every pod count.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub repetitions: u64,
    /// Repetitions of each HTTP load on every way, for the HTTP section
    /// alone (`--repetitions` is for the others): each comparison's 95 %
    /// confidence interval rests on this many paired runs, and at 10 it is
    /// about 0.58 times as wide as at 5 (t/√n: 0.72 against 1.24), narrow
    /// enough to tell a few per cent's win from a tie. Runs of `--duration`
    /// each, 8 loads × 4 ways × this many.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub http_repetitions: u64,
    /// Measure this sidecar binary instead of the one just built (the
    /// "before" of a before/after comparison: build the older commit's with
    /// `cargo xtask build --release` and pass its `target/sidecar/…`).
    #[arg(long, value_name = "PATH")]
    pub sidecar: Option<PathBuf>,
    /// The same for the agent, and with it the eBPF programs it embeds.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Where the report goes (relative: to the workspace root).
    #[arg(long, default_value = "target/bench/report.md")]
    pub output: PathBuf,
    /// Run only these sections (repeat or comma-separate; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Pod counts of the scale section, measured in this order on one node
    /// (pods are added, never removed, between counts).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100", value_parser = clap::value_parser!(u64).range(1..=500))]
    pub pods: Vec<u64>,
}

/// The parts of the run, selectable with `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Section {
    /// IMDS requests over the eBPF path.
    Http,
    /// The same requests through nft DNAT, a veth on the bridge, and nginx.
    Alternatives,
    /// The VM's other traffic through a plumbed pod and an unplumbed one.
    Traffic,
    /// The sidecar's RSS, binary size, start-up, readiness and attach times.
    Footprint,
    /// Reading the token file against the cache.
    Token,
    /// The API layer's instructions per request (callgrind; no network).
    Api,
    /// The agent with 1, 10, 100 plumbed pods: memory, CPU, attach latency, pins.
    Scale,
    /// The guest helper: its builds' sizes, its RSS while it keeps a token, `--once`.
    Guest,
}

impl Options {
    pub fn check(&self) -> anyhow::Result<()> {
        for binary in self.sidecar.iter().chain(&self.agent) {
            ensure!(binary.is_file(), "{} is not a file", binary.display());
        }
        ensure!(!self.pods.is_empty(), "--pods needs at least one pod count");
        ensure!(
            self.pods.windows(2).all(|w| w[0] < w[1]),
            "--pods must increase (pods are added between counts, never removed): {:?}",
            self.pods
        );
        Ok(())
    }

    pub fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_secs)
    }

    pub fn repetitions(&self) -> usize {
        self.repetitions as usize
    }

    pub fn http_repetitions(&self) -> usize {
        self.http_repetitions as usize
    }

    /// The window the agent's and the sidecars' idle CPU is read over: long
    /// enough for 100 clock ticks to resolve a per-pod cost of 0.01 %.
    pub fn idle_window(&self) -> Duration {
        self.duration() * 12
    }

    /// TAPs created at each pod count: 100 at the default, so that the p99
    /// is the second-slowest sample rather than the slowest.
    pub fn tap_samples(&self) -> usize {
        20 * self.repetitions()
    }

    pub fn pod_counts(&self) -> Vec<usize> {
        self.pods.iter().map(|&n| n as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.options)
    }

    #[test]
    fn defaults_run_everything_at_1_10_100_pods() {
        let o = parse(&[]).unwrap();
        o.check().unwrap();
        assert!(o.runs(Section::Scale) && o.runs(Section::Http));
        assert_eq!(o.pod_counts(), vec![1, 10, 100]);
        assert_eq!((o.idle_window(), o.tap_samples()), (Duration::from_secs(60), 100));
        assert_eq!((o.repetitions(), o.http_repetitions()), (5, 10));
    }

    #[test]
    fn http_repetitions_are_the_http_sections_own() {
        let o = parse(&["--http-repetitions", "30"]).unwrap();
        assert_eq!((o.repetitions(), o.http_repetitions()), (5, 30));
        assert!(parse(&["--http-repetitions", "0"]).is_err());
        assert!(parse(&["--http-repetitions", "101"]).is_err());
    }

    #[test]
    fn only_and_pods_select() {
        let o =
            parse(&["--only", "scale", "--pods", "1,10", "--duration", "1", "--repetitions", "1"]).unwrap();
        o.check().unwrap();
        assert!(o.runs(Section::Scale) && !o.runs(Section::Traffic));
        assert_eq!((o.pod_counts(), o.tap_samples()), (vec![1, 10], 20));
        assert!(parse(&["--pods", "10,1"]).unwrap().check().is_err(), "decreasing counts");
        assert!(parse(&["--pods", "0"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--only", "everything"]).is_err());
    }
}
