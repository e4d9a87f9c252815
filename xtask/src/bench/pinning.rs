//! Where the HTTP section's client and servers run. On a machine with two
//! CPUs or more, wrk gets one and every server under test another, so that
//! the load generator never takes the server's core and a way's figure does
//! not depend on where the scheduler happened to put the two. With one CPU
//! nothing is pinned, and the report says so.
//!
//! The choice, the parsers and nginx's mask are pure; [`spawn_on`],
//! [`pin`] and the checks act on processes.

use std::{fmt, path::Path, process::Command};

use anyhow::{Context as _, bail, ensure};
use imds_tests::netns::{self, Background, Netns};

/// More than any kernel's `NR_CPUS`: a range beyond it is not a CPU list.
const MAX_CPUS: usize = 8192;

/// Where wrk and the servers under test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// wrk on `client`, every server (each thread of it) on `server`.
    Pinned { client: usize, server: usize },
    /// The CPUs this process may use are fewer than two: nothing pinned.
    Unpinned { cpus: Vec<usize> },
}

impl Placement {
    /// Chooses from the CPUs this process may run on. With three or more
    /// the first is left to the rest of the machine (the agent, this
    /// process, and the interrupts and timers that tend to land on CPU 0).
    pub fn choose(cpus: &[usize]) -> Self {
        match cpus {
            [client, server] | [_, client, server, ..] => Self::Pinned { client: *client, server: *server },
            _ => Self::Unpinned { cpus: cpus.to_vec() },
        }
    }

    /// From this process's affinity (`Cpus_allowed_list`, which the cpuset
    /// of its cgroup narrows too).
    pub fn of_this_process() -> anyhow::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        Ok(Self::choose(&allowed_cpus(&status)?))
    }

    pub fn client(&self) -> Option<usize> {
        match self {
            Self::Pinned { client, .. } => Some(*client),
            Self::Unpinned { .. } => None,
        }
    }

    pub fn server(&self) -> Option<usize> {
        match self {
            Self::Pinned { server, .. } => Some(*server),
            Self::Unpinned { .. } => None,
        }
    }
}

/// One sentence for the report.
impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pinned { client, server } => write!(
                f,
                "wrk was pinned to CPU {client} and every server under test (our sidecar, both `serve`s, \
                 nginx's master and its one worker), each thread of it, to CPU {server}"
            ),
            Self::Unpinned { cpus } => write!(
                f,
                "nothing was pinned: the benchmark could run on {} only, so wrk and the servers shared it \
                 (nginx with `worker_processes auto`)",
                match cpus.as_slice() {
                    [] => "no CPU it could name".to_owned(),
                    [cpu] => format!("CPU {cpu}"),
                    _ => format!("CPUs {cpus:?}"),
                }
            ),
        }
    }
}

/// A kernel CPU list (`0-1,3`, as in `/sys/devices/system/cpu/online` and
/// `Cpus_allowed_list`), sorted, without duplicates.
pub fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let parse = |n: &str| n.trim().parse::<usize>().with_context(|| format!("CPU {n:?} in {list:?}"));
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        ensure!(lo <= hi && hi < MAX_CPUS, "CPU range {part:?} in {list:?}");
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The CPUs of `Cpus_allowed_list:` in a `/proc/<pid>[/task/<tid>]/status`.
pub fn allowed_cpus(status: &str) -> anyhow::Result<Vec<usize>> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in the status")?;
    parse_cpu_list(list)
}

/// nginx's `worker_cpu_affinity` mask for one CPU: a binary number, CPU 0
/// rightmost.
pub fn nginx_mask(cpu: usize) -> String {
    format!("1{}", "0".repeat(cpu))
}

/// nginx's worker lines: with a CPU to itself, one worker on it (a second
/// would only take turns with the first); unpinned, one per CPU.
pub fn nginx_workers(cpu: Option<usize>) -> String {
    match cpu {
        Some(cpu) => format!("worker_processes 1;\nworker_cpu_affinity {};\n", nginx_mask(cpu)),
        None => "worker_processes auto;\n".to_owned(),
    }
}

