//! Any frame a guest, a neighbour or the pod can put on a wire, through the
//! one parser and every rule the programs apply (the same code the eBPF
//! object is built from). Checked: no panic, and the fail-closed promises:
//! nothing for the IMDS address passes the uplink guard, the pod's loopback
//! guard or the bridge guard; and the programs' glance at a frame never
//! passes one that the full rules would stop.
#![no_main]

use imds_ebpf::{
    abi::{Config, IMDS_ADDR},
    frame::{Destination, Frame as _, destination, parse},
    rules::{self, GuardVerdict},
};

fn config() -> Config {
    Config {
        redirect_ifindex: 7,
        imds_addr: IMDS_ADDR,
        imds_port: 80u16.to_be_bytes(),
        sidecar_mac: [2, 0, 0, 0, 0, 9],
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let config = config();
    if data.glance().is_some_and(|g| g.passes(IMDS_ADDR)) {
        assert!(rules::every_program_passes(data, &config), "the glance passed a frame a program stops");
    }
    let packet = parse(data, IMDS_ADDR);
    for tagged in [false, true] {
        let _ = rules::from_guest(&packet, tagged, &config);
    }
    let _ = rules::to_guest(&packet, &config);
    let guard = rules::guard(&packet, &config);
    if let Some(ip) = packet.ipv4() {
        if ip.dst == IMDS_ADDR {
            assert!(matches!(guard, GuardVerdict::Drop(_)), "the bridge guard passed {packet:?}");
        }
    }
    let to = destination(data);
    let uplink = rules::to_uplink(&to, &config);
    let local = rules::from_pod(&to, &config);
    match to {
        Destination::Ipv4(dst) if dst == IMDS_ADDR => {
            assert!(matches!(uplink, GuardVerdict::Drop(_)), "the uplink passed {to:?}");
            assert!(matches!(local, GuardVerdict::Drop(_)), "loopback passed {to:?}");
        }
        Destination::Hidden => assert!(matches!(uplink, GuardVerdict::Drop(_)), "the uplink passed {to:?}"),
        _ => {}
    }
});
