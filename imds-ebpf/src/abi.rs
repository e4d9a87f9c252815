//! Names and memory layouts shared by the eBPF programs and userspace.
//!
//! Every type here is `#[repr(C)]` without implicit padding, because the
//! kernel and userspace exchange them as raw bytes.

/// The link-local address every cloud serves instance metadata on.
pub const IMDS_ADDR: [u8; 4] = [169, 254, 169, 254];

// Program names, as `bpftool prog show` prints them (kernel limit: 15 bytes),
// named by the direction of the traffic they see, as Cilium's
// `cil_from_container` and `cil_to_netdev` are.

/// Ingress of each VM's TAP: what the guest sends.
pub const PROG_FROM_GUEST: &str = "imds_from_guest";
/// Ingress of the host end of the sidecar's veth: what the server sends back.
pub const PROG_TO_GUEST: &str = "imds_to_guest";
/// Ingress of each VM bridge (`k6t-*`): what the bridge hands up to the pod.
pub const PROG_GUARD: &str = "imds_guard";
/// EGRESS (not ingress) of each uplink of the pod: `eth0` (renamed `eth0-nic`
/// and enslaved to the VM bridge by KubeVirt's bridge binding) and secondary
/// `podXXX`/`netX` interfaces. Attach it before the VM exists: it stops IMDS
/// traffic that was not redirected at a TAP from reaching the node's own
/// metadata service.
pub const PROG_TO_UPLINK: &str = "imds_to_uplink";
/// INGRESS of the pod's loopback: what the pod's own processes send to a
/// local address. The IMDS address is local to the pod (it sits on the
/// agent's veth), so without this a process of the pod would reach the
/// sidecar over loopback; with it, only what came through the veth — what
/// the data path redirected from a VM — does. Attached before the address
/// is added.
pub const PROG_FROM_POD: &str = "imds_from_pod";
/// Not part of the data path: the benchmark's empty classifier (its own
/// object, `imds-floor`), the floor our programs' per-packet cost is judged
/// against.
pub const PROG_FLOOR: &str = "imds_floor";

/// Map names, as `bpftool map show` prints them.
pub const MAP_COUNTERS: &str = "IMDS_COUNTERS";
pub const MAP_FLOWS: &str = "IMDS_FLOWS";

/// Name of the read-only global holding [`Config`]; patched by the loader.
pub const GLOBAL_CONFIG: &str = "IMDS_CONFIG";

/// Concurrent guest connections to the IMDS that [`MAP_FLOWS`] keeps before
/// its LRU evicts a live one, however many CPUs insert.
pub const FLOWS_LIVE: u32 = 2048;

/// Free entries each CPU keeps for itself in a common-LRU map: the kernel's
/// `LOCAL_FREE_TARGET` (`kernel/bpf/bpf_lru_list.c`). A CPU whose own free
/// list is empty moves that many from the shared free list, and when fewer
/// are left there it evicts entries, live ones included, to make up the
/// number before it would take another CPU's. So up to this many free
/// entries per CPU are out of everyone else's reach: with a flat 1024 and 8
/// CPUs, a near-empty table could evict its live flows.
pub const LRU_LOCAL_FREE_TARGET: u32 = 128;

/// Size of [`MAP_FLOWS`] on a node with `possible_cpus` CPUs (the loader
/// sets it): [`FLOWS_LIVE`] plus what every CPU may hold back. One shared
/// LRU, not `BPF_F_NO_COMMON_LRU`: per-CPU lists would split the capacity,
/// and one VM's inserts run on the few CPUs that carry its TAP.
pub const fn flows_max_entries(possible_cpus: u32) -> u32 {
    FLOWS_LIVE.saturating_add(possible_cpus.saturating_mul(LRU_LOCAL_FREE_TARGET))
}

/// The size compiled into the object, replaced at load time.
pub const FLOWS_MAX_ENTRIES: u32 = flows_max_entries(1);

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

