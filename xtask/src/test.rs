//! `cargo xtask test` and `cargo xtask demo`.

use anyhow::bail;

use crate::{build, cmd, setup};

pub fn run(cargo_args: &[String]) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the privileged tests build network namespaces and load eBPF: run `cargo xtask test` as root");
    }
    setup::ensure()?;
    let sidecar = build::all(false)?;
    let mut c = cmd::cargo(None);
    c.args(["test", "--workspace"]).env("IMDS_SIDECAR_BIN", &sidecar).env("IMDS_REQUIRE_PRIVILEGED", "1");
    c.args(cargo_args);
    cmd::run(&mut c)
}
