//! `cargo xtask validate-manifests`: every manifest in deploy/, rendered by
//! kustomize, validated against the Kubernetes OpenAPI schemas; and the
//! binary paths the workloads run and the Dockerfile installs checked
//! against `imds_common::contract`.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use imds_common::contract;

use crate::{
    certs,
    cmd::{self, workspace_root},
    setup,
};

/// Kubernetes version whose schemas the manifests must satisfy.
const KUBERNETES_VERSION: &str = "1.37.0";

/// What kustomize renders, from deploy/: every way to install.
const KUSTOMIZATIONS: [&str; 4] = ["base", "overlays/cert-manager", "overlays/self-signed", "openshift"];

/// Kinds that are not Kubernetes' own, which kubernetes-validate has no
/// schema for and passes with a warning. Any other kind it has no schema for
/// (a typo in `kind` or `apiVersion`) fails validation.
const NOT_IN_KUBERNETES_SCHEMAS: [(&str, &str); 3] = [
    // cert-manager's CRDs (overlays/cert-manager).
    ("Issuer", "cert-manager.io/v1"),
    ("Certificate", "cert-manager.io/v1"),
    // OpenShift's (openshift/): checked there by the API server only.
    ("SecurityContextConstraints", "security.openshift.io/v1"),
];

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
        ca_days: 30,
        rotate_ca: false,
        out_dir: &generated,
    })?;

    for kustomization in KUSTOMIZATIONS {
        let rendered = cmd::output(Command::new(&kubectl).arg("kustomize").arg(deploy.join(kustomization)))
            .with_context(|| format!("kubectl kustomize deploy/{kustomization} failed"))?;
        let file = scratch.path().join(format!("{}.yaml", kustomization.replace('/', "-")));
        std::fs::write(&file, &rendered)?;
        validate(&file).with_context(|| format!("deploy/{kustomization}"))?;
        if kustomization == "base" {
            check_binaries_run(&rendered)?;
        }
        eprintln!("validate-manifests: deploy/{kustomization}: valid");
    }
    check_binaries_installed(&std::fs::read_to_string(workspace_root().join("Dockerfile"))?)?;

    // The validator must be able to say no, to a bad value and to a bad kind.
    let broken = scratch.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n",
    )?;
    if validate(&broken).is_ok() {
        bail!("kubernetes-validate accepted a Deployment with `replicas: two`: the check is not working");
    }
    std::fs::write(&broken, "apiVersion: apps/v1\nkind: Deplyment\nmetadata: {name: x}\n")?;
    if validate(&broken).is_ok() {
        bail!("a `kind: Deplyment` passed: unknown kinds are not caught");
    }
    Ok(())
}

/// `kubernetes-validate --strict` on a (multi-document) file; a kind it has
/// no schema for fails unless [`NOT_IN_KUBERNETES_SCHEMAS`] lists it.
pub fn validate(file: &Path) -> anyhow::Result<()> {
    let out = Command::new(setup::venv_tool("kubernetes-validate")?)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .context("running kubernetes-validate")?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("kubernetes-validate rejected {}:\n{report}", file.display());
    }
    let unknown: Vec<_> = unknown_kinds(&report)
        .into_iter()
        .filter(|kind| !NOT_IN_KUBERNETES_SCHEMAS.contains(kind))
        .map(|(kind, api_version)| format!("{kind} ({api_version})"))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "{}: no schema for {} (a typo, or a CRD to add to NOT_IN_KUBERNETES_SCHEMAS):\n{report}",
            file.display(),
            unknown.join(", ")
        );
    }
    Ok(())
}

/// The `(kind, apiVersion)` of every "Couldn't find schema for kind <kind>
/// with api version <apiVersion> for kubernetes version …" warning.
fn unknown_kinds(report: &str) -> Vec<(&str, &str)> {
    report
        .lines()
        .filter_map(|line| {
            let rest = line.split_once("Couldn't find schema for kind ")?.1;
            let (kind, rest) = rest.split_once(" with api version ")?;
            let api_version = rest.split_once(" for kubernetes version")?.0;
            Some((kind, api_version))
        })
        .collect()
}

/// The agent's DaemonSet and the webhook's Deployment run the binaries
/// where the image has them (the webhook's own sidecar command is built
/// from the same constant).
fn check_binaries_run(rendered_base: &str) -> anyhow::Result<()> {
    for path in [contract::AGENT_BINARY_PATH, contract::WEBHOOK_BINARY_PATH] {
        if !rendered_base.lines().any(|line| line.trim_start_matches([' ', '-']) == path) {
            bail!("deploy/base runs no {path} (imds_common::contract)");
        }
    }
    Ok(())
}

/// The Dockerfile installs each binary at its path in the contract.
fn check_binaries_installed(dockerfile: &str) -> anyhow::Result<()> {
    let copy = dockerfile.lines().find(|l| l.starts_with("COPY ")).context("the Dockerfile has no COPY")?;
    for path in [contract::SIDECAR_BINARY_PATH, contract::AGENT_BINARY_PATH, contract::WEBHOOK_BINARY_PATH] {
        let (dir, name) = path.rsplit_once('/').context("a binary path without a directory")?;
        // The sidecar is built with its own profile (see `build::all`).
        let profile = if path == contract::SIDECAR_BINARY_PATH { "sidecar" } else { "release" };
        let source = format!("target/{profile}/{name}");
        if !copy.split_whitespace().any(|w| w == source) || !copy.ends_with(&format!(" {dir}/")) {
            bail!("the Dockerfile does not install {source} as {path} (imds_common::contract): {copy}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kinds_are_read_from_the_warnings() {
        let report = "WARN x.yaml Couldn't find schema for kind Deplyment with api version apps/v1 for kubernetes version 1.37\n\
                      INFO x.yaml passed for resource serviceaccount/y against version 1.37\n";
        assert_eq!(unknown_kinds(report), [("Deplyment", "apps/v1")]);
        assert!(unknown_kinds("INFO all fine\n").is_empty());
    }

    #[test]
    fn the_binaries_match_the_contract() {
        check_binaries_installed(&std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap())
            .unwrap();
        let wrong = "FROM x\nCOPY target/release/kubevirt-imds /usr/local/bin/kubevirt-imds\n";
        assert!(check_binaries_installed(wrong).is_err());
        assert!(check_binaries_run("        command:\n        - /usr/local/bin/kubevirt-imds\n").is_err());
    }
}
