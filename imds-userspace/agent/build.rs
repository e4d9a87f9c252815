//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! Without it the crate still builds (so `cargo check`, clippy and the unit
//! tests need no nightly toolchain), but the sidecar refuses to start and
//! says how to build it properly.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(imds_ebpf_embedded)");
    println!("cargo::rerun-if-env-changed=IMDS_EBPF_OBJECT");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let object = std::env::var_os("IMDS_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        target.join("bpfel-unknown-none").join("release").join("imds-ebpf")
    });
    println!("cargo::rerun-if-changed={}", object.display());
    if object.is_file() {
        println!("cargo::rustc-env=IMDS_EBPF_OBJECT_PATH={}", object.display());
        println!("cargo::rustc-cfg=imds_ebpf_embedded");
    } else {
        println!(
            "cargo::warning=eBPF object {} not found: this build cannot run the sidecar; use `cargo xtask build`",
            object.display()
        );
    }
}
