//! The packet rules, as pure functions from a parsed frame to a verdict.
//!
//! Three attachment points, three functions:
//! - [`from_guest`]: ingress of a VM's TAP (what the guest sends);
//! - [`to_guest`]: ingress of the host end of the sidecar's veth (what the
//!   sidecar's stack sends back);
//! - [`guard`]: ingress of the bridge device (what reaches the pod's own stack
//!   from anything on the bridge other than the VM).

use crate::{
    abi::{Config, Counter, FlowKey},
    frame::{IPPROTO_TCP, Packet},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestVerdict {
    /// Not for the IMDS: leave it alone.
    Pass,
    /// TCP to the IMDS: remember the flow, send it to the sidecar.
    Redirect(FlowKey),
    /// ARP request for the IMDS address: answer it.
    AnswerArp,
    /// For the IMDS address but nothing the IMDS serves.
    Drop(Counter),
}

#[inline(always)]
pub fn from_guest(packet: &Packet, config: &Config) -> GuestVerdict {
    match packet {
        Packet::Ipv4(ip) if ip.dst == config.imds_addr => match ip.tcp_ports {
            Some((sport, dport)) if dport == config.imds_port => {
                GuestVerdict::Redirect(FlowKey { guest_addr: ip.src, guest_port: sport, _pad: [0; 2] })
            }
            _ => GuestVerdict::Drop(Counter::GuestUnsupportedDropped),
        },
        Packet::ArpRequest { target } if *target == config.imds_addr => GuestVerdict::AnswerArp,
        _ => GuestVerdict::Pass,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// A segment of the IMDS server: hand it to the guest owning this flow.
    Forward(FlowKey),
    Drop(Counter),
}

/// Only the server's TCP segments may leave the sidecar's veth; everything
/// else its stack emits there (IPv6 router solicitations, …) stops here.
#[inline(always)]
pub fn to_guest(packet: &Packet, config: &Config) -> ReplyVerdict {
    match packet {
        Packet::Ipv4(ip) if ip.src == config.imds_addr && ip.protocol == IPPROTO_TCP => match ip.tcp_ports {
            Some((sport, dport)) if sport == config.imds_port => {
                ReplyVerdict::Forward(FlowKey { guest_addr: ip.dst, guest_port: dport, _pad: [0; 2] })
            }
            _ => ReplyVerdict::Drop(Counter::ReplyUnexpectedDropped),
        },
        _ => ReplyVerdict::Drop(Counter::ReplyUnexpectedDropped),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardVerdict {
    Pass,
    Drop(Counter),
}

/// The VM's own IMDS traffic never reaches the bridge (it is redirected at
/// the TAP), so anything for the IMDS address seen here is foreign.
#[inline(always)]
pub fn guard(packet: &Packet, config: &Config) -> GuardVerdict {
    match packet {
        Packet::Ipv4(ip) if ip.dst == config.imds_addr => GuardVerdict::Drop(Counter::ForeignDropped),
        Packet::ArpRequest { target } if *target == config.imds_addr => {
            GuardVerdict::Drop(Counter::ForeignArpDropped)
        }
        _ => GuardVerdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        abi::IMDS_ADDR,
        frame::{
            parse,
            tests::{arp_request, tcp_frame},
        },
    };

    const GUEST: [u8; 4] = [10, 0, 2, 2];

    fn config() -> Config {
        Config {
            redirect_ifindex: 7,
            imds_addr: IMDS_ADDR,
            imds_port: 80u16.to_be_bytes(),
            sidecar_mac: [2, 0, 0, 0, 0, 9],
        }
    }

    fn guest(frame: &[u8]) -> GuestVerdict {
        from_guest(&parse(frame, IMDS_ADDR), &config())
    }

    #[test]
    fn guest_tcp_to_imds_port_is_redirected_with_its_flow() {
        let f = tcp_frame(GUEST, IMDS_ADDR, 41000, 80);
        assert_eq!(
            guest(&f),
            GuestVerdict::Redirect(FlowKey {
                guest_addr: GUEST,
                guest_port: 41000u16.to_be_bytes(),
                _pad: [0; 2]
            })
        );
    }

    #[test]
    fn guest_traffic_elsewhere_passes_untouched() {
        assert_eq!(guest(&tcp_frame(GUEST, [10, 0, 2, 1], 41000, 80)), GuestVerdict::Pass);
        assert_eq!(guest(&tcp_frame(GUEST, [169, 254, 169, 253], 1, 80)), GuestVerdict::Pass);
        assert_eq!(guest(&arp_request(GUEST, [10, 0, 2, 1])), GuestVerdict::Pass);
        let mut vlan = tcp_frame(GUEST, IMDS_ADDR, 1, 80);
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(guest(&vlan), GuestVerdict::Pass);
    }

    #[test]
    fn guest_imds_traffic_the_server_does_not_speak_is_dropped() {
        let drop = GuestVerdict::Drop(Counter::GuestUnsupportedDropped);
        assert_eq!(guest(&tcp_frame(GUEST, IMDS_ADDR, 1, 443)), drop);
        let mut udp = tcp_frame(GUEST, IMDS_ADDR, 1, 80);
        udp[23] = 17;
        assert_eq!(guest(&udp), drop);
        let mut fragment = tcp_frame(GUEST, IMDS_ADDR, 1, 80);
        fragment[21] = 8;
        assert_eq!(guest(&fragment), drop);
    }

    #[test]
    fn guest_arp_for_imds_is_answered() {
        assert_eq!(guest(&arp_request(GUEST, IMDS_ADDR)), GuestVerdict::AnswerArp);
    }

    #[test]
    fn only_server_segments_go_back_to_the_guest() {
        let reply = tcp_frame(IMDS_ADDR, GUEST, 80, 41000);
        assert_eq!(
            to_guest(&parse(&reply[..], IMDS_ADDR), &config()),
            ReplyVerdict::Forward(FlowKey {
                guest_addr: GUEST,
                guest_port: 41000u16.to_be_bytes(),
                _pad: [0; 2]
            })
        );
        let drop = ReplyVerdict::Drop(Counter::ReplyUnexpectedDropped);
        let other_port = tcp_frame(IMDS_ADDR, GUEST, 8080, 41000);
        assert_eq!(to_guest(&parse(&other_port[..], IMDS_ADDR), &config()), drop);
        let other_src = tcp_frame([10, 0, 2, 1], GUEST, 80, 41000);
        assert_eq!(to_guest(&parse(&other_src[..], IMDS_ADDR), &config()), drop);
        assert_eq!(to_guest(&parse(&arp_request(IMDS_ADDR, GUEST)[..], IMDS_ADDR), &config()), drop);
    }

    #[test]
    fn guard_drops_foreign_imds_traffic_only() {
        let g = |f: &[u8]| guard(&parse(f, IMDS_ADDR), &config());
        assert_eq!(
            g(&tcp_frame([10, 0, 2, 9], IMDS_ADDR, 1, 80)),
            GuardVerdict::Drop(Counter::ForeignDropped)
        );
        assert_eq!(
            g(&tcp_frame([10, 0, 2, 9], IMDS_ADDR, 1, 22)),
            GuardVerdict::Drop(Counter::ForeignDropped)
        );
        assert_eq!(g(&arp_request([10, 0, 2, 9], IMDS_ADDR)), GuardVerdict::Drop(Counter::ForeignArpDropped));
        assert_eq!(g(&tcp_frame([10, 0, 2, 9], [10, 0, 2, 1], 1, 80)), GuardVerdict::Pass);
        assert_eq!(g(&arp_request([10, 0, 2, 9], [10, 0, 2, 1])), GuardVerdict::Pass);
    }
}
