//! Reading the few header fields the rules need out of an Ethernet frame.
//!
//! [`Frame`] abstracts where the bytes live: an skb in the eBPF program, a
//! byte slice in tests. [`parse`] is the only parser, so what is tested on the
//! host is what runs in the kernel.

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// 802.1Q and 802.1ad VLAN tags, when they are in the frame's bytes rather
/// than in skb metadata.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
/// VLAN tags [`destination`] looks through. A guest's outer tag is in skb
/// metadata by the time its frame leaves the pod, so this covers a guest
/// stacking three; deeper frames are [`Destination::Hidden`].
pub const MAX_VLAN_TAGS: usize = 2;
pub const IPPROTO_TCP: u8 = 6;
/// RST in [`Tcp::flags`].
pub const TCP_RST: u8 = 0x04;
/// Ethernet + an ARP body for Ethernet/IPv4 (RFC 826).
pub const ARP_FRAME_LEN: usize = ETH_HLEN + 28;
const IPV4_MIN_HLEN: usize = 20;

/// Random access to the bytes of a frame.
pub trait Frame {
    /// `N` bytes starting at `offset`, or `None` if the frame is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The same for an offset known at compile time, which the kernel side
    /// can read straight from the packet, without a helper call.
    #[inline(always)]
    fn read_at<const OFFSET: usize, const N: usize>(&self) -> Option<[u8; N]> {
        self.read::<N>(OFFSET)
    }

    /// The EtherType and, for a frame long enough to hold one, the IPv4
    /// destination, as they lie in the frame: [`Glance`]. The kernel side
    /// reads them with two loads straight from the packet.
    #[inline(always)]
    fn glance(&self) -> Option<Glance> {
        let ethertype = self.read_at::<ETHERTYPE_AT, 2>()?;
        let dst = self.read_at::<IPV4_DST_AT, 4>()?;
        Some(Glance { ethertype: u16::from_ne_bytes(ethertype), ipv4_dst: u32::from_ne_bytes(dst) })
    }
}

/// Where the EtherType and an untagged IPv4 header's destination start.
pub const ETHERTYPE_AT: usize = 12;
pub const IPV4_DST_AT: usize = ETH_HLEN + 16;
/// How much of a frame [`Frame::glance`] needs.
pub const GLANCE_LEN: usize = IPV4_DST_AT + 4;

/// Two fields read as they lie in the frame (network byte order in native
/// integers, so comparing them costs no byte swap): the EtherType, and the
/// four bytes where an untagged IPv4 header keeps its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Glance {
    pub ethertype: u16,
    pub ipv4_dst: u32,
}

impl Glance {
    /// Whether the frame is surely none of the IMDS's business: IPv4 for
    /// another address than `imds`, or an EtherType no program looks into
    /// (neither ARP nor a VLAN tag in the bytes). Every program passes such
    /// a frame whatever else it holds (`rules::tests` and the `frame_rules`
    /// fuzz target check it against the full rules), so they return at
    /// once: almost every packet a VM sends costs a bounds check, two loads
    /// and three comparisons.
    #[inline(always)]
    pub fn passes(&self, imds: [u8; 4]) -> bool {
        /// An EtherType as [`Frame::glance`] reads it.
        const fn raw(ethertype: u16) -> u16 {
            u16::from_ne_bytes(ethertype.to_be_bytes())
        }
        match self.ethertype {
            e if e == raw(ETHERTYPE_IPV4) => self.ipv4_dst != u32::from_ne_bytes(imds),
            e => e != raw(ETHERTYPE_ARP) && e != raw(ETHERTYPE_VLAN) && e != raw(ETHERTYPE_QINQ),
        }
    }
}

impl Frame for [u8] {
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// What kind of frame a [`Packet`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    Ipv4,
    /// An ARP request for an IPv4 address over Ethernet.
    ArpRequest,
    /// Anything else: other ethertypes, VLAN tags, ARP replies, runts.
    Other,
}

