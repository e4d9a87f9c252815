//! The machine the figures come from, and how busy it was with anything
//! else (another engineer's test suites run QEMU guests here at times).

use std::{collections::BTreeMap, process::Command};

use crate::cmd;

pub fn describe() -> anyhow::Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = cmd::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .next()
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    Ok(format!("{cpu}, {cores} cores, kernel {}, {memory} RAM", kernel.trim()))
}

/// How busy the machine was at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Busy {
    /// 1, 5 and 15 minute load averages.
    pub loadavg: [f64; 3],
    /// Other heavy work running: kind → processes.
    pub others: BTreeMap<&'static str, usize>,
}

impl Busy {
    pub fn now() -> Self {
        let loadavg =
            std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| parse_loadavg(&s)).unwrap_or_default();
        let mut others = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok) {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                && let Some(kind) = heavy(&cmdline)
            {
                *others.entry(kind).or_default() += 1;
            }
        }
        Self { loadavg, others }
    }

    pub fn show(&self) -> String {
        let [a, b, c] = self.loadavg;
        let others: Vec<String> = self.others.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        format!(
            "{a:.2} / {b:.2} / {c:.2}; {}",
            if others.is_empty() { "nothing else heavy".into() } else { others.join(", ") }
        )
    }
}

fn parse_loadavg(s: &str) -> Option<[f64; 3]> {
    let mut words = s.split_whitespace().map(|w| w.parse().ok());
    Some([words.next()??, words.next()??, words.next()??])
}

/// What kind of other heavy work a command line is, if it is one.
fn heavy(cmdline: &[u8]) -> Option<&'static str> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = args.first()?.rsplit('/').next()?.to_owned();
    if program.starts_with("qemu-system") {
        Some("QEMU guest")
    } else if program == "cargo" && args.get(1).is_some_and(|a| a == "test") {
        Some("cargo test")
    } else if program == "rustc" {
        Some("rustc")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_averages_and_heavy_neighbours() {
        assert_eq!(parse_loadavg("1.52 0.98 0.50 3/412 14844\n"), Some([1.52, 0.98, 0.5]));
        assert_eq!(parse_loadavg("garbage"), None);
        assert_eq!(heavy(b"/usr/bin/qemu-system-x86_64\0-accel\0tcg\0"), Some("QEMU guest"));
        assert_eq!(heavy(b"/root/.cargo/bin/cargo\0test\0--workspace\0"), Some("cargo test"));
        assert_eq!(heavy(b"cargo\0xtask\0bench\0"), None);
        assert_eq!(heavy(b""), None);
        let busy = Busy { loadavg: [1.0, 0.5, 0.25], others: [("QEMU guest", 1)].into() };
        assert_eq!(busy.show(), "1.00 / 0.50 / 0.25; QEMU guest ×1");
    }
}
