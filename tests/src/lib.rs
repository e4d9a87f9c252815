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

/// A binary `cargo xtask test` built and passed in `env_var`, else
/// `target/debug/<name>`; panics with the way to get it when it is missing.
pub fn built_binary(env_var: &str, name: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env_var).map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name)
    });
    assert!(path.is_file(), "{} is missing: run the tests with `cargo xtask test`", path.display());
    path
}
