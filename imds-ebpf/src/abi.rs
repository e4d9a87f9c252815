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
pub const FLOWS_MAX_ENTRIES: u32 = 1024;

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

/// The value of [`MAP_COUNTERS`], a one-entry per-CPU array: named fields so
/// `bpftool map dump name IMDS_COUNTERS` prints them by name (from BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub guest_redirected: u64,
    pub guest_arp_answered: u64,
    pub guest_unsupported_dropped: u64,
    pub reply_forwarded: u64,
    pub reply_no_flow: u64,
    pub reply_unexpected_dropped: u64,
    pub foreign_dropped: u64,
    pub foreign_arp_dropped: u64,
    pub rewrite_failed: u64,
}

impl Counters {
    /// Pointer to the field for `counter`; the eBPF side increments through it.
    #[inline(always)]
    pub fn field_ptr(this: *mut Counters, counter: Counter) -> *mut u64 {
        // In bounds: fields are u64s in `Counter` order (see the layout test).
        this.cast::<u64>().wrapping_add(counter as usize)
    }

    pub fn get(&self, counter: Counter) -> u64 {
        match counter {
            Counter::GuestRedirected => self.guest_redirected,
            Counter::GuestArpAnswered => self.guest_arp_answered,
            Counter::GuestUnsupportedDropped => self.guest_unsupported_dropped,
            Counter::ReplyForwarded => self.reply_forwarded,
            Counter::ReplyNoFlow => self.reply_no_flow,
            Counter::ReplyUnexpectedDropped => self.reply_unexpected_dropped,
            Counter::ForeignDropped => self.foreign_dropped,
            Counter::ForeignArpDropped => self.foreign_arp_dropped,
            Counter::RewriteFailed => self.rewrite_failed,
        }
    }
}

/// Selects one field of [`Counters`]; the discriminant is the field's index.
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

    /// The field name in [`Counters`] (and in bpftool's output).
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
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counters {}

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
    fn counter_fields_follow_the_enum() {
        assert_eq!(size_of::<Counters>(), 8 * Counter::COUNT as usize);
        let offsets = [
            core::mem::offset_of!(Counters, guest_redirected),
            core::mem::offset_of!(Counters, guest_arp_answered),
            core::mem::offset_of!(Counters, guest_unsupported_dropped),
            core::mem::offset_of!(Counters, reply_forwarded),
            core::mem::offset_of!(Counters, reply_no_flow),
            core::mem::offset_of!(Counters, reply_unexpected_dropped),
            core::mem::offset_of!(Counters, foreign_dropped),
            core::mem::offset_of!(Counters, foreign_arp_dropped),
            core::mem::offset_of!(Counters, rewrite_failed),
        ];
        let mut c = Counters::default();
        for (counter, offset) in Counter::ALL.into_iter().zip(offsets) {
            assert_eq!(counter as usize * 8, offset, "{counter:?}");
            unsafe { *Counters::field_ptr(&mut c, counter) += counter as u64 + 1 };
            assert_eq!(c.get(counter), counter as u64 + 1);
        }
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
