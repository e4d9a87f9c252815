//! The benchmark's reference: a tc classifier that does nothing. Its run
//! time under `kernel.bpf_stats_enabled` is what any program costs a packet
//! at that hook on this machine (the hook's call and the statistics' own
//! clock reads), so `cargo xtask bench` can state our programs' cost above
//! it. Never loaded by the agent, which embeds only the `imds-ebpf` object.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

/// Named by `imds_ebpf::abi::PROG_FLOOR`.
#[classifier]
pub fn imds_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
