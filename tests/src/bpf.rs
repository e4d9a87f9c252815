//! What bpftool says about the loaded programs and maps.

use std::process::Command;

use anyhow::Context as _;

use crate::netns::run;

/// Names of the programs the agent loads for every pod.
pub const PROGRAMS: [&str; 5] = [
    imds_ebpf::abi::PROG_FROM_GUEST,
    imds_ebpf::abi::PROG_TO_GUEST,
    imds_ebpf::abi::PROG_GUARD,
    imds_ebpf::abi::PROG_TO_UPLINK,
    imds_ebpf::abi::PROG_FROM_POD,
];

/// How many loaded programs carry `name`, system-wide.
pub fn programs_named(name: &str) -> anyhow::Result<usize> {
    let out = run(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool prog show JSON")?;
    Ok(progs.iter().filter(|p| p["name"] == name).count())
}

/// How many TCX links attach a program named `name`.
pub fn links_of(name: &str) -> anyhow::Result<usize> {
    let progs: Vec<serde_json::Value> =
        serde_json::from_str(&run(Command::new("bpftool").args(["-j", "prog", "show"]))?)?;
    let ids: Vec<u64> = progs.iter().filter(|p| p["name"] == name).filter_map(|p| p["id"].as_u64()).collect();
    let links: Vec<serde_json::Value> =
        serde_json::from_str(&run(Command::new("bpftool").args(["-j", "link", "show"]))?)?;
    Ok(links.iter().filter(|l| l["prog_id"].as_u64().is_some_and(|id| ids.contains(&id))).count())
}

/// The counter `field` of the IMDS_COUNTERS map pinned at `pin` (see
/// `Imds::counters_pin`), summed over CPUs.
pub fn counter_at(pin: &std::path::Path, field: &str) -> anyhow::Result<u64> {
    let out = run(Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(pin))?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool map dump JSON")?;
    anyhow::ensure!(
        entries.len() == 1,
        "expected one IMDS_COUNTERS entry (one sidecar), got {}: {out}",
        entries.len()
    );
    let per_cpu = entries[0]["formatted"]["values"].as_array().context("no BTF-formatted values")?;
    per_cpu
        .iter()
        .map(|cpu| cpu["value"][field].as_u64().with_context(|| format!("no counter {field}")))
        .sum()
}
