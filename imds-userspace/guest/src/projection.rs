//! A token directory kept the way the kubelet keeps a projected volume
//! (its `AtomicWriter`, `pkg/volume/util/atomic_writer.go`):
//!
//! ```text
//! dir/..2026_11_24_03_40_00.ab12cd/token     the files of one version
//! dir/..data -> ..2026_11_24_03_40_00.ab12cd one link, swapped by rename
//! dir/token -> ..data/token                  what readers open
//! ```
//!
//! A reader opening `dir/token` sees the previous version or the new one,
//! whole, never a partly written file and never nothing: the new version is
//! complete and synced before the single `rename` that publishes it, and
//! the previous version's directory is removed only after that.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    time::SystemTime,
};

pub const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// Numeric owner and group for the files (`None`: leave as created).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ownership {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// One file of a version. The content is a credential: never logged.
pub struct Payload<'a> {
    pub name: &'a str,
    pub content: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct WriteError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn at<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> WriteError + 'p {
    move |source| WriteError { action, path: path.to_owned(), source }
}

/// Publishes `files` as the new version of `dir`, each with `mode` and
/// `owner`. `now` names the version's directory.
pub fn publish(
    dir: &Path,
    files: &[Payload<'_>],
    mode: u32,
    owner: Ownership,
    now: SystemTime,
) -> Result<(), WriteError> {
    fs::create_dir_all(dir).map_err(at("creating", dir))?;
    let version = new_version_dir(dir, now)?;
    let version_name = version.file_name().map(PathBuf::from).unwrap_or_default();
    for file in files {
        let path = version.join(file.name);
        write_synced(&path, file.content, mode).map_err(at("writing", &path))?;
        chown(&path, owner)?;
    }
    // The version directory stays root's, mode 0755 (as the kubelet's):
    // readers reach the files, and only the writer can remove them.
    File::open(&version).and_then(|d| d.sync_all()).map_err(at("syncing", &version))?;

    let tmp = dir.join(DATA_LINK_TMP);
    let _ = fs::remove_file(&tmp); // left by a writer killed mid-swap
    symlink(&version_name, &tmp).map_err(at("linking", &tmp))?;
    fs::rename(&tmp, dir.join(DATA_LINK)).map_err(at("publishing", dir))?;

    for file in files {
        link_visible(dir, file.name)?;
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(at("syncing", dir))?;
    remove_stale(dir, &version_name, files);
    Ok(())
}

/// `..YYYY_MM_DD_HH_MM_SS.<random>`, created fresh (mode 0755).
fn new_version_dir(dir: &Path, now: SystemTime) -> Result<PathBuf, WriteError> {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .trim_end_matches('Z')
        .chars()
        .map(|c| if c.is_ascii_digit() { c } else { '_' })
        .collect();
    loop {
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric).take(6).collect();
        let path = dir.join(format!("..{stamp}.{suffix}"));
        match fs::create_dir(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(at("creating", &path))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(at("creating", &path)(e)),
        }
    }
}

fn write_synced(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    // The umask may have narrowed `mode` at creation.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(content)?;
    f.sync_all()
}

fn chown(path: &Path, owner: Ownership) -> Result<(), WriteError> {
    if owner == Ownership::default() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, owner.uid, owner.gid).map_err(at("changing the owner of", path))
}

/// `dir/name -> ..data/name`, replacing whatever was there by rename (an
/// older plain file, say) so the name never goes missing.
fn link_visible(dir: &Path, name: &str) -> Result<(), WriteError> {
    let visible = dir.join(name);
    let target = Path::new(DATA_LINK).join(name);
    if fs::read_link(&visible).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = dir.join(format!("..{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    symlink(&target, &tmp).map_err(at("linking", &tmp))?;
    fs::rename(&tmp, &visible).map_err(at("linking", &visible))
}

/// Older versions, leftovers of a writer killed mid-swap, and links of ours
/// to files this version no longer has. Best effort: a leftover costs a few
/// bytes, never a reader's token.
fn remove_stale(dir: &Path, current: &Path, files: &[Payload<'_>]) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let stale = if name.starts_with("..") {
            name != DATA_LINK && Path::new(name) != current
        } else {
            !files.iter().any(|f| f.name == name)
                && fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA_LINK))
        };
        if !stale {
            continue;
        }
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a stale entry of a token directory");
        }
    }
}

