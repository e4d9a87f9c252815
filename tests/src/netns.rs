//! Network namespaces that clean up after themselves, and running commands
//! in them.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted on drop with every
/// interface and process-less socket in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `role` ends up in the name (`imds-<role>-<pid>-<n>`), so a namespace
    /// leaked by a crashed test says whose it was.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!("imds-{role}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip("link set lo up")?;
        // `ip netns exec` mounts /etc/netns/<name>/resolv.conf over the
        // host's: a resolver on lo that refuses at once, instead of one
        // across an unreachable network that times out (cloud-init and
        // python probe DNS before using IP literals).
        let etc = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip -n <ns> <args>` (split on whitespace).
    pub fn ip(&self, args: &str) -> anyhow::Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args.split_whitespace());
        run(&mut c)
    }

    /// `sh -c <script>` inside the namespace; fails unless it exits 0.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        run(self.command("sh").args(["-c", script]))
    }

    /// Like [`Netns::sh`] but returns the output whatever the exit status.
    pub fn sh_status(&self, script: &str) -> anyhow::Result<Output> {
        self.command("sh").args(["-c", script]).stdin(Stdio::null()).output().context("running sh")
    }

    /// ifindex and MAC of `ifname` in this namespace.
    pub fn link(&self, ifname: &str) -> anyhow::Result<(u32, String)> {
        let out = self.ip(&format!("-j link show dev {ifname}"))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let l = &v[0];
        let index = l["ifindex"].as_u64().context("no ifindex")? as u32;
        let mac = l["address"].as_str().context("no address")?.to_owned();
        Ok((index, mac))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes started in the namespace by a test are the test's to stop.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// Removes what a killed run of the harness left behind (SIGKILL skips
/// `Drop`): its namespaces (`imds-<role>-<pid>-<n>`) and its bpffs mounts
/// (`imds-bpffs-<pid>-…`, whose pins keep programs loaded), for every pid
/// that is no longer running. Returns what it removed.
pub fn sweep_leftovers() -> anyhow::Result<Vec<String>> {
    let dead =
        |pid: &str| pid.parse::<u32>().is_ok_and(|pid| !Path::new("/proc").join(pid.to_string()).exists());
    let mut removed = Vec::new();
    let list = run(Command::new("ip").args(["netns", "list"]))?;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let mut parts = name.split('-');
        let (Some("imds"), Some(_role), Some(pid), Some(_n), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if dead(pid) {
            run(Command::new("ip").args(["netns", "del", name]))?;
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
            removed.push(format!("namespace {name}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(point), Some(&"bpf")) = (fields.get(1), fields.get(2)) else { continue };
        let point = Path::new(point);
        let Some(rest) = point
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(crate::imds::BPFFS_PREFIX))
        else {
            continue;
        };
        if rest.split('-').next().is_some_and(dead) {
            run(Command::new("umount").arg(point))?;
            let _ = std::fs::remove_dir(point);
            removed.push(format!("bpffs {}", point.display()));
        }
    }
    Ok(removed)
}

/// Runs `cmd`; returns stdout, or an error with the command line and stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {line}"))?;
    if !out.status.success() {
        bail!("{line} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails (never skips) when the test cannot do what it must: privileged
/// tests are part of `cargo xtask test` and CI, and a silent skip there
/// would hide a broken data path.
pub fn require_root() {
    let uid = run(Command::new("id").arg("-u")).unwrap_or_default();
    assert_eq!(uid.trim(), "0", "privileged test: run as root (cargo xtask test does); it does not skip");
}

/// Serialises privileged tests: one agent and sidecar at a time keeps
/// their waits and counters apart.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A background process in a namespace, killed on drop.
pub struct Background(std::process::Child);

impl Background {
    /// Starts `command` (stdin and stdout closed, stderr inherited).
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Self(child))
    }
}

impl Netns {
    pub fn spawn(&self, program: &str, args: &[&str]) -> anyhow::Result<Background> {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))?;
        Ok(Background(child))
    }

    /// A plain HTTP server on `ip:port` serving a directory with `hello`
    /// (body `hello from <ip>`); returns once it accepts connections.
    pub fn http_server(&self, ip: &str, port: u16, dir: &std::path::Path) -> anyhow::Result<Background> {
        std::fs::write(dir.join("hello"), format!("hello from {ip}"))?;
        // busybox httpd: no reverse DNS lookup at start (python's http.server
        // stalls on one in a namespace whose resolver is unreachable).
        let server = self.spawn(
            "busybox",
            &["httpd", "-f", "-p", &format!("{ip}:{port}"), "-h", dir.to_str().context("path")?],
        )?;
        let mut last = None;
        for _ in 0..100 {
            match self.sh(&format!("curl -sSf -m 1 http://{ip}:{port}/hello")) {
                Ok(_) => return Ok(server),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("HTTP server on {ip}:{port} in {} did not come up: {last:?}", self.name)
    }
}

impl Drop for Background {
    /// Kills the process and every process it started (nginx's worker, the
    /// `curl` of a shell loop): killing only the first would leave them
    /// running, orphaned. The process is stopped first so that it cannot
    /// start another while its tree is read.
    fn drop(&mut self) {
        use nix::{sys::signal, unistd::Pid};
        let Ok(pid) = i32::try_from(self.0.id()) else { return };
        let root = Pid::from_raw(pid);
        let _ = signal::kill(root, signal::Signal::SIGSTOP);
        for child in descendants(pid) {
            let _ = signal::kill(Pid::from_raw(child), signal::Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every process below `pid`, from each process's parent in
/// `/proc/<pid>/stat` (`/proc/<pid>/task/*/children` needs a kernel option
/// stock kernels do not all set).
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: i32 = e.file_name().to_str()?.parse().ok()?;
            let ppid = stat_after_comm(p)?.nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut next = 0;
    while let Some(&p) = found.get(next) {
        for &(child, ppid) in &parents {
            // A pid reused while /proc was read could make a cycle.
            if ppid == p && !found.contains(&child) {
                found.push(child);
            }
        }
        next += 1;
    }
    found.remove(0);
    found
}

/// The fields of `/proc/<pid>/stat` after `pid (comm)`: state, ppid, …
/// (comm may hold spaces and parentheses).
fn stat_after_comm(pid: i32) -> Option<std::vec::IntoIter<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<String> = stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect();
    Some(fields.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alive and not a zombie waiting for its (new) parent to reap it.
    fn running(pid: i32) -> bool {
        stat_after_comm(pid).and_then(|mut f| f.next()).is_some_and(|state| state != "Z")
    }

    #[test]
    fn dropping_a_background_process_kills_what_it_started() {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 300 & sleep 300 & wait"]);
        let shell = Background::spawn(command).expect("sh starts");
        let pid = i32::try_from(shell.0.id()).expect("a pid fits");
        let mut children = Vec::new();
        for _ in 0..200 {
            children = descendants(pid);
            if children.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(children.len(), 2, "the shell's two sleeps: {children:?}");
        drop(shell);
        for _ in 0..200 {
            if !children.iter().any(|&c| running(c)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("still running after the drop: {children:?}");
    }
}
