//! Reading the service-account token: the `token_read` example times each
//! way the sidecar can get it (ns per token served); the median of the
//! repetitions of its own medians.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;

use super::stats::median;
use crate::cmd;

pub const READS: u32 = 20_000;

pub fn run(token: &Path, repetitions: usize) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..repetitions {
        let mut c = cmd::cargo(None);
        c.args(["run", "--quiet", "--release", "-p", "imds-sidecar", "--example", "token_read", "--"])
            .arg(token)
            .arg(READS.to_string());
        let out = cmd::output(&mut c).context("running the token_read example")?;
        let v: BTreeMap<String, f64> =
            serde_json::from_str(out.trim()).with_context(|| format!("token_read printed {out:?}"))?;
        for (k, ns) in v {
            runs.entry(k).or_default().push(ns);
        }
    }
    Ok(runs.into_iter().map(|(k, v)| (k, median(&v))).collect())
}
