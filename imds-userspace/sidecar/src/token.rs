//! The ServiceAccount token, read from the kubelet-managed projected volume.
//!
//! The kubelet's atomic writer publishes a volume as `<name> -> ..data/<name>`
//! and `..data -> ..<timestamp>/`, never changes a `..<timestamp>` directory
//! once published, and rotates by writing a new one and renaming `..data`
//! over the old link. So the target of `..data` names the token's content:
//! it is read and its `GET /v1/token` body built once per generation
//! ([`PreparedToken`]). Two ways of noticing a new generation:
//!
//! - watched ([`crate::token_watch`]): inotify on the volume reloads the
//!   generation when `..data` moves, and requests cost no system call;
//! - unwatched (no inotify, or the last reload failed): each request checks
//!   the links (two `readlink`s) and reads only a moved generation.
//!
//! Any other layout (a plain file, as in development) is read on every
//! request. Either way every request sees a token the kubelet published,
//! never a mix of two, and never one expired beyond [`EXPIRY_SKEW`].

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use imds_api::TokenResponse;

/// A projected token is about 1 KiB; anything far larger is not one.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {0} does not exist (yet)")]
    Missing(PathBuf),
    #[error("token file {path} cannot be read")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("token file {path} is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("token file {path} does not hold a JWT: {reason}")]
    NotAJwt { path: PathBuf, reason: JwtError },
}

pub use imds_api::jwt::JwtError;

/// A token as served: the JWT exactly as the kubelet wrote it, and when it
/// expires according to its own `exp` claim. `Debug` shows the expiry only.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccountToken {
    pub jwt: String,
    pub expires_at: SystemTime,
}

/// How far past its `exp` a token is still handed out: the node's clock
/// may run ahead of the API server's by this much.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(30);

impl std::fmt::Debug for ServiceAccountToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountToken")
            .field("jwt", &"<redacted>")
            .field("expires_at", &self.expiration_timestamp())
            .finish()
    }
}

impl ServiceAccountToken {
    /// Expired at `now`, beyond [`EXPIRY_SKEW`]: the API server refuses it,
    /// so serving it would only hide that the kubelet stopped refreshing.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at + EXPIRY_SKEW < now
    }

    /// RFC 3339, UTC, whole seconds (the form Kubernetes uses in
    /// `TokenRequestStatus.expirationTimestamp`).
    pub fn expiration_timestamp(&self) -> String {
        humantime::format_rfc3339_seconds(self.expires_at).to_string()
    }
}

/// The kubelet atomic writer's link to the current generation.
const DATA_LINK: &str = "..data";

/// A token ready to serve: the token and the exact bytes of its
/// `GET /v1/token` body, built once per generation. `Debug` shows neither.
pub struct PreparedToken {
    pub token: ServiceAccountToken,
    pub body: Bytes,
}

impl PreparedToken {
    pub fn new(token: ServiceAccountToken) -> Self {
        let response =
            TokenResponse { token: token.jwt.clone(), expiration_timestamp: token.expiration_timestamp() };
        // Two strings: serde_json cannot fail on them.
        let body = serde_json::to_vec(&response).map(Bytes::from).unwrap_or_default();
        Self { token, body }
    }
}

impl std::fmt::Debug for PreparedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedToken").field("token", &self.token).finish_non_exhaustive()
    }
}

/// Where the token lives, and the token last read from there. Clones share
/// the cache.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    cache: Arc<Mutex<Cache>>,
}

#[derive(Debug, Default)]
struct Cache {
    /// The generation last read through `..data`.
    last: Option<Generation>,
    /// Whether a watch on the volume reloads `last` whenever `..data`
    /// moves, so that requests may trust it without looking at the links.
    watched: bool,
}

/// A token and the `..data` target it was read through.
#[derive(Debug)]
struct Generation {
    data_target: PathBuf,
    prepared: Arc<PreparedToken>,
}