/// What `dir/name` holds now, if anything (for tests and `--once` checks).
pub fn read_visible(dir: &Path, name: &str) -> io::Result<Vec<u8>> {
    fs::read(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn versions(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("..") && n != DATA_LINK)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_layout_is_the_kubelets() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sa");
        let files =
            [Payload { name: "token", content: b"t1" }, Payload { name: "namespace", content: b"vms" }];
        publish(&dir, &files, 0o640, Ownership::default(), t(1_795_000_000)).unwrap();
        let v = versions(&dir);
        assert_eq!(v.len(), 1);
        assert!(v[0].starts_with("..2026_11_18_"), "{v:?}");
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), Path::new(&v[0]));
        assert_eq!(fs::read_link(dir.join("token")).unwrap(), Path::new("..data/token"));
        assert_eq!(read_visible(&dir, "token").unwrap(), b"t1");
        assert_eq!(read_visible(&dir, "namespace").unwrap(), b"vms");
        let mode = fs::metadata(dir.join("token")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(!dir.join("..data_tmp").exists());
    }

    #[test]
    fn a_new_version_replaces_the_old_one_and_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        publish(dir, &[Payload { name: "token", content: b"first" }], 0o644, Ownership::default(), t(1))
            .unwrap();
        let first = versions(dir);
        publish(dir, &[Payload { name: "token", content: b"second" }], 0o644, Ownership::default(), t(2))
            .unwrap();
        let second = versions(dir);
        assert_eq!(second.len(), 1, "{second:?}");
        assert_ne!(first, second);
        assert_eq!(read_visible(dir, "token").unwrap(), b"second");
    }

    #[test]
    fn a_plain_file_from_a_shell_recipe_is_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("token"), b"from-the-recipe").unwrap();
        fs::write(dir.join("notes.txt"), b"the user's").unwrap();
        publish(dir, &[Payload { name: "token", content: b"ours" }], 0o644, Ownership::default(), t(1))
            .unwrap();
        assert_eq!(read_visible(dir, "token").unwrap(), b"ours");
        assert_eq!(fs::read(dir.join("notes.txt")).unwrap(), b"the user's", "files not ours are left alone");
    }

    #[test]
    fn a_file_no_longer_published_loses_its_link_but_others_keep_theirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let both = [Payload { name: "token", content: b"t" }, Payload { name: "ca.crt", content: b"pem" }];
        publish(dir, &both, 0o644, Ownership::default(), t(1)).unwrap();
        publish(dir, &both[..1], 0o644, Ownership::default(), t(2)).unwrap();
        assert!(fs::symlink_metadata(dir.join("ca.crt")).is_err());
        assert_eq!(read_visible(dir, "token").unwrap(), b"t");
    }

    #[test]
    fn leftovers_of_a_killed_writer_are_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir(dir.join("..2020_01_01_00_00_00.dead00")).unwrap();
        symlink("..2020_01_01_00_00_00.dead00", dir.join("..data_tmp")).unwrap();
        symlink("..data/token", dir.join("..token.tmp")).unwrap();
        publish(dir, &[Payload { name: "token", content: b"t" }], 0o644, Ownership::default(), t(1)).unwrap();
        assert_eq!(versions(dir).len(), 1);
        assert!(fs::symlink_metadata(dir.join("..data_tmp")).is_err());
        assert!(fs::symlink_metadata(dir.join("..token.tmp")).is_err());
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        fs::write(&blocker, b"").unwrap();
        let e = publish(
            &blocker.join("sa"),
            &[Payload { name: "token", content: b"t" }],
            0o644,
            Ownership::default(),
            t(1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("creating") && e.contains("file/sa"), "{e}");
    }

    /// Readers racing a writer always get a whole token.
    #[test]
    fn a_looping_reader_never_sees_a_torn_or_missing_token() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let tokens: Vec<Vec<u8>> = (0..200u8).map(|i| vec![b'a' + i % 26; 4096]).collect();
        publish(&dir, &[Payload { name: "token", content: &tokens[0] }], 0o644, Ownership::default(), t(0))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (dir, stop, tokens) = (dir.clone(), stop.clone(), tokens.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = read_visible(&dir, "token").expect("token missing");
                    assert!(tokens.contains(&got), "torn read of {} bytes", got.len());
                    reads += 1;
                }
                reads
            })
        };
        for (i, token) in tokens.iter().enumerate().skip(1) {
            publish(
                &dir,
                &[Payload { name: "token", content: token }],
                0o644,
                Ownership::default(),
                t(i as u64),
            )
            .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}
