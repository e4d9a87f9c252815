//! The eBPF half, seen from userspace: which interfaces get which program
//! ([`plan`], pure) and the aya calls that make it so ([`loader`]).

pub mod loader;
pub mod plan;
