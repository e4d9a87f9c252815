//! `kubevirt-imds-agent`: the privileged half, one per node. It finds the
//! opted-in virt-launcher pods of its node ([`discovery`]), and in each
//! pod's network namespace ([`netns`]) creates the veth and routes
//! ([`net`]), loads and pins the tc eBPF programs ([`datapath`], [`pins`]),
//! keeps them attached as KubeVirt adds interfaces, and proves the path
//! end to end ([`probe`]) before the sidecar reports ready ([`session`]).
//! One thread per pod does that work ([`pod`]); [`run`] drives them.

pub use imds_common::{contract, errors, http_server};

pub mod cgroup;
pub mod config;
pub mod datapath;
pub mod discovery;
pub mod net;
pub mod netns;
pub mod pins;
pub mod pod;
pub mod probe;
pub mod session;

mod run;
pub use run::run;
