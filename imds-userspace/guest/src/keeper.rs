//! The loop that keeps every target's files fresh: fetch, check, publish,
//! sleep until the earliest refresh point ([`crate::schedule`]). A failed
//! refresh leaves the files as they are (a good token is never truncated
//! or removed) and is retried with backoff.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, SystemTime},
};

use crate::{
    imds_client::{ImdsClient, ImdsError},
    jwt::{ClaimsError, Lifetime},
    log_lines, ownership,
    projection::{self, Ownership, Payload},
    schedule,
    targets::{self, CA_FILE, Extra, NAMESPACE_FILE, Source, Target},
};

/// A `ca.crt` larger than this is refused (a bundle is a few KiB).
const MAX_CA_FILE: u64 = 1024 * 1024;
/// Sleep in slices no longer than this, so that a clock step or a
/// suspended VM is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error("the IMDS served a token whose claims cannot be read: {0}")]
    Claims(#[from] ClaimsError),
    #[error("the IMDS served an expired token (expired {0})")]
    Expired(String),
    #[error(transparent)]
    Ownership(#[from] ownership::OwnershipError),
    #[error("reading {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error(transparent)]
    Write(#[from] projection::WriteError),
    #[error("writing {path}: {source}")]
    EnvFile { path: String, source: std::io::Error },
}

/// One target and what the keeper knows of it. Holds a credential: no
/// `Debug`.
pub struct Kept {
    pub target: Target,
    /// The token last written, to skip rewriting an unchanged one.
    written: Option<String>,
    due: SystemTime,
    failures: u32,
}

impl Kept {
    pub fn new(target: Target, now: SystemTime) -> Self {
        Self { target, written: None, due: now, failures: 0 }
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// The files were (re)written.
    Written(Lifetime),
    /// The same token was served and the files still hold it.
    Unchanged(Lifetime),
}

/// Fetches `kept`'s token and publishes it unless the files already hold it.
pub fn refresh(client: &ImdsClient, kept: &mut Kept, now: SystemTime) -> Result<Refreshed, RefreshError> {
    let target = &kept.target;
    let audience = match &target.source {
        Source::Default => None,
        Source::Audience(a) => Some(a.as_str()),
    };
    let served = client.token(audience)?;
    let lifetime = Lifetime::of(&served.token, now)?;
    if lifetime.is_expired(now) {
        return Err(RefreshError::Expired(served.expiration_timestamp));
    }
    // Unchanged and still in place (someone may have removed the files).
    let in_place =
        || projection::read_visible(&target.dir, &target.file).is_ok_and(|t| t == served.token.as_bytes());
    if kept.written.as_deref() == Some(served.token.as_str()) && in_place() {
        return Ok(Refreshed::Unchanged(lifetime));
    }
    let owner = ownership::resolve(&target.access)?;
    // Read first: the payloads borrow it.
    let ca = target
        .extras
        .iter()
        .find_map(|e| match e {
            Extra::CaCertificate(path) => Some(read_bounded(path)),
            _ => None,
        })
        .transpose()?;
    let mut files = vec![Payload { name: &target.file, content: served.token.as_bytes() }];
    for extra in &target.extras {
        if let Extra::Namespace(ns) = extra {
            files.push(Payload { name: NAMESPACE_FILE, content: ns.as_bytes() });
        }
    }
    if let Some(ca) = &ca {
        files.push(Payload { name: CA_FILE, content: ca });
    }
    projection::publish(&target.dir, &files, target.access.mode, owner, now)?;
    for extra in &target.extras {
        if let Extra::AwsEnv { file, role_arn } = extra {
            write_env_file(file, &targets::aws_env_file(role_arn, &target.token_path()), owner)?;
        }
    }
    kept.written = Some(served.token);
    Ok(Refreshed::Written(lifetime))
}

/// At most [`MAX_CA_FILE`] bytes, however the file grows while it is read.
fn read_bounded(path: &Path) -> Result<Vec<u8>, RefreshError> {
    use std::io::Read as _;
    let err = |source| RefreshError::CaFile { path: path.display().to_string(), source };
    let mut content = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut content)).map_err(err)?;
    if content.len() as u64 > MAX_CA_FILE {
        return Err(err(std::io::Error::other(format!("more than a CA bundle's {MAX_CA_FILE} bytes"))));
    }
    Ok(content)
}

/// Replaced by rename, and only when its content changes.
fn write_env_file(path: &Path, content: &str, owner: Ownership) -> Result<(), RefreshError> {
    if std::fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(());
    }
    let err = |source| RefreshError::EnvFile { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(content.as_bytes()).and_then(|()| f.sync_all()).map_err(err)?;
    if owner != Ownership::default() {
        std::os::unix::fs::chown(&tmp, owner.uid, owner.gid).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Refreshes `kept` and sets when it is due again; logs either way.
pub fn refresh_and_schedule(client: &ImdsClient, kept: &mut Kept, now: SystemTime) -> bool {
    match refresh(client, kept, now) {
        Ok(outcome) => {
            let (Refreshed::Written(lifetime) | Refreshed::Unchanged(lifetime)) = outcome;
            kept.failures = 0;
            let refresh_at = schedule::refresh_point(&lifetime, fastrand::f64());
            let wait = schedule::after_success(&lifetime, refresh_at, now);
            kept.due = now + wait;
            let expires = humantime::format_rfc3339_seconds(lifetime.expires_at).to_string();
            let next = humantime::format_duration(Duration::from_secs(wait.as_secs())).to_string();
            if matches!(outcome, Refreshed::Written(_)) {
                tracing::info!(
                    target_name = %kept.target.label, path = %kept.target.token_path().display(),
                    expires = %expires, next_refresh_in = %next, "{}", log_lines::WRITTEN
                );
            } else {
                tracing::debug!(target_name = %kept.target.label, next_refresh_in = %next, "token unchanged");
            }
            true
        }
        Err(e) => {
            let wait = schedule::after_failure(kept.failures, fastrand::f64());
            kept.failures = kept.failures.saturating_add(1);
            kept.due = now + wait;
            tracing::warn!(
                target_name = %kept.target.label, error = %e, failures = kept.failures,
                retry_in = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                "{}", log_lines::REFRESH_FAILED
            );
            false
        }
    }
}

/// Runs forever: each target refreshed when due.
pub fn keep(client: &ImdsClient, mut kept: Vec<Kept>) -> ! {
    loop {
        let now = SystemTime::now();
        for k in kept.iter_mut().filter(|k| k.due <= now) {
            refresh_and_schedule(client, k, now);
        }
        let now = SystemTime::now();
        let next = kept.iter().map(|k| k.due).min().unwrap_or(now + MAX_SLEEP);
        std::thread::sleep(next.duration_since(now).unwrap_or_default().min(MAX_SLEEP));
    }
}

/// `--once`: every target written, retrying until `deadline`. Returns the
/// labels of the targets that could not be written.
pub fn once(client: &ImdsClient, mut pending: Vec<Kept>, deadline: SystemTime) -> Vec<String> {
    loop {
        let now = SystemTime::now();
        // Keep what is not due yet, or was due and failed.
        pending.retain_mut(|k| k.due > now || !refresh_and_schedule(client, k, now));
        let Some(next) = pending.iter().map(|k| k.due).min() else { return Vec::new() };
        if next >= deadline {
            return pending.into_iter().map(|k| k.target.label).collect();
        }
        let now = SystemTime::now();
        std::thread::sleep(next.duration_since(now).unwrap_or_default().min(MAX_SLEEP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_read_whole_up_to_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        assert_eq!(read_bounded(&ca).unwrap(), b"-----BEGIN CERTIFICATE-----\n");
        std::fs::write(&ca, vec![b'x'; MAX_CA_FILE as usize + 1]).unwrap();
        let e = read_bounded(&ca).unwrap_err().to_string();
        assert!(e.contains("ca.crt") && e.contains("more than a CA bundle"), "{e}");
        let e = read_bounded(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn the_env_file_is_replaced_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("run/kubevirt-imds/aws.env");
        write_env_file(&env, "A=1\n", Ownership::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "A=1\n");
        let before = std::fs::metadata(&env).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write_env_file(&env, "A=1\n", Ownership::default()).unwrap();
        assert_eq!(std::fs::metadata(&env).unwrap().modified().unwrap(), before, "rewritten unchanged");
        write_env_file(&env, "A=2\n", Ownership::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "A=2\n");
        let leftovers = std::fs::read_dir(env.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }
}
