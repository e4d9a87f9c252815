//! What the tc programs and the sidecar agree on: the map and global layouts
//! ([`abi`]), how a frame is read ([`frame`]) and what is done with it
//! ([`rules`]).
//!
//! This library is `no_std` so the eBPF program (`src/main.rs`, built for
//! `bpfel-unknown-none`) and the userspace sidecar share one definition of
//! every type and every packet rule; the rules are unit-tested on the host.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod frame;
pub mod rules;