/// The fields of a frame that matter to the IMDS data path.
///
/// A struct whose every field is set whatever the kind (zeros where it does
/// not apply), not an enum with data: LLVM leaves the fields of variants a
/// path did not build undefined, spills them to the stack unwritten, and
/// kernels before 5.12 refuse a program that reads stack it never wrote
/// (found on Linux 5.10, `cargo xtask test --kernel 5.10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: PacketKind,
    /// For [`PacketKind::Ipv4`]; zeros otherwise.
    pub ipv4: Ipv4,
    /// For [`PacketKind::ArpRequest`], the address asked for; zeros otherwise.
    pub arp_target: [u8; 4],
}

impl Packet {
    pub const OTHER: Packet = Packet { kind: PacketKind::Other, ipv4: Ipv4::ZERO, arp_target: [0; 4] };

    pub const fn from_ipv4(ipv4: Ipv4) -> Self {
        Packet { kind: PacketKind::Ipv4, ipv4, arp_target: [0; 4] }
    }

    pub const fn arp_request(target: [u8; 4]) -> Self {
        Packet { kind: PacketKind::ArpRequest, ipv4: Ipv4::ZERO, arp_target: target }
    }

    /// The IPv4 fields, if it is IPv4.
    pub fn ipv4(&self) -> Option<&Ipv4> {
        (self.kind == PacketKind::Ipv4).then_some(&self.ipv4)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Whether [`Self::tcp_header`] holds the start of a well-formed TCP
    /// header in an unfragmented datagram from or to the watched address.
    pub has_tcp: bool,
    /// Zeros unless `has_tcp` (see [`Packet`] for why not an `Option`).
    pub tcp_header: Tcp,
}

impl Ipv4 {
    const ZERO: Ipv4 = Ipv4 { src: [0; 4], dst: [0; 4], protocol: 0, has_tcp: false, tcp_header: Tcp::ZERO };

    /// The TCP header's start, when there is one (see `has_tcp`).
    pub fn tcp(&self) -> Option<Tcp> {
        self.has_tcp.then_some(self.tcp_header)
    }
}

/// A TCP header as far as its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    /// Network byte order.
    pub src_port: [u8; 2],
    /// Network byte order.
    pub dst_port: [u8; 2],
    /// CWR … FIN, e.g. [`TCP_RST`].
    pub flags: u8,
}

impl Tcp {
    const ZERO: Tcp = Tcp { src_port: [0; 2], dst_port: [0; 2], flags: 0 };
}

/// Ports, sequence and acknowledgement numbers, data offset, flags.
const TCP_THROUGH_FLAGS: usize = 14;

/// Where the head read starts: the MAC addresses before the EtherType decide
/// nothing.
const HEAD_OFFSET: usize = 12;
/// EtherType plus a minimal IPv4 header, up to its destination: read in one
/// go, it is all that most packets need.
const HEAD_LEN: usize = ETH_HLEN + IPV4_MIN_HLEN - HEAD_OFFSET;

