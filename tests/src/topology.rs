//! Network namespaces laid out like a virt-launcher pod, for both KubeVirt
//! bindings that use a bridge.
//!
//! ```text
//! masquerade:  node ── eth0 (10.244.0.10) [pod] k6t-eth0 (10.0.2.1) ─┬─ tap0 ── guest 10.0.2.2
//!                                                                    └─ fport ─ foreign 10.0.2.9
//! bridge:      node (10.244.0.1) ── eth0-nic [pod] k6t-eth0 (no IP) ─┬─ tap0 ── guest 10.244.0.10
//!                                                                    └─ fport ─ foreign 10.244.0.20
//! ```
//! The guest is either a namespace on a veth named `tap0` (fast; enough for
//! most checks) or a real TAP for a QEMU guest.

use crate::netns::{Background, Netns, run};

/// What the node's own metadata service answers: a test fails if a guest
/// ever reads it.
pub const NODE_SECRET: &str = "NODE-CLOUD-CREDENTIALS";

/// The node's metadata service (see [`PodLayout::node_metadata_service`]).
pub struct NodeMetadata {
    _server: Background,
    _dir: tempfile::TempDir,
    node: String,
}

impl NodeMetadata {
    /// Packets for 169.254.169.254 that reached the node's stack since start.
    pub fn packets_reached(&self) -> anyhow::Result<u64> {
        let out = run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &self.node,
            "nft",
            "-j",
            "list",
            "counter",
            "ip",
            "node_imds",
            "reached",
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .ok_or_else(|| anyhow::anyhow!("no counter in {out}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Masquerade,
    Bridge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A namespace behind a veth called `tap0`, configured here.
    Namespace,
    /// A TAP called `tap0` for QEMU; the guest configures its own address.
    Tap,
}

/// Addresses of one layout.
#[derive(Debug, Clone, Copy)]
pub struct Addressing {
    pub guest_ip: &'static str,
    pub prefix_len: u8,
    /// The guest's default gateway.
    pub gateway_ip: &'static str,
    pub foreign_ip: &'static str,
}

pub struct PodLayout {
    pub binding: Binding,
    pub addressing: Addressing,
    /// The virt-launcher pod's namespace, where the sidecar runs.
    pub pod: Netns,
    /// The node side of the pod's interface (holds the gateway in bridge mode).
    pub node: Netns,
    /// A neighbour on the bridge that is not the VM.
    pub foreign: Netns,
    /// The guest, when it is a namespace.
    pub guest: Option<Netns>,
}

pub const BRIDGE: &str = "k6t-eth0";
pub const TAP: &str = "tap0";

impl PodLayout {
    pub fn build(binding: Binding, guest_kind: GuestKind) -> anyhow::Result<Self> {
        let pod = Netns::new("pod")?;
        let node = Netns::new("node")?;
        let foreign = Netns::new("foreign")?;
        let addressing = match binding {
            Binding::Masquerade => Addressing {
                guest_ip: "10.0.2.2",
                prefix_len: 24,
                gateway_ip: "10.0.2.1",
                foreign_ip: "10.0.2.9",
            },
            Binding::Bridge => Addressing {
                guest_ip: "10.244.0.10",
                prefix_len: 24,
                gateway_ip: "10.244.0.1",
                foreign_ip: "10.244.0.20",
            },
        };
        pod.ip(&format!("link add {BRIDGE} type bridge"))?;
        match binding {
            Binding::Masquerade => {
                pod.ip(&format!("link add eth0 type veth peer name pod0 netns {}", node.name()))?;
                pod.ip("addr add 10.244.0.10/24 dev eth0")?;
                pod.ip("link set eth0 up")?;
                node.ip("addr add 10.244.0.1/24 dev pod0")?;
                node.ip("link set pod0 up")?;
                pod.ip("route add default via 10.244.0.1")?;
                pod.ip(&format!("addr add 10.0.2.1/24 dev {BRIDGE}"))?;
            }
            Binding::Bridge => {
                // KubeVirt moves the pod IP to the VM and plugs the pod's
                // interface into the bridge; the bridge keeps only a
                // link-local address for its DHCP server.
                pod.ip(&format!("link add eth0-nic type veth peer name pod0 netns {}", node.name()))?;
                pod.ip(&format!("link set eth0-nic master {BRIDGE} up"))?;
                node.ip("addr add 10.244.0.1/24 dev pod0")?;
                node.ip("link set pod0 up")?;
                pod.ip(&format!("addr add 169.254.75.10/32 dev {BRIDGE}"))?;
            }
        }
        pod.ip(&format!("link set {BRIDGE} up"))?;

        pod.ip(&format!("link add fport type veth peer name eth0 netns {}", foreign.name()))?;
        pod.ip(&format!("link set fport master {BRIDGE} up"))?;
        foreign.ip(&format!("addr add {}/{} dev eth0", addressing.foreign_ip, addressing.prefix_len))?;
        foreign.ip("link set eth0 up")?;
        foreign.ip(&format!("route add default via {}", addressing.gateway_ip))?;

        let guest = match guest_kind {
            GuestKind::Tap => {
                pod.ip(&format!("tuntap add dev {TAP} mode tap"))?;
                pod.ip(&format!("link set {TAP} master {BRIDGE} up"))?;
                None
            }
            GuestKind::Namespace => Some(attach_namespace_guest(&pod, TAP, &addressing)?),
        };
        Ok(Self { binding, addressing, pod, node, foreign, guest })
    }

    /// Forwards and masquerades the guest's traffic out of the pod's eth0,
    /// as KubeVirt's masquerade binding does (`pkg/network/setup/netpod/`
    /// installs nftables NAT in the pod): without it a guest packet the data
    /// path missed would simply die in the pod, and tests of what leaves the
    /// pod would prove nothing.
    pub fn masquerade_nat(&self) -> anyhow::Result<()> {
        assert_eq!(self.binding, Binding::Masquerade, "NAT is the masquerade binding's");
        self.pod.sh(
            "sysctl -qw net.ipv4.ip_forward=1 && nft -f - <<'EOF'\ntable ip kubevirt_masquerade {\n chain post {\n  \
             type nat hook postrouting priority srcnat;\n  oifname \"eth0\" ip saddr 10.0.2.0/24 masquerade\n }\n}\nEOF",
        )?;
        Ok(())
    }

    /// Gives the node a metadata service of its own at 169.254.169.254, as
    /// every EC2 or GCP node has (with the node's cloud credentials behind
    /// it): `/v1/token` answers [`NODE_SECRET`], and an nftables counter
    /// counts every packet for the address that reaches the node.
    pub fn node_metadata_service(&self) -> anyhow::Result<NodeMetadata> {
        self.node.ip("addr add 169.254.169.254/32 dev lo")?;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("v1"))?;
        std::fs::write(dir.path().join("v1/token"), NODE_SECRET)?;
        self.node.sh(
            "nft -f - <<'EOF'\ntable ip node_imds {\n counter reached {}\n chain input {\n  \
             type filter hook input priority 0;\n  ip daddr 169.254.169.254 counter name reached\n }\n}\nEOF",
        )?;
        let server = self.node.http_server("169.254.169.254", 80, dir.path())?;
        // The server's own readiness check went to it: count from here.
        self.node.sh("nft reset counter ip node_imds reached >/dev/null")?;
        Ok(NodeMetadata { _server: server, _dir: dir, node: self.node.name().to_owned() })
    }

    /// The namespace guest (panics for a QEMU layout: a test bug).
    pub fn guest(&self) -> &Netns {
        self.guest.as_ref().expect("this layout has a QEMU guest, not a namespace")
    }
}

/// Plugs a namespace guest into the bridge through a veth named `port`.
pub fn attach_namespace_guest(pod: &Netns, port: &str, a: &Addressing) -> anyhow::Result<Netns> {
    let guest = Netns::new("guest")?;
    pod.ip(&format!("link add {port} type veth peer name eth0 netns {}", guest.name()))?;
    pod.ip(&format!("link set {port} master {BRIDGE} up"))?;
    guest.ip(&format!("addr add {}/{} dev eth0", a.guest_ip, a.prefix_len))?;
    guest.ip("link set eth0 up")?;
    guest.ip(&format!("route add default via {}", a.gateway_ip))?;
    Ok(guest)
}
