//! Which program goes on which interface, decided from a snapshot of the
//! pod's links. Pure: the reconciler feeds it every link change.

use std::collections::BTreeSet;

use imds_ebpf::abi::{PROG_FROM_GUEST, PROG_FROM_POD, PROG_GUARD, PROG_TO_GUEST, PROG_TO_UPLINK};

use crate::net::links::LinkSummary;

/// Interfaces the agent creates in a pod start with this; none of them is
/// an uplink or a VM's port.
pub const OWN_PREFIX: &str = "imds-";
const LOOPBACK: &str = "lo";

/// KubeVirt names the bridge of pod interface `X` `k6t-X`.
pub const KUBEVIRT_BRIDGE_PREFIX: &str = "k6t-";

/// Attachment roles, in the order they must be attached: replies must be
/// handled before the first guest packet is redirected, and the uplinks
/// guarded before any VM exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `imds_to_guest` on the ingress of the redirect end of the veth.
    ToGuest,
    /// `imds_from_pod` on the ingress of the pod's loopback: the pod's own
    /// processes do not reach the IMDS address, which is local to the pod.
    Local,
    /// `imds_to_uplink` on the egress of every interface that leads out of
    /// the pod: nothing for the IMDS address leaves, even from a VM whose
    /// TAP has no program yet.
    Uplink,
    /// `imds_guard` on the ingress of a VM bridge.
    Guard,
    /// `imds_from_guest` on the ingress of a VM's TAP.
    FromGuest,
}

/// Which side of an interface a program runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::ToGuest, Role::Local, Role::Uplink, Role::Guard, Role::FromGuest];

    pub fn program(self) -> &'static str {
        match self {
            Role::ToGuest => PROG_TO_GUEST,
            Role::Local => PROG_FROM_POD,
            Role::Uplink => PROG_TO_UPLINK,
            Role::Guard => PROG_GUARD,
            Role::FromGuest => PROG_FROM_GUEST,
        }
    }

    pub fn direction(self) -> Direction {
        match self {
            Role::Uplink => Direction::Egress,
            Role::ToGuest | Role::Local | Role::Guard | Role::FromGuest => Direction::Ingress,
        }
    }

    pub fn from_program(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.program() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub role: Role,
    pub ifindex: u32,
    pub ifname: String,
}

impl Attachment {
    pub fn key(&self) -> (Role, u32) {
        (self.role, self.ifindex)
    }
}

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// `Some(name)`: only that bridge; `None`: every `k6t-*` bridge.
    pub bridge: Option<String>,
    /// Bridge ports whose name starts with this are the VM's TAPs.
    pub guest_port_prefix: String,
    /// The sidecar veth end the replies come out of.
    pub redirect_ifname: String,
}

impl Selector {
    fn selects_bridge(&self, link: &LinkSummary) -> bool {
        link.is_bridge
            && match &self.bridge {
                Some(name) => link.name == *name,
                None => link.name.starts_with(KUBEVIRT_BRIDGE_PREFIX),
            }
    }
}

/// The attachments `links` call for, sorted in attach order.
pub fn plan(links: &[LinkSummary], selector: &Selector) -> Vec<Attachment> {
    let bridges: BTreeSet<u32> =
        links.iter().filter(|l| selector.selects_bridge(l)).map(|l| l.index).collect();
    let mut wanted: Vec<Attachment> = links
        .iter()
        .filter_map(|link| {
            let role = if link.name == selector.redirect_ifname {
                Role::ToGuest
            } else if link.name == LOOPBACK {
                Role::Local
            } else if bridges.contains(&link.index) {
                Role::Guard
            } else if link.controller.is_some_and(|c| bridges.contains(&c))
                && link.name.starts_with(&selector.guest_port_prefix)
            {
                Role::FromGuest
            } else if is_uplink(link, selector) {
                Role::Uplink
            } else {
                return None;
            };
            Some(Attachment { role, ifindex: link.index, ifname: link.name.clone() })
        })
        .collect();
    wanted.sort();
    wanted
}

/// An interface that may carry the pod's traffic out: anything but
/// loopback, the agent's own interfaces, bridges and (would-be) VM ports.
/// KubeVirt's bridge binding renames the pod's `eth0` to `eth0-nic` and
/// enslaves it to the VM's bridge; it keeps its ifindex, and its guard.
fn is_uplink(link: &LinkSummary, selector: &Selector) -> bool {
    link.name != LOOPBACK
        && !link.name.starts_with(OWN_PREFIX)
        && !link.is_bridge
        && !link.name.starts_with(&selector.guest_port_prefix)
}

/// How to get from what is attached to what is wanted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub attach: Vec<Attachment>,
    pub detach: Vec<(Role, u32)>,
}

