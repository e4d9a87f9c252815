//! Test harness for kubevirt-imds: real namespaces, the real sidecar binary,
//! kubelet-style token volumes, and a real booted guest VM.

pub mod bpf;
pub mod fake_apiserver;
pub mod netns;
pub mod sidecar;
pub mod tokens;
pub mod topology;
pub mod vm;
pub mod webhook;
