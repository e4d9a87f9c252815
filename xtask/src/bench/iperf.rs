//! iperf3, which drives the VM's other traffic: one TCP flow, and 64-byte
//! UDP at an unlimited rate (counted as received, not as sent).

use anyhow::Context as _;
use imds_tests::netns::Netns;

/// Runs of one path.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub tcp_gbps: Vec<f64>,
    pub udp_kpps: Vec<f64>,
}

impl Traffic {
    /// One TCP run and one UDP run from `client` to `server_ip`.
    pub fn add(&mut self, client: &Netns, server_ip: &str, secs: u64) -> anyhow::Result<()> {
        let out = client.sh(&format!("iperf3 -J -c {server_ip} -t {secs}"))?;
        self.tcp_gbps.push(tcp_gbps(&out).with_context(|| format!("iperf3 TCP output:\n{out}"))?);
        let out = client.sh(&format!("iperf3 -J -u -l 64 -b 0 -c {server_ip} -t {secs}"))?;
        self.udp_kpps.push(udp_received_kpps(&out).with_context(|| format!("iperf3 UDP output:\n{out}"))?);
        Ok(())
    }
}

/// Starts `iperf3 -s` bound to `ip` in `ns` and waits until it listens.
pub fn server(ns: &Netns, ip: &str) -> anyhow::Result<imds_tests::netns::Background> {
    let server = ns.spawn("iperf3", &["-s", "-B", ip])?;
    super::wait_for(
        || ns.sh("ss -Hltn 'sport = :5201'").is_ok_and(|out| !out.trim().is_empty()),
        &format!("iperf3 server on {ip}"),
    )?;
    Ok(server)
}

/// What the receiver got, in Gbit/s.
fn tcp_gbps(json: &str) -> anyhow::Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    Ok(v["end"]["sum_received"]["bits_per_second"].as_f64().context("no end.sum_received")? / 1e9)
}

/// Packets that arrived (sent less lost) per second, in thousands.
fn udp_received_kpps(json: &str) -> anyhow::Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let sum = &v["end"]["sum"];
    let packets = sum["packets"].as_f64().context("no end.sum.packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().filter(|s| *s > 0.0).context("no end.sum.seconds")?;
    Ok((packets - lost) / seconds / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_is_what_the_receiver_got() {
        let json =
            r#"{"end":{"sum_sent":{"bits_per_second":14e9},"sum_received":{"bits_per_second":13.5e9}}}"#;
        assert_eq!(tcp_gbps(json).unwrap(), 13.5);
        assert!(tcp_gbps(r#"{"error":"unable to connect to server"}"#).is_err());
    }

    #[test]
    fn udp_counts_what_arrived() {
        let json = r#"{"end":{"sum":{"packets":800000,"lost_packets":100000,"seconds":5.0}}}"#;
        assert_eq!(udp_received_kpps(json).unwrap(), 140.0);
        assert!(udp_received_kpps(r#"{"end":{"sum":{"packets":1,"seconds":0}}}"#).is_err());
    }
}
