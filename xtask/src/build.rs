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
/// `--release` builds the sidecar with the `sidecar` profile (LTO, small
/// code: it runs beside every VM, see the workspace Cargo.toml) and the
/// others with `release`.
pub fn all(release: bool) -> anyhow::Result<Binaries> {
    let object = ebpf()?;
    let build = |packages: &[&str], profile: &str| -> anyhow::Result<()> {
        let mut c = cmd::cargo(None);
        c.arg("build");
        for p in packages {
            c.args(["-p", p]);
        }
        c.args(["--bins", "--profile", profile]).env("IMDS_EBPF_OBJECT", &object);
        cmd::run(&mut c)
    };
    let (others, sidecar_profile) = if release { ("release", "sidecar") } else { ("dev", "dev") };
    build(&["imds-agent", "imds-webhook"], others)?;
    build(&["imds-sidecar"], sidecar_profile)?;
    let dir = |profile: &str| target_dir().join(if profile == "dev" { "debug" } else { profile });
    Ok(Binaries {
        sidecar: dir(sidecar_profile).join("kubevirt-imds-sidecar"),
        agent: dir(others).join("kubevirt-imds-agent"),
        webhook: dir(others).join("kubevirt-imds-webhook"),
    })
}
