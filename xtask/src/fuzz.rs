//! `cargo xtask fuzz`: every libFuzzer target of `tests/fuzz` for a bounded
//! time each, from the seeds in the repository (`tests/fuzz/seeds/<target>`)
//! plus what earlier runs found (`target/fuzz-corpus/<target>`, not in the
//! repository). Fails on the first crash, naming the input libFuzzer saved.

use std::{path::Path, process::Stdio};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

/// The targets, as `tests/fuzz/Cargo.toml` names them.
pub const TARGETS: [&str; 6] =
    ["frame_rules", "http_paths", "token_file", "annotations", "admission_review", "guest_inputs"];

const FUZZ_DIR: &str = "tests/fuzz";

pub fn run(seconds: u32, only: &[String]) -> anyhow::Result<()> {
    setup::ensure()?;
    for wanted in only {
        if !TARGETS.contains(&wanted.as_str()) {
            bail!("no fuzz target {wanted:?}; the targets are {}", TARGETS.join(", "));
        }
    }
    let root = cmd::workspace_root();
    let mut c = cmd::cargo(Some("nightly"));
    c.args(["fuzz", "build", "--fuzz-dir", FUZZ_DIR]);
    cmd::run(&mut c)?;
    let mut report = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_empty() || only.iter().any(|o| o == *t)) {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = root.join(FUZZ_DIR).join("seeds").join(target);
        report.push((*target, fuzz_one(target, &corpus, &seeds, seconds)?));
    }
    eprintln!("\nfuzz: {seconds} s per target, no crash");
    for (target, runs) in report {
        eprintln!("  {target:<18} {runs:>12} executions");
    }
    Ok(())
}

/// Runs one target; returns how many inputs libFuzzer executed.
fn fuzz_one(target: &str, corpus: &Path, seeds: &Path, seconds: u32) -> anyhow::Result<u64> {
    let mut c = cmd::cargo(Some("nightly"));
    c.args(["fuzz", "run", "--fuzz-dir", FUZZ_DIR, target])
        .arg(corpus)
        .arg(seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // One input must not take long or much: the code runs per request.
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    eprintln!("+ fuzz {target} for {seconds} s");
    let out = c.output().with_context(|| format!("running cargo fuzz for {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("fuzz target {target} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    executions(&log).with_context(|| format!("no execution count in the output of {target}:\n{log}"))
}

/// libFuzzer's `Done 3045137 runs in 11 second(s)`.
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_execution_count_is_read_from_libfuzzer_s_summary() {
        let log = "#2\tINITED cov: 10\n#1000\tpulse\nDone 3045137 runs in 11 second(s)\nstat::number_of_executed_units: 3045137\n";
        assert_eq!(super::executions(log), Some(3_045_137));
        assert_eq!(super::executions("crashed"), None);
    }

    #[test]
    fn every_target_has_seeds_and_a_manifest_entry() {
        let root = crate::cmd::workspace_root().join(super::FUZZ_DIR);
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        for target in super::TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} not in tests/fuzz/Cargo.toml"
            );
            let seeds = std::fs::read_dir(root.join("seeds").join(target)).map(|d| d.count()).unwrap_or(0);
            assert!(seeds > 0, "no seeds for {target}");
        }
    }
}
