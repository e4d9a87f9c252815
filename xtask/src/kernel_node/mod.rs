//! `cargo xtask test --kernel <version>`: the privileged data-path tests on
//! another node kernel. A QEMU node boots that kernel with the host's file
//! system under it ([`node`]) and runs the test binaries built here, with
//! the same harness; the kernels and where they come from are in
//! [`kernels`].

mod initramfs;
pub mod kernels;
mod node;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};

use crate::{build, cmd, setup};

/// The test files that prove the data path on a node kernel: attachment
/// (TCX or legacy tc), serving, foreign hosts, hot-plug, agent restarts,
/// fail-closed and discovery. The rest (webhook, cloud-init, stock images,
/// guests under QEMU) does not depend on the node's kernel and runs natively.
pub const NODE_SUITES: [&str; 3] = ["datapath", "fail_closed", "agent_discovery"];

/// Per kernel; the emulated node runs the suites in about 6 minutes.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub fn run(versions: &[String], test_args: &[String]) -> anyhow::Result<()> {
    let kernels: Vec<&kernels::NodeKernel> =
        versions.iter().map(|v| kernels::find(v)).collect::<Result<_, _>>()?;
    let binaries = build::all(false)?;
    let suites = build_suites()?;
    let cache = setup::kernel_cache()?;
    let out_dir = cmd::workspace_root().join("target/kernel-matrix");
    std::fs::create_dir_all(&out_dir)?;
    let mut results = Vec::new();
    for kernel in kernels {
        eprintln!("== node kernel {}: {}", kernel.version, kernel.source);
        let prepared =
            kernel.prepare(&cache).with_context(|| format!("preparing kernel {}", kernel.version))?;
        let initramfs = initramfs::build(&prepared, &cache)?;
        let job = job_script(&binaries, &suites, test_args);
        let console = out_dir.join(format!("{}.log", kernel.version));
        let node = node::Node { kernel: &prepared, initramfs: &initramfs, cpus: 2, memory_mib: 3072 };
        let outcome = node.run(&job, &console, TIMEOUT)?;
        if outcome.release != prepared.release {
            bail!(
                "the node ran Linux {:?}, not {} (console: {})",
                outcome.release,
                prepared.release,
                console.display()
            );
        }
        eprintln!(
            "== node kernel {} (Linux {}): {} in {:.0?} (console: {})",
            kernel.version,
            outcome.release,
            if outcome.status == 0 { "passed" } else { "FAILED" },
            outcome.wall,
            console.display()
        );
        results.push((kernel.version, outcome));
    }
    let failed: Vec<&str> = results.iter().filter(|(_, o)| o.status != 0).map(|(v, _)| *v).collect();
    for (version, outcome) in &results {
        eprintln!(
            "kernel {version}: Linux {}, exit {}, {:.0?}",
            outcome.release, outcome.status, outcome.wall
        );
    }
    if !failed.is_empty() {
        bail!("the node tests failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the test binaries of [`NODE_SUITES`] and returns (name, path).
fn build_suites() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut c = cmd::cargo(None);
    // `--workspace`, as `cargo xtask test` builds: the same feature set, so
    // nothing is compiled again after it.
    c.args(["test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"]);
    for suite in NODE_SUITES {
        c.args(["--test", suite]);
    }
    eprintln!("+ cargo test --workspace --no-run {}", NODE_SUITES.map(|s| format!("--test {s}")).join(" "));
    let out = c.stderr(std::process::Stdio::inherit()).output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the node test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(exe)) = (message["target"]["name"].as_str(), message["executable"].as_str())
        else {
            continue;
        };
        if NODE_SUITES.contains(&name) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if found.len() != NODE_SUITES.len() {
        bail!("expected the test binaries {NODE_SUITES:?}, cargo built {found:?}");
    }
    Ok(found)
}

/// The node's job: every suite, one test at a time, in the test package's
/// directory as `cargo test` runs them; exits non-zero if any failed.
fn job_script(binaries: &build::Binaries, suites: &[(String, PathBuf)], test_args: &[String]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut job = String::from("set -u\n");
    for (var, path) in [
        ("IMDS_SIDECAR_BIN", &binaries.sidecar),
        ("IMDS_AGENT_BIN", &binaries.agent),
        ("IMDS_WEBHOOK_BIN", &binaries.webhook),
    ] {
        job.push_str(&format!("export {var}={}\n", quote(&path.display().to_string())));
    }
    job.push_str("export RUST_BACKTRACE=1 NO_COLOR=1\n");
    job.push_str(&format!("cd {}\n", quote(&cmd::workspace_root().join("tests").display().to_string())));
    job.push_str("failed=0\n");
    let args: Vec<String> = test_args.iter().map(|a| quote(a)).collect();
    for (name, exe) in suites {
        job.push_str(&format!(
            "echo '=== {name}'; {} --test-threads 1 --color never {} || failed=1\n",
            quote(&exe.display().to_string()),
            args.join(" ")
        ));
    }
    job.push_str("exit $failed\n");
    job
}
