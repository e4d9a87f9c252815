//! Building the two halves.

use std::path::PathBuf;

use crate::cmd::{self, workspace_root};

/// Where `cargo` puts artifacts (honours CARGO_TARGET_DIR like build.rs).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the eBPF object; returns its path.
pub fn ebpf() -> anyhow::Result<PathBuf> {
    let mut c = cmd::cargo(Some("nightly"));
    c.args(["build", "--release", "-p", "imds-ebpf", "--features", "program"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        // BTF lets bpftool print map keys and values by field name.
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    cmd::run(&mut c)?;
    Ok(target_dir().join("bpfel-unknown-none/release/imds-ebpf"))
}

/// The three binaries of the product.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub sidecar: PathBuf,
    /// Embeds the eBPF object.
    pub agent: PathBuf,
    pub webhook: PathBuf,
}

/// Builds the eBPF object, then every binary (the agent embeds the object).
pub fn all(release: bool) -> anyhow::Result<Binaries> {
    let object = ebpf()?;
    let mut c = cmd::cargo(None);
    c.args(["build", "-p", "imds-sidecar", "-p", "imds-agent", "-p", "imds-webhook", "--bins"])
        .env("IMDS_EBPF_OBJECT", &object);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)?;
    let dir = target_dir().join(if release { "release" } else { "debug" });
    Ok(Binaries {
        sidecar: dir.join("kubevirt-imds-sidecar"),
        agent: dir.join("kubevirt-imds-agent"),
        webhook: dir.join("kubevirt-imds-webhook"),
    })
}
