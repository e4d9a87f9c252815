//! The per-VM IMDS server, `kubevirt-imds-sidecar`: unprivileged, it only
//! serves; the node agent plumbs the pod.
//!
//! - What it serves: the HTTP API ([`api`]: a router, with the two requests
//!   guests repeat answered in front of it), the cloud metadata flavours
//!   ([`cloud`]), the kubelet-projected tokens ([`token`], kept current by
//!   [`token_watch`]), the guest helper's builds ([`guest_binaries`]).
//! - Where: [`listen_loop`] waits for the agent's interface ([`interface`])
//!   and keeps a [`listener`] on it that admits only what the data path
//!   redirected; [`request_tally`] counts what it answers.
//! - Talking to the agent and the startup probe: [`channel_server`], over
//!   the pod's run volume; [`readiness`] is what they learn.
//! - The command line: [`cli`], [`config`], one module per subcommand in
//!   [`commands`]; [`log_lines`] are the messages others wait for.

pub use imds_common::{channel, contract, errors, http_server};

pub mod api;
pub mod channel_server;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod guest_binaries;
pub mod interface;
pub mod listen_loop;
pub mod listener;
pub mod log_lines;
pub mod log_reminder;
pub mod metadata;
pub mod readiness;
pub mod request_tally;
pub mod token;
pub mod token_watch;
