//! `kubevirt-imds webhook`: the mutating admission webhook that injects the
//! IMDS sidecar into virt-launcher pods of VMs that ask for it.

pub mod annotations;
pub mod mutation;
pub mod sidecar_spec;
