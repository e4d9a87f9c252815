//! Delays read off the agent's and the sidecar's logs: each line starts
//! with the RFC 3339 time it was written (tracing's default format), which
//! is closer to the event than anything the benchmark could observe from
//! outside.

use std::time::SystemTime;

use anyhow::Context as _;

/// The first line that contains every one of `needles`.
pub fn line_with<'a>(log: &'a str, needles: &[&str]) -> Option<&'a str> {
    log.lines().find(|l| needles.iter().all(|n| l.contains(n)))
}

/// From `since` to the time stamped on the first line containing every
/// one of `needles`, in ms (0 if the line is stamped earlier: clocks agree
/// only to the microsecond).
pub fn delay_ms(log: &str, needles: &[&str], since: SystemTime) -> anyhow::Result<f64> {
    let line = line_with(log, needles).with_context(|| format!("no log line with {needles:?}"))?;
    let stamp = line.split_whitespace().next().context("log line without a timestamp")?;
    let at = humantime::parse_rfc3339_weak(stamp).with_context(|| format!("timestamp {stamp:?}"))?;
    Ok(at.duration_since(since).unwrap_or_default().as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-23T07:05:03.010000Z  INFO pod{uid=8e36}: imds_agent::datapath::loader: attached program=\"imds_from_guest\" ifname=\"tap0\" ifindex=5
2026-11-23T07:05:03.019200Z  INFO pod{uid=8e36}: imds_agent::datapath::loader: attached program=\"imds_from_guest\" ifname=\"tapb90\" ifindex=57
";

    #[test]
    fn a_log_line_gives_the_delay_since_a_moment() {
        let before = humantime::parse_rfc3339_weak("2026-11-23T07:05:03.000000Z").unwrap();
        let ms = delay_ms(LOG, &["attached program=", "ifname=\"tapb90\""], before).unwrap();
        assert!((ms - 19.2).abs() < 1e-6, "{ms}");
        // tap0 is not tapb90's prefix match: the quote closes the name.
        let tap0 = delay_ms(LOG, &["ifname=\"tap0\""], before).unwrap();
        assert!((tap0 - 10.0).abs() < 1e-6, "{tap0}");
        assert!(delay_ms(LOG, &["ifname=\"tapb91\""], before).is_err());
        let later = humantime::parse_rfc3339_weak("2026-11-23T07:05:04Z").unwrap();
        assert_eq!(delay_ms(LOG, &["tapb90"], later).unwrap(), 0.0);
        assert!(delay_ms("garbage tapb90\n", &["tapb90"], before).is_err());
    }
}
