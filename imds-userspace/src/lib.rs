//! kubevirt-imds: an instance metadata service for KubeVirt VMs.

pub mod api;
pub mod metadata;
pub mod token;
pub mod http_server;
pub mod net;
pub mod datapath;
pub mod probe;
pub mod sidecar;
