//! Noticing token rotation without a system call per request: inotify on
//! the projected volume's directory. The kubelet rotates by renaming its
//! `..data` link over the old one (see [`crate::token`]); that rename is an
//! event here, and each event reloads every token file, so requests are
//! served the new generation from memory once this task has run.
//!
//! Staleness: the task runs on the server's one thread, so a request that
//! the runtime polls before it (in the same turn of the event loop) can
//! still get the previous generation: microseconds to a few milliseconds
//! after the rename (measured by `cargo xtask bench --only token`). The
//! kubelet rotates at 80 % of a token's lifetime, so the previous one stays
//! valid for hours; an expired one is never served from memory
//! ([`TokenFile::prepared`]).
//!
//! Whenever the watch cannot vouch for the cache (no inotify instance
//! left for this user, the directory gone, a read error), the files are
//! unwatched and every request checks the links again, as before.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, StreamExt as _, WatchMask};
use tokio::task::JoinHandle;

use crate::token::{TokenFile, TokenSet};

/// What in the volume's directory can mean a new generation: the atomic
/// writer's rename of `..data` (MOVED_TO), and whatever else replaces a
/// file there. DELETE_SELF and MOVE_SELF end the watch.
fn mask() -> WatchMask {
    WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// Event buffer: the kernel queues every event for us; each carries at most
/// a file name (255 bytes) after a 16-byte header.
const EVENT_BUFFER: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("creating an inotify instance (fs.inotify.max_user_instances reached?)")]
    Init(#[source] io::Error),
    #[error("watching {dir}")]
    Add { dir: PathBuf, source: io::Error },
}

/// The running watch. Dropping it stops the watch and unwatches the files,
/// so requests go back to checking the links.
#[derive(Debug)]
pub struct TokenWatch {
    task: JoinHandle<()>,
    files: Vec<TokenFile>,
}

impl Drop for TokenWatch {
    fn drop(&mut self) {
        self.task.abort();
        unwatch(&self.files);
    }
}

/// Watches the directories of `tokens`' files and loads every file once.
/// Must be called inside a tokio runtime.
pub fn start(tokens: &TokenSet) -> Result<TokenWatch, WatchError> {
    let files: Vec<TokenFile> = tokens.files().cloned().collect();
    let dirs: BTreeSet<&Path> = files.iter().filter_map(|f| f.path().parent()).collect();
    let inotify = Inotify::init().map_err(WatchError::Init)?;
    for dir in dirs {
        inotify.watches().add(dir, mask()).map_err(|source| WatchError::Add { dir: dir.into(), source })?;
    }
    let mut events = inotify.into_event_stream(vec![0u8; EVENT_BUFFER]).map_err(WatchError::Init)?;
    // After the watches exist: a rotation from here on is an event.
    reload(&files);
    let task = tokio::spawn({
        let files = files.clone();
        async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) if ends_watch(event.mask) => {
                        tracing::warn!(
                            event = ?event.mask,
                            "the token volume's directory went away: checking it on every request from now on"
                        );
                        break;
                    }
                    // Any other event, including a queue overflow (events lost).
                    Ok(_) => reload(&files),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading inotify events failed: checking the token volume on every request from now on");
                        break;
                    }
                }
            }
            unwatch(&files);
        }
    });
    Ok(TokenWatch { task, files })
}

/// [`start`], or a warning that says what it costs when it cannot.
pub fn start_or_warn(tokens: &TokenSet) -> Option<TokenWatch> {
    start(tokens)
        .inspect_err(|e| {
            tracing::warn!(
                error = %crate::errors::chain(e),
                "cannot watch the token volume: every token request checks it instead (a few µs more each)"
            );
        })
        .ok()
}

/// Events after which the directory is no longer watched.
fn ends_watch(mask: EventMask) -> bool {
    mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT)
}

fn reload(files: &[TokenFile]) {
    for file in files {
        file.reload_watched();
    }
}

