//! A memory cgroup with a hard limit, as a Deployment's `limits.memory`
//! puts a container in one: for checking that a process stays inside its
//! limit under hostile input. cgroup v2 where it has the memory controller,
//! else v1's `memory` hierarchy.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::kubelet::mount_point;

pub struct MemoryCap {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCap {
    /// A new cgroup limited to `bytes`, without swap.
    pub fn new(bytes: u64) -> anyhow::Result<Self> {
        let name = format!("imds-memory-cap-{}-{}", std::process::id(), bytes);
        let v2_root = mount_point(|fstype, _| fstype == "cgroup2").ok().filter(|root| {
            std::fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let cap = if let Some(root) = v2_root {
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("memory.max"), bytes.to_string())?;
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            Self { dir, v2: true }
        } else {
            let root = mount_point(|fstype, options| {
                fstype == "cgroup" && options.split(',').any(|o| o == "memory")
            })
            .context("no memory cgroup (v2 controller or v1 hierarchy)")?;
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())?;
            // Without swap accounting the file is absent: there is no swap to limit.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                std::fs::write(memsw, bytes.to_string())?;
            }
            Self { dir, v2: false }
        };
        Ok(cap)
    }

    /// Moves `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }

    /// How many processes the kernel's OOM killer killed in the cgroup.
    pub fn oom_kills(&self) -> anyhow::Result<u64> {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(self.dir.join(file))?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .context("no oom_kill count")?
            .trim()
            .parse()
            .context("oom_kill count")
    }

    /// The most memory the cgroup has used, in bytes.
    pub fn peak(&self) -> anyhow::Result<u64> {
        let file = if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        Ok(std::fs::read_to_string(self.dir.join(file))?.trim().parse()?)
    }
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        // Whatever is still inside goes back to the root first.
        if let (Ok(procs), Some(root)) =
            (std::fs::read_to_string(self.dir.join("cgroup.procs")), self.dir.parent())
        {
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
