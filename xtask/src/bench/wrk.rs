//! The HTTP loads and wrk, which drives them from the guest namespace.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, bail, ensure};
use imds_tests::netns::Netns;

/// One load configuration.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub path: &'static str,
    pub connections: u32,
    pub keep_alive: bool,
}

impl Load {
    pub fn label(&self) -> String {
        format!(
            "{} c={} {}",
            self.path,
            self.connections,
            if self.keep_alive { "keep-alive" } else { "new conn/req" }
        )
    }
}

/// Every load, in report order: the token (read from the kubelet's volume)
/// and the identity (no file), one client and 64, keep-alive and a new
/// connection per request (what `curl` in a guest script does).
pub const LOADS: [Load; 8] = [
    Load { path: "/v1/token", connections: 1, keep_alive: true },
    Load { path: "/v1/token", connections: 64, keep_alive: true },
    Load { path: "/v1/token", connections: 1, keep_alive: false },
    Load { path: "/v1/token", connections: 64, keep_alive: false },
    Load { path: "/v1/identity", connections: 1, keep_alive: true },
    Load { path: "/v1/identity", connections: 64, keep_alive: true },
    Load { path: "/v1/identity", connections: 1, keep_alive: false },
    Load { path: "/v1/identity", connections: 64, keep_alive: false },
];

/// wrk's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Http {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub socket_errors: u64,
}

/// One wrk run from the guest namespace against `base` (`http://addr[:port]`),
/// on `cpu` alone when there is one ([`super::pinning`]).
pub fn run(
    guest: &Netns,
    base: &str,
    load: Load,
    duration: Duration,
    cpu: Option<usize>,
) -> anyhow::Result<Http> {
    let out = guest.sh(&command_line(base, load, duration, cpu))?;
    parse(&out).with_context(|| format!("parsing wrk output:\n{out}"))
}

fn command_line(base: &str, load: Load, duration: Duration, cpu: Option<usize>) -> String {
    let threads = load.connections.min(2);
    let mut script = format!(
        "{}wrk -t{threads} -c{} -d{}s --latency -H 'Metadata: true' -H 'Host: {}'",
        super::pinning::shell_prefix(cpu),
        load.connections,
        duration.as_secs(),
        imds_common::contract::IMDS_IP
    );
    if !load.keep_alive {
        script.push_str(" -H 'Connection: close'");
    }
    let _ = write!(script, " {base}{}", load.path);
    script
}

/// wrk 4.1's `--latency` output; a non-2xx answer fails the run.
pub fn parse(out: &str) -> anyhow::Result<Http> {
    let mut http = Http::default();
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => http.p50_us = duration_us(v)?,
            (Some("99%"), Some(v)) => http.p99_us = duration_us(v)?,
            (Some("Requests/sec:"), Some(v)) => http.rps = v.parse()?,
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            (Some("Socket"), Some("errors:")) => {
                http.socket_errors =
                    line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum();
            }
            _ => {}
        }
        ensure!(!line.starts_with("Non-2xx"), "wrk saw non-2xx responses: {line}");
    }
    ensure!(http.rps > 0.0 && http.p50_us > 0.0, "incomplete wrk output");
    Ok(http)
}

fn duration_us(v: &str) -> anyhow::Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).context("no unit")?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n,
        "ms" => n * 1000.0,
        "s" => n * 1_000_000.0,
        _ => bail!("unknown unit {unit}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1's output with `--latency`, as Debian ships it.
    const WRK: &str = "Running 5s test @ http://169.254.169.254/v1/token
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms    1.20ms  30.11ms   91.00%
    Req/Sec    30.11k     2.10k   35.00k    70.00%
  Latency Distribution
     50%  801.00us
     75%    1.10ms
     90%    1.80ms
     99%    3.13ms
  299000 requests in 5.00s, 380.12MB read
  Socket errors: connect 3, read 2, write 0, timeout 1
Requests/sec:  59880.12
Transfer/sec:     76.02MB
";

    #[test]
    fn wrk_output_is_parsed_with_units_and_socket_errors() {
        let h = parse(WRK).unwrap();
        assert_eq!((h.rps, h.p50_us, h.p99_us, h.socket_errors), (59880.12, 801.0, 3130.0, 6));
    }

    #[test]
    fn wrk_failures_are_errors_not_figures() {
        assert!(parse(&format!("{WRK}  Non-2xx or 3xx responses: 12\n")).is_err());
        assert!(parse("unable to connect to 169.254.169.254:80 Connection refused\n").is_err());
        assert!(duration_us("12furlongs").is_err());
        assert_eq!(duration_us("1.5s").unwrap(), 1_500_000.0);
    }

    #[test]
    fn wrk_runs_on_the_client_cpu_when_there_is_one() {
        let pinned = command_line("http://169.254.169.253", LOADS[3], Duration::from_secs(5), Some(0));
        assert_eq!(
            pinned,
            "taskset -c 0 wrk -t2 -c64 -d5s --latency -H 'Metadata: true' -H 'Host: 169.254.169.254' \
             -H 'Connection: close' http://169.254.169.253/v1/token"
        );
        let unpinned = command_line("http://169.254.169.254", LOADS[0], Duration::from_secs(5), None);
        assert!(unpinned.starts_with("wrk -t1 -c1 -d5s "), "{unpinned}");
    }

    #[test]
    fn labels_name_path_clients_and_connection_reuse() {
        assert_eq!(LOADS[0].label(), "/v1/token c=1 keep-alive");
        assert_eq!(LOADS[7].label(), "/v1/identity c=64 new conn/req");
    }
}