/// `taskset -c <cpu> ` to put before a shell command line, or nothing.
pub fn shell_prefix(cpu: Option<usize>) -> String {
    cpu.map(|cpu| format!("taskset -c {cpu} ")).unwrap_or_default()
}

/// The pids holding the listening socket on `addr` (`ip:port`, exactly as
/// ss prints it) in `ss -Hltnp`'s output: `users:(("nginx",pid=12,fd=6),…)`.
pub fn listener_pids(ss: &str, addr: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = ss
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some(addr))
        .flat_map(|l| l.split("pid=").skip(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Starts `program` in `ns`, through `taskset -c <cpu>` when there is a
/// CPU: taskset sets the affinity and execs, so the server and every
/// thread and worker it ever starts inherit it.
pub fn spawn_on(ns: &Netns, cpu: Option<usize>, program: &str, args: &[&str]) -> anyhow::Result<Background> {
    match cpu {
        Some(cpu) => {
            let cpu = cpu.to_string();
            let all: Vec<&str> =
                ["-c", cpu.as_str(), program].into_iter().chain(args.iter().copied()).collect();
            ns.spawn("taskset", &all)
        }
        None => ns.spawn(program, args),
    }
}

/// Pins every thread of the running process `pid` to `cpu` and checks
/// that they all took it; threads it starts later inherit it. A second
/// pass catches a thread started, from a thread not yet pinned, while
/// taskset went through the list.
pub fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let taskset =
        || netns::run(Command::new("taskset").args(["-a", "-pc", &cpu.to_string(), &pid.to_string()]));
    taskset()?;
    if check(pid, cpu).is_err() {
        taskset()?;
    }
    check(pid, cpu)
}

/// Fails unless every thread of `pid` may run on `cpu` and only there.
pub fn check(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let mut seen = 0;
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {}", tasks.display()))? {
        let status = task?.path().join("status");
        // A thread that exited since the listing has nothing left to pin.
        let Ok(text) = std::fs::read_to_string(&status) else { continue };
        let cpus = allowed_cpus(&text).with_context(|| status.display().to_string())?;
        ensure!(cpus == [cpu], "{} may run on CPUs {cpus:?}, not CPU {cpu} alone", status.display());
        seen += 1;
    }
    ensure!(seen > 0, "process {pid} has no threads left");
    Ok(())
}

/// Checks that whatever listens on `addr` in `ns` (the server itself, not
/// the `ip netns exec` or taskset that started it) is pinned to `cpu`.
pub fn check_listener(ns: &Netns, addr: &str, cpu: usize) -> anyhow::Result<()> {
    let ss = ns.sh("ss -Hltnp")?;
    let pids = listener_pids(&ss, addr);
    if pids.is_empty() {
        bail!("no process listens on {addr} in {}:\n{ss}", ns.name());
    }
    for pid in pids {
        check(pid, cpu).with_context(|| format!("the server on {addr}"))?;
    }
    Ok(())
}

