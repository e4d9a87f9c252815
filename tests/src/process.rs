//! A child process whose stderr goes to a log file the test can search: the
//! machinery every harness process (agent, sidecar, webhook) shares.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct Process {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `command` (stdin and stdout closed, stderr to the log).
    pub fn spawn(name: &'static str, mut command: Command) -> anyhow::Result<Self> {
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join(format!("{name}.log"));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(Self { name, child: Some(child), log, _log_dir: log_dir })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_for_log_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().matches(needle).count() >= count {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("the {} exited ({status}) before logging {needle:?}:\n{}", self.name, self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} did not log {needle:?} ×{count} within {timeout:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: nothing of the process's own cleanup runs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().with_context(|| format!("the {} already stopped", self.name))?;
        crate::netns::run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the {} ignored SIGTERM for 10s:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}
