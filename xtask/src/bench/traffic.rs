//! What the data path costs the VM's other traffic: iperf3 through a pod
//! the agent plumbed against the same through an identical pod it never
//! saw. Both pods exist throughout and the agent runs throughout, so the
//! only difference is the plumbing (programs, veth, rule); the runs
//! alternate between them, the order flipped every repetition. Then one
//! more run with the kernel's BPF statistics on, for the programs'
//! own per-packet cost.

use std::{collections::BTreeMap, path::Path, time::Duration};

use imds_ebpf::abi::{PROG_FROM_GUEST, PROG_FROM_POD, PROG_GUARD, PROG_TO_UPLINK};
use imds_tests::{
    imds::Imds,
    netns::Netns,
    topology::{Binding, GuestKind, PodLayout},
};

use super::{
    Context as Bench, ID,
    bpf::{self, BpfStats},
    iperf::{self, Traffic},
    report::{Report, TrafficRow},
    stats::Summary,
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
    // imds-agent's pins.rs).
    let generation = imds.counters_pin()?.parent().map(Path::to_path_buf).unwrap_or_default();
    let pin = |program: &str| generation.join(format!("prog_{program}"));
    {
        let stats = BpfStats::enable()?;
        let before = PASSING.iter().map(|p| bpf::prog_run(&pin(p))).collect::<anyhow::Result<Vec<_>>>()?;
        for way in WAYS {
            let (client, _, ip) = (way.ends)(&plumbed);
            Traffic::default().add(client, ip, secs)?;
        }
        for (program, before) in PASSING.iter().zip(before) {
            report.per_packet.insert(program, bpf::prog_run(&pin(program))?.since(before));
        }
        drop(stats);
    }

    for way in WAYS {
        let (w, wo) = (&with[way.what], &without[way.what]);
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
