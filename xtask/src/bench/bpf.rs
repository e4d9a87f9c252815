//! What the kernel says about our eBPF objects, through bpftool, always by
//! pinned path: other agents (another engineer's tests) may have loaded
//! programs of the same names on this machine.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::cmd;

pub fn bpftool_json(args: &[&str], path: Option<&Path>) -> anyhow::Result<serde_json::Value> {
    let mut c = Command::new("bpftool");
    c.arg("-j").args(args);
    if let Some(p) = path {
        c.arg(p);
    }
    let out = cmd::output(&mut c).with_context(|| format!("bpftool {args:?} {path:?} failed"))?;
    serde_json::from_str(&out).with_context(|| format!("bpftool {args:?} printed {out:?}"))
}

/// The counters map pinned at `pin`, each counter summed over CPUs.
pub fn counters(pin: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    parse_counters(&bpftool_json(&["map", "dump", "pinned"], Some(pin))?)
}

fn parse_counters(dump: &serde_json::Value) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut sums = BTreeMap::new();
    let per_cpu = dump
        .pointer("/0/formatted/values")
        .and_then(|v| v.as_array())
        .context("bpftool: no BTF-formatted per-CPU values")?;
    for cpu in per_cpu {
        for (field, n) in cpu["value"].as_object().context("bpftool: value is not a struct")? {
            *sums.entry(field.clone()).or_default() +=
                n.as_u64().context("bpftool: counter is not a number")?;
        }
    }
    Ok(sums)
}

/// A program's run time and runs, as the kernel accounts them while
/// `kernel.bpf_stats_enabled` is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgRun {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgRun {
    pub fn since(self, before: ProgRun) -> ProgRun {
        ProgRun {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(before.run_cnt),
        }
    }

    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// The program pinned at `pin`.
pub fn prog_run(pin: &Path) -> anyhow::Result<ProgRun> {
    parse_prog_run(&bpftool_json(&["prog", "show", "pinned"], Some(pin))?)
}

/// The program with this id (one not pinned: the bench's floor).
pub fn prog_run_by_id(id: u64) -> anyhow::Result<ProgRun> {
    parse_prog_run(&bpftool_json(&["prog", "show", "id", &id.to_string()], None)?)
}

fn parse_prog_run(v: &serde_json::Value) -> anyhow::Result<ProgRun> {
    ensure!(v["id"].is_u64(), "bpftool: not a program: {v}");
    // Absent until stats were enabled while it ran.
    let field = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(ProgRun { run_time_ns: field("run_time_ns"), run_cnt: field("run_cnt") })
}

/// `kernel.bpf_stats_enabled` on while it lives, then back as it was.
pub struct BpfStats(String);

impl BpfStats {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> anyhow::Result<Self> {
        let was = std::fs::read_to_string(Self::KNOB).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(Self::KNOB, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(was))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KNOB, self.0.trim());
    }
}

/// Everything the agent keeps in the kernel under one pin directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    /// Pins, by kind (`prog_*`, `map_*`, `link_*` files).
    pub program_pins: usize,
    pub map_pins: usize,
    pub link_pins: usize,
    /// Programs pinned there and every map they use (pinned or not: the
    /// log ring, the config's .rodata), as the kernel counts them.
    pub programs: usize,
    pub maps: usize,
    /// The memory the kernel charges for them (bpftool's bytes_memlock).
    pub kernel_bytes: u64,
}

/// What is pinned under `dir` (the agent's `--bpffs-dir`).
pub fn pinned_under(dir: &Path) -> anyhow::Result<Pinned> {
    let mut pinned = Pinned::default();
    count_pins(dir, &mut pinned)?;
    // -f: bpftool lists the pinned paths of every object, on every bpffs mounted.
    let progs = bpftool_json(&["-f", "prog", "show"], None)?;
    let maps = bpftool_json(&["map", "show"], None)?;
    let (programs, maps, bytes) = kernel_objects_under(&progs, &maps, dir)?;
    (pinned.programs, pinned.maps, pinned.kernel_bytes) = (programs, maps, bytes);
    Ok(pinned)
}

fn count_pins(dir: &Path, pinned: &mut Pinned) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            count_pins(&entry.path(), pinned)?;
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("prog_") {
            pinned.program_pins += 1;
        } else if name.starts_with("map_") {
            pinned.map_pins += 1;
        } else if name.starts_with("link_") {
            pinned.link_pins += 1;
        }
    }
    Ok(())
}