/// Fails unless `pid` runs `binary` (a rebuilt binary shows as
/// `… (deleted)`): the process pinned must be the server, not a wrapper.
pub fn check_runs(pid: u32, binary: &Path) -> anyhow::Result<()> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).with_context(|| format!("process {pid}"))?;
    let name = binary.file_name().and_then(|n| n.to_str()).context("binary name")?;
    let running = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    ensure!(
        running.strip_suffix(" (deleted)").unwrap_or(running) == name,
        "process {pid} runs {}, not {name}",
        exe.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn cpu_lists_are_parsed_like_the_kernel_prints_them() {
        assert_eq!(parse_cpu_list("0-1,3\n").unwrap(), [0, 1, 3]);
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert_eq!(parse_cpu_list("4-5,0-1,1").unwrap(), [0, 1, 4, 5]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        for bad in ["1-0", "a", "0-", "-1", "0-99999999999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        let status = "Name:\tsh\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed_list:\t0\n";
        assert_eq!(allowed_cpus(status).unwrap(), [0, 1]);
        assert!(allowed_cpus("Name:\tsh\n").is_err());
    }

    #[test]
    fn client_and_server_get_cpus_of_their_own_when_there_are_two() {
        assert_eq!(Placement::choose(&[0, 1]), Placement::Pinned { client: 0, server: 1 });
        assert_eq!(Placement::choose(&[2, 5]), Placement::Pinned { client: 2, server: 5 });
        // The first of three or more is left to the rest of the machine.
        assert_eq!(Placement::choose(&[0, 1, 2, 3]), Placement::Pinned { client: 1, server: 2 });
        let one = Placement::choose(&[3]);
        assert_eq!((one.client(), one.server()), (None, None));
        assert!(one.to_string().contains("nothing was pinned") && one.to_string().contains("CPU 3 only"));
        let two = Placement::choose(&[0, 1]);
        assert_eq!((two.client(), two.server()), (Some(0), Some(1)));
        assert!(two.to_string().contains("CPU 0 and every server"), "{two}");
    }

    #[test]
    fn nginx_gets_one_worker_on_the_server_cpu_or_one_per_cpu() {
        assert_eq!(nginx_mask(0), "1");
        assert_eq!(nginx_mask(3), "1000");
        assert_eq!(nginx_workers(Some(1)), "worker_processes 1;\nworker_cpu_affinity 10;\n");
        assert_eq!(nginx_workers(None), "worker_processes auto;\n");
        assert_eq!(shell_prefix(Some(0)), "taskset -c 0 ");
        assert_eq!(shell_prefix(None), "");
    }

    #[test]
    fn listeners_are_found_by_exact_address() {
        let ss = "LISTEN 0      511        10.0.2.1:8081      0.0.0.0:*    users:((\"nginx\",pid=12,fd=6),(\"nginx\",pid=11,fd=6))\n\
                  LISTEN 0      1024       10.0.2.1:8080      0.0.0.0:*    users:((\"kubevirt-imds-s\",pid=40,fd=9))\n\
                  LISTEN 0      1024  169.254.169.252:80        0.0.0.0:*    users:((\"kubevirt-imds-s\",pid=41,fd=9))\n\
                  LISTEN 0      1024  169.254.169.252:8080      0.0.0.0:*    users:((\"other\",pid=42,fd=9))\n";
        assert_eq!(listener_pids(ss, "10.0.2.1:8081"), [11, 12]);
        assert_eq!(listener_pids(ss, "10.0.2.1:8080"), [40]);
        assert_eq!(listener_pids(ss, "169.254.169.252:80"), [41]);
        assert!(listener_pids(ss, "10.0.2.1:80").is_empty());
        assert!(listener_pids("LISTEN 0 5 10.0.2.1:80 0.0.0.0:*\n", "10.0.2.1:80").is_empty(), "no users");
    }

    /// The effectful half on a child of this test (no root needed for
    /// one's own processes): taskset on a running process, and the check.
    #[test]
    fn a_running_process_is_pinned_and_checked() {
        let Placement::Pinned { server, client } = Placement::of_this_process().unwrap() else {
            // One CPU: pinning is never attempted; the choice is tested above.
            return;
        };
        let mut child = Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().unwrap();
        let pid = child.id();
        let pinned = pin(pid, server);
        let elsewhere = check(pid, client);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let runs_sleep = check_runs(pid, &exe);
        let runs_other = check_runs(pid, Path::new("/usr/bin/kubevirt-imds-sidecar"));
        let _ = child.kill();
        let _ = child.wait();
        pinned.unwrap();
        assert!(elsewhere.is_err(), "pinned to {server}, so not to {client} alone");
        runs_sleep.unwrap();
        assert!(runs_other.is_err());
    }
}