pub fn diff(attached: &BTreeSet<(Role, u32)>, wanted: &[Attachment]) -> Changes {
    let wanted_keys: BTreeSet<_> = wanted.iter().map(Attachment::key).collect();
    Changes {
        attach: wanted.iter().filter(|a| !attached.contains(&a.key())).cloned().collect(),
        detach: attached.iter().filter(|k| !wanted_keys.contains(k)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, is_bridge: bool, controller: Option<u32>) -> LinkSummary {
        LinkSummary { index, name: name.into(), is_bridge, controller }
    }

    fn selector(bridge: Option<&str>) -> Selector {
        Selector {
            bridge: bridge.map(Into::into),
            guest_port_prefix: "tap".into(),
            redirect_ifname: "imds-redirect".into(),
        }
    }

    fn roles(plan: &[Attachment]) -> Vec<(Role, &str)> {
        plan.iter().map(|a| (a.role, a.ifname.as_str())).collect()
    }

    /// KubeVirt's masquerade binding: eth0 routed, k6t-eth0 with tap0.
    fn masquerade() -> Vec<LinkSummary> {
        vec![
            link(1, "lo", false, None),
            link(2, "eth0", false, None),
            link(3, "k6t-eth0", true, None),
            link(4, "tap0", false, Some(3)),
            link(8, "imds-sidecar", false, None),
            link(9, "imds-redirect", false, None),
        ]
    }

    #[test]
    fn masquerade_pod_gets_every_program_in_order() {
        assert_eq!(
            roles(&plan(&masquerade(), &selector(None))),
            vec![
                (Role::ToGuest, "imds-redirect"),
                (Role::Local, "lo"),
                (Role::Uplink, "eth0"),
                (Role::Guard, "k6t-eth0"),
                (Role::FromGuest, "tap0")
            ]
        );
        assert_eq!(Role::Uplink.direction(), Direction::Egress);
        assert_eq!(Role::from_program(Role::Guard.program()), Some(Role::Guard));
    }

    #[test]
    fn bridge_binding_uplink_is_not_a_guest_port() {
        let links = vec![
            link(3, "k6t-eth0", true, None),
            link(5, "eth0-nic", false, Some(3)),
            link(6, "eth0", false, None),
            link(7, "tap0", false, Some(3)),
            link(9, "imds-redirect", false, None),
        ];
        // eth0-nic (the renamed pod interface, a bridge port) and the dummy
        // eth0 KubeVirt leaves with the pod's address are both guarded.
        assert_eq!(
            roles(&plan(&links, &selector(None))),
            vec![
                (Role::ToGuest, "imds-redirect"),
                (Role::Uplink, "eth0-nic"),
                (Role::Uplink, "eth0"),
                (Role::Guard, "k6t-eth0"),
                (Role::FromGuest, "tap0")
            ]
        );
    }

    #[test]
    fn the_reply_path_and_the_uplink_before_kubevirt_builds_the_bridge() {
        let links = vec![
            link(1, "lo", false, None),
            link(2, "eth0", false, None),
            link(8, "imds-sidecar", false, None),
            link(9, "imds-redirect", false, None),
            link(10, "imds-probe", false, None),
        ];
        assert_eq!(
            roles(&plan(&links, &selector(None))),
            vec![(Role::ToGuest, "imds-redirect"), (Role::Local, "lo"), (Role::Uplink, "eth0")]
        );
    }

    #[test]
    fn hot_plugged_secondary_interfaces_are_picked_up() {
        let mut links = masquerade();
        links.push(link(20, "k6t-a1b2c3d4e5f", true, None));
        links.push(link(21, "tapa1b2c3d4e5f", false, Some(20)));
        let p = plan(&links, &selector(None));
        assert!(p.contains(&Attachment {
            role: Role::FromGuest,
            ifindex: 21,
            ifname: "tapa1b2c3d4e5f".into()
        }));
        assert!(p.contains(&Attachment { role: Role::Guard, ifindex: 20, ifname: "k6t-a1b2c3d4e5f".into() }));
    }

    #[test]
    fn an_explicit_bridge_overrides_detection() {
        let mut links = masquerade();
        links.push(link(30, "br-custom", true, None));
        links.push(link(31, "tap9", false, Some(30)));
        assert_eq!(
            roles(&plan(&links, &selector(Some("br-custom")))),
            vec![
                (Role::ToGuest, "imds-redirect"),
                (Role::Local, "lo"),
                (Role::Uplink, "eth0"),
                (Role::Guard, "br-custom"),
                (Role::FromGuest, "tap9")
            ]
        );
        // A named interface that is not a bridge is not treated as one.
        assert_eq!(
            roles(&plan(&links, &selector(Some("eth0")))),
            vec![(Role::ToGuest, "imds-redirect"), (Role::Local, "lo"), (Role::Uplink, "eth0")]
        );
    }

    #[test]
    fn non_bridges_named_like_bridges_and_loose_taps_are_not_vm_ports() {
        let links = vec![
            link(3, "k6t-eth0", false, None),
            link(4, "tap0", false, Some(3)),
            link(5, "tap1", false, None),
        ];
        // The not-a-bridge k6t-eth0 leads out like any other interface.
        assert_eq!(roles(&plan(&links, &selector(None))), vec![(Role::Uplink, "k6t-eth0")]);
    }

    #[test]
    fn diff_attaches_new_and_detaches_vanished() {
        let wanted = plan(&masquerade(), &selector(None));
        let none = BTreeSet::new();
        assert_eq!(diff(&none, &wanted).attach, wanted);

        let attached: BTreeSet<_> = [
            (Role::ToGuest, 9),
            (Role::Local, 1),
            (Role::Uplink, 2),
            (Role::Guard, 3),
            (Role::FromGuest, 4),
            (Role::FromGuest, 44),
        ]
        .into();
        let changes = diff(&attached, &wanted);
        assert!(changes.attach.is_empty());
        assert_eq!(changes.detach, vec![(Role::FromGuest, 44)]);

        // The TAP came back with a new ifindex: a fresh attachment.
        let mut links = masquerade();
        links[3].index = 40;
        let changes = diff(&attached, &plan(&links, &selector(None)));
        assert_eq!(roles(&changes.attach), vec![(Role::FromGuest, "tap0")]);
        assert!(changes.detach.contains(&(Role::FromGuest, 4)));
    }
}
