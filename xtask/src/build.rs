//! Building the two halves.

use std::path::PathBuf;

use anyhow::Context as _;

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

/// The benchmark's empty classifier, built beside the object by [`ebpf`]
/// (`imds-ebpf`'s `imds-floor` binary).
pub fn floor_object() -> PathBuf {
    target_dir().join("bpfel-unknown-none/release/imds-floor")
}

/// The binaries of the product.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub sidecar: PathBuf,
    /// Embeds the eBPF object.
    pub agent: PathBuf,
    pub webhook: PathBuf,
    /// The guest helper's static builds, one file per
    /// `imds_api::GUEST_BINARIES` name: what the sidecar serves.
    pub guest_dir: PathBuf,
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
        guest_dir: guest()?,
    })
}

/// Builds the guest helper, static (musl) with the `guest` profile, for
/// every target the sidecar serves, into `target/guest-binaries/<name>`. Always
/// optimised: these are the files users download, and the tests boot them.
pub fn guest() -> anyhow::Result<PathBuf> {
    // Not target/guest/: that is cargo's own directory for the `guest` profile.
    let out = target_dir().join("guest-binaries");
    std::fs::create_dir_all(&out)?;
    for binary in imds_api::GUEST_BINARIES {
        let mut c = cmd::cargo(None);
        c.args(["build", "-p", "imds-guest", "--bins", "--profile", "guest", "--target", binary.target]);
        // rustc's own lld and musl's bundled crt objects: no cross gcc needed.
        let linker_var = format!("CARGO_TARGET_{}_LINKER", binary.target.to_uppercase().replace('-', "_"));
        c.env(linker_var, "rust-lld");
        cmd::run(&mut c)?;
        let built = target_dir().join(binary.target).join("guest/kubevirt-imds-guest");
        std::fs::copy(&built, out.join(binary.name))
            .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    }
    Ok(out)
}
