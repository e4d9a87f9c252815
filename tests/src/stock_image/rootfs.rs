//! The image's tree: debootstrap's Debian plus the few files the harness
//! needs, each with its reason below. cloud-init and everything under
//! /etc/cloud stay exactly as Debian ships them, and nothing tells
//! cloud-init which datasource to use: it must find one from the SMBIOS the
//! test gives the VM.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use super::Release;
use crate::netns::run;

const MIRROR: &str = "http://deb.debian.org/debian";

/// On top of `--variant=minbase`, for both releases.
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "cloud-init",
    // debootstrap does not resolve virtual packages: python3-cryptography
    // (for cloud-init) needs python3-cffi-backend-api-*, which only this
    // provides.
    "python3-cffi-backend",
    // cloud-init's resizefs module runs resize2fs (trixie's minbase has no
    // e2fsprogs).
    "e2fsprogs",
    "openssh-server",
    "netbase",
    "iproute2",
    "sudo",
    // Debian's cloud images carry curl; deploy/guest/cloud-init.yaml
    // downloads the guest helper with it.
    "curl",
];

/// How each release's network comes up.
fn network_packages(release: Release) -> &'static [&'static str] {
    match release {
        // cloud-init renders /etc/network/interfaces.d; ifupdown runs
        // dhclient, as cloud-init 22.4 does for its own DHCP.
        Release::Bookworm => &["ifupdown", "isc-dhcp-client"],
        // cloud-init 25.1's fallback config asks for DHCPv6 too, which
        // trixie's ifupdown can only do with the deprecated dhclient (and
        // then waits a minute for a DHCPv6 server), so this is Debian 13's
        // cloud image stack: netplan rendering for systemd-networkd, and
        // systemd-resolved (which needs a system bus: dbus, another virtual
        // package debootstrap leaves out). cloud-init's own DHCP client is
        // dhcpcd (a dependency of cloud-init).
        Release::Trixie => &["netplan.io", "systemd-resolved", "dbus"],
    }
}

/// The host kernel's modules the guest loads from its root filesystem
/// (with their dependencies): the disk and NIC drivers. The host's initrd
/// happens to load them before switching root, but udev and modprobe in
/// the running system look them up here.
const KERNEL_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net"];

/// Not the metadata's hostname: a changed /etc/hostname proves cloud-init
/// set it.
const NEUTRAL_HOSTNAME: &str = "localhost";

const POWEROFF_UNIT: &str = "kubevirt-imds-test-poweroff.service";

/// After cloud-init's last stage when cloud-init runs; when ds-identify
/// disabled it there is no cloud-final.service and this runs once the
/// system is up. The explicit `After=multi-user.target` also stops systemd
/// from ordering the target (which wants this unit) after it.
const POWEROFF_UNIT_TEXT: &str = "\
[Unit]
Description=Power off once cloud-init is done (kubevirt-imds test harness)
After=multi-user.target cloud-final.service

[Service]
Type=oneshot
ExecStart=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
";

/// Runs debootstrap into `root`, keeping downloaded packages in `debs`;
/// returns the cloud-init version installed.
pub(super) fn debootstrap(release: Release, root: &Path, debs: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(debs)?;
    let include: Vec<&str> = PACKAGES.iter().chain(network_packages(release)).copied().collect();
    let out = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--cache-dir={}", debs.canonicalize()?.display()))
        .arg(format!("--include={}", include.join(",")))
        .args([release.codename()])
        .arg(root)
        .arg(MIRROR)
        .stdin(Stdio::null())
        .output()
        .context("running debootstrap")?;
    if !out.status.success() {
        let log = std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        bail!(
            "debootstrap {} failed ({}):\n{}\n{}\ndebootstrap.log:\n{}",
            release.codename(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 20),
            String::from_utf8_lossy(&out.stderr),
            tail(&log, 40)
        );
    }
    // debootstrap succeeds even when packages stay unconfigured (a
    // dependency it could not resolve): dpkg says which.
    let audit = run(Command::new("chroot").arg(root).args(["dpkg", "--audit"]))?;
    ensure!(audit.trim().is_empty(), "debootstrap left packages broken:\n{audit}");
    let version =
        run(Command::new("chroot").arg(root).args(["dpkg-query", "-W", "-f=${Version}", "cloud-init"]))?;
    Ok(version)
}

