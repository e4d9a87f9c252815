//! What every kubevirt-imds binary shares: the names that cross between
//! them ([`contract`]), the hardened HTTP/1.1 accept loop ([`http_server`])
//! and error rendering for log lines ([`errors`]). Nothing here links aya,
//! netlink, kube or TLS: the per-VM sidecar depends on it.

pub mod channel;
pub mod contract;
pub mod errors;
pub mod http_server;
pub mod kernel;
pub mod socket_path;
pub mod write_deadline;
