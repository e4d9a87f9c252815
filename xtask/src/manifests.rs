//! `cargo xtask validate-manifests`: every manifest in deploy/, rendered by
//! kustomize, validated against the Kubernetes OpenAPI schemas.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    certs,
    cmd::{self, workspace_root},
    setup,
};

/// Kubernetes version whose schemas the manifests must satisfy.
const KUBERNETES_VERSION: &str = "1.37.0";

pub fn run() -> anyhow::Result<()> {
    let kubectl = setup::venv_tool("kubectl")?;
    // The self-signed overlay needs generated files: render a copy.
    let scratch = tempfile::tempdir()?;
    let deploy = scratch.path().join("deploy");
    cmd::run(Command::new("cp").arg("-r").arg(workspace_root().join("deploy")).arg(&deploy))?;
    let generated = deploy.join("overlays/self-signed/generated");
    let _ = std::fs::remove_dir_all(&generated);
    certs::generate(&certs::Request {
        namespace: "kubevirt-imds",
        service: "kubevirt-imds-webhook",
        days: 30,
        out_dir: &generated,
    })?;

    for overlay in ["base", "overlays/cert-manager", "overlays/self-signed"] {
        let rendered = cmd::output(Command::new(&kubectl).arg("kustomize").arg(deploy.join(overlay)))
            .with_context(|| format!("kubectl kustomize deploy/{overlay} failed"))?;
        let file = scratch.path().join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, rendered)?;
        validate(&file).with_context(|| format!("deploy/{overlay}"))?;
        eprintln!("validate-manifests: deploy/{overlay}: valid");
    }

    // The validator must be able to say no.
    let broken = scratch.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n",
    )?;
    if validate(&broken).is_ok() {
        bail!("kubernetes-validate accepted a Deployment with `replicas: two`: the check is not working");
    }
    Ok(())
}

/// `kubernetes-validate --strict` on a (multi-document) file.
pub fn validate(file: &Path) -> anyhow::Result<()> {
    let out = Command::new(setup::venv_tool("kubernetes-validate")?)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .context("running kubernetes-validate")?;
    if !out.status.success() {
        bail!(
            "kubernetes-validate rejected {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
