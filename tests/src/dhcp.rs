//! The DHCP server KubeVirt runs for a guest on the pod's bridge, played by
//! busybox `udhcpd` in the pod's namespace.
//!
//! KubeVirt v1.9 `pkg/network/dhcp/masquerade.go` picks the values for the
//! masquerade binding (the guest's one address, the gateway on the bridge as
//! router and server, the MTU of the pod's interface) and
//! `pkg/network/dhcp/server/server.go` serves them to the VM's MAC only:
//! subnet mask, router, the pod's DNS servers and search domains, the
//! longest search domain as domain name, the pod's hostname, the MTU, and a
//! lease of 999 days ("infinite").

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{netns::Netns, require_tools};

/// `infiniteLease` in server.go: 999 days.
pub const INFINITE_LEASE_SECONDS: u64 = 999 * 24 * 3600;

/// What the server hands out; see the module docs for where each comes from.
#[derive(Debug, Clone)]
pub struct Lease<'a> {
    /// The bridge the server listens on (KubeVirt's `k6t-eth0`).
    pub interface: &'a str,
    /// The address it answers from; the bridge must hold it.
    pub server_ip: &'a str,
    pub client_mac: &'a str,
    pub client_ip: &'a str,
    pub prefix_len: u8,
    pub router: &'a str,
    pub dns_servers: &'a [&'a str],
    pub search_domains: &'a [&'a str],
    pub mtu: u32,
    pub hostname: &'a str,
}

/// A running `udhcpd`, killed on drop; its configuration, lease file and log
/// live in a temporary directory.
pub struct DhcpServer {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DhcpServer {
    /// Starts the server in `netns` and waits until it runs.
    pub fn start(netns: &Netns, lease: &Lease) -> anyhow::Result<Self> {
        require_tools(&[("busybox", "busybox-static")])?;
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("udhcpd.conf");
        let leases = dir.path().join("udhcpd.leases");
        File::create(&leases)?;
        std::fs::write(&conf, config(lease, &leases.display().to_string(), &dir.path().join("pid")))?;
        let log = dir.path().join("udhcpd.log");
        let output = File::create(&log)?;
        let child = netns
            .command("busybox")
            // -I: the address the server identifies itself with (KubeVirt
            // advertises the gateway's).
            .args(["udhcpd", "-f", "-I", lease.server_ip])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("starting busybox udhcpd")?;
        let mut server = Self { child, log, _dir: dir };
        server.wait_for_log("started", Duration::from_secs(5))?;
        Ok(server)
    }

    /// What udhcpd printed: one line per offer and ack.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait()? {
                bail!("udhcpd exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("udhcpd did not start within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// udhcpd.conf for one client. The static lease binds the address to the
/// VM's MAC (server.go answers no other client) and spares udhcpd's ARP
/// probe of a free address.
fn config(l: &Lease, lease_file: &str, pid_file: &std::path::Path) -> String {
    // server.go: "the longest search domain entry, which is the most exact
    // equivalent to a domain".
    let domain = l.search_domains.iter().max_by_key(|d| d.len());
    let mut conf = format!(
        "interface {interface}\n\
         start {ip}\n\
         end {ip}\n\
         max_leases 1\n\
         static_lease {mac} {ip}\n\
         lease_file {lease_file}\n\
         pidfile {pid}\n\
         option subnet {mask}\n\
         option router {router}\n\
         option dns {dns}\n\
         option mtu {mtu}\n\
         option hostname {hostname}\n\
         option lease {INFINITE_LEASE_SECONDS}\n",
        interface = l.interface,
        ip = l.client_ip,
        mac = l.client_mac,
        pid = pid_file.display(),
        mask = netmask(l.prefix_len),
        router = l.router,
        dns = l.dns_servers.join(" "),
        mtu = l.mtu,
        hostname = l.hostname,
    );
    if !l.search_domains.is_empty() {
        conf.push_str(&format!("option search {}\n", l.search_domains.join(" ")));
    }
    if let Some(domain) = domain {
        conf.push_str(&format!("option domain {domain}\n"));
    }
    conf
}

fn netmask(prefix_len: u8) -> String {
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    std::net::Ipv4Addr::from(bits).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masquerade_lease_as_udhcpd_configuration() {
        let lease = Lease {
            interface: "k6t-eth0",
            server_ip: "10.0.2.1",
            client_mac: "52:54:00:12:34:56",
            client_ip: "10.0.2.2",
            prefix_len: 24,
            router: "10.0.2.1",
            dns_servers: &["10.96.0.10", "10.96.0.11"],
            search_domains: &["vm-team.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            mtu: 1450,
            hostname: "fedora-42",
        };
        let conf = config(&lease, "/tmp/x/leases", std::path::Path::new("/tmp/x/pid"));
        for line in [
            "interface k6t-eth0",
            "static_lease 52:54:00:12:34:56 10.0.2.2",
            "option subnet 255.255.255.0",
            "option router 10.0.2.1",
            "option dns 10.96.0.10 10.96.0.11",
            "option mtu 1450",
            "option hostname fedora-42",
            "option lease 86313600",
            "option search vm-team.svc.cluster.local svc.cluster.local cluster.local",
            "option domain vm-team.svc.cluster.local",
        ] {
            assert!(conf.lines().any(|l| l == line), "no {line:?} in\n{conf}");
        }
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(32), "255.255.255.255");
        assert_eq!(netmask(20), "255.255.240.0");
    }
}