/// Parses the EtherType, the IPv4/ARP fields and, for IMDS traffic, the start
/// of the TCP header of `frame`. The TCP header is only read for packets from
/// or to `watched` (the IMDS address): every other packet costs a single read.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F, watched: [u8; 4]) -> Packet {
    // Shorter than any IPv4 packet, and than an ARP packet: no address in
    // it to match, and EtherType 0 makes it `Other`. Zeros rather than an
    // early return: LLVM merges the paths and reads the head bytes of both
    // from one stack slot, which kernels before 5.12 refuse when one path
    // never wrote it (uninitialised stack).
    let head = frame.read_at::<HEAD_OFFSET, HEAD_LEN>().unwrap_or([0; HEAD_LEN]);
    match u16::from_be_bytes([head[0], head[1]]) {
        ETHERTYPE_IPV4 => parse_ipv4(frame, &head, watched),
        ETHERTYPE_ARP => parse_arp(frame),
        _ => Packet::OTHER,
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, head: &[u8; HEAD_LEN], watched: [u8; 4]) -> Packet {
    let ip = &head[ETH_HLEN - HEAD_OFFSET..];
    let mut header = Ipv4 {
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        protocol: ip[9],
        has_tcp: false,
        tcp_header: Tcp::ZERO,
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
        && let Some(t) = frame.read::<TCP_THROUGH_FLAGS>(ETH_HLEN + ihl)
    {
        header.has_tcp = true;
        header.tcp_header = Tcp { src_port: [t[0], t[1]], dst_port: [t[2], t[3]], flags: t[13] };
    }
    Packet::from_ipv4(header)
}

#[inline(always)]
fn parse_arp<F: Frame + ?Sized>(frame: &F) -> Packet {
    match arp_request_target(frame, ETH_HLEN) {
        Some(target) => Packet::arp_request(target),
        None => Packet::OTHER,
    }
}

/// The target of the Ethernet/IPv4 ARP request whose body starts at `offset`.
#[inline(always)]
fn arp_request_target<F: Frame + ?Sized>(frame: &F, offset: usize) -> Option<[u8; 4]> {
    let arp = frame.read::<28>(offset)?;
    let ethernet_ipv4 = arp[0..6] == [0, 1, 0x08, 0x00, 6, 4];
    let request = arp[6..8] == [0, 1];
    (ethernet_ipv4 && request).then_some([arp[24], arp[25], arp[26], arp[27]])
}

/// Where a frame is going, as far as the uplink guard needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// IPv4, whatever the protocol, fragment or not.
    Ipv4([u8; 4]),
    /// An Ethernet/IPv4 ARP request for this address.
    ArpRequest([u8; 4]),
    /// More than [`MAX_VLAN_TAGS`] VLAN tags in the frame's bytes: what they
    /// hide is unknown.
    Hidden,
    /// Anything else, including frames too short to hold an address.
    Other,
}

/// The destination of `frame`, for traffic that is almost never ours: one
/// read of the EtherType through the IPv4 destination, nothing else, unless
/// the frame is ARP or carries VLAN tags in its bytes.
///
/// Tags are looked through because a receiver strips priority tags (VLAN 0),
/// stacked or not, and hands what they carried to its IP stack: the node
/// would answer an IPv4 packet for the IMDS hidden behind them.
#[inline(always)]
pub fn destination<F: Frame + ?Sized>(frame: &F) -> Destination {
    let Some(head) = frame.read_at::<HEAD_OFFSET, HEAD_LEN>() else {
        return Destination::Other;
    };
    match destination_after(frame, &head, HEAD_OFFSET) {
        Some(destination) => destination,
        None => destination_behind_tags(frame),
    }
}

/// What `head`, read at `offset`, says of the frame's destination; `None` if
/// it starts with a VLAN tag.
#[inline(always)]
fn destination_after<F: Frame + ?Sized>(
    frame: &F,
    head: &[u8; HEAD_LEN],
    offset: usize,
) -> Option<Destination> {
    Some(match u16::from_be_bytes([head[0], head[1]]) {
        ETHERTYPE_IPV4 => {
            let ip = &head[ETH_HLEN - HEAD_OFFSET..];
            Destination::Ipv4([ip[16], ip[17], ip[18], ip[19]])
        }
        ETHERTYPE_ARP => match arp_request_target(frame, offset + 2) {
            Some(target) => Destination::ArpRequest(target),
            None => Destination::Other,
        },
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => return None,
        _ => Destination::Other,
    })
}

/// The rare frame with VLAN tags in its bytes: one more read per tag.
#[inline(always)]
fn destination_behind_tags<F: Frame + ?Sized>(frame: &F) -> Destination {
    for tags in 1..=MAX_VLAN_TAGS {
        let offset = HEAD_OFFSET + tags * VLAN_HLEN;
        let Some(head) = frame.read::<HEAD_LEN>(offset) else {
            return Destination::Other;
        };
        if let Some(destination) = destination_after(frame, &head, offset) {
            return destination;
        }
    }
    Destination::Hidden
}

