//! One QEMU node (software emulation: this machine's KVM cannot boot stock
//! kernels) running a job script on a given kernel, with the host's file
//! system under it, and what the job left behind.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::kernels::Prepared;

/// Where the job directory appears in the node.
pub const JOB_DIR: &str = "imds-job";

/// The 9p shares of a node.
#[derive(Clone, Copy)]
pub enum Tag {
    /// The host's `/`, read-only (a tmpfs overlay makes it writable).
    Host,
    /// The kernel's modules, when the host has none for it.
    Modules,
    /// The job script, its exit status and the node's kernel release.
    Job,
}

impl Tag {
    pub fn name(self) -> &'static str {
        match self {
            Tag::Host => "imds-host",
            Tag::Modules => "imds-modules",
            Tag::Job => "imds-job",
        }
    }
}

/// PID 1 once the overlay is the root: what a node needs for the tests
/// (bpffs, cgroups, /run for `ip netns`), then the job; its exit status
/// and the kernel release go back through the job directory.
const NODE_INIT: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t tmpfs -o mode=0755 tmpfs /run
# /tmp stays the overlay's: the workspace may live there (a CI clone).
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# The hybrid layout of the host the tests are written on (cgroup v1
# controllers, v2 at unified/); the agent handles both.
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
mkdir -p /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
hostname imds-node
uname -r > /imds-job/release
echo "node up: Linux $(uname -r), $(nproc) CPUs"
sh /imds-job/job.sh
echo $? > /imds-job/status
sync
echo o > /proc/sysrq-trigger
sleep 60
"#;

pub struct Node<'a> {
    pub kernel: &'a Prepared,
    pub initramfs: &'a Path,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// What a job left: its exit status, the release it ran on, the console.
pub struct Outcome {
    pub status: i32,
    pub release: String,
    pub wall: Duration,
}

impl Node<'_> {
    /// Boots the node, runs `job` (a shell script) in it and waits for it
    /// to power off; the console goes to stdout and to `console_log`.
    pub fn run(&self, job: &str, console_log: &Path, timeout: Duration) -> anyhow::Result<Outcome> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("node-init.sh"), NODE_INIT)?;
        std::fs::write(dir.path().join("job.sh"), job)?;
        let share = |tag: Tag, path: &Path, readonly: bool| {
            format!(
                "local,path={},mount_tag={},security_model=none,multidevs=remap{}",
                path.display(),
                tag.name(),
                if readonly { ",readonly=on" } else { "" }
            )
        };
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-cpu", "max", "-nographic", "-no-reboot", "-nodefaults"])
            .args(["-smp", &self.cpus.to_string(), "-m", &self.memory_mib.to_string()])
            .args(["-serial", "stdio", "-kernel"])
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-virtfs")
            .arg(share(Tag::Host, Path::new("/"), true))
            .arg("-virtfs")
            .arg(share(Tag::Modules, &self.kernel.modules_dir(), true))
            .arg("-virtfs")
            .arg(share(Tag::Job, dir.path(), false))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        let mut child = qemu.spawn().context("starting qemu-system-x86_64 (qemu-system-x86)")?;
        let stdout = child.stdout.take().context("no qemu stdout")?;
        let log_path: PathBuf = console_log.to_owned();
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            let mut log = std::fs::File::create(&log_path)?;
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            while lines.read_until(b'\n', &mut line)? > 0 {
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                print!("{text}");
                log.write_all(text.as_bytes())?;
                line.clear();
            }
            Ok(())
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the node did not power off within {timeout:?} (console: {})", console_log.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = reader.join();
        if !status.success() {
            bail!("qemu exited with {status} (console: {})", console_log.display());
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).map(|s| s.trim().to_owned());
        let job_status = read("status").with_context(|| {
            format!(
                "the job left no exit status: the node failed to boot or to finish (console: {})",
                console_log.display()
            )
        })?;
        Ok(Outcome {
            status: job_status.parse().with_context(|| format!("exit status {job_status:?}"))?,
            release: read("release").unwrap_or_default(),
            wall: started.elapsed(),
        })
    }
}
