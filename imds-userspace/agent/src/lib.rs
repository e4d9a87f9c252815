//! The privileged half of the data path: the veth and routes
//! ([`net`]) and the tc eBPF programs ([`datapath`]).

pub use imds_common::{contract, errors, http_server};

pub mod datapath;
pub mod net;
pub mod privileged_sidecar;
