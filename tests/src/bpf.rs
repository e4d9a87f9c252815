//! What bpftool says about the loaded programs and maps.

use std::process::Command;

use anyhow::Context as _;

use crate::netns::{Netns, run};

/// Names of the programs the agent loads for every pod.
pub const PROGRAMS: [&str; 5] = [
    imds_ebpf::abi::PROG_FROM_GUEST,
    imds_ebpf::abi::PROG_TO_GUEST,
    imds_ebpf::abi::PROG_GUARD,
    imds_ebpf::abi::PROG_TO_UPLINK,
    imds_ebpf::abi::PROG_FROM_POD,
];

/// The programs pinned anywhere under `dir` (one agent's pin root), as
/// (id, name). Scoped to one agent so that programs loaded by anything else
/// on the machine (another test, a benchmark left behind) never count.
pub fn pinned_programs(dir: &std::path::Path) -> anyhow::Result<Vec<(u64, String)>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("prog_")) {
                let out = run(Command::new("bpftool").args(["-j", "prog", "show", "pinned"]).arg(&path))?;
                let prog: serde_json::Value = serde_json::from_str(&out).context("bpftool prog show JSON")?;
                let id = prog["id"].as_u64().with_context(|| format!("no id for {}", path.display()))?;
                found.push((id, prog["name"].as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    Ok(found)
}

/// How many of `programs` carry each name of [`PROGRAMS`], in that order.
pub fn count_by_name(programs: &[(u64, String)]) -> Vec<usize> {
    PROGRAMS.iter().map(|name| programs.iter().filter(|(_, n)| n == name).count()).collect()
}

/// Which of the program ids `ids` the kernel still holds.
pub fn still_loaded(ids: &[u64]) -> anyhow::Result<Vec<(u64, String)>> {
    let out = run(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool prog show JSON")?;
    Ok(progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .filter(|(id, _)| ids.contains(id))
        .collect())
}

/// Waits up to `timeout` for the kernel to free the programs `ids` (it does
/// once their last pin, link and filter are gone, after an RCU grace
/// period); returns those still loaded then.
pub fn wait_until_freed(ids: &[u64], timeout: std::time::Duration) -> anyhow::Result<Vec<(u64, String)>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut left = still_loaded(ids)?;
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = still_loaded(ids)?;
    }
    Ok(left)
}

/// How many attachments run each of `programs`, summed per name of
/// [`PROGRAMS`], in that order: TCX links (kernels with TCX), else the
/// legacy tc filters on the interfaces of `netns` (the pod's).
pub fn attachments_by_name(programs: &[(u64, String)], netns: &Netns) -> anyhow::Result<Vec<usize>> {
    let prog_ids: Vec<u64> = if imds_common::kernel::has_tcx(&imds_common::kernel::running_release()) {
        let links: Vec<serde_json::Value> =
            serde_json::from_str(&run(Command::new("bpftool").args(["-j", "link", "show"]))?)?;
        links.iter().filter_map(|l| l["prog_id"].as_u64()).collect()
    } else {
        legacy_filters(netns)?.into_iter().map(|(_, _, id)| id).collect()
    };
    Ok(PROGRAMS
        .iter()
        .map(|name| {
            let ids: Vec<u64> = programs.iter().filter(|(_, n)| n == name).map(|(id, _)| *id).collect();
            prog_ids.iter().filter(|id| ids.contains(id)).count()
        })
        .collect())
}

/// The legacy tc filters running a BPF program in `netns`, as
/// (interface, hook, program id) from `bpftool net show`.
pub fn legacy_filters(netns: &Netns) -> anyhow::Result<Vec<(String, String, u64)>> {
    let out = run(netns.command("bpftool").args(["-j", "net", "show"]))?;
    let sections: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool net show JSON")?;
    Ok(sections
        .iter()
        .filter_map(|s| s["tc"].as_array())
        .flatten()
        .filter_map(|f| {
            // bpftool names a tc filter's program `id` (`prog_id` for XDP and TCX).
            let id = f["id"].as_u64().or_else(|| f["prog_id"].as_u64())?;
            Some((f["devname"].as_str()?.to_owned(), f["kind"].as_str()?.to_owned(), id))
        })
        .collect())
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

/// `max_entries` of the map pinned at `pin`, as the kernel reports it.
pub fn map_max_entries(pin: &std::path::Path) -> anyhow::Result<u32> {
    let out = run(Command::new("bpftool").args(["-j", "map", "show", "pinned"]).arg(pin))?;
    let map: serde_json::Value = serde_json::from_str(&out).context("bpftool map show JSON")?;
    let n = map["max_entries"].as_u64().with_context(|| format!("no max_entries: {out}"))?;
    Ok(u32::try_from(n)?)
}

/// How many CPUs a sysfs CPU list (`0-3,8,10-11`) names.
pub fn count_cpu_ranges(list: &str) -> u32 {
    list.split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap_or(0).saturating_sub(a.parse::<u32>().unwrap_or(0)) + 1,
            None => 1,
        })
        .sum()
}

#[cfg(test)]
mod cpu_list_tests {
    #[test]
    fn cpu_lists() {
        assert_eq!(super::count_cpu_ranges("0-1"), 2);
        assert_eq!(super::count_cpu_ranges("0-3,8,10-11"), 7);
        assert_eq!(super::count_cpu_ranges("0"), 1);
    }
}
