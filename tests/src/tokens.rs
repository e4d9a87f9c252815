//! ServiceAccount tokens as the kubelet writes them.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// An `exp` far in the future for the tests' tokens (the sidecar refuses
/// expired ones), and how the sidecar writes it.
pub const EXP: u64 = 4_102_444_800;
pub const EXP_RFC3339: &str = "2100-01-01T00:00:00Z";

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A JWT shaped like a projected ServiceAccount token (the signature is
/// random bytes: the IMDS never verifies it, consumers do).
pub fn jwt(namespace: &str, service_account: &str, exp: u64, nonce: &str) -> String {
    jwt_issued(namespace, service_account, exp - 3600, exp, nonce)
}

/// [`jwt`] issued at `iat` (seconds since the epoch): a short-lived token,
/// for what refreshes at a fraction of the lifetime.
pub fn jwt_issued(namespace: &str, service_account: &str, iat: u64, exp: u64, nonce: &str) -> String {
    let header = r#"{"alg":"RS256","kid":"test-key"}"#;
    let claims = serde_json::json!({
        "aud": ["https://kubernetes.default.svc"],
        "exp": exp,
        "iat": iat,
        "iss": "https://kubernetes.default.svc",
        "jti": nonce,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account, "uid": nonce}},
        "nbf": iat,
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
    });
    // Long enough to look like RS256 and to make a torn read obvious.
    let signature: Vec<u8> = nonce.bytes().cycle().take(256).collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A projected volume directory maintained the way kubelet's AtomicWriter
/// does: each version in a fresh timestamped directory, `..data` pointing at
/// the current one (swapped with a rename), `token -> ..data/token`.
pub struct ProjectedVolume {
    dir: PathBuf,
    generation: AtomicU64,
}

impl ProjectedVolume {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_owned(), generation: AtomicU64::new(0) })
    }

    /// The directory the sidecar is given (`--token-dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The default token's file.
    pub fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// Publishes `token` atomically and removes the previous version.
    pub fn publish(&self, token: &str) -> anyhow::Result<()> {
        self.publish_files(&[("token", token.as_bytes())])
    }

    /// Publishes a new version of every file at once (a Secret's `tls.crt`
    /// and `tls.key` change together).
    pub fn publish_files(&self, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let version = format!("..2026_11_22_00_00_00.{generation:09}");
        let version_dir = self.dir.join(&version);
        std::fs::create_dir(&version_dir)?;
        for (name, content) in files {
            std::fs::write(version_dir.join(name), content)?;
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).with_context(|| format!("linking {name}"))?;
            }
        }
        let previous = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&version, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data")).context("swapping ..data")?;
        if let Some(previous) = previous {
            std::fs::remove_dir_all(self.dir.join(previous))?;
        }
        Ok(())
    }
}

/// A guest shell fetching one IMDS path with `curl` in a loop, one response
/// per line: what a token-refreshing agent does while the kubelet rotates.
pub struct LoopingClient {
    process: Option<crate::netns::Background>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopingClient {
    /// `path` as in the URL, e.g. `/v1/token?audience=vault`.
    pub fn start(guest: &crate::netns::Netns, path: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("responses");
        let script = format!(
            "while :; do curl -s -m 3 -H 'Metadata: true' 'http://169.254.169.254{path}'; echo; done > {}",
            log.display()
        );
        let process = guest.spawn("sh", &["-c", &script])?;
        Ok(Self { process: Some(process), log, _dir: dir })
    }

    /// How many responses the loop has finished so far.
    pub fn responses(&self) -> usize {
        std::fs::read_to_string(&self.log).map(|t| t.matches('\n').count()).unwrap_or(0)
    }

    /// Waits until the loop has finished `more` responses beyond those it
    /// had: a test's "while X, the guest goes on asking" holds however slow
    /// the machine (an emulated node makes a few requests a second).
    pub fn wait_for_more(&self, more: usize, timeout: std::time::Duration) -> anyhow::Result<()> {
        let target = self.responses() + more;
        let deadline = std::time::Instant::now() + timeout;
        while self.responses() < target {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the looping client finished only {} of {target} responses within {timeout:?}",
                self.responses()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the loop and checks it made at least 20 requests, each answered
    /// with a whole token from `published` (the last line may be cut by the
    /// kill). Returns how many different tokens it was served.
    pub fn stop_and_check(mut self, published: &[String]) -> anyhow::Result<usize> {
        drop(self.process.take());
        let text = std::fs::read_to_string(&self.log)?;
        let responses: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        anyhow::ensure!(responses.len() >= 20, "the looping client made only {} requests", responses.len());
        let mut seen = std::collections::HashSet::new();
        for line in &responses[..responses.len() - 1] {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not a JSON response: {line}"))?;
            let token = v["token"].as_str().with_context(|| format!("not a token response: {line}"))?;
            anyhow::ensure!(
                published.iter().any(|p| p == token),
                "served a token that was never published (torn?): {token}"
            );
            seen.insert(token.to_owned());
        }
        Ok(seen.len())
    }
}
