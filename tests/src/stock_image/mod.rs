//! A stock Debian cloud-style image — debootstrap's Debian with Debian's
//! cloud-init and its configuration untouched — booted under QEMU with the
//! host's Debian kernel, and read back from its disk once it powered off.
//!
//! Images are built once per release and cached as raw ext4 files named by
//! release, kernel version and [`FORMAT`]; each boot writes to a sparse
//! copy. What the harness adds to the Debian tree, and why, is in
//! [`rootfs`].

mod boot;
mod rootfs;

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Context as _;

pub use self::boot::Booted;
use crate::{netns::run, require_tools, vm::find_kernel};

/// Bump whenever what goes into an image changes: cached images of another
/// format are rebuilt (and removed).
const FORMAT: u32 = 2;

/// The environment variable `cargo xtask test` sets to the image cache.
pub const CACHE_DIR_ENV: &str = "IMDS_STOCK_IMAGE_CACHE";

/// Where `cargo xtask test` wants images cached.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    std::env::var_os(CACHE_DIR_ENV)
        .map(PathBuf::from)
        .with_context(|| format!("{CACHE_DIR_ENV} is not set: run the tests with `cargo xtask test`"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian 12, cloud-init 22.4.2.
    Bookworm,
    /// Debian 13, cloud-init 25.1.
    Trixie,
}

impl Release {
    pub fn codename(self) -> &'static str {
        match self {
            Self::Bookworm => "bookworm",
            Self::Trixie => "trixie",
        }
    }
}

pub struct StockImage {
    release: Release,
    image: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

impl StockImage {
    /// The cached image of `release` for the host's kernel, built first if
    /// there is none (a few minutes: debootstrap downloads and installs
    /// about 400 MB). Concurrent callers wait for one build.
    pub fn prepare(release: Release, cache_dir: &Path) -> anyhow::Result<Self> {
        require_tools(&[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("debootstrap", "debootstrap"),
            ("mkfs.ext4", "e2fsprogs"),
            ("debugfs", "e2fsprogs"),
            ("modprobe", "kmod"),
            ("depmod", "kmod"),
        ])?;
        let (kernel, kernel_version) = find_kernel()?;
        let initrd = kernel.with_file_name(format!("initrd.img-{kernel_version}"));
        anyhow::ensure!(
            initrd.is_file(),
            "no {} for the guest kernel: update-initramfs -c -k {kernel_version} (initramfs-tools)",
            initrd.display()
        );
        std::fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
        let stem = format!("debian-{}-{kernel_version}", release.codename());
        let image = cache_dir.join(format!("{stem}-v{FORMAT}.img"));

        if image.is_file() {
            return Ok(Self { release, image, kernel, initrd });
        }
        // One build at a time (they share debootstrap's package cache);
        // whoever waited for this release's build finds its image.
        let lock = File::create(cache_dir.join("build.lock"))?;
        lock.lock().context("locking the image cache")?;
        if !image.is_file() {
            build(release, cache_dir, &kernel_version, &image)
                .with_context(|| format!("building the {} image", release.codename()))?;
            remove_other_formats(cache_dir, &stem, &image);
        }
        Ok(Self { release, image, kernel, initrd })
    }

    pub fn release(&self) -> Release {
        self.release
    }
}

/// debootstrap, the harness's additions, then `mkfs.ext4 -d` into a
/// temporary name renamed into place: a reader never sees half an image.
fn build(release: Release, cache_dir: &Path, kernel_version: &str, image: &Path) -> anyhow::Result<()> {
    let tree = rootfs::BuildTree::new(cache_dir, release)?;
    let started = Instant::now();
    let cloud_init = rootfs::debootstrap(release, tree.path(), &cache_dir.join("debs"))?;
    let debootstrapped = started.elapsed();
    rootfs::add_harness_files(tree.path(), kernel_version)?;
    let started = Instant::now();
    let partial = image.with_extension(format!("img.partial-{}", std::process::id()));
    // No journal: debugfs reads the disk after power-off without replaying
    // one. 2 GiB, sparse: room for what cloud-init writes.
    let made = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-L", "root", "-d"])
        .arg(tree.path())
        .arg(&partial)
        .arg("2G"));
    if let Err(e) = made.and_then(|_| Ok(std::fs::rename(&partial, image)?)) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    eprintln!(
        "stock image {}: cloud-init {cloud_init}; debootstrap {:.0?}, mkfs.ext4 {:.1?} → {}",
        release.codename(),
        debootstrapped,
        started.elapsed(),
        image.display()
    );
    Ok(())
}

/// Images of this release and kernel in another format are stale.
fn remove_other_formats(cache_dir: &Path, stem: &str, current: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale =
            name.starts_with(&format!("{stem}-v")) && name.ends_with(".img") && entry.path() != current;
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
