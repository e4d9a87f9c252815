//! The one sysctl the agent sets in a pod.

use std::io;

const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// Lets the pod's unprivileged sidecar bind port 80:
/// `net.ipv4.ip_unprivileged_port_start = 0`, a per-network-namespace
/// sysctl (Linux 4.11+), which KubeVirt's virt-handler sets the same way for
/// passt (`pkg/network/setup/netpod/netpod.go`) and containerd 2 sets for
/// every pod. It allows nothing outside the pod's own namespace. Must run on
/// a thread inside the pod's namespace: `/proc/sys/net` shows the caller's.
pub fn allow_unprivileged_ports() -> io::Result<()> {
    if std::fs::read_to_string(UNPRIVILEGED_PORT_START)?.trim() == "0" {
        return Ok(());
    }
    std::fs::write(UNPRIVILEGED_PORT_START, "0")
}
