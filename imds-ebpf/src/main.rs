//! The tc programs of the IMDS data path. The decisions live in the library
//! (`imds_ebpf::rules`, unit-tested on the host); this file only reads the
//! frame, applies the verdict to the skb and counts it.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    btf_maps::{LruHashMap, PerCpuArray},
    helpers::bpf_redirect,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use imds_ebpf::{
    abi::{Config, Counter, Counters, FLOWS_MAX_ENTRIES, FlowKey, FlowTarget},
    frame::{
        ARP_FRAME_LEN, ETHERTYPE_AT, Frame, GLANCE_LEN, Glance, IPV4_DST_AT, arp_reply, destination, parse,
    },
    rules::{self, GuardVerdict, GuestVerdict, ReplyVerdict},
};

/// Patched by the loader (`EbpfLoader::override_global`); read-only, so the
/// verifier sees it as constant.
#[unsafe(no_mangle)]
static IMDS_CONFIG: Global<Config> =
    Global::new(Config { redirect_ifindex: 0, imds_addr: [0; 4], imds_port: [0; 2], sidecar_mac: [0; 6] });

// BTF-defined maps: bpftool prints their keys and values field by field.
#[btf_map]
static IMDS_COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

#[btf_map]
static IMDS_FLOWS: LruHashMap<FlowKey, FlowTarget, { FLOWS_MAX_ENTRIES as usize }> = LruHashMap::new();

/// "Not ours": let the next program, or the stack, have it.
const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;

/// The frame, read through `bpf_skb_load_bytes`: it copes with non-linear
/// skbs (GSO segments from a TAP) and variable offsets (IP options), and it
/// needs no packet-pointer arithmetic, which the verifier only allows with
/// CAP_PERFMON. The node agent is privileged today, but the programs keep
/// to what CAP_BPF and CAP_NET_ADMIN allow so a narrower loader stays possible.
///
/// Except `read_at`: its offset is a constant, the one packet-pointer
/// arithmetic allowed without CAP_PERFMON, so the headers every packet needs
/// come straight from the linear data. Where calls and returns are
/// Spectre/SRSO-mitigated, a helper call costs several times the rest of a
/// passing packet's work. A frame whose headers are not linear takes the helper.
struct Skb<'a>(&'a TcContext);

impl Frame for Skb<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }

    /// Two loads as wide as the fields. Packet loads need no alignment on
    /// the architectures KubeVirt nodes run (the verifier asks for it only
    /// where unaligned access is slow, or with BPF_F_STRICT_ALIGNMENT), and
    /// `read_unaligned` would be split into a load per byte.
    #[inline(always)]
    fn glance(&self) -> Option<Glance> {
        let (start, end) = (self.0.data(), self.0.data_end());
        if start + GLANCE_LEN > end {
            return None;
        }
        // SAFETY: inside the linear data, as checked just above.
        unsafe {
            Some(Glance {
                ethertype: core::ptr::read((start + ETHERTYPE_AT) as *const u16),
                ipv4_dst: core::ptr::read((start + IPV4_DST_AT) as *const u32),
            })
        }
    }

    #[inline(always)]
    fn read_at<const OFFSET: usize, const N: usize>(&self) -> Option<[u8; N]> {
        let (start, end) = (self.0.data(), self.0.data_end());
        if start + OFFSET + N <= end {
            // SAFETY: inside the linear data, as checked just above.
            Some(unsafe { core::ptr::read_unaligned((start + OFFSET) as *const [u8; N]) })
        } else {
            self.read::<N>(OFFSET)
        }
    }
}

/// The served address alone, one load: `IMDS_CONFIG.load()` copies every
/// byte of the settings, more than a passing packet's whole decision costs.
#[inline(always)]
fn imds_addr() -> [u8; 4] {
    // SAFETY: `Global` is a transparent wrapper of the `Config` the loader
    // wrote; `imds_addr` follows a u32 in a `repr(C)` struct, so it is
    // 4-byte aligned. Volatile, as `Global::load`: the loader patches it.
    let addr = unsafe {
        core::ptr::read_volatile(
            core::ptr::addr_of!((*(&raw const IMDS_CONFIG).cast::<Config>()).imds_addr).cast::<u32>(),
        )
    };
    addr.to_ne_bytes()
}

/// Almost every packet: surely not the IMDS's business (`Glance::passes`).
#[inline(always)]
fn passes_at_a_glance(frame: &Skb) -> bool {
    frame.glance().is_some_and(|glance| glance.passes(imds_addr()))
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(counters) = IMDS_COUNTERS.get_ptr_mut(0) {
        // Each field at its own constant offset, adding 0 or 1: where LLVM
        // merges two verdicts, `field_ptr(counters, counter)` would move the
        // map value pointer by a different amount on each path through one
        // instruction, which the verifier refuses without CAP_PERFMON. The
        // additions of 0 fold away.
        for c in Counter::ALL {
            // SAFETY: this CPU's slot, no concurrent writer; the field
            // pointer stays inside the struct.
            unsafe { *Counters::field_ptr(counters, c) += u64::from(c == counter) };
        }
    }
}