/// Where a load found the token.
enum Source {
    /// A kubelet generation, now in the cache.
    Generation,
    /// Any other layout, or a generation that could not be read: the path
    /// as configured, read just now and not cached.
    Path,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), cache: Arc::default() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token the kubelet last published, ready to serve. Watched, with
    /// a token that has not expired: no system call. Otherwise the links are
    /// checked and a new generation read. Called inline on the async
    /// runtime: the volume is a tmpfs, and a miss costs about 5 µs, well
    /// under a `spawn_blocking` hop (20–30 µs here, see BENCHMARKS.md).
    pub fn prepared(&self, now: SystemTime) -> Result<Arc<PreparedToken>, TokenError> {
        let mut cache = self.lock();
        if cache.watched
            && let Some(generation) = &cache.last
            && !generation.prepared.token.is_expired(now)
        {
            return Ok(generation.prepared.clone());
        }
        // An expired token, watched or not, is looked for again: the kubelet
        // may have published a new one that a watch has not reported yet.
        self.load(&mut cache).map(|(prepared, _)| prepared)
    }

    /// The token the kubelet last published (checking the links).
    pub fn read(&self) -> Result<ServiceAccountToken, TokenError> {
        let mut cache = self.lock();
        self.load(&mut cache).map(|(prepared, _)| prepared.token.clone())
    }

    /// Reloads after a change in the volume (for [`crate::token_watch`]):
    /// the cache is trusted without checking the links only while it holds
    /// a kubelet generation read after the last change. Errors are left to
    /// the requests, which take the slow path and report them.
    pub fn reload_watched(&self) {
        let mut cache = self.lock();
        cache.watched = false;
        cache.watched = matches!(self.load(&mut cache), Ok((_, Source::Generation)));
    }

    /// Whether requests are served without looking at the volume.
    pub fn is_watched(&self) -> bool {
        self.lock().watched
    }

    /// Stops trusting the cache without checking the links (the watch ended).
    pub fn unwatch(&self) {
        self.lock().watched = false;
    }

    /// Opens, reads and parses the file, bypassing the cache (what every
    /// request cost before there was one; kept for the benchmark).
    pub fn read_uncached(&self) -> Result<ServiceAccountToken, TokenError> {
        read_token(&self.path)
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slow path: the links checked, the generation read if it moved.
    fn load(&self, cache: &mut Cache) -> Result<(Arc<PreparedToken>, Source), TokenError> {
        let uncached = || read_token(&self.path).map(|t| (Arc::new(PreparedToken::new(t)), Source::Path));
        let Some((data_target, generation_file)) = self.current_generation() else {
            return uncached();
        };
        if let Some(cached) = cache.last.as_ref().filter(|g| g.data_target == data_target) {
            return Ok((cached.prepared.clone(), Source::Generation));
        }
        // Through the generation's own directory, so the token kept is the
        // one `data_target` names even if `..data` moves meanwhile.
        match read_token(&generation_file) {
            Ok(token) => {
                let prepared = Arc::new(PreparedToken::new(token));
                cache.last = Some(Generation { data_target, prepared: prepared.clone() });
                Ok((prepared, Source::Generation))
            }
            // Rotated away between the readlink and the open, or broken: the
            // path as configured tells the truth and names the right file.
            Err(_) => uncached(),
        }
    }

    /// `..data`'s target and the token's file inside it, if the token is
    /// laid out by the kubelet's atomic writer: `<name> -> ..data/<name>`.
    fn current_generation(&self) -> Option<(PathBuf, PathBuf)> {
        let (dir, name) = (self.path.parent()?, self.path.file_name()?);
        if std::fs::read_link(&self.path).ok()? != Path::new(DATA_LINK).join(name) {
            return None;
        }
        let data_target = std::fs::read_link(dir.join(DATA_LINK)).ok()?;
        // The writer's targets are sibling names (`..2026_11_23_05_35_52.1`).
        if data_target.file_name() != Some(data_target.as_os_str()) {
            return None;
        }
        let file = dir.join(&data_target).join(name);
        Some((data_target, file))
    }
}

/// Every token a VM may be served, by audience: the API server's (unless
/// turned off) and the extra audiences, each from its own file.
#[derive(Debug, Clone)]
pub struct TokenSet {
    default: Option<TokenFile>,
    audiences: Vec<(String, TokenFile)>,
}

impl TokenSet {
    /// The files in `dir`, named as the webhook mounts them.
    pub fn new(dir: &Path, default: bool, audiences: &[String]) -> Self {
        Self {
            default: default.then(|| TokenFile::new(dir.join(crate::contract::TOKEN_FILE_NAME))),
            audiences: audiences
                .iter()
                .enumerate()
                .map(|(i, a)| (a.clone(), TokenFile::new(dir.join(crate::contract::audience_file_name(i)))))
                .collect(),
        }
    }

