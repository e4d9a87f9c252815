//! Reading the few header fields the rules need out of an Ethernet frame.
//!
//! [`Frame`] abstracts where the bytes live: an skb in the eBPF program, a
//! byte slice in tests. [`parse`] is the only parser, so what is tested on the
//! host is what runs in the kernel.

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IPPROTO_TCP: u8 = 6;
/// Ethernet + an ARP body for Ethernet/IPv4 (RFC 826).
pub const ARP_FRAME_LEN: usize = ETH_HLEN + 28;
const IPV4_MIN_HLEN: usize = 20;

/// Random access to the bytes of a frame.
pub trait Frame {
    /// `N` bytes starting at `offset`, or `None` if the frame is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// The fields of a frame that matter to the IMDS data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    Ipv4(Ipv4),
    /// An ARP request for an IPv4 address over Ethernet.
    ArpRequest {
        target: [u8; 4],
    },
    /// Anything else: other ethertypes, VLAN tags, ARP replies, runts.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Source and destination port (network order) when the header is a
    /// well-formed TCP one in an unfragmented datagram.
    pub tcp_ports: Option<([u8; 2], [u8; 2])>,
}

/// Ethernet plus a minimal IPv4 header: read in one go, it covers every
/// field most packets need.
const L2_L3_LEN: usize = ETH_HLEN + IPV4_MIN_HLEN;

/// Parses the Ethernet, IPv4/ARP and TCP port fields of `frame`. TCP ports
/// are only read for packets from or to `watched` (the IMDS address): every
/// other packet costs a single read.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F, watched: [u8; 4]) -> Packet {
    let Some(head) = frame.read::<L2_L3_LEN>(0) else {
        // Shorter than any IPv4 packet, and than an ARP packet.
        return Packet::Other;
    };
    match u16::from_be_bytes([head[12], head[13]]) {
        ETHERTYPE_IPV4 => parse_ipv4(frame, &head, watched),
        ETHERTYPE_ARP => parse_arp(frame),
        _ => Packet::Other,
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, head: &[u8; L2_L3_LEN], watched: [u8; 4]) -> Packet {
    let ip = &head[ETH_HLEN..];
    let mut header = Ipv4 {
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        protocol: ip[9],
        tcp_ports: None,
    };
    let version = ip[0] >> 4;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // Any fragment (MF set or a non-zero offset) hides or lacks the ports.
    let fragmented = (u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff) != 0;
    let watched_flow = header.dst == watched || header.src == watched;
    if watched_flow
        && version == 4
        && ihl >= IPV4_MIN_HLEN
        && !fragmented
        && header.protocol == IPPROTO_TCP
        && let Some(p) = frame.read::<4>(ETH_HLEN + ihl)
    {
        header.tcp_ports = Some(([p[0], p[1]], [p[2], p[3]]));
    }
    Packet::Ipv4(header)
}

#[inline(always)]
fn parse_arp<F: Frame + ?Sized>(frame: &F) -> Packet {
    let Some(arp) = frame.read::<28>(ETH_HLEN) else {
        return Packet::Other;
    };
    let ethernet_ipv4 = arp[0..6] == [0, 1, 0x08, 0x00, 6, 4];
    let request = arp[6..8] == [0, 1];
    if ethernet_ipv4 && request {
        Packet::ArpRequest { target: [arp[24], arp[25], arp[26], arp[27]] }
    } else {
        Packet::Other
    }
}

