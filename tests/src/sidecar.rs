//! The real `kubevirt-imds sidecar` process, started inside a namespace.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// The binary under test: `cargo xtask test` builds it (with the eBPF object
/// embedded) and passes its path.
pub fn binary() -> PathBuf {
    crate::built_binary("IMDS_SIDECAR_BIN", "kubevirt-imds")
}

pub struct Identity<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub vm_name: &'a str,
}

pub struct Sidecar {
    child: Option<Child>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts the sidecar in `pod` and waits until it serves.
    pub fn start(pod: &Netns, id: &Identity, token_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_binary(&binary(), pod, id, token_dir, extra)
    }

    /// [`Sidecar::start`] with an explicit binary.
    pub fn start_binary(
        binary: &Path,
        pod: &Netns,
        id: &Identity,
        token_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::launch(pod.command(binary.to_str().context("non-UTF-8 binary path")?), id, token_dir, extra)
    }

    /// Starts the sidecar as a pod would run it: no new privileges, and a
    /// capability bounding set of exactly `capabilities` (e.g. `net_admin`).
    pub fn start_confined(
        pod: &Netns,
        id: &Identity,
        token_dir: &Path,
        capabilities: &[&str],
    ) -> anyhow::Result<Self> {
        let bounding: Vec<String> =
            std::iter::once("-all".to_owned()).chain(capabilities.iter().map(|c| format!("+{c}"))).collect();
        let mut command = pod.command("setpriv");
        command
            .args(["--no-new-privs", "--inh-caps", "-all", "--bounding-set", &bounding.join(","), "--"])
            .arg(binary());
        Self::launch(command, id, token_dir, &[])
    }

    fn launch(mut command: Command, id: &Identity, token_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join("sidecar.log");
        let stderr = File::create(&log)?;
        let child = command
            .args(["sidecar", "--namespace", id.namespace, "--service-account-name", id.service_account])
            .args(["--vm-name", id.vm_name, "--token-dir"])
            .arg(token_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting the sidecar")?;
        let mut sidecar = Self { child: Some(child), log, _log_dir: log_dir };
        sidecar.wait_for_log("IMDS serving", Duration::from_secs(15))?;
        sidecar.wait_for_log("program=\"imds_to_guest\"", Duration::from_secs(15))?;
        Ok(sidecar)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("sidecar exited ({status}) before logging {needle:?}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("sidecar did not log {needle:?} within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: nothing of the sidecar's own cleanup runs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("sidecar already stopped")?;
        crate::netns::run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("sidecar ignored SIGTERM for 10s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}