/// Whether the frame arrived with a VLAN tag (now in skb metadata).
#[inline(always)]
fn vlan_tagged(ctx: &TcContext) -> bool {
    // SAFETY: `skb` is the context pointer the kernel passed in.
    unsafe { (*ctx.skb.skb).vlan_present != 0 }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Ingress of a VM's TAP: everything the guest sends.
#[classifier]
pub fn imds_from_guest(ctx: TcContext) -> i32 {
    let frame = Skb(&ctx);
    if passes_at_a_glance(&frame) {
        return PASS;
    }
    let config = IMDS_CONFIG.load();
    match rules::from_guest(&parse(&frame, config.imds_addr), vlan_tagged(&ctx), &config) {
        GuestVerdict::Pass => PASS,
        GuestVerdict::Redirect(key) => redirect_to_sidecar(&ctx, &frame, key, &config),
        GuestVerdict::AnswerArp => answer_arp(&ctx, &frame, &config),
        GuestVerdict::Drop(counter) => {
            count(counter);
            debug!(&ctx, "dropped guest packet for the IMDS address");
            DROP
        }
    }
}

#[inline(always)]
fn redirect_to_sidecar(ctx: &TcContext, frame: &Skb, key: FlowKey, config: &Config) -> i32 {
    let Some(eth) = frame.read::<12>(0) else {
        return DROP;
    };
    let target = FlowTarget {
        tap_ifindex: ifindex(ctx),
        guest_mac: [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
        gateway_mac: [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
    };
    // Written on every segment, not just SYN, so an evicted flow heals itself.
    if IMDS_FLOWS.insert(key, target, 0).is_err() || ctx.store(0, &config.sidecar_mac, 0).is_err() {
        count(Counter::RewriteFailed);
        return DROP;
    }
    count(Counter::GuestRedirected);
    debug!(
        ctx,
        "guest {:i}:{} -> sidecar",
        u32::from_be_bytes(key.guest_addr),
        u16::from_be_bytes(key.guest_port)
    );
    // SAFETY: plain helper call; egress of our veth end delivers to its peer.
    unsafe { bpf_redirect(config.redirect_ifindex, 0) as i32 }
}

#[inline(always)]
fn answer_arp(ctx: &TcContext, frame: &Skb, config: &Config) -> i32 {
    let Some(request) = frame.read::<ARP_FRAME_LEN>(0) else {
        return DROP;
    };
    let Some(reply) = arp_reply(&request, config.sidecar_mac) else {
        return DROP;
    };
    if ctx.store(0, &reply, 0).is_err() {
        count(Counter::RewriteFailed);
        return DROP;
    }
    count(Counter::GuestArpAnswered);
    debug!(ctx, "answered guest ARP for the IMDS address");
    // Back out of the TAP: egress of the TAP is the guest's receive side.
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex(ctx), 0) as i32 }
}

/// Ingress of the host end of the sidecar's veth: what the server sends.
#[classifier]
pub fn imds_to_guest(ctx: TcContext) -> i32 {
    let config = IMDS_CONFIG.load();
    match rules::to_guest(&parse(&Skb(&ctx), config.imds_addr), &config) {
        ReplyVerdict::Forward { flow, counter } => {
            // SAFETY: the value is copied out before any other map operation.
            let Some(target) = (unsafe { IMDS_FLOWS.get(flow) }).copied() else {
                count(Counter::ReplyNoFlow);
                debug!(&ctx, "sidecar reply for an unknown flow");
                return DROP;
            };
            let mut eth = [0u8; 12];
            eth[..6].copy_from_slice(&target.guest_mac);
            eth[6..].copy_from_slice(&target.gateway_mac);
            if ctx.store(0, &eth, 0).is_err() {
                count(Counter::RewriteFailed);
                return DROP;
            }
            count(counter);
            // SAFETY: plain helper call; egress of the TAP reaches the guest.
            unsafe { bpf_redirect(target.tap_ifindex, 0) as i32 }
        }
        ReplyVerdict::Drop(counter) => {
            count(counter);
            DROP
        }
    }
}

/// Ingress of the bridge device: what the bridge hands up to the pod's stack.
#[classifier]
pub fn imds_guard(ctx: TcContext) -> i32 {
    let frame = Skb(&ctx);
    if passes_at_a_glance(&frame) {
        return PASS;
    }
    let config = IMDS_CONFIG.load();
    match rules::guard(&parse(&frame, config.imds_addr), &config) {
        GuardVerdict::Pass => PASS,
        GuardVerdict::Drop(counter) => {
            count(counter);
            debug!(&ctx, "dropped non-VM packet for the IMDS address");
            DROP
        }
    }
}

/// Egress of each uplink of the pod (`eth0`/`eth0-nic`, `podXXX`, `netX`):
/// what leaves the pod for the node. Every packet of the VM passes here.
#[classifier]
pub fn imds_to_uplink(ctx: TcContext) -> i32 {
    let frame = Skb(&ctx);
    if passes_at_a_glance(&frame) {
        return PASS;
    }
    let destination = destination(&frame);
    // Loaded once the frame is read, so none of it is spilled across a helper
    // call: without CAP_PERFMON each spill costs a speculation barrier.
    let config = IMDS_CONFIG.load();
    match rules::to_uplink(&destination, &config) {
        GuardVerdict::Pass => PASS,
        GuardVerdict::Drop(counter) => {
            count(counter);
            debug!(&ctx, "dropped packet for the IMDS address leaving the pod");
            DROP
        }
    }
}

/// Ingress of the pod's loopback: what the pod's own processes send to its
/// local addresses.
#[classifier]
pub fn imds_from_pod(ctx: TcContext) -> i32 {
    let frame = Skb(&ctx);
    if passes_at_a_glance(&frame) {
        return PASS;
    }
    let destination = destination(&frame);
    let config = IMDS_CONFIG.load();
    match rules::from_pod(&destination, &config) {
        GuardVerdict::Pass => PASS,
        GuardVerdict::Drop(counter) => {
            count(counter);
            debug!(&ctx, "dropped a pod process's packet for the IMDS address");
            DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
