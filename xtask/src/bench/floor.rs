//! The floor of the per-packet figures: the empty classifier (`imds-floor`,
//! `abi::PROG_FLOOR`) attached on the unplumbed pod where each of our
//! passing programs runs on the plumbed one, and measured over the same
//! traffic with the same kernel statistics. What a program costs above it
//! is what its own instructions cost; the floor itself (the hook's call and
//! the statistics' two clock reads) is the machine's.
//!
//! Loaded with `tc … bpf obj` (iproute2's own loader): the object has no
//! maps, and the bench needs no bpffs pin for it. The unplumbed pod has no
//! other filter, so removing the clsact qdisc removes it.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, ensure};
use imds_ebpf::abi::{PROG_FLOOR, PROG_FROM_GUEST, PROG_FROM_POD, PROG_GUARD, PROG_TO_UPLINK};
use imds_tests::{
    netns::Netns,
    topology::{BRIDGE, TAP},
};

use super::bpf::{self, ProgRun};

/// Where each passing program runs in this layout, as the agent's plan
/// (`imds-agent`'s `datapath/plan.rs`) places it: (program, interface, tc
/// direction). A place gone wrong shows in the report as a floor whose run
/// count is far from its program's.
const PLACES: [(&str, &str, &str); 5] = [
    (PROG_FROM_GUEST, TAP, "ingress"),
    (PROG_GUARD, BRIDGE, "ingress"),
    (PROG_TO_UPLINK, "eth0", "egress"),
    (PROG_TO_UPLINK, "fport", "egress"),
    (PROG_FROM_POD, "lo", "ingress"),
];

/// The empty program at every place, until dropped.
pub struct Floor<'a> {
    pod: &'a Netns,
    /// (program whose place it takes, floor program id).
    ids: Vec<(&'static str, u64)>,
}

impl<'a> Floor<'a> {
    pub fn attach(pod: &'a Netns, object: &Path) -> anyhow::Result<Self> {
        let mut floor = Floor { pod, ids: Vec::new() };
        let object = object.display();
        for (program, ifname, direction) in PLACES {
            pod.sh(&format!(
                "tc qdisc replace dev {ifname} clsact && \
                 tc filter add dev {ifname} {direction} bpf direct-action obj {object} sec classifier"
            ))?;
            let shown = pod.sh(&format!("tc -j filter show dev {ifname} {direction}"))?;
            let id = floor_id(&shown).with_context(|| format!("the floor on {ifname} {direction}"))?;
            floor.ids.push((program, id));
        }
        Ok(floor)
    }

    /// One of the floor's programs (all are the same code).
    pub fn any_id(&self) -> anyhow::Result<u64> {
        self.ids.first().map(|(_, id)| *id).context("no floor attached")
    }

    /// Runs so far, summed by the program whose place the floor takes.
    pub fn runs(&self) -> anyhow::Result<BTreeMap<&'static str, ProgRun>> {
        let mut runs: BTreeMap<&str, ProgRun> = BTreeMap::new();
        for (program, id) in &self.ids {
            let run = bpf::prog_run_by_id(*id)?;
            let sum = runs.entry(program).or_default();
            sum.run_time_ns += run.run_time_ns;
            sum.run_cnt += run.run_cnt;
        }
        Ok(runs)
    }
}

impl Drop for Floor<'_> {
    fn drop(&mut self) {
        let mut done = std::collections::BTreeSet::new();
        for (_, ifname, _) in PLACES {
            if done.insert(ifname) {
                let _ = self.pod.sh(&format!("tc qdisc del dev {ifname} clsact"));
            }
        }
    }
}

/// The id of the floor program in `tc -j filter show`'s output.
fn floor_id(shown: &str) -> anyhow::Result<u64> {
    let filters: serde_json::Value = serde_json::from_str(shown).context("tc -j filter show")?;
    let ids: Vec<u64> = filters
        .as_array()
        .context("tc -j filter show: not a list")?
        .iter()
        .filter(|f| f.pointer("/options/prog/name").and_then(|n| n.as_str()) == Some(PROG_FLOOR))
        .filter_map(|f| f.pointer("/options/prog/id").and_then(|id| id.as_u64()))
        .collect();
    ensure!(ids.len() == 1, "expected one {PROG_FLOOR} filter, found {}: {shown}", ids.len());
    Ok(ids[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_found_by_name_once() {
        // As iproute2 6.1 prints it.
        let one = r#"[{"protocol":"all","pref":49152,"kind":"bpf","chain":0},{"protocol":"all","pref":49152,"kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"imds-floor:[classifier]","direct-action":true,"not_in_hw":true,"prog":{"id":2130,"name":"imds_floor","tag":"f03f3c893109830e","jited":1}}}]"#;
        assert_eq!(floor_id(one).unwrap(), 2130);
        let other = one.replace("\"imds_floor\"", "\"imds_guard\"");
        assert!(floor_id(&other).is_err(), "another program is not the floor");
        let two = format!("[{},{}]", &one[1..one.len() - 1], &one[1..one.len() - 1]);
        assert!(floor_id(&two).is_err(), "two floors on one hook would count twice");
        assert!(floor_id("[]").is_err());
    }
}