/// The one list of counters. Each line becomes a field of [`Counters`] (its
/// BTF name, which bpftool prints) and a variant of [`Counter`] (whose
/// discriminant is the field's index). Append new ones: readers of the raw
/// value (bpftool without BTF) keep their offsets.
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $variant:ident => $field:ident,)+) => {
        /// The value of [`MAP_COUNTERS`], a one-entry per-CPU array: a plain
        /// struct of named fields so `bpftool map dump name IMDS_COUNTERS`
        /// prints them by name (from BTF). Every packet a program does not
        /// pass is counted exactly once.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[doc = $doc])+ pub $field: u64,)+
        }

        /// Selects one field of [`Counters`]; the discriminant is the field's index.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Counter {
            pub const COUNT: u32 = [$(Counter::$variant),+].len() as u32;
            pub const ALL: [Counter; Self::COUNT as usize] = [$(Counter::$variant),+];

            /// The field name in [`Counters`] (and in bpftool's output).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => stringify!($field),)+
                }
            }
        }

        impl Counters {
            pub fn get(&self, counter: Counter) -> u64 {
                match counter {
                    $(Counter::$variant => self.$field,)+
                }
            }

            /// Where each field really is, for the layout test.
            #[cfg(test)]
            const OFFSETS: [usize; Counter::COUNT as usize] = [$(core::mem::offset_of!(Counters, $field)),+];
        }
    };
}

counters! {
    /// Guest TCP segment to the IMDS redirected into the sidecar's veth.
    GuestRedirected => guest_redirected,
    /// Guest ARP request for the IMDS address answered.
    GuestArpAnswered => guest_arp_answered,
    /// Guest packet to the IMDS address that is not TCP to the served port
    /// (or is a fragment): dropped.
    GuestUnsupportedDropped => guest_unsupported_dropped,
    /// Sidecar reply handed back to a guest (resets are counted in
    /// `reply_reset` instead).
    ReplyForwarded => reply_forwarded,
    /// Sidecar reply for a connection the flow table does not know: dropped.
    ReplyNoFlow => reply_no_flow,
    /// Anything else leaving the sidecar's veth: dropped.
    ReplyUnexpectedDropped => reply_unexpected_dropped,
    /// IPv4 packet for the IMDS address from a non-VM source: dropped.
    ForeignDropped => foreign_dropped,
    /// ARP request for the IMDS address from a non-VM source: dropped.
    ForeignArpDropped => foreign_arp_dropped,
    /// A packet could not be rewritten (a helper failed): dropped.
    RewriteFailed => rewrite_failed,
    /// TCP reset from the IMDS port handed back to a guest. With no server
    /// listening (sidecar crashed or restarting) the pod's kernel answers
    /// every guest SYN with one.
    ReplyReset => reply_reset,
    /// IPv4 packet for the IMDS address leaving the pod through an uplink:
    /// dropped, or the node's own metadata service would answer it. Also
    /// frames under more VLAN tags than the guard reads.
    UplinkDropped => uplink_dropped,
    /// ARP request for the IMDS address leaving the pod through an uplink:
    /// dropped.
    UplinkArpDropped => uplink_arp_dropped,
    /// Packet for the IMDS address from a process of the pod itself (over
    /// loopback): dropped.
    LocalDropped => local_dropped,
}

impl Counters {
    /// Pointer to the field for `counter`; the eBPF side increments through it.
    #[inline(always)]
    pub fn field_ptr(this: *mut Counters, counter: Counter) -> *mut u64 {
        // In bounds: fields are u64s in `Counter` order (see the layout test).
        this.cast::<u64>().wrapping_add(counter as usize)
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
    fn the_flow_table_keeps_its_live_flows_whatever_each_cpu_holds_back() {
        assert_eq!(flows_max_entries(2), FLOWS_LIVE + 256);
        assert_eq!(flows_max_entries(64), FLOWS_LIVE + 64 * LRU_LOCAL_FREE_TARGET);
        assert_eq!(flows_max_entries(u32::MAX), u32::MAX);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Config>(), 4 + 4 + 2 + 6);
        assert_eq!(size_of::<FlowKey>(), 8);
        assert_eq!(size_of::<FlowTarget>(), 16);
    }

    #[test]
    fn counter_fields_follow_the_enum() {
        assert_eq!(size_of::<Counters>(), 8 * Counter::COUNT as usize);
        for counter in Counter::ALL {
            assert_eq!(Counters::OFFSETS[counter as usize], counter as usize * 8, "{counter:?}");
            // field_ptr reaches this field and no other.
            let mut c = Counters::default();
            unsafe { *Counters::field_ptr(&mut c, counter) += 7 };
            for other in Counter::ALL {
                assert_eq!(c.get(other), if other == counter { 7 } else { 0 }, "{counter:?} wrote {other:?}");
            }
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
        for n in [
            PROG_FROM_GUEST,
            PROG_TO_GUEST,
            PROG_GUARD,
            PROG_TO_UPLINK,
            PROG_FROM_POD,
            PROG_FLOOR,
            MAP_COUNTERS,
            MAP_FLOWS,
        ] {
            assert!(n.len() <= 15, "{n} is longer than BPF_OBJ_NAME_LEN - 1");
        }
    }
}
