//! `kubevirt-imds-guest`: keeps ServiceAccount token files inside a VM the
//! way the kubelet keeps them in a pod, from the IMDS at 169.254.169.254,
//! so that software which reads a token file (Vault Agent, the AWS SDKs,
//! SPIRE, Kubernetes client libraries) works unmodified.
//!
//! - [`config`]: the TOML file; [`targets`]: which files, from the config
//!   and what the IMDS serves;
//! - [`imds_client`]: the HTTP API; [`jwt`]: a token's lifetime;
//!   [`schedule`]: when to fetch again;
//! - [`projection`]: the kubelet's atomic directory layout;
//!   [`ownership`]: user and group names;
//! - [`keeper`]: the loop.

pub mod config;
pub mod imds_client;
pub mod jwt;
pub mod keeper;
pub mod log_lines;
pub mod ownership;
pub mod projection;
pub mod schedule;
pub mod targets;
