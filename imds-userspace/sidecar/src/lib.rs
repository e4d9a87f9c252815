//! The per-VM IMDS server: the HTTP API ([`api`]), the cloud metadata
//! flavours ([`cloud`]), the kubelet-projected tokens ([`token`]) and the
//! listening socket that admits only what the data path redirected
//! ([`listener`]).

pub use imds_common::{contract, errors, http_server};

pub mod api;
pub mod cloud;
pub mod config;
pub mod listener;
pub mod metadata;
pub mod probe;
pub mod token;