/// Turns an Ethernet/IPv4 ARP request (its first [`ARP_FRAME_LEN`] bytes) into
/// the reply `answer_mac` would send; `None` if it is not such a request.
pub fn arp_reply(request: &[u8; ARP_FRAME_LEN], answer_mac: [u8; 6]) -> Option<[u8; ARP_FRAME_LEN]> {
    let Packet { kind: PacketKind::ArpRequest, arp_target: target, .. } = parse_arp(&request[..]) else {
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

    /// Offset of the TCP flags in [`tcp_frame`]'s frames.
    pub const TCP_FLAGS_AT: usize = ETH_HLEN + IPV4_MIN_HLEN + 13;

    /// An Ethernet + IPv4 + TCP frame (headers only; checksums are not looked
    /// at), flags ACK.
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
        // Sequence and acknowledgement numbers, data offset 5, ACK, window,
        // checksum, urgent pointer: no byte near the flags looks like them.
        f.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    pub fn with_tcp_flags(mut f: Vec<u8>, flags: u8) -> Vec<u8> {
        f[TCP_FLAGS_AT] = flags;
        f
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> Option<Tcp> {
        Some(Tcp { src_port: sport.to_be_bytes(), dst_port: dport.to_be_bytes(), flags })
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

    /// A frame that records what is read of it: offset, length, and whether
    /// the offset was a constant (the kernel reads those without a helper).
    struct Recorded<'a>(&'a [u8], std::cell::RefCell<Vec<(usize, usize, bool)>>);

    impl Frame for Recorded<'_> {
        fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
            self.1.borrow_mut().push((offset, N, false));
            self.0.read(offset)
        }

        fn read_at<const OFFSET: usize, const N: usize>(&self) -> Option<[u8; N]> {
            self.1.borrow_mut().push((OFFSET, N, true));
            self.0.read(OFFSET)
        }
    }

    fn reads<T>(frame: &[u8], f: impl Fn(&Recorded) -> T) -> Vec<(usize, usize, bool)> {
        let recorded = Recorded(frame, Default::default());
        f(&recorded);
        recorded.1.into_inner()
    }

    /// `tags` VLAN tags (VLAN 0) of `ethertype` inserted after the MACs.
    pub fn tagged(frame: &[u8], ethertype: u16, tags: usize) -> Vec<u8> {
        let mut f = frame[..12].to_vec();
        for _ in 0..tags {
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(&frame[12..]);
        f
    }

    #[test]
    fn other_traffic_costs_one_fixed_read_from_the_ethertype_to_the_ipv4_destination() {
        let one_read = [(12, 22, true)];
        let f = tcp_frame([10, 0, 2, 2], [10, 0, 2, 1], 40000, 80);
        assert_eq!(reads(&f, |r| destination(r)), one_read);
        assert_eq!(reads(&f, |r| parse(r, IMDS)), one_read);
        let mut v6 = f.clone();
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(reads(&v6, |r| destination(r)), one_read);
        assert_eq!(reads(&v6, |r| parse(r, IMDS)), one_read);
        // IMDS traffic for the uplink: the same read, ports are not needed.
        let imds = tcp_frame([10, 0, 2, 2], IMDS, 40000, 80);
        assert_eq!(reads(&imds, |r| destination(r)), one_read);
    }

    #[test]
    fn a_glance_passes_other_ipv4_and_ethertypes_no_program_reads() {
        let other = tcp_frame([10, 0, 2, 2], [10, 0, 2, 1], 40000, 80);
        let imds = tcp_frame([10, 0, 2, 2], IMDS, 40000, 80);
        let glance = |f: &[u8]| f.glance().expect("long enough");
        assert!(glance(&other).passes(IMDS));
        assert!(!glance(&imds).passes(IMDS));
        assert!(glance(&imds).passes([10, 0, 2, 1]), "the address compared is the one given");
        let mut v6 = other.clone();
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert!(glance(&v6).passes(IMDS));
        for looked_into in [ETHERTYPE_ARP, ETHERTYPE_VLAN, ETHERTYPE_QINQ] {
            let mut f = other.clone();
            f[12..14].copy_from_slice(&looked_into.to_be_bytes());
            assert!(!glance(&f).passes(IMDS), "{looked_into:#x}");
        }
        // One read each, at constant offsets: what the kernel loads directly.
        assert_eq!(reads(&other, |r| r.glance()), [(ETHERTYPE_AT, 2, true), (IPV4_DST_AT, 4, true)]);
        assert_eq!(other[..GLANCE_LEN - 1].glance(), None);
        assert!(other[..GLANCE_LEN].glance().is_some());
    }

    #[test]
    fn destination_is_read_whatever_the_protocol() {
        let f = tcp_frame([10, 0, 2, 2], IMDS, 40000, 80);
        assert_eq!(destination(&f[..]), Destination::Ipv4(IMDS));
        let mut fragment = f.clone();
        fragment[20..22].copy_from_slice(&185u16.to_be_bytes());
        fragment[23] = 17;
        assert_eq!(destination(&fragment[..]), Destination::Ipv4(IMDS));
        assert_eq!(destination(&f[..34]), Destination::Ipv4(IMDS));
        assert_eq!(destination(&f[..33]), Destination::Other);
        let req = arp_request([10, 0, 2, 2], IMDS);
        assert_eq!(destination(&req[..]), Destination::ArpRequest(IMDS));
        let reply = arp_reply(&req, [2, 0, 0, 0, 0, 1]).unwrap();
        assert_eq!(destination(&reply[..]), Destination::Other);
        let mut v6 = f.clone();
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(destination(&v6[..]), Destination::Other);
    }

    #[test]
    fn destination_looks_through_vlan_tags_in_the_bytes() {
        let f = tcp_frame([10, 0, 2, 2], IMDS, 40000, 80);
        let req = arp_request([10, 0, 2, 2], IMDS);
        for ethertype in [ETHERTYPE_VLAN, ETHERTYPE_QINQ] {
            for tags in 1..=MAX_VLAN_TAGS {
                let t = tagged(&f, ethertype, tags);
                assert_eq!(destination(&t[..]), Destination::Ipv4(IMDS), "{ethertype:#x} x{tags}");
                let expected: Vec<_> = (0..=tags).map(|i| (12 + 4 * i, 22, i == 0)).collect();
                assert_eq!(reads(&t, |r| destination(r)), expected);
                let t = tagged(&req, ethertype, tags);
                assert_eq!(destination(&t[..]), Destination::ArpRequest(IMDS), "{ethertype:#x} x{tags}");
            }
            let deep = tagged(&f, ethertype, MAX_VLAN_TAGS + 1);
            assert_eq!(destination(&deep[..]), Destination::Hidden);
            // A tag and then too little to hold an address.
            assert_eq!(destination(&tagged(&f, ethertype, 1)[..37]), Destination::Other);
        }
    }

    #[test]
    fn ports_are_only_read_for_watched_flows() {
        let f = tcp_frame([10, 0, 2, 2], [10, 0, 2, 1], 40000, 80);
        let Some(&ip) = parse(&f[..], IMDS).ipv4() else { panic!("not ipv4") };
        assert_eq!(ip.tcp(), None);
        let Some(&ip) = parse(&f[..], [10, 0, 2, 1]).ipv4() else { panic!("not ipv4") };
        assert_eq!(ip.tcp(), tcp(40000, 80, 0x10));
    }

    #[test]
    fn parses_tcp_header_and_addresses() {
        let f = tcp_frame([10, 0, 2, 2], [169, 254, 169, 254], 40000, 80);
        assert_eq!(
            parse(&f[..], IMDS),
            Packet::from_ipv4(Ipv4 {
                src: [10, 0, 2, 2],
                dst: [169, 254, 169, 254],
                protocol: IPPROTO_TCP,
                has_tcp: true,
                tcp_header: tcp(40000, 80, 0x10).unwrap(),
            })
        );
        let reset = with_tcp_flags(tcp_frame(IMDS, [10, 0, 2, 2], 80, 40000), TCP_RST | 0x10);
        let Some(&ip) = parse(&reset[..], IMDS).ipv4() else { panic!("not ipv4") };
        assert_eq!(ip.tcp(), tcp(80, 40000, TCP_RST | 0x10));
    }

    #[test]
    fn the_mac_addresses_are_not_read() {
        let f = tcp_frame([10, 0, 2, 2], IMDS, 40000, 80);
        let mut other_macs = f.clone();
        other_macs[..12].fill(0xee);
        assert_eq!(parse(&other_macs[..], IMDS), parse(&f[..], IMDS));
    }

    #[test]
    fn honours_ip_options_when_locating_ports() {
        let mut f = tcp_frame([10, 0, 2, 2], IMDS, 1, 2);
        f[14] = 0x46; // IHL 6: four bytes of options before TCP
        f.splice(34..34, [1, 1, 1, 0]);
        let Some(&ip) = parse(&f[..], IMDS).ipv4() else { panic!("not ipv4") };
        assert_eq!(ip.tcp(), tcp(1, 2, 0x10));
    }

    #[test]
    fn fragments_and_bad_headers_have_no_ports() {
        for (offset, value) in [(20usize, 0x20u8), (21, 0x01), (14, 0x44), (14, 0x65)] {
            let mut f = tcp_frame([10, 0, 2, 2], IMDS, 1, 80);
            f[offset] = value;
            let Some(&ip) = parse(&f[..], IMDS).ipv4() else { panic!("not ipv4") };
            assert_eq!(ip.tcp(), None, "byte {offset} = {value:#x}");
        }
    }
    const IMDS: [u8; 4] = crate::abi::IMDS_ADDR;

    #[test]
    fn truncated_frames_never_panic() {
        let f = tagged(&tcp_frame([10, 0, 2, 2], IMDS, 1, 80), ETHERTYPE_VLAN, 1);
        for len in 0..f.len() {
            let _ = parse(&f[..len], IMDS);
            let _ = destination(&f[..len]);
        }
        let f = tcp_frame([10, 0, 2, 2], IMDS, 1, 80);
        assert_eq!(parse(&f[..13], IMDS), Packet::OTHER);
        assert_eq!(parse(&f[..33], IMDS), Packet::OTHER);
        let Some(&ip) = parse(&f[..34], IMDS).ipv4() else { panic!() };
        assert_eq!((ip.dst, ip.tcp()), (IMDS, None));
        // Ports without the flags are not enough.
        let Some(&ip) = parse(&f[..TCP_FLAGS_AT], IMDS).ipv4() else { panic!() };
        assert_eq!(ip.tcp(), None);
        let Some(&ip) = parse(&f[..TCP_FLAGS_AT + 1], IMDS).ipv4() else { panic!() };
        assert_eq!(ip.tcp(), tcp(1, 80, 0x10));
    }

    #[test]
    fn arp_requests_are_recognised_and_answered() {
        let req = arp_request([10, 0, 2, 2], IMDS);
        assert_eq!(parse(&req[..], IMDS), Packet::arp_request(IMDS));
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
        assert_eq!(parse(&reply[..], IMDS), Packet::OTHER);
        assert_eq!(arp_reply(&reply, ours), None);
    }

    #[test]
    fn non_ethernet_ipv4_arp_is_other() {
        let mut req = arp_request([10, 0, 2, 2], IMDS);
        req[15] = 6; // hardware type IEEE 802
        assert_eq!(parse(&req[..], IMDS), Packet::OTHER);
    }
}
