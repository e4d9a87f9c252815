//! One boot of a stock image: QEMU on a sparse copy of it, until the guest
//! powers off; then its disk can be read.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::StockImage;
use crate::{
    cloud_init_outcome::CloudInitOutcome, ext4_image::Ext4Image, netns::Netns, netns::run, qemu::Qemu,
};

/// The kernel command line: the root disk and the serial console, nothing
/// for cloud-init. `panic=-1` turns a kernel panic into a reboot, which
/// `-no-reboot` turns into QEMU's exit.
const KERNEL_ARGS: &str = "root=/dev/vda rw console=ttyS0 panic=-1";

/// A guest that booted and powered off.
pub struct Booted {
    console: String,
    duration: Duration,
    disk: Ext4Image,
    _dir: tempfile::TempDir,
}

impl StockImage {
    /// Boots a fresh copy of the image with its NIC on `tap` (which exists
    /// in `netns`, plugged into the pod's bridge) and the caller's
    /// `-smbios`/`-uuid` arguments, and waits for it to power off. Fails
    /// with the console so far when that takes longer than `timeout` (QEMU
    /// is then killed, as it is if the caller panics).
    pub fn boot(
        &self,
        netns: &Netns,
        tap: &str,
        mac: &str,
        smbios_args: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Booted> {
        let dir = tempfile::tempdir()?;
        let disk: PathBuf = dir.path().join("disk.img");
        run(Command::new("cp").args(["--sparse=always", "--reflink=auto"]).arg(&self.image).arg(&disk))?;
        let mut command = netns.command("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot", "-nodefaults"])
            .args(["-serial", "stdio", "-kernel"])
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", KERNEL_ARGS])
            // cache=unsafe: nothing needs the guest's flushes to reach the
            // disk before QEMU exits, and TCG is slow enough.
            .args(["-drive", &format!("file={},format=raw,if=virtio,cache=unsafe", disk.display())])
            .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
            .args(smbios_args);
        let started = Instant::now();
        let console = Qemu::spawn(command)?.wait(timeout)?;
        let duration = started.elapsed();
        eprintln!("{} booted and powered off in {duration:.1?}", self.release.codename());
        Ok(Booted { console, duration, disk: Ext4Image::new(&disk), _dir: dir })
    }
}

impl Booted {
    /// The serial console, `\r` removed.
    pub fn console(&self) -> &str {
        &self.console
    }

    /// From QEMU's start to its exit.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// A file on the guest's disk after power-off (symlinks followed);
    /// `None` when there is none.
    pub fn read(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.disk.read(path)
    }

    /// [`Booted::read`] as (lossy) UTF-8.
    pub fn read_text(&self, path: &str) -> anyhow::Result<Option<String>> {
        self.disk.read_text(path)
    }

    /// What cloud-init recorded about this boot.
    pub fn cloud_init(&self) -> anyhow::Result<CloudInitOutcome> {
        CloudInitOutcome::read(&self.disk)
    }
}
