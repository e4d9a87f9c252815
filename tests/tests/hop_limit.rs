//! The hop limit (issue 13): the IMDS's packets carry IP TTL 1 by default,
//! like AWS's IMDSv2 hop limit, so a container behind a NAT inside the guest
//! (Docker, Podman, a nested Kubernetes) cannot reach the token; the VM's
//! own processes can. `imds.kubevirt.io/hop-limit: "2"` lets such
//! containers in.

use imds_tests::{
    imds::{Identity, ServedGuest},
    netns::{Netns, exclusive},
    topology::Binding,
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };

/// A container namespace behind the guest: a veth, forwarding and a
/// masquerade rule in the guest, as Docker's default bridge network does.
fn container_behind(guest: &Netns) -> Netns {
    let container = Netns::new("ctr").unwrap();
    guest.ip(&format!("link add ctr0 type veth peer name eth0 netns {}", container.name())).unwrap();
    guest.ip("addr add 172.17.0.1/16 dev ctr0").unwrap();
    guest.ip("link set ctr0 up").unwrap();
    container.ip("addr add 172.17.0.2/16 dev eth0").unwrap();
    container.ip("link set eth0 up").unwrap();
    container.ip("link set lo up").unwrap();
    container.ip("route add default via 172.17.0.1").unwrap();
    guest
        .sh("sysctl -qw net.ipv4.ip_forward=1 && nft -f - <<'EOF'
table ip docker {
  chain postrouting { type nat hook postrouting priority 100; ip saddr 172.17.0.0/16 masquerade; }
}
EOF")
        .unwrap();
    container
}

/// `GET /v1/token` from `ns`: the HTTP status, 0 when no connection came up.
fn token_status(ns: &Netns) -> u16 {
    let out = ns
        .sh_status(
            "curl -s -m 4 -o /dev/null -w '%{http_code}' -H 'Metadata: true' http://169.254.169.254/v1/token",
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn check(hop_limit: Option<&str>, container_served: bool) {
    let _serial = exclusive();
    let args: Vec<&str> = hop_limit.map(|h| vec!["--hop-limit", h]).unwrap_or_default();
    let served = ServedGuest::start(Binding::Masquerade, &ID, &args).unwrap();
    let layout = &served.layout;
    let guest = layout.guest();
    let container = container_behind(guest);
    // The container reaches the outside through the guest's NAT (the pod's
    // gateway answers ping), so only the hop limit stands in its way.
    let gateway = layout.addressing.gateway_ip;
    container.sh(&format!("ping -c 1 -W 2 {gateway}")).expect("the container's NAT works");

    assert_eq!(token_status(guest), 200, "the guest itself is always served");
    let from_container = token_status(&container);
    if container_served {
        assert_eq!(from_container, 200, "hop limit {hop_limit:?}: the container was not served");
    } else {
        assert_eq!(from_container, 0, "hop limit {hop_limit:?}: the container got an answer");
    }
}

#[test]
fn a_container_behind_the_guest_s_nat_gets_nothing_by_default() {
    check(None, false);
}

#[test]
fn hop_limit_two_lets_the_container_in() {
    check(Some("2"), true);
}
