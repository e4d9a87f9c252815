//! Which token files to keep, from the configuration and what the IMDS
//! says it serves this VM (`/v1/identity`, `/v1/aws`). Pure: the checks
//! that turn a mismatch into a clear error are tested without an IMDS.

use std::path::{Path, PathBuf};

use imds_api::{AwsRole, IdentityResponse};

use crate::config::{Config, Enabled, FileAccess, TOKEN_FILE};

/// The token a target holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The default token (audience: the API server).
    Default,
    Audience(String),
}

/// What is written beside the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    /// `namespace`, as in a pod.
    Namespace(String),
    /// `ca.crt`, copied from this guest file at each write.
    CaCertificate(PathBuf),
    /// The environment file for the AWS SDKs.
    AwsEnv { file: PathBuf, role_arn: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// For logs: `kubernetes`, `aws`, or `audience "<aud>"`.
    pub label: String,
    pub source: Source,
    pub dir: PathBuf,
    pub file: String,
    pub access: FileAccess,
    pub extras: Vec<Extra>,
}

impl Target {
    pub fn token_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }
}

pub const NAMESPACE_FILE: &str = "namespace";
pub const CA_FILE: &str = "ca.crt";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("[kubernetes] enabled = true, but the IMDS serves this VM no default token")]
    NoDefaultToken,
    #[error("[aws] enabled = true, but the IMDS has no AWS role for this VM (GET /v1/aws answered 404)")]
    NoAwsRole,
    #[error("audience {audience:?} is not served to this VM; the IMDS serves {served:?}")]
    AudienceNotServed { audience: String, served: Vec<String> },
    #[error("the IMDS's AWS role ARN {0:?} has characters an environment file cannot carry unquoted")]
    BadRoleArn(String),
    #[error(
        "nothing to write: the IMDS serves this VM no default token and no AWS role, and no [[audience]] is configured"
    )]
    Nothing,
}

pub fn resolve(
    config: &Config,
    served: &IdentityResponse,
    aws: Option<&AwsRole>,
) -> Result<Vec<Target>, TargetError> {
    let mut targets = Vec::new();
    let k = &config.kubernetes;
    let kubernetes_on = match k.enabled {
        Enabled::No => false,
        Enabled::Auto => served.default_token,
        Enabled::Yes if served.default_token => true,
        Enabled::Yes => return Err(TargetError::NoDefaultToken),
    };
    if kubernetes_on {
        let mut extras = vec![Extra::Namespace(served.identity.namespace.clone())];
        extras.extend(k.ca_file.clone().map(Extra::CaCertificate));
        targets.push(Target {
            label: "kubernetes".into(),
            source: Source::Default,
            dir: k.dir.clone(),
            file: TOKEN_FILE.into(),
            access: k.access.clone(),
            extras,
        });
    }
    let a = &config.aws;
    let role = match (a.enabled, aws) {
        (Enabled::No, _) | (Enabled::Auto, None) => None,
        (Enabled::Yes, None) => return Err(TargetError::NoAwsRole),
        (_, Some(role)) => Some(role),
    };
    if let Some(role) = role {
        check_role_arn(&role.role_arn)?;
        targets.push(Target {
            label: "aws".into(),
            source: Source::Audience(role.audience.clone()),
            dir: a.dir.clone(),
            file: TOKEN_FILE.into(),
            access: a.access.clone(),
            extras: vec![Extra::AwsEnv { file: a.env_file.clone(), role_arn: role.role_arn.clone() }],
        });
    }
    for audience in &config.audiences {
        if !served.audiences.contains(&audience.audience) {
            return Err(TargetError::AudienceNotServed {
                audience: audience.audience.clone(),
                served: served.audiences.clone(),
            });
        }
        targets.push(Target {
            label: format!("audience {:?}", audience.audience),
            source: Source::Audience(audience.audience.clone()),
            dir: audience.dir.clone(),
            file: audience.file.clone(),
            access: audience.access.clone(),
            extras: Vec::new(),
        });
    }
    if targets.is_empty() {
        return Err(TargetError::Nothing);
    }
    Ok(targets)
}

/// ARNs are `arn:partition:iam::account:role/path/name` with IAM's name
/// characters; anything else would need quoting in the env file.
fn check_role_arn(arn: &str) -> Result<(), TargetError> {
    let ok = arn.starts_with("arn:")
        && arn.len() <= 2048
        && arn.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-:/".contains(&b));
    if ok { Ok(()) } else { Err(TargetError::BadRoleArn(arn.chars().take(100).collect())) }
}

