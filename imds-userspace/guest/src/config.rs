//! The helper's configuration file (TOML), parsed and checked before
//! anything is fetched. Every key is optional; an unknown key is an error
//! (a typo must not silently leave a token unwritten). See
//! `deploy/guest/kubevirt-imds-guest.toml` for a commented example.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/kubevirt-imds/guest.toml";
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
/// Where the kubelet mounts a pod's token; in-cluster clients look here.
pub const KUBERNETES_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where EKS's pod identity webhook mounts the web identity token.
pub const AWS_DIR: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
/// Under /run: it is rewritten at run time, and the systemd unit keeps /etc
/// read-only.
pub const AWS_ENV_FILE: &str = "/run/kubevirt-imds/aws.env";
pub const TOKEN_FILE: &str = "token";
/// A projected volume's default mode (`defaultMode`), as the kubelet writes it.
pub const DEFAULT_MODE: u32 = 0o644;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a hostile or mistaken config: one token per audience the IMDS
/// can serve (`imds_common::contract::MAX_AUDIENCES` is 8) and then some.
pub const MAX_AUDIENCES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Toml(String),
    #[error("{0}")]
    Invalid(String),
}

/// `true`, `false`, or `"auto"`: on when the IMDS serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enabled {
    #[default]
    Auto,
    Yes,
    No,
}

impl<'de> Deserialize<'de> for Enabled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::Yes),
            Raw::Bool(false) => Ok(Self::No),
            Raw::Text(t) if t == "auto" => Ok(Self::Auto),
            Raw::Text(t) => {
                Err(serde::de::Error::custom(format!("`enabled` is true, false or \"auto\", not {t:?}")))
            }
        }
    }
}

/// A user or group: a name looked up in the guest, or a number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Principal {
    Id(u32),
    Name(String),
}

/// Who may read a token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAccess {
    pub mode: u32,
    pub owner: Option<Principal>,
    pub group: Option<Principal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    pub enabled: Enabled,
    pub dir: PathBuf,
    /// Copied into the directory as `ca.crt`: the IMDS does not know the
    /// API server's CA, so only the user can provide it.
    pub ca_file: Option<PathBuf>,
    pub access: FileAccess,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aws {
    pub enabled: Enabled,
    pub dir: PathBuf,
    pub env_file: PathBuf,
    pub access: FileAccess,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    pub audience: String,
    pub dir: PathBuf,
    pub file: String,
    pub access: FileAccess,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub imds: String,
    pub timeout: Duration,
    pub kubernetes: Kubernetes,
    pub aws: Aws,
    pub audiences: Vec<Audience>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    imds: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    kubernetes: RawKubernetes,
    #[serde(default)]
    aws: RawAws,
    #[serde(default)]
    audience: Vec<RawAudience>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    /// Signed, so that a negative mode gets our message, not serde's.
    mode: Option<i64>,
    owner: Option<Principal>,
    group: Option<Principal>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    #[serde(default)]
    enabled: Enabled,
    dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(flatten)]
    access: RawAccess,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAws {
    #[serde(default)]
    enabled: Enabled,
    dir: Option<PathBuf>,
    env_file: Option<PathBuf>,
    #[serde(flatten)]
    access: RawAccess,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    audience: String,
    dir: PathBuf,
    file: Option<String>,
    #[serde(flatten)]
    access: RawAccess,
}

