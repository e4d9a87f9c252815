//! Names and memory layouts shared by the eBPF programs and userspace.
//!
//! Every type here is `#[repr(C)]` without implicit padding, because the
//! kernel and userspace exchange them as raw bytes.

/// The link-local address every cloud serves instance metadata on.
pub const IMDS_ADDR: [u8; 4] = [169, 254, 169, 254];

/// Program names, as `bpftool prog show` prints them (kernel limit: 15 bytes).
pub const PROG_FROM_GUEST: &str = "imds_from_guest";
pub const PROG_TO_GUEST: &str = "imds_to_guest";
pub const PROG_GUARD: &str = "imds_guard";

/// Map names, as `bpftool map show` prints them.
pub const MAP_COUNTERS: &str = "IMDS_COUNTERS";
pub const MAP_FLOWS: &str = "IMDS_FLOWS";

/// Name of the read-only global holding [`Config`]; patched by the loader.
pub const GLOBAL_CONFIG: &str = "IMDS_CONFIG";

/// Capacity of [`MAP_FLOWS`]: concurrent guest connections to the IMDS that
/// can be answered. LRU, so an idle flow is the first to go.
pub const FLOWS_MAX_ENTRIES: u32 = 4096;

/// Load-time settings of the programs, fixed for the life of a load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// ifindex of the veth end that guest IMDS traffic is redirected into.
    pub redirect_ifindex: u32,
    /// Address served, normally [`IMDS_ADDR`].
    pub imds_addr: [u8; 4],
    /// TCP port served, network byte order.
    pub imds_port: [u8; 2],
    /// MAC of the sidecar's veth end (the one holding `imds_addr`): the
    /// destination of redirected frames and the answer to guest ARP.
    pub sidecar_mac: [u8; 6],
}

/// Key of [`MAP_FLOWS`]: the guest end of one TCP connection to the IMDS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest_addr: [u8; 4],
    /// Network byte order.
    pub guest_port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Value of [`MAP_FLOWS`]: where and how to hand the sidecar's replies back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTarget {
    /// The guest's TAP device; replies leave through it.
    pub tap_ifindex: u32,
    pub guest_mac: [u8; 6],
    /// The MAC the guest sent to (its gateway or the ARP answer); replies
    /// come from it so the guest's neighbour table stays consistent.
    pub gateway_mac: [u8; 6],
}

/// Indexes of [`MAP_COUNTERS`] (a per-CPU array of `u64`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Guest TCP segment to the IMDS redirected into the sidecar's veth.
    GuestRedirected = 0,
    /// Guest ARP request for the IMDS address answered.
    GuestArpAnswered = 1,
    /// Guest packet to the IMDS address that is not TCP to the served port
    /// (or is a fragment): dropped.
    GuestUnsupportedDropped = 2,
    /// Sidecar reply handed back to a guest.
    ReplyForwarded = 3,
    /// Sidecar reply for a connection the flow table does not know: dropped.
    ReplyNoFlow = 4,
    /// Anything else leaving the sidecar's veth: dropped.
    ReplyUnexpectedDropped = 5,
    /// IPv4 packet for the IMDS address from a non-VM source: dropped.
    ForeignDropped = 6,
    /// ARP request for the IMDS address from a non-VM source: dropped.
    ForeignArpDropped = 7,
    /// A packet could not be rewritten (a helper failed): dropped.
    RewriteFailed = 8,
}

impl Counter {
    pub const COUNT: u32 = 9;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::GuestRedirected,
        Counter::GuestArpAnswered,
        Counter::GuestUnsupportedDropped,
        Counter::ReplyForwarded,
        Counter::ReplyNoFlow,
        Counter::ReplyUnexpectedDropped,
        Counter::ForeignDropped,
        Counter::ForeignArpDropped,
        Counter::RewriteFailed,
    ];

    /// Stable snake_case name for logs and the operator docs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::GuestRedirected => "guest_redirected",
            Counter::GuestArpAnswered => "guest_arp_answered",
            Counter::GuestUnsupportedDropped => "guest_unsupported_dropped",
            Counter::ReplyForwarded => "reply_forwarded",
            Counter::ReplyNoFlow => "reply_no_flow",
            Counter::ReplyUnexpectedDropped => "reply_unexpected_dropped",
            Counter::ForeignDropped => "foreign_dropped",
            Counter::ForeignArpDropped => "foreign_arp_dropped",
            Counter::RewriteFailed => "rewrite_failed",
        }
    }
}

// SAFETY: plain old data, `repr(C)`, no padding (checked by the tests below).
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowTarget {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Config>(), 4 + 4 + 2 + 6);
        assert_eq!(size_of::<FlowKey>(), 8);
        assert_eq!(size_of::<FlowTarget>(), 16);
    }

    #[test]
    fn counters_are_dense_and_named_uniquely() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::COUNT as usize);
    }

    #[test]
    fn bpf_object_names_fit_the_kernel_limit() {
        for n in [PROG_FROM_GUEST, PROG_TO_GUEST, PROG_GUARD, MAP_COUNTERS, MAP_FLOWS] {
            assert!(n.len() <= 15, "{n} is longer than BPF_OBJ_NAME_LEN - 1");
        }
    }
}
