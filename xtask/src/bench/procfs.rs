//! What `/proc` says about a process: memory (status, smaps_rollup) and CPU
//! time (stat). Parsers are pure; readers take a pid.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::cmd;

const KIB_PER_MIB: f64 = 1024.0;

/// One process's memory, in MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    /// VmRSS: every resident page it maps, shared ones (the binary's code,
    /// libc) included.
    pub rss: f64,
    /// RssAnon: heap, stacks.
    pub anon: f64,
    /// Private_Dirty of smaps_rollup: the pages no other process can share,
    /// its anonymous memory and the binary's pages it wrote at start-up
    /// (relocations). What each further process of the same binary adds;
    /// clean file pages are shared through the page cache by every sidecar
    /// of the node (and counted Private_Clean while only one maps them).
    pub private: f64,
    /// Pss: its share of everything it maps.
    pub pss: f64,
    /// VmHWM: the peak RSS since it started.
    pub peak: f64,
    pub threads: u64,
}

impl Memory {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
        Self::parse(&status, &rollup).with_context(|| format!("/proc/{pid}: {status}\n{rollup}"))
    }

    fn parse(status: &str, rollup: &str) -> Option<Self> {
        let mib = |text: &str, field: &str| kib_field(text, field).map(|k| k as f64 / KIB_PER_MIB);
        Some(Self {
            rss: mib(status, "VmRSS")?,
            anon: mib(status, "RssAnon")?,
            peak: mib(status, "VmHWM")?,
            threads: kib_field(status, "Threads")?,
            private: mib(rollup, "Private_Dirty")?,
            pss: mib(rollup, "Pss")?,
        })
    }
}

/// The number after `<field>:` in /proc's "Name:   value [kB]" format.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of a process (all its threads, dead ones included), in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("/proc/{pid}/stat: {stat}"))
}

/// Fields 14 and 15 of /proc/<pid>/stat, counted after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) is the 12th word.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK`: the unit of [`cpu_ticks`].
pub fn ticks_per_second() -> anyhow::Result<f64> {
    let out = cmd::output(Command::new("getconf").arg("CLK_TCK")).context("getconf CLK_TCK")?;
    out.trim().parse().with_context(|| format!("getconf CLK_TCK printed {out:?}"))
}

/// Samples a process's RSS every 100 ms until stopped; the largest seen, in MiB.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<f64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kib) = kib_field(&status, "VmRSS")
                {
                    peak = peak.max(kib as f64 / KIB_PER_MIB);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        Self { stop, thread }
    }

    pub fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tkubevirt-imds-s\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t   20480 kB\n\
        VmHWM:\t    4096 kB\nVmRSS:\t    3584 kB\nRssAnon:\t     1024 kB\nRssFile:\t    2560 kB\n\
        RssShmem:\t       0 kB\nThreads:\t1\n";
    const ROLLUP: &str = "5581a0a3c000-7ffd4b9f1000 ---p 00000000 00:00 0                          [rollup]\n\
        Rss:                3584 kB\nPss:                1800 kB\nPss_Dirty:          1200 kB\n\
        Shared_Clean:       2048 kB\nShared_Dirty:          0 kB\nPrivate_Clean:       256 kB\n\
        Private_Dirty:      1280 kB\nAnonymous:          1024 kB\n";

    #[test]
    fn memory_comes_from_status_and_smaps_rollup() {
        let m = Memory::parse(STATUS, ROLLUP).unwrap();
        assert_eq!(
            (m.rss, m.anon, m.peak, m.private, m.pss, m.threads),
            (3.5, 1.0, 4.0, 1.25, 1800.0 / 1024.0, 1)
        );
        // RssFile is not RSS, Pss_Dirty is not Pss.
        assert_eq!(kib_field(STATUS, "Rss"), None);
        assert_eq!(kib_field(ROLLUP, "Pss"), Some(1800));
        assert!(Memory::parse("VmRSS: 1 kB\n", ROLLUP).is_none(), "a missing field is an error, not zero");
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let stat = "4242 (pod-8e36 (x) y) S 1 4242 4242 0 -1 4194560 1200 0 3 0 150 75 0 0 20 0 101 0\n";
        assert_eq!(parse_cpu_ticks(stat), Some(225));
        assert_eq!(parse_cpu_ticks("4242 (truncated"), None);
    }
}
