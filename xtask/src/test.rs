//! `cargo xtask test` and `cargo xtask demo`.

use anyhow::bail;

use crate::{build, cmd, setup};

pub fn run(cargo_args: &[String]) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the privileged tests build network namespaces and load eBPF: run `cargo xtask test` as root");
    }
    setup::ensure()?;
    sweep_leftovers()?;
    let binaries = build::all(false)?;
    let mut c = cmd::cargo(None);
    c.args(["test", "--workspace"])
        .env("IMDS_SIDECAR_BIN", &binaries.sidecar)
        .env("IMDS_AGENT_BIN", &binaries.agent)
        .env("IMDS_WEBHOOK_BIN", &binaries.webhook)
        .env(imds_tests::guest_helper::ENV, &binaries.guest_dir);
    // The webhook tests get their certificates from `cargo xtask generate-certs`.
    c.env("IMDS_XTASK_BIN", std::env::current_exe()?);
    // Pods the webhook patched are validated against the Pod schema too.
    c.env("IMDS_KUBERNETES_VALIDATE", setup::venv_tool("kubernetes-validate")?);
    // Real consumers of the guest helper's files: botocore, the Kubernetes client.
    c.env("IMDS_VENV_PYTHON", setup::venv_tool("python")?);
    // cloud-init's datasources crawl the sidecar's metadata flavours.
    c.env("IMDS_CLOUD_INIT_PYTHONPATH", setup::cloud_init_pythonpath()?);
    // Stock images are built once and kept there.
    c.env(imds_tests::stock_image::CACHE_DIR_ENV, setup::stock_image_cache()?);
    c.args(cargo_args);
    cmd::run(&mut c)?;
    crate::manifests::run()
}

/// `cargo xtask test --kernel …`: the data-path tests on QEMU nodes.
pub fn run_on_kernels(kernels: &[String], test_args: &[String]) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the node runs the privileged tests: run `cargo xtask test --kernel` as root");
    }
    setup::ensure()?;
    crate::kernel_node::run(kernels, test_args)
}

/// Removes namespaces and bpffs mounts a killed test, demo or benchmark
/// left behind: their programs would otherwise stay loaded and attached.
pub fn sweep_leftovers() -> anyhow::Result<()> {
    for what in imds_tests::netns::sweep_leftovers()? {
        eprintln!("removed what a killed run left behind: {what}");
    }
    Ok(())
}

/// Lets the harness (`imds_tests`), used in-process by the demo and the
/// benchmark, find the binaries just built.
pub fn point_harness_at(binaries: &build::Binaries) {
    for (var, path) in [
        ("IMDS_SIDECAR_BIN", &binaries.sidecar),
        ("IMDS_AGENT_BIN", &binaries.agent),
        ("IMDS_WEBHOOK_BIN", &binaries.webhook),
        (imds_tests::guest_helper::ENV, &binaries.guest_dir),
    ] {
        // SAFETY: called before the harness starts any thread.
        unsafe { std::env::set_var(var, path) };
    }
}