/// Everything the harness adds to Debian's tree.
pub(super) fn add_harness_files(root: &Path, kernel_version: &str) -> anyhow::Result<()> {
    copy_kernel_modules(root, kernel_version)?;
    // The disk QEMU gives the guest; no fsck (a fresh copy every boot).
    write(root, "etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 0\n")?;
    // Empty: systemd makes one on first boot, as on a cloud image (and
    // debootstrap's would be shared by every VM).
    write(root, "etc/machine-id", "")?;
    write(root, "etc/hostname", &format!("{NEUTRAL_HOSTNAME}\n"))?;
    // debootstrap copied the build host's resolver; the guest's comes from
    // DHCP. (systemd-resolved's symlink is left alone.)
    if root.join("etc/resolv.conf").symlink_metadata().is_ok_and(|m| m.is_file()) {
        write(root, "etc/resolv.conf", "")?;
    }
    // An installer sets the system locale; debootstrap does not, and
    // cloud-init's locale module then fails generating en_US.UTF-8.
    // C.UTF-8 is built into glibc. (trixie's /etc/default/locale is a
    // symlink to /etc/locale.conf: written there.)
    let locale = match std::fs::read_link(root.join("etc/default/locale")) {
        Ok(target) if target.is_absolute() => target.to_string_lossy().trim_start_matches('/').to_owned(),
        Ok(target) => format!("etc/default/{}", target.display()),
        Err(_) => "etc/default/locale".to_owned(),
    };
    let current = std::fs::read_to_string(root.join(&locale)).unwrap_or_default();
    if !current.lines().any(|l| l.starts_with("LANG=")) {
        write(root, &locale, &format!("{current}LANG=C.UTF-8\n"))?;
    }
    // A failed boot ends at once instead of at the test's timeout.
    write(root, &format!("etc/systemd/system/{POWEROFF_UNIT}"), POWEROFF_UNIT_TEXT)?;
    let wants = inside(root, &format!("etc/systemd/system/multi-user.target.wants/{POWEROFF_UNIT}"))?;
    std::os::unix::fs::symlink(format!("/etc/systemd/system/{POWEROFF_UNIT}"), wants)?;
    Ok(())
}

/// [`KERNEL_MODULES`] and their dependencies from the host's
/// /lib/modules/<version>, with the lists modprobe needs to know built-in
/// modules, indexed by depmod for that tree.
fn copy_kernel_modules(root: &Path, version: &str) -> anyhow::Result<()> {
    let host = Path::new("/lib/modules").join(version);
    for module in KERNEL_MODULES {
        let plan = run(Command::new("modprobe").args(["--show-depends", "--set-version", version, module]))?;
        // "insmod /lib/modules/<version>/kernel/…/x.ko " (or "builtin x")
        for file in plan.lines().filter_map(|l| l.strip_prefix("insmod ")) {
            let file = Path::new(file.trim());
            let relative = file.strip_prefix("/").context("module path")?;
            std::fs::copy(file, inside(root, relative.to_str().context("module path")?)?)
                .with_context(|| format!("copying {}", file.display()))?;
        }
    }
    for list in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        let to = inside(root, &format!("lib/modules/{version}/{list}"))?;
        std::fs::copy(host.join(list), to).with_context(|| format!("copying {list}"))?;
    }
    run(Command::new("depmod").arg("-b").arg(root).arg(version))?;
    Ok(())
}

/// Writes `relative` under `root`, replacing whatever was there.
fn write(root: &Path, relative: &str, content: &str) -> anyhow::Result<()> {
    std::fs::write(inside(root, relative)?, content).with_context(|| format!("writing /{relative}"))
}

/// `root/relative`, ready to be created: its directories exist and lie
/// inside `root` (the tree's own symlinks, such as lib -> usr/lib, are
/// followed; one leading out of the tree, to the host, is refused), and
/// nothing is there any more.
fn inside(root: &Path, relative: &str) -> anyhow::Result<PathBuf> {
    let path = root.join(relative);
    let parent = path.parent().context("no parent")?;
    std::fs::create_dir_all(parent)?;
    let (real_parent, real_root) = (parent.canonicalize()?, root.canonicalize()?);
    ensure!(
        real_parent.starts_with(&real_root),
        "/{relative} leads out of the image tree to {}",
        real_parent.display()
    );
    let path = real_parent.join(path.file_name().context("no file name")?);
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(&path).with_context(|| format!("replacing /{relative}"))?;
    }
    Ok(path)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The directory debootstrap installs into, next to the cache (the image is
/// made from it, then it goes). It is removed on drop unless something is
/// still mounted in it (debootstrap mounts /proc and /sys inside and
/// unmounts them when it exits; a killed build could leave them, and
/// removing files through a mount would reach the host's).
pub(super) struct BuildTree {
    dir: PathBuf,
}

impl BuildTree {
    pub(super) fn new(cache_dir: &Path, release: Release) -> anyhow::Result<Self> {
        let dir = cache_dir.join(format!("tree-{}-{}", release.codename(), std::process::id()));
        if dir.exists() {
            bail!("{} exists: a build by a process with the same id was killed; remove it", dir.display());
        }
        std::fs::create_dir(&dir)?;
        Ok(Self { dir })
    }

    pub(super) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for BuildTree {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let dir = self.dir.to_string_lossy();
        // Mount points are the second field, spaces escaped as \040.
        let busy = mounts.lines().filter_map(|l| l.split(' ').nth(1)).any(|m| m.starts_with(dir.as_ref()));
        if busy {
            eprintln!("leaving {dir}: something is still mounted in it");
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {dir}: {e}");
        }
    }
}
