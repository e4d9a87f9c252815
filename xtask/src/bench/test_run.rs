//! A program's own cost to a passing packet without the kernel's
//! accounting: `BPF_PROG_TEST_RUN` (`bpftool prog run … repeat N`) runs it
//! N times on one frame and times the whole loop, so the two clock reads
//! that `kernel.bpf_stats_enabled` adds to every live packet (about 55 ns on
//! the 2-core KVM machine) are not in the figure. The frame is a 64-byte UDP
//! datagram from the guest to its neighbour: what the UDP runs send.

use std::path::Path;

use anyhow::{Context as _, ensure};

use super::bpf;

/// Runs per measurement, and measurements (the median is kept).
pub const REPEAT: u32 = 1_000_000;
pub const MEASUREMENTS: usize = 5;

/// TC_ACT_UNSPEC as the kernel reports the return value: the frame passed.
const PASSED: u64 = u32::MAX as u64;

/// Ethernet + IPv4 + UDP, 64 bytes, from `src` to `dst` (addresses as the
/// bench's layout gives them; checksums left zero: no program reads them).
pub fn udp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    const LEN: usize = 64;
    let mut f = Vec::with_capacity(LEN);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x09]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source MAC
    f.extend_from_slice(&[0x08, 0x00]); // IPv4
    let ip_len = (LEN - 14) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL, UDP, checksum
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let udp_len = ip_len - 20;
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(LEN, 0);
    f
}

/// Which program: pinned (ours) or by id (the floor, loaded by tc).
pub enum Program<'a> {
    Pinned(&'a Path),
    Id(u64),
}

impl Program<'_> {
    /// How bpftool names it.
    fn bpftool_args(&self) -> [String; 2] {
        match self {
            Program::Pinned(p) => ["pinned".into(), p.display().to_string()],
            Program::Id(n) => ["id".into(), n.to_string()],
        }
    }
}

/// The median of the kernel's average time per run, in ns; fails unless
/// the program let the frame pass (a drop would measure another path).
pub fn ns_per_run(program: &Program, frame: &Path) -> anyhow::Result<f64> {
    let [how, which] = program.bpftool_args();
    let frame = frame.to_str().context("frame path is not UTF-8")?;
    let repeat = REPEAT.to_string();
    let args = ["prog", "run", &how, &which, "data_in", frame, "repeat", &repeat];
    let mut runs = (0..MEASUREMENTS)
        .map(|_| parse(&bpf::bpftool_json(&args, None)?))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

fn parse(v: &serde_json::Value) -> anyhow::Result<f64> {
    let retval = v["retval"].as_u64().with_context(|| format!("bpftool prog run printed {v}"))?;
    ensure!(retval == PASSED, "the program did not pass the frame (returned {retval}): {v}");
    v["duration"].as_u64().map(|ns| ns as f64).with_context(|| format!("bpftool prog run printed {v}"))
}

#[cfg(test)]
mod tests {
    use imds_ebpf::frame::{Frame as _, destination};

    use super::*;

    #[test]
    fn the_frame_is_64_bytes_of_udp_to_the_destination() {
        let f = udp_frame([10, 0, 2, 2], [10, 0, 2, 9]);
        assert_eq!(f.len(), 64);
        let glance = f.as_slice().glance().unwrap();
        assert!(glance.passes([169, 254, 169, 254]), "not for the IMDS: passes at a glance");
        assert_eq!(destination(f.as_slice()), imds_ebpf::frame::Destination::Ipv4([10, 0, 2, 9]));
        assert_eq!((f[23], u16::from_be_bytes([f[38], f[39]])), (17, 30), "UDP, 30 bytes");
    }

    #[test]
    fn only_a_passed_frame_is_a_measurement() {
        let ok = serde_json::json!({"retval": 4294967295u64, "duration": 38});
        assert_eq!(parse(&ok).unwrap(), 38.0);
        assert!(parse(&serde_json::json!({"retval": 2, "duration": 12})).is_err(), "TC_ACT_SHOT");
        assert!(parse(&serde_json::json!({"error": "no such program"})).is_err());
    }
}
