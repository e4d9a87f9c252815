//! Test harness for kubevirt-imds: real namespaces, the real sidecar binary,
//! kubelet-style token volumes, a real booted guest VM, and stock Debian
//! cloud images booted the way KubeVirt boots them (SMBIOS, DHCP).

pub mod bpf;
pub mod cloud_init_outcome;
pub mod dhcp;
pub mod ext4_image;
pub mod fake_apiserver;
pub mod fixtures;
pub mod imds;
pub mod kubelet;
pub mod memory_cap;
pub mod netns;
pub mod pod_security;
pub mod process;
pub mod qemu;
pub mod smbios;
pub mod stand_in;
pub mod stock_image;
pub mod tokens;
pub mod topology;
pub mod vm;
pub mod webhook;

/// A binary `cargo xtask test` built and passed in `env_var`, else
/// `target/debug/<name>`; panics with the way to get it when it is missing.
pub fn built_binary(env_var: &str, name: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env_var).map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name)
    });
    assert!(path.is_file(), "{} is missing: run the tests with `cargo xtask test`", path.display());
    path
}

/// Where `tool` is on PATH, if it is.
pub(crate) fn which(tool: &str) -> Option<std::path::PathBuf> {
    netns::run(std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]))
        .ok()
        .map(|p| std::path::PathBuf::from(p.trim()))
}

/// Fails naming the first missing `(tool, Debian package)`.
pub(crate) fn require_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    for (tool, package) in tools {
        anyhow::ensure!(
            which(tool).is_some(),
            "{tool} is missing: apt-get install {package} (cargo xtask setup does)"
        );
    }
    Ok(())
}

/// The guest helper's builds, as `cargo xtask build` leaves them.
pub mod guest_helper {
    use std::path::PathBuf;

    /// Where `cargo xtask test` says the builds are. Not the sidecar's own
    /// `IMDS_GUEST_BINARIES_DIR`: every sidecar the tests start would
    /// inherit that and hash the builds at start; the tests that want them
    /// served pass `--guest-binaries-dir`.
    pub const ENV: &str = "IMDS_TEST_GUEST_BINARIES";

    /// [`ENV`], else `target/guest-binaries`; every one of
    /// `imds_api::GUEST_BINARIES` must be there.
    pub fn binaries_dir() -> PathBuf {
        let dir = std::env::var_os(ENV).map(PathBuf::from).unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-binaries")
        });
        for b in imds_api::GUEST_BINARIES {
            assert!(
                dir.join(b.name).is_file(),
                "{} is missing: run the tests with `cargo xtask test` (it builds the guest helper)",
                dir.join(b.name).display()
            );
        }
        dir
    }
}