    /// The API-server-audience token, if served.
    pub fn default_token(&self) -> Option<&TokenFile> {
        self.default.as_ref()
    }

    /// The token for `audience`, compared as a string: it never reaches a path.
    pub fn for_audience(&self, audience: &str) -> Option<&TokenFile> {
        self.audiences.iter().find(|(a, _)| a == audience).map(|(_, f)| f)
    }

    pub fn audiences(&self) -> Vec<String> {
        self.audiences.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Every file, for the start-up check.
    pub fn files(&self) -> impl Iterator<Item = &TokenFile> {
        self.default.iter().chain(self.audiences.iter().map(|(_, f)| f))
    }
}

fn read_token(path: &Path) -> Result<ServiceAccountToken, TokenError> {
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TokenError::Missing(path.to_owned()),
        _ => TokenError::Unreadable { path: path.to_owned(), source },
    })?;
    let mut bytes = Vec::with_capacity(2048);
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TokenError::Unreadable { path: path.to_owned(), source })?;
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge { path: path.to_owned() });
    }
    let not_a_jwt = |reason| TokenError::NotAJwt { path: path.to_owned(), reason };
    let text = String::from_utf8(bytes).map_err(|_| not_a_jwt(JwtError::Shape))?;
    // A hand-written file may end in a newline; a JWT never contains one.
    let jwt = text.trim_ascii().to_owned();
    let expires_at = jwt_expiry(&jwt).map_err(not_a_jwt)?;
    Ok(ServiceAccountToken { jwt, expires_at })
}

