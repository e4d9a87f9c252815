//! The flow table on the real path: one guest holds more concurrent IMDS
//! connections than the table's old flat size (1024, of which the kernel's
//! per-CPU free lists left about 768 usable here) and loses none.

use imds_ebpf::abi::{FLOWS_LIVE, flows_max_entries};
use imds_tests::{
    bpf,
    imds::{Identity, ServedGuest},
    netns::exclusive,
    topology::Binding,
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };

#[test]
fn one_guest_holds_more_connections_than_the_old_table_and_loses_none() {
    let _serial = exclusive();
    // Room for every connection in the server too: the table is under test.
    let served = ServedGuest::start(Binding::Masquerade, &ID, &["--max-connections", "2000"]).unwrap();
    let imds = &served.imds;
    let counters = imds.counters_pin().unwrap();

    // The table the agent created is sized for this machine's CPUs.
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let flows = bpf::map_max_entries(&imds.flows_pin().unwrap()).unwrap();
    assert_eq!(flows, flows_max_entries(bpf::count_cpu_ranges(cpus.trim())), "possible CPUs {cpus}");

    let n = 1500;
    assert!(n > 1024 && n < FLOWS_LIVE);
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/many_connections.py");
    let out = served.guest().command("python3").arg(script).arg(n.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\nreply_no_flow={}",
        String::from_utf8_lossy(&out.stderr),
        bpf::counter_at(&counters, "reply_no_flow").unwrap()
    );
    assert_eq!(stdout.trim(), format!("served={n} failed=0"));
    assert_eq!(bpf::counter_at(&counters, "reply_no_flow").unwrap(), 0);
}
