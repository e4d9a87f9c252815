//! The packet rules, as pure functions from a parsed frame to a verdict.
//!
//! Four attachment points, four functions:
//! - [`from_guest`]: ingress of a VM's TAP (what the guest sends);
//! - [`to_guest`]: ingress of the host end of the sidecar's veth (what the
//!   sidecar's stack sends back);
//! - [`guard`]: ingress of the bridge device (what reaches the pod's own stack
//!   from anything on the bridge other than the VM);
//! - [`to_uplink`]: egress of the pod's uplinks (what leaves the pod);
//! - [`from_pod`]: ingress of the pod's loopback (what the pod's own
//!   processes send to the pod's local addresses).

use crate::{
    abi::{Config, Counter, FlowKey},
    frame::{Destination, Frame, IPPROTO_TCP, Packet, PacketKind, TCP_RST, destination, parse},
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

/// `tagged`: the frame came with an 802.1Q/802.1ad tag, which the kernel
/// moved into skb metadata before tc (so `packet` looks untagged). Such a
/// frame passes untouched: its reply would go back untagged and be lost, and
/// serving VLANs would mean keeping each flow's tag. In bridge binding the
/// bridge then switches it toward the uplink, where [`to_uplink`] stops it.
#[inline(always)]
pub fn from_guest(packet: &Packet, tagged: bool, config: &Config) -> GuestVerdict {
    if tagged {
        return GuestVerdict::Pass;
    }
    let ip = &packet.ipv4;
    match packet.kind {
        PacketKind::Ipv4 if ip.dst == config.imds_addr => {
            if ip.has_tcp && ip.tcp_header.dst_port == config.imds_port {
                GuestVerdict::Redirect(FlowKey {
                    guest_addr: ip.src,
                    guest_port: ip.tcp_header.src_port,
                    _pad: [0; 2],
                })
            } else {
                GuestVerdict::Drop(Counter::GuestUnsupportedDropped)
            }
        }
        PacketKind::ArpRequest if packet.arp_target == config.imds_addr => GuestVerdict::AnswerArp,
        _ => GuestVerdict::Pass,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// A segment of the IMDS server: hand it to the guest owning `flow`, and
    /// count it in `counter` once it is on its way.
    Forward {
        flow: FlowKey,
        counter: Counter,
    },
    Drop(Counter),
}

/// Only the server's TCP segments may leave the sidecar's veth; everything
/// else its stack emits there (IPv6 router solicitations, …) stops here.
#[inline(always)]
pub fn to_guest(packet: &Packet, config: &Config) -> ReplyVerdict {
    let ip = &packet.ipv4;
    match packet.kind {
        PacketKind::Ipv4
            if ip.src == config.imds_addr
                && ip.protocol == IPPROTO_TCP
                && ip.has_tcp
                && ip.tcp_header.src_port == config.imds_port =>
        {
            ReplyVerdict::Forward {
                flow: FlowKey { guest_addr: ip.dst, guest_port: ip.tcp_header.dst_port, _pad: [0; 2] },
                // Still forwarded, so the guest fails fast instead of
                // retrying its SYN for two minutes; counted apart so a
                // missing server shows.
                counter: if ip.tcp_header.flags & TCP_RST != 0 {
                    Counter::ReplyReset
                } else {
                    Counter::ReplyForwarded
                },
            }
        }
        _ => ReplyVerdict::Drop(Counter::ReplyUnexpectedDropped),
    }
}

/// The verdict of the two guards, [`guard`] and [`to_uplink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardVerdict {
    Pass,
    Drop(Counter),
}

/// The VM's own IMDS traffic never reaches the bridge (it is redirected at
/// the TAP), so anything for the IMDS address seen here is foreign.
#[inline(always)]
pub fn guard(packet: &Packet, config: &Config) -> GuardVerdict {
    match packet.kind {
        PacketKind::Ipv4 if packet.ipv4.dst == config.imds_addr => {
            GuardVerdict::Drop(Counter::ForeignDropped)
        }
        PacketKind::ArpRequest if packet.arp_target == config.imds_addr => {
            GuardVerdict::Drop(Counter::ForeignArpDropped)
        }
        _ => GuardVerdict::Pass,
    }
}

/// The fail-closed backstop. A guest's IMDS traffic is redirected at its TAP,
/// so none of it should get this far; some does when a TAP appeared while no
/// agent ran (bridge binding: the bridge switches it out of `eth0-nic`). Past
/// the uplink the node's own metadata service, with the node's credentials,
/// would answer, so anything for the address stops here: any protocol, any
/// fragment, and what hides under more VLAN tags than are read. Every packet
/// of the VM pays for this, hence [`Destination`] rather than [`Packet`].
#[inline(always)]
pub fn to_uplink(destination: &Destination, config: &Config) -> GuardVerdict {
    match *destination {
        Destination::Ipv4(dst) if dst == config.imds_addr => GuardVerdict::Drop(Counter::UplinkDropped),
        Destination::Hidden => GuardVerdict::Drop(Counter::UplinkDropped),
        Destination::ArpRequest(target) if target == config.imds_addr => {
            GuardVerdict::Drop(Counter::UplinkArpDropped)
        }
        _ => GuardVerdict::Pass,
    }
}

/// A process of the pod sending to the IMDS address reaches it over
/// loopback (the address is local to the pod): stopped here, so the server
/// sees only what came through the veth. Every loopback packet of the pod
/// passes here, hence [`Destination`].
#[inline(always)]
pub fn from_pod(destination: &Destination, config: &Config) -> GuardVerdict {
    match *destination {
        Destination::Ipv4(dst) if dst == config.imds_addr => GuardVerdict::Drop(Counter::LocalDropped),
        _ => GuardVerdict::Pass,
    }
}

/// Whether every program that sees passing traffic (`imds_from_guest`,
/// tagged or not, `imds_guard`, `imds_to_uplink`, `imds_from_pod`) lets
/// `frame` through by the full rules: what [`Glance::passes`] may never
/// contradict (checked by the tests here and the `frame_rules` fuzz target).
///
/// [`Glance::passes`]: crate::frame::Glance::passes
pub fn every_program_passes<F: Frame + ?Sized>(frame: &F, config: &Config) -> bool {
    let packet = parse(frame, config.imds_addr);
    let to = destination(frame);
    [false, true].into_iter().all(|tagged| from_guest(&packet, tagged, config) == GuestVerdict::Pass)
        && guard(&packet, config) == GuardVerdict::Pass
        && to_uplink(&to, config) == GuardVerdict::Pass
        && from_pod(&to, config) == GuardVerdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        abi::IMDS_ADDR,
        frame::{
            ETHERTYPE_QINQ, ETHERTYPE_VLAN, MAX_VLAN_TAGS, destination, parse,
            tests::{arp_request, tagged, tcp_frame, with_tcp_flags},
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
        from_guest(&parse(frame, IMDS_ADDR), false, &config())
    }

    #[test]
    fn a_glance_never_passes_what_a_program_would_stop() {
        let config = config();
        let mut frames: Vec<Vec<u8>> = vec![
            tcp_frame(GUEST, [10, 0, 2, 1], 40000, 80),
            tcp_frame(GUEST, IMDS_ADDR, 40000, 80),
            tcp_frame(IMDS_ADDR, GUEST, 80, 40000),
            arp_request(GUEST, IMDS_ADDR).to_vec(),
            arp_request(GUEST, [10, 0, 2, 1]).to_vec(),
        ];
        for f in frames.clone() {
            for ethertype in [ETHERTYPE_VLAN, ETHERTYPE_QINQ] {
                for tags in 1..=MAX_VLAN_TAGS + 1 {
                    frames.push(tagged(&f, ethertype, tags));
                }
            }
        }
        // Every byte of the first 64 of each frame set to values that matter
        // somewhere (EtherTypes, the address's bytes, IHL/version, flags).
        let mut variants = Vec::new();
        for f in &frames {
            for at in 0..f.len().min(64) {
                for value in [0x00, 0x01, 0x06, 0x08, 0x45, 0x81, 0x88, 0xa8, 0xa9, 0xfe, 0xff] {
                    let mut v = f.clone();
                    v[at] = value;
                    variants.push(v);
                }
            }
            for len in 0..f.len() {
                variants.push(f[..len].to_vec());
            }
        }
        let mut glanced = 0;
        for f in frames.iter().chain(&variants) {
            if f.glance().is_some_and(|g| g.passes(config.imds_addr)) {
                glanced += 1;
                assert!(
                    every_program_passes(&f[..], &config),
                    "the glance passed a frame a program stops: {f:02x?}"
                );
            }
        }
        assert!(glanced > 1000, "the glance passed only {glanced} frames: the check tests little");
    }

    #[test]
    fn frames_that_came_tagged_pass_untouched() {
        let f = tcp_frame(GUEST, IMDS_ADDR, 41000, 80);
        assert_eq!(from_guest(&parse(&f[..], IMDS_ADDR), true, &config()), GuestVerdict::Pass);
        let arp = arp_request(GUEST, IMDS_ADDR);
        assert_eq!(from_guest(&parse(&arp[..], IMDS_ADDR), true, &config()), GuestVerdict::Pass);
        assert_eq!(guest(&arp), GuestVerdict::AnswerArp);
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
            ReplyVerdict::Forward {
                flow: FlowKey { guest_addr: GUEST, guest_port: 41000u16.to_be_bytes(), _pad: [0; 2] },
                counter: Counter::ReplyForwarded,
            }
        );
        let drop = ReplyVerdict::Drop(Counter::ReplyUnexpectedDropped);
        let other_port = tcp_frame(IMDS_ADDR, GUEST, 8080, 41000);
        assert_eq!(to_guest(&parse(&other_port[..], IMDS_ADDR), &config()), drop);
        let other_src = tcp_frame([10, 0, 2, 1], GUEST, 80, 41000);
        assert_eq!(to_guest(&parse(&other_src[..], IMDS_ADDR), &config()), drop);
        assert_eq!(to_guest(&parse(&arp_request(IMDS_ADDR, GUEST)[..], IMDS_ADDR), &config()), drop);
    }

    #[test]
    fn server_resets_are_forwarded_and_counted_apart() {
        let reply = |flags| {
            let f = with_tcp_flags(tcp_frame(IMDS_ADDR, GUEST, 80, 41000), flags);
            match to_guest(&parse(&f[..], IMDS_ADDR), &config()) {
                ReplyVerdict::Forward { flow, counter } => {
                    assert_eq!(flow.guest_port, 41000u16.to_be_bytes());
                    counter
                }
                drop => panic!("{flags:#x}: {drop:?}"),
            }
        };
        // RST|ACK is what a closed port answers a SYN with.
        assert_eq!(reply(TCP_RST | 0x10), Counter::ReplyReset);
        assert_eq!(reply(TCP_RST), Counter::ReplyReset);
        for flags in [0x12 /* SYN|ACK */, 0x10, 0x18 /* PSH|ACK */, 0x11 /* FIN|ACK */] {
            assert_eq!(reply(flags), Counter::ReplyForwarded, "{flags:#x}");
        }
        // A reset from another port is no server's: dropped as before.
        let other = with_tcp_flags(tcp_frame(IMDS_ADDR, GUEST, 8080, 41000), TCP_RST);
        assert_eq!(
            to_guest(&parse(&other[..], IMDS_ADDR), &config()),
            ReplyVerdict::Drop(Counter::ReplyUnexpectedDropped)
        );
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

    fn uplink(frame: &[u8]) -> GuardVerdict {
        to_uplink(&destination(frame), &config())
    }

    const POD: [u8; 4] = [10, 244, 1, 7];
    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_ICMP: u8 = 1;

    fn with_protocol(mut f: Vec<u8>, protocol: u8) -> Vec<u8> {
        f[23] = protocol;
        f
    }

    #[test]
    fn uplink_drops_every_ipv4_packet_for_imds() {
        let drop = GuardVerdict::Drop(Counter::UplinkDropped);
        let tcp = tcp_frame(POD, IMDS_ADDR, 41000, 80);
        assert_eq!(uplink(&tcp), drop);
        assert_eq!(uplink(&tcp_frame(POD, IMDS_ADDR, 41000, 443)), drop);
        assert_eq!(uplink(&with_protocol(tcp.clone(), IPPROTO_UDP)), drop);
        assert_eq!(uplink(&with_protocol(tcp.clone(), IPPROTO_ICMP)), drop);
        // First fragment (MF) and a later one (offset 1480): no ports needed.
        let mut first = tcp.clone();
        first[20] = 0x20;
        assert_eq!(uplink(&first), drop);
        let mut later = with_protocol(tcp.clone(), IPPROTO_UDP);
        later[20..22].copy_from_slice(&185u16.to_be_bytes());
        assert_eq!(uplink(&later), drop);
        // Nothing past the destination is needed, nor a sane header before it.
        assert_eq!(uplink(&tcp[..34]), drop);
        let mut odd = tcp.clone();
        odd[14] = 0x65;
        assert_eq!(uplink(&odd), drop);
    }

    #[test]
    fn uplink_drops_arp_requests_for_imds_only() {
        assert_eq!(uplink(&arp_request(POD, IMDS_ADDR)), GuardVerdict::Drop(Counter::UplinkArpDropped));
        assert_eq!(uplink(&arp_request(POD, [10, 244, 1, 1])), GuardVerdict::Pass);
        assert_eq!(uplink(&arp_request(POD, [169, 254, 169, 253])), GuardVerdict::Pass);
    }

    #[test]
    fn uplink_passes_everything_else() {
        for dst in [[10, 244, 1, 1], [8, 8, 8, 8], [169, 254, 169, 253], [169, 254, 169, 255]] {
            assert_eq!(uplink(&tcp_frame(POD, dst, 41000, 80)), GuardVerdict::Pass, "{dst:?}");
            let udp = with_protocol(tcp_frame(POD, dst, 41000, 53), IPPROTO_UDP);
            assert_eq!(uplink(&udp), GuardVerdict::Pass, "{dst:?}");
        }
        // A reply from the address (not for it) is not what the guard is for.
        assert_eq!(uplink(&tcp_frame(IMDS_ADDR, POD, 80, 41000)), GuardVerdict::Pass);
        // Runts too short to hold a destination.
        let tcp = tcp_frame(POD, IMDS_ADDR, 41000, 80);
        for len in 0..34 {
            assert_eq!(uplink(&tcp[..len]), GuardVerdict::Pass, "{len} bytes");
        }
    }

    #[test]
    fn uplink_tells_ipv6_apart_by_its_ethertype() {
        // An IPv6 frame whose bytes sit where an IPv4 destination would.
        let mut v6 = tcp_frame(POD, IMDS_ADDR, 41000, 80);
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        v6[14] = 0x60;
        assert_eq!(uplink(&v6), GuardVerdict::Pass);
    }

    #[test]
    fn uplink_sees_vlan_tags_wherever_the_kernel_keeps_them() {
        let drop = GuardVerdict::Drop(Counter::UplinkDropped);
        // On egress the kernel keeps an 802.1Q tag in skb metadata (a VLAN
        // device's, a VLAN-filtering bridge's, and the one a guest sent, which
        // the TAP's receive path moves there), so tc shows the frame without
        // it: these are the bytes of such a frame.
        let tcp = tcp_frame(POD, IMDS_ADDR, 41000, 80);
        assert_eq!(uplink(&tcp), drop);
        // Further tags stay in the bytes. The node strips VLAN 0 ones, however
        // many, and delivers what they carry: dropped all the same.
        for ethertype in [ETHERTYPE_VLAN, ETHERTYPE_QINQ] {
            for tags in 1..=MAX_VLAN_TAGS {
                assert_eq!(uplink(&tagged(&tcp, ethertype, tags)), drop, "{ethertype:#x} x{tags}");
                assert_eq!(
                    uplink(&tagged(&arp_request(POD, IMDS_ADDR), ethertype, tags)),
                    GuardVerdict::Drop(Counter::UplinkArpDropped)
                );
                let elsewhere = tcp_frame(POD, [10, 244, 1, 1], 41000, 80);
                assert_eq!(uplink(&tagged(&elsewhere, ethertype, tags)), GuardVerdict::Pass);
            }
            // Deeper than the guard reads: unknown, so not let out.
            let elsewhere = tcp_frame(POD, [10, 244, 1, 1], 41000, 80);
            assert_eq!(uplink(&tagged(&elsewhere, ethertype, MAX_VLAN_TAGS + 1)), drop);
        }
    }

    #[test]
    fn loopback_traffic_to_the_imds_address_is_dropped_and_nothing_else() {
        let local = |frame: &[u8]| from_pod(&destination(frame), &config());
        let drop = GuardVerdict::Drop(Counter::LocalDropped);
        // A pod process connecting to 169.254.169.254:80 (loopback frames
        // carry an Ethernet header with zero addresses).
        assert_eq!(local(&tcp_frame(POD, IMDS_ADDR, 41000, 80)), drop);
        assert_eq!(local(&with_protocol(tcp_frame(POD, IMDS_ADDR, 41000, 53), IPPROTO_UDP)), drop);
        // The server's own replies and the pod's other local traffic pass.
        assert_eq!(local(&tcp_frame(IMDS_ADDR, POD, 80, 41000)), GuardVerdict::Pass);
        for dst in [[127, 0, 0, 1], [10, 0, 2, 1], [169, 254, 169, 253]] {
            assert_eq!(local(&tcp_frame(POD, dst, 41000, 80)), GuardVerdict::Pass, "{dst:?}");
        }
        assert_eq!(local(&arp_request(POD, IMDS_ADDR)), GuardVerdict::Pass);
    }
}