impl Config {
    /// Reads `path`; a missing file at the default path means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|e| match e {
                ConfigError::Toml(message) | ConfigError::Invalid(message) => {
                    ConfigError::Parse { path: path.into(), message }
                }
                other => other,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Self::parse(""),
            Err(source) => Err(ConfigError::Read { path: path.into(), source }),
        }
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        let imds = raw.imds.unwrap_or_else(|| DEFAULT_IMDS.to_owned());
        check_imds_url(&imds)?;
        let timeout = match raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => humantime::parse_duration(&t)
                .ok()
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(300))
                .ok_or_else(|| {
                    invalid(format!("`timeout` must be a duration from 1ms to 300s like \"10s\", not {t:?}"))
                })?,
        };
        let kubernetes = Kubernetes {
            enabled: raw.kubernetes.enabled,
            dir: absolute("kubernetes.dir", raw.kubernetes.dir.unwrap_or_else(|| KUBERNETES_DIR.into()))?,
            ca_file: raw.kubernetes.ca_file.map(|p| absolute("kubernetes.ca_file", p)).transpose()?,
            access: access("kubernetes", raw.kubernetes.access)?,
        };
        let aws = Aws {
            enabled: raw.aws.enabled,
            dir: absolute("aws.dir", raw.aws.dir.unwrap_or_else(|| AWS_DIR.into()))?,
            env_file: absolute("aws.env_file", raw.aws.env_file.unwrap_or_else(|| AWS_ENV_FILE.into()))?,
            access: access("aws", raw.aws.access)?,
        };
        if raw.audience.len() > MAX_AUDIENCES {
            return Err(invalid(format!(
                "at most {MAX_AUDIENCES} [[audience]] tables, found {}",
                raw.audience.len()
            )));
        }
        let mut audiences = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, a) in raw.audience.into_iter().enumerate() {
            let at = format!("audience[{i}]");
            if a.audience.is_empty() || a.audience.len() > 256 || a.audience.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "{at}.audience must be 1 to 256 characters, no control characters"
                )));
            }
            if !seen.insert(a.audience.clone()) {
                return Err(invalid(format!("{at}: audience {:?} is configured twice", a.audience)));
            }
            let file = a.file.unwrap_or_else(|| TOKEN_FILE.into());
            check_file_name(&format!("{at}.file"), &file)?;
            audiences.push(Audience {
                dir: absolute(&format!("{at}.dir"), a.dir)?,
                file,
                access: access(&at, a.access)?,
                audience: a.audience,
            });
        }
        let config = Self { imds, timeout, kubernetes, aws, audiences };
        config.check_dirs_distinct()?;
        Ok(config)
    }

    /// The file's `imds` replaced (the `--imds` flag), with the same checks.
    pub fn with_imds(self, imds: String) -> Result<Self, ConfigError> {
        check_imds_url(&imds)?;
        Ok(Self { imds, ..self })
    }

    /// Each token directory has its own `..data` link, swapped whole: two
    /// tokens in one directory would replace each other.
    fn check_dirs_distinct(&self) -> Result<(), ConfigError> {
        let mut dirs: Vec<(&str, &Path)> = Vec::new();
        if self.kubernetes.enabled != Enabled::No {
            dirs.push(("kubernetes.dir", &self.kubernetes.dir));
        }
        if self.aws.enabled != Enabled::No {
            dirs.push(("aws.dir", &self.aws.dir));
        }
        for a in &self.audiences {
            dirs.push(("an [[audience]] dir", &a.dir));
        }
        for (i, (name, dir)) in dirs.iter().enumerate() {
            if let Some((other, _)) = dirs[..i].iter().find(|(_, d)| d == dir) {
                return Err(invalid(format!(
                    "{other} and {name} are both {}: each token needs a directory of its own",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

fn check_imds_url(url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid(format!("`imds` must be an http:// URL (the IMDS has no TLS), not {url:?}"))
    })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
        return Err(invalid(format!("`imds` must be http://HOST[:PORT] with no path, not {url:?}")));
    }
    Ok(())
}

fn absolute(key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    if !path.is_absolute() {
        return Err(invalid(format!("{key} must be an absolute path, not {:?}", path.display().to_string())));
    }
    Ok(path)
}

/// A name inside a token directory: not a path, and never one of the
/// writer's own `..`-prefixed entries.
fn check_file_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains('/') || name.starts_with("..") || name == "." || name.len() > 255 {
        return Err(invalid(format!(
            "{key} must be a plain file name (no '/', not starting with \"..\"), not {name:?}"
        )));
    }
    Ok(())
}

fn access(table: &str, raw: RawAccess) -> Result<FileAccess, ConfigError> {
    let mode = match raw.mode {
        None => DEFAULT_MODE,
        Some(m) => u32::try_from(m).ok().filter(|m| *m <= 0o777).ok_or_else(|| {
            invalid(format!(
                "{table}.mode must be permission bits from 0o000 to 0o777 (e.g. mode = 0o640), not {m}"
            ))
        })?,
    };
    for (key, p) in [("owner", &raw.owner), ("group", &raw.group)] {
        if let Some(Principal::Name(n)) = p
            && (n.is_empty() || n.contains([':', '\n', '\0']))
        {
            return Err(invalid(format!("{table}.{key} must be a name or a number, not {n:?}")));
        }
    }
    Ok(FileAccess { mode, owner: raw.owner, group: raw.group })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Config::parse(text).expect_err(text).to_string()
    }

    #[test]
    fn an_empty_file_gives_the_kubelet_and_eks_paths() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.imds, "http://169.254.169.254");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.kubernetes.enabled, Enabled::Auto);
        assert_eq!(c.kubernetes.dir, Path::new("/var/run/secrets/kubernetes.io/serviceaccount"));
        assert_eq!(c.kubernetes.access, FileAccess { mode: 0o644, owner: None, group: None });
        assert_eq!(c.aws.dir, Path::new("/var/run/secrets/eks.amazonaws.com/serviceaccount"));
        assert_eq!(c.aws.env_file, Path::new("/run/kubevirt-imds/aws.env"));
        assert!(c.audiences.is_empty());
    }

    #[test]
    fn a_full_file_is_read() {
        let c = Config::parse(
            r#"
imds = "http://10.0.2.2:8080"
timeout = "3s"
[kubernetes]
enabled = false
[aws]
enabled = true
env_file = "/run/aws.env"
[[audience]]
audience = "vault"
dir = "/run/secrets/vault"
mode = 0o640
group = "vault"
[[audience]]
audience = "spiffe://example.org"
dir = "/run/spire"
file = "agent-token"
owner = 0
"#,
        )
        .unwrap();
        assert_eq!(c.imds, "http://10.0.2.2:8080");
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.kubernetes.enabled, Enabled::No);
        assert_eq!(c.aws.enabled, Enabled::Yes);
        assert_eq!(
            c.audiences[0].access,
            FileAccess { mode: 0o640, owner: None, group: Some(Principal::Name("vault".into())) }
        );
        assert_eq!(c.audiences[1].file, "agent-token");
        assert_eq!(c.audiences[1].access.owner, Some(Principal::Id(0)));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("imds = \"https://169.254.169.254\"", "must be an http:// URL"),
            ("imds = \"http://169.254.169.254/v1\"", "no path"),
            ("timeout = \"forever\"", "`timeout` must be a duration"),
            ("timeout = \"0s\"", "`timeout` must be a duration"),
            ("tokens = 1", "unknown field `tokens`"),
            ("[kubernetes]\nenabled = \"yes\"", "true, false or \"auto\""),
            ("[kubernetes]\ndir = \"relative\"", "kubernetes.dir must be an absolute path"),
            ("[kubernetes]\nmode = 0o4755", "permission bits"),
            ("[kubernetes]\nowner = \"a:b\"", "kubernetes.owner must be a name or a number"),
            ("[kubernetes]\nmode = -1", "mode"),
            ("[[audience]]\naudience = \"v\"", "missing field `dir`"),
            ("[[audience]]\naudience = \"\"\ndir = \"/a\"", "audience[0].audience must be 1 to 256"),
            (
                "[[audience]]\naudience = \"v\"\ndir = \"/a\"\nfile = \"../x\"",
                "audience[0].file must be a plain file name",
            ),
            ("[[audience]]\naudience = \"v\"\ndir = \"/a\"\nfile = \"..data\"", "plain file name"),
            (
                "[[audience]]\naudience = \"v\"\ndir = \"/a\"\n[[audience]]\naudience = \"v\"\ndir = \"/b\"",
                "configured twice",
            ),
            (
                "[[audience]]\naudience = \"v\"\ndir = \"/var/run/secrets/kubernetes.io/serviceaccount\"",
                "kubernetes.dir and an [[audience]] dir are both",
            ),
        ] {
            let e = error(text);
            assert!(e.contains(says), "{text:?} gave {e:?}, expected it to say {says:?}");
        }
    }

    #[test]
    fn a_disabled_target_may_share_a_directory() {
        let c = Config::parse(
            "[aws]\nenabled = false\n[[audience]]\naudience = \"v\"\ndir = \"/var/run/secrets/eks.amazonaws.com/serviceaccount\"",
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn too_many_audiences_are_refused() {
        let text: String =
            (0..17).map(|i| format!("[[audience]]\naudience = \"a{i}\"\ndir = \"/d{i}\"\n")).collect();
        assert!(error(&text).contains("at most 16"));
    }

    #[test]
    fn a_missing_default_file_means_defaults_but_a_named_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert!(Config::load(&missing, false).is_ok());
        let e = Config::load(&missing, true).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("none.toml"), "{e}");
        std::fs::write(&missing, "imds = 3").unwrap();
        let e = Config::load(&missing, true).unwrap_err().to_string();
        assert!(e.contains("none.toml") && e.contains("imds"), "{e}");
    }
}
