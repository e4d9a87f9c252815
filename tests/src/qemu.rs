//! A QEMU process whose serial console (its stdout) is collected while it
//! runs, and which is killed if the test returns early or panics.

use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct Qemu {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Qemu {
    /// Starts `command` (a `qemu-system-*` command line with `-serial stdio`).
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().context("no qemu stdout")?;
        let sink = console.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
            }
        });
        Ok(Self { child, console, reader: Some(reader) })
    }

    /// Everything on the serial console so far, `\r` removed.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap_or_else(|e| e.into_inner())).replace('\r', "")
    }

    /// Waits for the guest to power off (QEMU exits by itself with
    /// `-no-reboot`) and returns the whole console. Fails with the console so
    /// far when that takes longer than `timeout` (QEMU is killed) or QEMU
    /// exits with an error.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the guest did not power off within {timeout:?}; console so far:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let console = self.console();
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("qemu exited with {status}: {err}\nconsole:\n{console}");
        }
        Ok(console)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
