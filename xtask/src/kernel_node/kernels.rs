//! The node kernels of the matrix: which Debian package each comes from
//! and how it is fetched into the cache (never installed on the host).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// One kernel of the matrix.
pub struct NodeKernel {
    /// What `--kernel` takes: `6.1`, `5.10`.
    pub version: &'static str,
    /// Where it comes from, for the README table and the log.
    pub source: &'static str,
    /// The Debian suite whose package registry has it.
    suite: &'static str,
    /// Its image package; `None` for the one `cargo xtask setup` installs
    /// on the host (Debian 12's `linux-image-amd64`).
    package: Option<&'static str>,
}

pub const KERNELS: [NodeKernel; 2] = [
    NodeKernel {
        version: "6.1",
        source: "Debian 12 (bookworm) linux-image-amd64, installed by cargo xtask setup",
        suite: "bookworm",
        package: None,
    },
    NodeKernel {
        version: "5.10",
        source: "Debian 11 (bullseye) linux-image-5.10.0-32-amd64, fetched with apt-get download",
        suite: "bullseye",
        package: Some("linux-image-5.10.0-32-amd64"),
    },
];

/// A kernel ready to boot: its image, its release (`uname -r`) and the
/// directory holding `lib/modules/<release>` with a `modules.dep`.
pub struct Prepared {
    pub vmlinuz: PathBuf,
    pub release: String,
    pub modules_root: PathBuf,
}

impl Prepared {
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_root.join("lib/modules").join(&self.release)
    }
}

pub fn find(version: &str) -> anyhow::Result<&'static NodeKernel> {
    let known: Vec<&str> = KERNELS.iter().map(|k| k.version).collect();
    KERNELS
        .iter()
        .find(|k| k.version == version)
        .with_context(|| format!("no node kernel {version:?} in the matrix; known: {}", known.join(", ")))
}

impl NodeKernel {
    pub fn prepare(&self, cache: &Path) -> anyhow::Result<Prepared> {
        match self.package {
            None => self.installed(),
            Some(package) => self.fetched(package, cache),
        }
    }

    /// The newest /boot/vmlinuz-<version>.* of the host with its modules.
    fn installed(&self) -> anyhow::Result<Prepared> {
        let prefix = format!("vmlinuz-{}.", self.version);
        let mut found: Vec<String> = std::fs::read_dir("/boot")
            .context("reading /boot")?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
            .filter(|release| Path::new("/lib/modules").join(release).join("modules.dep").is_file())
            .collect();
        found.sort();
        let release = found.pop().with_context(|| {
            format!("no /boot/vmlinuz-{}.* with modules: run `cargo xtask setup`", self.version)
        })?;
        Ok(Prepared {
            vmlinuz: Path::new("/boot").join(format!("vmlinuz-{release}")),
            release,
            modules_root: "/".into(),
        })
    }

    /// The package downloaded from its suite with a private apt state
    /// (the host's sources and lists are untouched), unpacked and indexed.
    fn fetched(&self, package: &str, cache: &Path) -> anyhow::Result<Prepared> {
        let release = package.strip_prefix("linux-image-").context("package name")?.to_owned();
        let root = cache.join(format!("linux-{release}"));
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        let prepared = Prepared { vmlinuz, release: release.clone(), modules_root: root.clone() };
        if prepared.vmlinuz.is_file() && prepared.modules_dir().join("modules.dep").is_file() {
            return Ok(prepared);
        }
        let apt = cache.join(format!("apt-{}", self.suite));
        for dir in ["sources", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(apt.join(dir))?;
        }
        // The host's own registry (deb.debian.org or its mirror), another suite.
        std::fs::write(
            apt.join("sources").join(format!("{}.sources", self.suite)),
            format!(
                "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
                host_debian_uri(),
                self.suite
            ),
        )?;
        let options = |c: &mut Command| {
            for (key, value) in [
                ("Dir::Etc::sourcelist", PathBuf::from("/dev/null")),
                ("Dir::Etc::sourceparts", apt.join("sources")),
                ("Dir::State::Lists", apt.join("lists")),
                ("Dir::Cache", apt.join("cache")),
                // Root downloads into a root-owned cache; apt's _apt sandbox cannot.
                ("APT::Sandbox::User", PathBuf::from("root")),
            ] {
                c.arg("-o").arg(format!("{key}={}", value.display()));
            }
        };
        let mut update = Command::new("apt-get");
        options(&mut update);
        cmd::run(update.arg("update"))?;
        let download_dir = tempfile::tempdir_in(cache)?;
        let mut download = Command::new("apt-get");
        options(&mut download);
        cmd::run(download.args(["download", package]).current_dir(download_dir.path()))?;
        let deb = std::fs::read_dir(download_dir.path())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} produced no .deb"))?;
        let staging = tempfile::tempdir_in(cache)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(staging.path()))?;
        // The package's postinst would run depmod; it is not installed, so do it here.
        cmd::run(Command::new("depmod").arg("-b").arg(staging.path()).arg(&release))?;
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::rename(staging.keep(), &root)?;
        if !prepared.vmlinuz.is_file() {
            bail!("{package} has no {}", prepared.vmlinuz.display());
        }
        Ok(prepared)
    }
}

/// The URI of the host's Debian sources (bookworm's), so another suite
/// comes from the same registry.
fn host_debian_uri() -> String {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    sources
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .filter_map(|u| u.split_whitespace().next())
        .find(|u| !u.contains("security"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_owned()
}
