//! What the API layer (router, request checks, tally, handler) costs per
//! request, in instructions: `examples/api_cost.rs` under callgrind, which
//! counts instructions whatever else the machine does, so the figure is
//! repeatable to a few instructions and needs no quiet machine. Two request
//! counts give the per-request slope (start-up cancels out); the same with
//! `--baseline` (requests built, none sent) is subtracted.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{ID_ARGS, stats::slope};
use crate::cmd;

/// The paths measured.
pub const PATHS: [&str; 2] = [imds_api::TOKEN_PATH, imds_api::IDENTITY_PATH];
const FEW: u64 = 1_000;
const MANY: u64 = 3_000;

/// Instructions per request for each of [`PATHS`].
pub fn run(token_dir: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut build = cmd::cargo(None);
    build.args(["build", "--quiet", "--release", "-p", "imds-sidecar", "--example", "api_cost"]);
    cmd::run(&mut build).context("building the api_cost example")?;
    let example = cmd::workspace_root().join("target/release/examples/api_cost");
    let per_request = |path: &str, baseline: bool| -> anyhow::Result<f64> {
        let few = instructions(&example, token_dir, path, FEW, baseline)?;
        let many = instructions(&example, token_dir, path, MANY, baseline)?;
        slope((FEW as f64, few as f64), (MANY as f64, many as f64)).context("no slope")
    };
    let mut figures = BTreeMap::new();
    for path in PATHS {
        let cost = per_request(path, false)? - per_request(path, true)?;
        figures.insert(path.to_owned(), cost);
    }
    Ok(figures)
}

/// Instructions of one run of the example under callgrind.
fn instructions(
    example: &Path,
    token_dir: &Path,
    path: &str,
    requests: u64,
    baseline: bool,
) -> anyhow::Result<u64> {
    let mut c = Command::new("valgrind");
    c.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(example)
        .args(["--path", path, "--requests", &requests.to_string()])
        .args(ID_ARGS)
        .arg("--token-dir")
        .arg(token_dir);
    if baseline {
        c.arg("--baseline");
    }
    let out = c.output().context("running valgrind (Debian package valgrind)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("api_cost under callgrind failed: {stderr}");
    }
    collected(&stderr).with_context(|| format!("no instruction count in callgrind's output: {stderr}"))
}

/// callgrind's `==pid== Collected : 12345` line.
fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| l.split_once("Collected :")?.1.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrinds_total_is_found() {
        let out = "==17984== Events    : Ir\n==17984== Collected : 17283184\n==17984==\n";
        assert_eq!(collected(out), Some(17283184));
        assert_eq!(collected("==1== Collected : lots\n"), None);
        assert_eq!(collected(""), None);
    }
}
