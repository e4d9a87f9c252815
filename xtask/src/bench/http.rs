//! IMDS requests under every load of [`LOADS`]: through our eBPF path and
//! through each alternative, all up at once in one pod and run in turn for
//! each repetition, so that drift on the machine hits them alike and
//! repetition i of every way makes a pair for the paired ratios of
//! [`super::stats::PairedRatio`]. wrk runs on one CPU and every server on
//! another where the machine has two ([`super::pinning`]).

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use imds_ebpf::abi::{Counter, PROG_FROM_GUEST};
use imds_tests::{
    imds::Imds,
    netns::Netns,
    topology::{Binding, GuestKind, PodLayout},
};

use super::{
    Context as Bench, ID, alternatives, bpf,
    options::Section,
    pinning::{self, Placement},
    procfs::{Memory, RssSampler},
    report::Report,
    wrk::{self, Http, LOADS},
};

/// The ways of reaching the server that are measured side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Way {
    Ebpf,
    Dnat,
    Veth,
    Nginx,
}

impl Way {
    pub const ALL: [Way; 4] = [Way::Ebpf, Way::Dnat, Way::Veth, Way::Nginx];

    pub fn label(self) -> &'static str {
        match self {
            Way::Ebpf => "eBPF (ours)",
            Way::Dnat => "nft DNAT",
            Way::Veth => "veth on bridge",
            Way::Nginx => "nginx",
        }
    }
}

/// Counters that count service, not loss.
const NOT_LOSSES: [Counter; 3] =
    [Counter::GuestRedirected, Counter::ReplyForwarded, Counter::GuestArpAnswered];

pub fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace)?;
    let guest = layout.guest();
    // wrk opening a connection per request at 20k/s runs through the guest's
    // ephemeral ports in about a second; without reuse of TIME_WAIT ports
    // the client, not the server, becomes the bottleneck.
    guest.sh("sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 65000'")?;
    let mut imds = Imds::start(&layout.pod, &ID, bench.volume.dir(), &[])?;
    imds.wait_for_log(&format!("program=\"{PROG_FROM_GUEST}\""), Duration::from_secs(10))?;
    let counters = imds.counters_pin()?;
    let pid = imds.sidecar.as_mut().and_then(|s| s.process().pid()).context("sidecar pid")?;
    let placement = Placement::of_this_process()?;
    if let Some(cpu) = placement.server() {
        // The pid is the sidecar itself (its wrappers exec), which checks.
        pinning::check_runs(pid, &bench.binaries.sidecar)?;
        pinning::pin(pid, cpu).context("pinning our sidecar")?;
    }
    eprintln!("bench: {placement}");

    let mut ways: Vec<(Way, String)> = Vec::new();
    if bench.options.runs(Section::Http) {
        ways.push((Way::Ebpf, format!("http://{}", imds_common::contract::IMDS_IP)));
    }
    // The servers and nginx live as long as this.
    let alternatives = if bench.options.runs(Section::Alternatives) {
        Some(alternatives::set_up(&layout, bench, &placement)?)
    } else {
        None
    };
    ways.extend(alternatives.iter().flat_map(|a| a.ways.iter().cloned()));

    let losses_now = || -> anyhow::Result<BTreeMap<String, u64>> {
        let mut all = bpf::counters(&counters)?;
        all.retain(|k, _| !NOT_LOSSES.iter().any(|c| c.name() == k));
        for (side, ns) in [("guest", guest), ("pod", &layout.pod)] {
            all.insert(format!("{side} TCP retransmits"), tcp_retransmits(ns)?);
        }
        Ok(all)
    };
    let sampler = RssSampler::start(pid);
    for load in LOADS {
        let mut runs: BTreeMap<Way, Vec<Http>> = BTreeMap::new();
        let mut losses: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..bench.options.http_repetitions() {
            for (way, base) in &ways {
                let before = if *way == Way::Ebpf { Some(losses_now()?) } else { None };
                let run = wrk::run(guest, base, load, bench.options.duration(), placement.client())?;
                if run.socket_errors > 0 {
                    *losses.entry(format!("{}: wrk socket errors", way.label())).or_default() +=
                        run.socket_errors;
                }
                runs.entry(*way).or_default().push(run);
                if let Some(before) = before {
                    for (k, v) in losses_now()? {
                        *losses.entry(k.clone()).or_default() +=
                            v.saturating_sub(before.get(&k).copied().unwrap_or(0));
                    }
                }
            }
        }
        report.http.insert(load.label(), runs);
        losses.retain(|_, v| *v > 0);
        report.losses.insert(load.label(), losses);
    }
    report.http_placement = Some(placement);
    report.footprint.under_load_peak = Some(sampler.stop());
    report.footprint.after_load = Some(Memory::read(pid)?.rss);
    drop(alternatives);
    drop(imds);
    Ok(())
}

/// Both ends' TCP retransmissions: a load that loses packets shows here,
/// not just as a slow figure.
fn tcp_retransmits(ns: &Netns) -> anyhow::Result<u64> {
    let out = ns.sh("nstat -asz TcpRetransSegs")?;
    parse_nstat(&out, "TcpRetransSegs").with_context(|| format!("nstat printed {out:?}"))
}

fn parse_nstat(out: &str, counter: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == counter).then(|| words.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nstat_counters_are_found_by_exact_name() {
        let out = "#kernel\nTcpRetransSegsX                 9                  0.0\nTcpRetransSegs                  17                 0.0\n";
        assert_eq!(parse_nstat(out, "TcpRetransSegs"), Some(17));
        assert_eq!(parse_nstat("#kernel\n", "TcpRetransSegs"), None);
    }

    #[test]
    fn service_counters_are_not_losses() {
        let names: Vec<&str> = NOT_LOSSES.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["guest_redirected", "reply_forwarded", "guest_arp_answered"]);
    }
}
