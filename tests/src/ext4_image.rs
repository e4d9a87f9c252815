//! Files in a raw ext4 image, read with e2fsprogs' `debugfs` (nothing is
//! mounted): what a powered-off guest left on its disk.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

/// Symlinks followed before giving up (the kernel's limit).
const MAX_LINKS: usize = 40;

#[derive(Debug)]
pub struct Ext4Image {
    path: PathBuf,
}

/// What `debugfs stat` says a path is.
#[derive(Debug, PartialEq)]
enum Entry {
    Regular,
    Symlink,
    Other(String),
}

impl Ext4Image {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_owned() }
    }

    /// The content of the file at `path` (absolute, as the guest sees it),
    /// following symlinks in any component; `None` when nothing is there.
    pub fn read(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let mut path = path.to_owned();
        for _ in 0..MAX_LINKS {
            // debugfs follows symlinks in the leading components itself, not
            // in the last one.
            match self.stat(&path)? {
                None => return Ok(None),
                Some(Entry::Regular) => return self.debugfs("cat", &path).map(Some),
                Some(Entry::Symlink) => path = resolve(&path, &self.link_target(&path)?),
                Some(Entry::Other(kind)) => {
                    bail!("{path} in {} is a {kind}, not a file", self.path.display())
                }
            }
        }
        bail!("{path} in {}: more than {MAX_LINKS} symlinks", self.path.display())
    }

    /// [`Ext4Image::read`] as UTF-8 (lossy: logs may hold anything).
    pub fn read_text(&self, path: &str) -> anyhow::Result<Option<String>> {
        Ok(self.read(path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn stat(&self, path: &str) -> anyhow::Result<Option<Entry>> {
        match self.debugfs("stat", path) {
            Ok(out) => {
                let out = String::from_utf8_lossy(&out);
                let kind = out
                    .split_once("Type: ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .with_context(|| format!("debugfs stat {path}: no type in {out}"))?;
                Ok(Some(match kind {
                    "regular" => Entry::Regular,
                    "symlink" => Entry::Symlink,
                    other => Entry::Other(other.to_owned()),
                }))
            }
            Err(e) if e.to_string().contains("File not found by ext2_lookup") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn link_target(&self, path: &str) -> anyhow::Result<String> {
        let stat = String::from_utf8_lossy(&self.debugfs("stat", path)?).into_owned();
        // Short targets live in the inode ("fast" links), longer ones in a
        // data block, which `cat` prints.
        if let Some(rest) = stat.split_once("Fast link dest: \"").map(|(_, r)| r) {
            return Ok(rest[..rest.rfind('"').context("unterminated link target")?].to_owned());
        }
        Ok(String::from_utf8(self.debugfs("cat", path)?)?)
    }

    /// `debugfs -R "<request> <path>"` on the image, read-only. debugfs exits
    /// 0 whatever happens; its errors are whatever it prints on stderr after
    /// its banner.
    fn debugfs(&self, request: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        ensure!(
            path.starts_with('/') && !path.contains(|c: char| c.is_whitespace() || c == '"'),
            "not a path debugfs can take: {path:?}"
        );
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("{request} \"{path}\""))
            .arg(&self.path)
            .env("DEBUGFS_PAGER", "__none__")
            .stdin(Stdio::null())
            .output()
            .context("running debugfs (apt-get install e2fsprogs)")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> =
            stderr.lines().filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()).collect();
        if !out.status.success() || !errors.is_empty() {
            bail!("debugfs {request} {path} on {}: {}", self.path.display(), errors.join("; "));
        }
        Ok(out.stdout)
    }
}

/// Where a symlink at `link` pointing to `target` leads.
fn resolve(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return target.to_owned();
    }
    let parent = link.rsplit_once('/').map(|(p, _)| p).unwrap_or_default();
    format!("{parent}/{target}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_resolve_against_the_links_directory() {
        assert_eq!(
            resolve("/var/lib/cloud/instance", "/var/lib/cloud/instances/vm.ns"),
            "/var/lib/cloud/instances/vm.ns"
        );
        assert_eq!(resolve("/etc/resolv.conf", "../run/resolv.conf"), "/etc/../run/resolv.conf");
        assert_eq!(resolve("/link", "target"), "/target");
    }

    #[test]
    fn reads_files_through_symlinks_and_tells_missing_from_broken() {
        crate::require_tools(&[("mkfs.ext4", "e2fsprogs"), ("debugfs", "e2fsprogs")]).unwrap();
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        let long_name = "d".repeat(80); // a target too long for a fast link
        std::fs::create_dir_all(root.join("var/lib/cloud/instances/vm.ns")).unwrap();
        std::fs::create_dir_all(root.join(&long_name)).unwrap();
        std::fs::write(root.join("var/lib/cloud/instances/vm.ns/user-data.txt"), b"#cloud-config\n\xff")
            .unwrap();
        std::fs::write(root.join(&long_name).join("f"), "far").unwrap();
        let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, root.join(at)).unwrap();
        link("/var/lib/cloud/instances/vm.ns", "var/lib/cloud/instance");
        link("instance/user-data.txt", "var/lib/cloud/ud");
        link(&format!("/{long_name}/f"), "long");
        link("/nowhere", "dangling");
        let image = root.with_extension("img");
        crate::netns::run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(root).arg(&image).arg("8M"))
            .unwrap();
        let disk = Ext4Image::new(&image);

        let expected = b"#cloud-config\n\xff".to_vec();
        assert_eq!(disk.read("/var/lib/cloud/instance/user-data.txt").unwrap(), Some(expected.clone()));
        assert_eq!(disk.read("/var/lib/cloud/ud").unwrap(), Some(expected));
        assert_eq!(disk.read_text("/long").unwrap().as_deref(), Some("far"));
        assert_eq!(disk.read("/var/lib/cloud/instance/nothing").unwrap(), None);
        assert_eq!(disk.read("/dangling").unwrap(), None);
        let dir = disk.read("/var/lib/cloud/instance").unwrap_err().to_string();
        assert!(dir.contains("is a directory"), "{dir}");
        assert!(disk.read("relative").is_err());
        std::fs::remove_file(&image).unwrap();
    }
}
