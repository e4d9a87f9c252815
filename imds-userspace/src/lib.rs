//! kubevirt-imds: an instance metadata service for KubeVirt VMs.

pub mod api;
pub mod metadata;
pub mod token;
