//! What the data path costs the VM's other traffic: iperf3 through a pod
//! the agent plumbed against the same through an identical pod it never
//! saw. Both pods exist throughout and the agent runs throughout, so the
//! only difference is the plumbing (programs, veth, rule); the runs
//! alternate between them, the order flipped every repetition. Then one
//! more run with the kernel's BPF statistics on, for the programs'
//! own per-packet cost.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use crate::build;
use imds_ebpf::abi::{PROG_FLOOR, PROG_FROM_GUEST, PROG_FROM_POD, PROG_GUARD, PROG_TO_UPLINK};
use imds_tests::{
    imds::Imds,
    netns::Netns,
    topology::{Binding, GuestKind, PodLayout},
};

use super::{
    Context as Bench, ID,
    bpf::{self, BpfStats},
    floor::Floor,
    iperf::{self, Traffic},
    report::{ImpliedUdp, Report, TrafficRow},
    stats::Summary,
    test_run,
};

/// The node end of the pod's eth0 in the masquerade layout.
const NODE_IP: &str = "10.244.0.1";
const LOOPBACK: &str = "127.0.0.1";

/// A way a packet takes, and the programs it passes in a plumbed pod.
#[derive(Clone, Copy)]
struct Way {
    what: &'static str,
    programs: &'static [&'static str],
    /// (client, server, server address) in a layout.
    ends: for<'a> fn(&'a PodLayout) -> (&'a Netns, &'a Netns, &'a str),
}

const WAYS: [Way; 3] = [
    Way {
        // The neighbour's port is an uplink to the agent, as the renamed
        // eth0-nic is under KubeVirt's bridge binding.
        what: "guest to a neighbour on the bridge",
        programs: &[PROG_FROM_GUEST, PROG_TO_UPLINK],
        ends: |l| (l.guest(), &l.foreign, l.addressing.foreign_ip),
    },
    Way {
        what: "guest through the pod's masquerade NAT to the node",
        programs: &[PROG_FROM_GUEST, PROG_GUARD, PROG_TO_UPLINK],
        ends: |l| (l.guest(), &l.node, NODE_IP),
    },
    Way {
        what: "the pod's own processes over loopback",
        programs: &[PROG_FROM_POD],
        ends: |l| (&l.pod, &l.pod, LOOPBACK),
    },
];

/// Each way's run with the statistics on lasts at least this long: the
/// masquerade way alone passes `imds_guard`, and a 5 s run gives it about
/// half a million packets, short of the million the issue asks for.
const STATS_SECS_MIN: u64 = 12;

/// Every program that sees passing traffic, for the kernel's statistics.
const PASSING: [&str; 4] = [PROG_FROM_GUEST, PROG_GUARD, PROG_TO_UPLINK, PROG_FROM_POD];

pub fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let plumbed = PodLayout::build(Binding::Masquerade, GuestKind::Namespace)?;
    let bare = PodLayout::build(Binding::Masquerade, GuestKind::Namespace)?;
    for layout in [&plumbed, &bare] {
        layout.masquerade_nat()?;
    }
    let mut imds = Imds::start(&plumbed.pod, &ID, bench.volume.dir(), &[])?;
    imds.wait_for_log(&format!("program=\"{PROG_FROM_GUEST}\""), Duration::from_secs(10))?;
    let mut servers = Vec::new();
    for layout in [&plumbed, &bare] {
        for way in WAYS {
            let (_, server, ip) = (way.ends)(layout);
            servers.push(iperf::server(server, ip)?);
        }
    }

    let secs = bench.options.duration_secs;
    let mut with: BTreeMap<&str, Traffic> = BTreeMap::new();
    let mut without: BTreeMap<&str, Traffic> = BTreeMap::new();
    // Single-flow figures on a small machine are noisy: at least five.
    for repetition in 0..bench.options.repetitions().max(5) {
        let mut order = [(&plumbed, &mut with), (&bare, &mut without)];
        if repetition % 2 == 1 {
            order.reverse();
        }
        for (layout, runs) in order {
            for way in WAYS {
                let (client, _, ip) = (way.ends)(layout);
                runs.entry(way.what).or_default().add(client, ip, secs)?;
            }
        }
    }

    // The kernel's own account of each program's run time, in a run of its
    // own (the accounting costs time per packet): a per-packet cost free of
    // the noise of two flows sharing two CPUs. Read by pinned path: the
    // counters map's generation holds the programs beside it (see
    // imds-agent's pins.rs). The same traffic through the unplumbed pod,
    // with an empty program in each of our programs' places, gives the
    // floor they are judged against.
    let generation = imds.counters_pin()?.parent().map(Path::to_path_buf).unwrap_or_default();
    let pin = |program: &str| generation.join(format!("prog_{program}"));
    {
        let floor = Floor::attach(&bare.pod, &build::floor_object())?;
        let stats = BpfStats::enable()?;
        let before = PASSING.iter().map(|p| bpf::prog_run(&pin(p))).collect::<anyhow::Result<Vec<_>>>()?;
        let floor_before = floor.runs()?;
        for layout in [&plumbed, &bare] {
            for way in WAYS {
                let (client, _, ip) = (way.ends)(layout);
                Traffic::default().add(client, ip, secs.max(STATS_SECS_MIN))?;
            }
        }
        for (program, before) in PASSING.iter().zip(before) {
            report.per_packet.insert(program, bpf::prog_run(&pin(program))?.since(before));
        }
        for (program, run) in floor.runs()? {
            let before = floor_before.get(program).copied().unwrap_or_default();
            report.floor.insert(program, run.since(before));
        }
        drop(stats);
        // The same programs without the accounting, on the frame the UDP
        // runs send (from the plumbed pod's guest to its neighbour).
        let a = plumbed.addressing;
        let (src, dst): (Ipv4Addr, Ipv4Addr) = (a.guest_ip.parse()?, a.foreign_ip.parse()?);
        let frame = bench.scratch.path().join("udp-frame");
        std::fs::write(&frame, test_run::udp_frame(src.octets(), dst.octets()))?;
        for program in PASSING {
            let ns = test_run::ns_per_run(&test_run::Program::Pinned(&pin(program)), &frame)?;
            report.test_run.insert(program, ns);
        }
        let ns = test_run::ns_per_run(&test_run::Program::Id(floor.any_id()?), &frame)?;
        report.test_run.insert(PROG_FLOOR, ns);
    }

    for way in WAYS {
        let (w, wo) = (&with[way.what], &without[way.what]);
        let programs_ns: Option<f64> = way.programs.iter().map(|p| report.test_run.get(p).copied()).sum();
        if let (Some(ns), Some(kpps)) = (programs_ns, Summary::of(&wo.udp_kpps)) {
            report.implied_udp.push(ImpliedUdp { what: way.what, programs_ns: ns, kpps: kpps.median });
        }
        for (unit, a, b) in [
            ("TCP, Gbit/s", &w.tcp_gbps, &wo.tcp_gbps),
            ("64-byte UDP received, kpps", &w.udp_kpps, &wo.udp_kpps),
        ] {
            if let (Some(with), Some(without)) = (Summary::of(a), Summary::of(b)) {
                report.traffic.push(TrafficRow {
                    what: format!("{}: {unit}", way.what),
                    programs: way.programs.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "),
                    with,
                    without,
                });
            }
        }
    }
    drop(servers);
    drop(imds);
    Ok(())
}