/// (programs pinned under `dir`, maps they use, their bytes_memlock).
fn kernel_objects_under(
    progs: &serde_json::Value,
    maps: &serde_json::Value,
    dir: &Path,
) -> anyhow::Result<(usize, usize, u64)> {
    let progs = progs.as_array().context("bpftool prog show: not a list")?;
    let maps = maps.as_array().context("bpftool map show: not a list")?;
    let ours: Vec<&serde_json::Value> = progs
        .iter()
        .filter(|p| {
            p["pinned"].as_array().is_some_and(|paths| {
                paths.iter().filter_map(|x| x.as_str()).any(|x| Path::new(x).starts_with(dir))
            })
        })
        .collect();
    let map_ids: BTreeSet<u64> = ours
        .iter()
        .flat_map(|p| p["map_ids"].as_array().into_iter().flatten())
        .filter_map(|id| id.as_u64())
        .collect();
    let memlock = |v: &serde_json::Value| v["bytes_memlock"].as_u64().unwrap_or(0);
    let bytes = ours.iter().map(|p| memlock(p)).sum::<u64>()
        + maps
            .iter()
            .filter(|m| m["id"].as_u64().is_some_and(|id| map_ids.contains(&id)))
            .map(memlock)
            .sum::<u64>();
    Ok((ours.len(), map_ids.len(), bytes))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counters_are_summed_over_cpus_by_field_name() {
        let dump = json!([{"key": 0, "formatted": {"values": [
            {"cpu": 0, "value": {"guest_redirected": 5, "reply_no_flow": 0}},
            {"cpu": 1, "value": {"guest_redirected": 7, "reply_no_flow": 1}}
        ]}}]);
        let sums = parse_counters(&dump).unwrap();
        assert_eq!((sums["guest_redirected"], sums["reply_no_flow"]), (12, 1));
        assert!(parse_counters(&json!([{"key": 0, "values": []}])).is_err(), "no BTF: no names");
    }

    #[test]
    fn program_stats_are_deltas_and_absent_means_zero() {
        let before = parse_prog_run(&json!({"id": 7, "name": "imds_guard"})).unwrap();
        let after = parse_prog_run(&json!({"id": 7, "run_time_ns": 9900, "run_cnt": 100})).unwrap();
        let run = after.since(before);
        assert_eq!((run, run.ns_per_run()), (ProgRun { run_time_ns: 9900, run_cnt: 100 }, Some(99.0)));
        assert_eq!(ProgRun::default().ns_per_run(), None);
        assert!(parse_prog_run(&json!({"error": "bad pin"})).is_err());
    }

    #[test]
    fn kernel_objects_are_those_pinned_under_the_directory_and_their_maps() {
        let progs = json!([
            {"id": 1, "bytes_memlock": 4096, "map_ids": [10, 11], "pinned": ["/tmp/a/kubevirt-imds/p1/gen-6/prog_imds_guard"]},
            {"id": 2, "bytes_memlock": 8192, "map_ids": [10, 12], "pinned": ["/tmp/a/kubevirt-imds/p1/gen-6/prog_imds_from_guest"]},
            {"id": 3, "bytes_memlock": 4096, "map_ids": [20], "pinned": ["/tmp/b/kubevirt-imds/p9/gen-2/prog_imds_guard"]},
            {"id": 4, "bytes_memlock": 4096, "map_ids": [21]}
        ]);
        let maps = json!([
            {"id": 10, "bytes_memlock": 1000}, {"id": 11, "bytes_memlock": 100},
            {"id": 12, "bytes_memlock": 10}, {"id": 20, "bytes_memlock": 99999}
        ]);
        let found = kernel_objects_under(&progs, &maps, Path::new("/tmp/a/kubevirt-imds")).unwrap();
        assert_eq!(found, (2, 3, 4096 + 8192 + 1110));
    }

    #[test]
    fn pins_are_counted_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let generation = dir.path().join("8e36585b-8ab5-4ae8-a493-da2f7b5d138b/gen-6");
        std::fs::create_dir_all(&generation).unwrap();
        for f in [
            "prog_imds_guard",
            "prog_imds_from_guest",
            "map_IMDS_FLOWS",
            "link_imds_guard_3",
            "link_imds_from_guest_4",
        ] {
            std::fs::write(generation.join(f), "").unwrap();
        }
        let mut pinned = Pinned::default();
        count_pins(dir.path(), &mut pinned).unwrap();
        assert_eq!((pinned.program_pins, pinned.map_pins, pinned.link_pins), (2, 1, 2));
    }
}
