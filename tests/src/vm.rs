//! A real guest VM: the Debian kernel under QEMU (TCG; the machines' KVM is
//! a PVM hypervisor that stock kernels hang on), a busybox initramfs with
//! Debian's curl, networked through a TAP the caller plugged into the
//! pod's bridge. Its init runs a scenario script and powers off; the test
//! reads what the script printed from the serial console.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};

use crate::{
    netns::{Netns, run},
    qemu::Qemu,
    require_tools, which,
};

/// Bump when the base image's content changes, to invalidate caches.
const IMAGE_FORMAT: u32 = 1;

const VIRTIO_MODULES: [&str; 8] = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
  insmod /modules/$m.ko
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
echo "===SCENARIO-START==="
sh /scenario.sh
echo "===SCRIPT-EXIT $?==="
poweroff -f
"#;

/// `section NAME CMD...`: prints CMD's output between markers.
const SECTION: &str = r#"#!/bin/sh
name=$1
shift
echo "===BEGIN $name==="
"$@" 2>&1
echo
echo "===END $name==="
"#;

pub struct GuestKit {
    kernel: PathBuf,
    base_initrd: PathBuf,
}

pub struct GuestRun {
    /// Everything on the serial console, `\r` removed.
    pub console: String,
}

impl GuestRun {
    /// What the scenario printed with `section NAME …`.
    pub fn section(&self, name: &str) -> Option<String> {
        let begin = format!("===BEGIN {name}===\n");
        let start = self.console.find(&begin)? + begin.len();
        let len = self.console[start..].find(&format!("===END {name}==="))?;
        let body = &self.console[start..start + len];
        Some(body.strip_suffix('\n').unwrap_or(body).to_owned())
    }

    pub fn script_exit(&self) -> Option<i32> {
        let rest = &self.console[self.console.find("===SCRIPT-EXIT ")? + 15..];
        rest[..rest.find("===")?].trim().parse().ok()
    }
}

impl GuestKit {
    /// Finds the guest kernel and builds (once, cached in `cache_dir`) the
    /// base initramfs.
    pub fn prepare(cache_dir: &Path) -> anyhow::Result<Self> {
        require_tools(&[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("cpio", "cpio"),
            ("busybox", "busybox-static"),
            ("curl", "curl"),
        ])?;
        let (kernel, version) = find_kernel()?;
        let modules = Path::new("/lib/modules").join(&version);
        std::fs::create_dir_all(cache_dir)?;
        let base_initrd = cache_dir.join(format!("base-{version}-v{IMAGE_FORMAT}.cpio.gz"));
        if !base_initrd.is_file() {
            build_base(&modules, &base_initrd).context("building the guest initramfs")?;
        }
        Ok(Self { kernel, base_initrd })
    }

    /// Boots the guest on `tap` (in `netns`) and runs `script`; see the
    /// module docs.
    pub fn run(
        &self,
        netns: &Netns,
        tap: &str,
        mac: &str,
        script: &str,
        timeout: Duration,
    ) -> anyhow::Result<GuestRun> {
        self.boot(netns, tap, mac, script, &[])?.wait(timeout)
    }

    /// Boots the guest as [`GuestKit::run`] does, with `files` added to its
    /// initramfs (`(path in the guest, host file)`), and returns at once:
    /// the test reads the console while the scenario runs.
    pub fn boot(
        &self,
        netns: &Netns,
        tap: &str,
        mac: &str,
        script: &str,
        files: &[(&str, &Path)],
    ) -> anyhow::Result<Booted> {
        let work = tempfile::tempdir()?;
        let scenario = work.path().join("scenario");
        std::fs::create_dir(&scenario)?;
        std::fs::write(scenario.join("scenario.sh"), script)?;
        for (dest, src) in files {
            let dest = scenario.join(dest.trim_start_matches('/'));
            copy_file(src, &dest)?;
        }
        let initrd = work.path().join("initrd");
        // The kernel unpacks concatenated archives in order.
        let mut image = std::fs::read(&self.base_initrd)?;
        image.extend(pack(&scenario)?);
        std::fs::write(&initrd, image)?;

        let mut command = netns.command("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-nodefaults"])
            .args(["-serial", "stdio", "-kernel"])
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet loglevel=0 panic=-1"])
            .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
        Ok(Booted { qemu: Qemu::spawn(command)?, _work: work })
    }
}

/// A guest booted by [`GuestKit::boot`], still running.
pub struct Booted {
    qemu: Qemu,
    _work: tempfile::TempDir,
}

impl Booted {
    /// The console so far.
    pub fn console(&self) -> String {
        self.qemu.console()
    }

    /// Waits until the console shows `needle`; fails with the console.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.console().contains(needle) {
            ensure!(
                std::time::Instant::now() < deadline,
                "the guest's console did not show {needle:?} within {timeout:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits for the guest to power off; see [`Qemu::wait`].
    pub fn wait(self, timeout: Duration) -> anyhow::Result<GuestRun> {
        Ok(GuestRun { console: self.qemu.wait(timeout)? })
    }
}

/// IMDS_GUEST_KERNEL, else the newest /boot/vmlinuz-* with its modules.
pub(crate) fn find_kernel() -> anyhow::Result<(PathBuf, String)> {
    if let Some(path) = std::env::var_os("IMDS_GUEST_KERNEL") {
        let path = PathBuf::from(path);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let version =
            name.strip_prefix("vmlinuz-").context("IMDS_GUEST_KERNEL must be a vmlinuz-<version>")?;
        return Ok((path.clone(), version.to_owned()));
    }
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            Path::new("/lib/modules")
                .join(&version)
                .join(VIRTIO_MODULES[7])
                .is_file()
                .then(|| (e.path(), version))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found.pop().context("no /boot/vmlinuz-* with virtio modules: apt-get install linux-image-amd64")
}

fn build_base(modules: &Path, out: &Path) -> anyhow::Result<()> {
    let staging = tempfile::tempdir()?;
    let root = staging.path();
    for dir in ["bin", "usr/bin", "sbin", "usr/sbin", "proc", "sys", "dev", "tmp", "modules", "etc"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    copy_file(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    write_executable(&root.join("init"), INIT)?;
    write_executable(&root.join("bin/section"), SECTION)?;
    for module in VIRTIO_MODULES {
        let src = modules.join(module);
        let name = src.file_name().context("module name")?;
        copy_file(&src, &root.join("modules").join(name))?;
    }
    // curl and every library the dynamic loader will ask for, same paths.
    let curl = which("curl").context("curl")?;
    copy_file(&curl, &root.join("usr/bin/curl"))?;
    for lib in shared_libraries(&curl)? {
        copy_file(&lib, &root.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, pack(root)?)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// gzip'd newc cpio of everything under `dir`.
pub fn pack(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | cpio --quiet -o -H newc -R 0:0 | gzip -1")
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .context("running cpio")?;
    ensure!(out.status.success() && !out.stdout.is_empty(), "cpio failed in {}", dir.display());
    Ok(out.stdout)
}

fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = run(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn copy_file(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The cache directory under the workspace's target directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("imds-guest")
}
