//! kubevirt-imds: an instance metadata service for KubeVirt VMs.

pub mod api;
pub mod cloud;
pub mod contract;
pub mod datapath;
pub mod errors;
pub mod http_server;
pub mod listener;
pub mod metadata;
pub mod net;
pub mod probe;
pub mod sidecar;
pub mod token;
pub mod webhook;