/// The `exp` claim of a compact-serialised JWT (`imds_api::jwt`, which
/// the guest helper reads tokens with too).
pub fn jwt_expiry(jwt: &str) -> Result<SystemTime, JwtError> {
    imds_api::jwt::claims(jwt).map(|c| c.expires_at)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use std::time::UNIX_EPOCH;

    /// A syntactically real JWT with the given claims (unsigned: signature
    /// bytes are arbitrary, as the IMDS never checks them).
    pub fn jwt_with_claims(claims: &str) -> String {
        let e = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", e(br#"{"alg":"RS256","kid":"k"}"#), e(claims.as_bytes()), e(b"sig"))
    }

    #[test]
    fn expiry_comes_from_the_exp_claim() {
        let jwt = jwt_with_claims(r#"{"aud":["x"],"exp":1795000000,"sub":"system:serviceaccount:ns:sa"}"#);
        let t = ServiceAccountToken { expires_at: jwt_expiry(&jwt).unwrap(), jwt };
        assert_eq!(t.expiration_timestamp(), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn expired_means_past_exp_beyond_the_skew() {
        let t = ServiceAccountToken { jwt: "x".into(), expires_at: UNIX_EPOCH + Duration::from_secs(1000) };
        assert!(!t.is_expired(UNIX_EPOCH + Duration::from_secs(999)));
        assert!(!t.is_expired(t.expires_at + EXPIRY_SKEW));
        assert!(t.is_expired(t.expires_at + EXPIRY_SKEW + Duration::from_secs(1)));
        let debug = format!("{t:?}");
        assert!(!debug.contains("\"x\"") && debug.contains("1970-01-01T00:16:40Z"), "{debug}");
    }

    #[test]
    fn a_plain_file_is_read_each_time_and_each_failure_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = TokenFile::new(&path);
        assert!(matches!(source.read(), Err(TokenError::Missing(_))));

        std::fs::write(&path, "not a jwt").unwrap();
        assert!(matches!(source.read(), Err(TokenError::NotAJwt { .. })));

        let first = jwt_with_claims(r#"{"exp":1795000000}"#);
        std::fs::write(&path, format!("{first}\n")).unwrap();
        assert_eq!(source.read().unwrap().jwt, first);

        let second = jwt_with_claims(r#"{"exp":1795003600}"#);
        std::fs::write(&path, &second).unwrap();
        assert_eq!(source.read().unwrap().jwt, second);

        std::fs::write(&path, vec![b'a'; MAX_TOKEN_BYTES as usize + 1]).unwrap();
        assert!(matches!(source.read(), Err(TokenError::TooLarge { .. })));

        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(source.read(), Err(TokenError::Unreadable { .. })));
    }

    /// Publishes `token` the way the kubelet's atomic writer does.
    pub fn publish(dir: &Path, generation: &str, token: &str) {
        use std::os::unix::fs::symlink;
        std::fs::create_dir(dir.join(generation)).unwrap();
        std::fs::write(dir.join(generation).join("token"), token).unwrap();
        if std::fs::symlink_metadata(dir.join("token")).is_err() {
            symlink("..data/token", dir.join("token")).unwrap();
        }
        symlink(generation, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    }

    #[test]
    fn a_kubelet_volume_is_parsed_once_per_generation() {
        let dir = tempfile::tempdir().unwrap();
        let source = TokenFile::new(dir.path().join("token"));
        let first = jwt_with_claims(r#"{"exp":1795000000}"#);
        publish(dir.path(), "..gen1", &first);
        assert_eq!(source.read().unwrap().jwt, first);

        // The kubelet never edits a published generation; doing it here
        // shows whether the cached token is served.
        std::fs::write(dir.path().join("..gen1/token"), "edited in place").unwrap();
        assert_eq!(source.clone().read().unwrap().jwt, first, "same generation: served from the cache");

        let second = jwt_with_claims(r#"{"exp":1795003600}"#);
        publish(dir.path(), "..gen2", &second);
        std::fs::remove_dir_all(dir.path().join("..gen1")).unwrap();
        assert_eq!(source.read().unwrap().jwt, second, "rotation is seen on the next read");

        // A broken new generation is reported, not hidden behind the cache.
        publish(dir.path(), "..gen3", "not a jwt");
        assert!(
            matches!(source.read(), Err(TokenError::NotAJwt { path, .. }) if path == dir.path().join("token"))
        );
        std::fs::remove_dir_all(dir.path().join("..gen3")).unwrap();
        assert!(matches!(source.read(), Err(TokenError::Missing(_))));
    }

    #[test]
    fn watched_the_cache_is_trusted_until_its_token_expires() {
        let dir = tempfile::tempdir().unwrap();
        let source = TokenFile::new(dir.path().join("token"));
        let first = jwt_with_claims(r#"{"exp":1795000000}"#);
        publish(dir.path(), "..gen1", &first);
        // What token_watch does after an event (no watch runs here, so a
        // rotation goes unnoticed: that is what trusting the cache means).
        source.reload_watched();
        assert!(source.is_watched());
        let second = jwt_with_claims(r#"{"exp":1795003600}"#);
        publish(dir.path(), "..gen2", &second);
        let before_expiry = UNIX_EPOCH + Duration::from_secs(1795000000);
        let served = source.prepared(before_expiry).unwrap();
        assert_eq!(served.token.jwt, first, "served from memory, the links unread");
        let body: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
        assert_eq!(body, serde_json::json!({"token": first, "expirationTimestamp": "2026-11-18T11:06:40Z"}));

        // Expired beyond the skew: never served from memory, the volume is
        // looked at again and the new generation found.
        let expired = before_expiry + EXPIRY_SKEW + Duration::from_secs(1);
        assert_eq!(source.prepared(expired).unwrap().token.jwt, second);
        source.reload_watched();
        assert_eq!(source.prepared(before_expiry).unwrap().token.jwt, second);

        // A reload that finds no kubelet generation stops the trust.
        std::fs::remove_file(dir.path().join("token")).unwrap();
        source.reload_watched();
        assert!(!source.is_watched());
        assert!(matches!(source.prepared(before_expiry), Err(TokenError::Missing(_))));
        source.unwatch();
        assert!(!source.is_watched());
    }

    #[test]
    fn the_cached_jwt_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = jwt_with_claims(r#"{"exp":1795000000}"#);
        publish(dir.path(), "..gen1", &jwt);
        let source = TokenFile::new(dir.path().join("token"));
        source.read().unwrap();
        let debug = format!("{source:?}");
        assert!(debug.contains("..gen1") && !debug.contains(&jwt), "{debug}");
    }

    #[test]
    fn links_other_than_the_kubelets_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let first = jwt_with_claims(r#"{"exp":1795000000}"#);
        publish(dir.path(), "..gen1", &first);
        // `token` pointing elsewhere than `..data/token`.
        std::fs::write(dir.path().join("real"), &first).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("other")).unwrap();
        let source = TokenFile::new(dir.path().join("other"));
        assert_eq!(source.read().unwrap().jwt, first);
        let second = jwt_with_claims(r#"{"exp":1795003600}"#);
        std::fs::write(dir.path().join("real"), &second).unwrap();
        assert_eq!(source.read().unwrap().jwt, second);
    }
}