fn unwatch(files: &[TokenFile]) {
    for file in files {
        file.unwatch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::{jwt_with_claims, publish};
    use std::{
        sync::Arc,
        time::{Duration, SystemTime},
    };

    fn far_future(nonce: &str) -> String {
        jwt_with_claims(&format!(r#"{{"exp":4102444800,"jti":"{nonce}"}}"#))
    }

    /// Polls `done` every 5 ms for up to a second.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Whether `file` comes to serve `jwt` from a watched cache.
    async fn served(file: &TokenFile, jwt: &str) -> bool {
        eventually(|| file.is_watched() && file.prepared(SystemTime::now()).is_ok_and(|p| p.token.jwt == jwt))
            .await
    }

    #[tokio::test]
    async fn a_rotation_is_served_from_memory_after_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let first = far_future("one");
        publish(dir.path(), "..gen1", &first);
        let tokens = TokenSet::new(dir.path(), true, &[]);
        let file = tokens.default_token().unwrap().clone();
        let _watch = start(&tokens).unwrap();
        assert!(file.is_watched(), "loaded and watched at start");
        let a = file.prepared(SystemTime::now()).unwrap();
        let b = file.prepared(SystemTime::now()).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same prepared body, not rebuilt per request");
        assert_eq!(a.token.jwt, first);

        let second = far_future("two");
        publish(dir.path(), "..gen2", &second);
        std::fs::remove_dir_all(dir.path().join("..gen1")).unwrap();
        assert!(served(&file, &second).await, "the rename was noticed");
    }

    #[tokio::test]
    async fn a_volume_that_fills_later_becomes_watched() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = TokenSet::new(dir.path(), true, &[]);
        let file = tokens.default_token().unwrap().clone();
        let _watch = start(&tokens).unwrap();
        assert!(!file.is_watched(), "nothing to vouch for yet");
        let jwt = far_future("late");
        publish(dir.path(), "..gen1", &jwt);
        assert!(served(&file, &jwt).await);
    }

    #[tokio::test]
    async fn a_plain_file_is_never_trusted_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, far_future("plain")).unwrap();
        let tokens = TokenSet::new(dir.path(), true, &[]);
        let file = tokens.default_token().unwrap().clone();
        let _watch = start(&tokens).unwrap();
        assert!(!file.is_watched());
        let edited = far_future("edited");
        std::fs::write(&path, &edited).unwrap();
        assert_eq!(file.prepared(SystemTime::now()).unwrap().token.jwt, edited, "read on every request");
    }

    #[tokio::test]
    async fn a_layout_broken_behind_the_watch_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        publish(dir.path(), "..gen1", &far_future("one"));
        let tokens = TokenSet::new(dir.path(), true, &[]);
        let file = tokens.default_token().unwrap().clone();
        let _watch = start(&tokens).unwrap();
        assert!(file.is_watched());
        // Someone replaces the kubelet's link with a plain file.
        let plain = far_future("plain");
        std::fs::remove_file(dir.path().join("token")).unwrap();
        std::fs::write(dir.path().join("token"), &plain).unwrap();
        assert!(eventually(|| !file.is_watched()).await, "the change was noticed");
        assert_eq!(file.prepared(SystemTime::now()).unwrap().token.jwt, plain);
    }

    /// A new kubelet-style volume at `dir`, watched: its default token file.
    fn watched_volume(dir: &Path) -> (TokenFile, TokenWatch) {
        std::fs::create_dir(dir).unwrap();
        publish(dir, "..gen1", &far_future("one"));
        let tokens = TokenSet::new(dir, true, &[]);
        let watch = start(&tokens).unwrap();
        let file = tokens.default_token().unwrap().clone();
        assert!(file.is_watched());
        (file, watch)
    }

    #[tokio::test]
    async fn the_directory_going_away_ends_the_watch_and_dropping_it_unwatches() {
        let parent = tempfile::tempdir().unwrap();
        let (file, watch) = watched_volume(&parent.path().join("volume"));
        std::fs::rename(parent.path().join("volume"), parent.path().join("moved")).unwrap();
        assert!(eventually(|| !file.is_watched()).await, "MOVE_SELF ended the watch");
        drop(watch);

        let (file, watch) = watched_volume(&parent.path().join("again"));
        drop(watch);
        assert!(!file.is_watched(), "no watch, no trust");
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = TokenSet::new(&dir.path().join("absent"), true, &[]);
        let err = start(&tokens).unwrap_err();
        assert!(matches!(&err, WatchError::Add { dir: d, .. } if d.ends_with("absent")), "{err:?}");
    }
}