/// Turns an Ethernet/IPv4 ARP request (its first [`ARP_FRAME_LEN`] bytes) into
/// the reply `answer_mac` would send; `None` if it is not such a request.
pub fn arp_reply(request: &[u8; ARP_FRAME_LEN], answer_mac: [u8; 6]) -> Option<[u8; ARP_FRAME_LEN]> {
    let Packet::ArpRequest { target } = parse_arp(&request[..]) else {
        return None;
    };
    let mut reply = *request;
    let asker_mac = &request[ETH_HLEN + 8..ETH_HLEN + 14];
    let asker_ip = &request[ETH_HLEN + 14..ETH_HLEN + 18];
    // Ethernet: back to the asker, from us.
    reply[0..6].copy_from_slice(&request[6..12]);
    reply[6..12].copy_from_slice(&answer_mac);
    // ARP: opcode 2, sender = us/target, target = the asker.
    reply[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&[0, 2]);
    reply[ETH_HLEN + 8..ETH_HLEN + 14].copy_from_slice(&answer_mac);
    reply[ETH_HLEN + 14..ETH_HLEN + 18].copy_from_slice(&target);
    reply[ETH_HLEN + 18..ETH_HLEN + 24].copy_from_slice(asker_mac);
    reply[ETH_HLEN + 24..ETH_HLEN + 28].copy_from_slice(asker_ip);
    Some(reply)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

    /// An Ethernet + IPv4 + TCP frame (headers only; checksums are not looked at).
    pub fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&GW_MAC);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    pub fn arp_request(sender_ip: [u8; 4], target: [u8; 4]) -> [u8; ARP_FRAME_LEN] {
        let mut f = [0u8; ARP_FRAME_LEN];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&GUEST_MAC);
        f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&GUEST_MAC);
        f[28..32].copy_from_slice(&sender_ip);
        f[38..42].copy_from_slice(&target);
        f
    }

    #[test]
    fn ports_are_only_read_for_watched_flows() {
        let f = tcp_frame([10, 0, 2, 2], [10, 0, 2, 1], 40000, 80);
        let Packet::Ipv4(ip) = parse(&f[..], IMDS) else { panic!("not ipv4") };
        assert_eq!(ip.tcp_ports, None);
        let Packet::Ipv4(ip) = parse(&f[..], [10, 0, 2, 1]) else { panic!("not ipv4") };
        assert_eq!(ip.tcp_ports, Some((40000u16.to_be_bytes(), 80u16.to_be_bytes())));
    }

    #[test]
    fn parses_tcp_ports_and_addresses() {
        let f = tcp_frame([10, 0, 2, 2], [169, 254, 169, 254], 40000, 80);
        assert_eq!(
            parse(&f[..], IMDS),
            Packet::Ipv4(Ipv4 {
                src: [10, 0, 2, 2],
                dst: [169, 254, 169, 254],
                protocol: IPPROTO_TCP,
                tcp_ports: Some((40000u16.to_be_bytes(), 80u16.to_be_bytes())),
            })
        );
    }

    #[test]
    fn honours_ip_options_when_locating_ports() {
        let mut f = tcp_frame([10, 0, 2, 2], IMDS, 1, 2);
        f[14] = 0x46; // IHL 6: four bytes of options before TCP
        f.splice(34..34, [1, 1, 1, 0]);
        let Packet::Ipv4(ip) = parse(&f[..], IMDS) else { panic!("not ipv4") };
        assert_eq!(ip.tcp_ports, Some((1u16.to_be_bytes(), 2u16.to_be_bytes())));
    }

    #[test]
    fn fragments_and_bad_headers_have_no_ports() {
        for (offset, value) in [(20usize, 0x20u8), (21, 0x01), (14, 0x44), (14, 0x65)] {
            let mut f = tcp_frame([10, 0, 2, 2], IMDS, 1, 80);
            f[offset] = value;
            let Packet::Ipv4(ip) = parse(&f[..], IMDS) else { panic!("not ipv4") };
            assert_eq!(ip.tcp_ports, None, "byte {offset} = {value:#x}");
        }
    }
    const IMDS: [u8; 4] = crate::abi::IMDS_ADDR;

    #[test]
    fn truncated_frames_never_panic() {
        let f = tcp_frame([10, 0, 2, 2], IMDS, 1, 80);
        for len in 0..f.len() {
            let _ = parse(&f[..len], IMDS);
        }
        assert_eq!(parse(&f[..13], IMDS), Packet::Other);
        assert_eq!(parse(&f[..33], IMDS), Packet::Other);
        let Packet::Ipv4(ip) = parse(&f[..36], IMDS) else { panic!() };
        assert_eq!(ip.tcp_ports, None);
    }

    #[test]
    fn arp_requests_are_recognised_and_answered() {
        let req = arp_request([10, 0, 2, 2], IMDS);
        assert_eq!(parse(&req[..], IMDS), Packet::ArpRequest { target: IMDS });
        let ours = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let reply = arp_reply(&req, ours).expect("a request");
        assert_eq!(&reply[0..6], &GUEST_MAC);
        assert_eq!(&reply[6..12], &ours);
        assert_eq!(&reply[20..22], &[0, 2]);
        assert_eq!(&reply[22..28], &ours);
        assert_eq!(&reply[28..32], &IMDS);
        assert_eq!(&reply[32..38], &GUEST_MAC);
        assert_eq!(&reply[38..42], &[10, 0, 2, 2]);
        // A reply is not a request, so it is never answered.
        assert_eq!(parse(&reply[..], IMDS), Packet::Other);
        assert_eq!(arp_reply(&reply, ours), None);
    }

    #[test]
    fn non_ethernet_ipv4_arp_is_other() {
        let mut req = arp_request([10, 0, 2, 2], IMDS);
        req[15] = 6; // hardware type IEEE 802
        assert_eq!(parse(&req[..], IMDS), Packet::Other);
    }
}