/// The AWS SDKs' two variables, in a form both `systemd`'s
/// `EnvironmentFile=` and a shell's `.` read.
pub fn aws_env_file(role_arn: &str, token_file: &Path) -> String {
    format!("AWS_ROLE_ARN={role_arn}\nAWS_WEB_IDENTITY_TOKEN_FILE={}\n", token_file.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_api::Identity;

    fn served(default_token: bool, audiences: &[&str]) -> IdentityResponse {
        IdentityResponse {
            identity: Identity {
                namespace: "vm-team".into(),
                service_account_name: "builder".into(),
                vm_name: "fedora-42".into(),
            },
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            default_token,
        }
    }

    fn role() -> AwsRole {
        AwsRole {
            role_arn: "arn:aws:iam::111122223333:role/vm-reader".into(),
            audience: "sts.amazonaws.com".into(),
        }
    }

    fn labels(t: &[Target]) -> Vec<&str> {
        t.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn defaults_follow_what_the_imds_serves() {
        let c = Config::parse("").unwrap();
        let t = resolve(&c, &served(true, &["sts.amazonaws.com"]), Some(&role())).unwrap();
        assert_eq!(labels(&t), ["kubernetes", "aws"]);
        assert_eq!(t[0].token_path(), Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token"));
        assert_eq!(t[0].extras, [Extra::Namespace("vm-team".into())]);
        assert_eq!(t[1].source, Source::Audience("sts.amazonaws.com".into()));
        assert_eq!(t[1].token_path(), Path::new("/var/run/secrets/eks.amazonaws.com/serviceaccount/token"));
        let t = resolve(&c, &served(true, &[]), None).unwrap();
        assert_eq!(labels(&t), ["kubernetes"]);
        assert_eq!(resolve(&c, &served(false, &[]), None), Err(TargetError::Nothing));
    }

    #[test]
    fn asking_for_what_is_not_served_is_an_error() {
        let c = Config::parse("[kubernetes]\nenabled = true").unwrap();
        assert_eq!(resolve(&c, &served(false, &["v"]), None), Err(TargetError::NoDefaultToken));
        let c = Config::parse("[aws]\nenabled = true").unwrap();
        assert_eq!(resolve(&c, &served(true, &[]), None), Err(TargetError::NoAwsRole));
        let c = Config::parse("[[audience]]\naudience = \"vault\"\ndir = \"/run/vault\"").unwrap();
        let e = resolve(&c, &served(true, &["spire"]), None).unwrap_err();
        assert_eq!(e.to_string(), r#"audience "vault" is not served to this VM; the IMDS serves ["spire"]"#);
    }

    #[test]
    fn audiences_and_the_ca_are_configured_targets() {
        let c = Config::parse(
            "[kubernetes]\nca_file = \"/etc/k8s-ca.pem\"\n[aws]\nenabled = false\n[[audience]]\naudience = \"vault\"\ndir = \"/run/vault\"\nfile = \"jwt\"",
        )
        .unwrap();
        let t = resolve(&c, &served(true, &["vault"]), Some(&role())).unwrap();
        assert_eq!(labels(&t), ["kubernetes", "audience \"vault\""]);
        assert_eq!(t[0].extras[1], Extra::CaCertificate("/etc/k8s-ca.pem".into()));
        assert_eq!(t[1].token_path(), Path::new("/run/vault/jwt"));
    }

    #[test]
    fn a_role_arn_that_would_break_the_env_file_is_refused() {
        let c = Config::parse("").unwrap();
        for arn in ["arn:aws:iam::1:role/x\nLD_PRELOAD=/tmp/x", "arn:aws:iam::1:role/$(reboot)", "role", ""] {
            let bad = AwsRole { role_arn: arn.into(), audience: "sts.amazonaws.com".into() };
            assert!(
                matches!(resolve(&c, &served(true, &[]), Some(&bad)), Err(TargetError::BadRoleArn(_))),
                "{arn:?}"
            );
        }
    }

    #[test]
    fn the_env_file_names_the_role_and_the_token() {
        assert_eq!(
            aws_env_file("arn:aws:iam::1:role/r", Path::new("/run/aws/token")),
            "AWS_ROLE_ARN=arn:aws:iam::1:role/r\nAWS_WEB_IDENTITY_TOKEN_FILE=/run/aws/token\n"
        );
    }
}
