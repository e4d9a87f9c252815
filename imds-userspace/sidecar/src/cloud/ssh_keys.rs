//! SSH public keys from the VM's `accessCredentials`: the Secret volumes
//! the webhook mounted (one per credential, in the VMI's order), read anew
//! on every request as KubeVirt's own cloud-init disk reads them
//! (`pkg/cloud-init/cloud-init.go`, `resolveSSHPublicKeys`: every file of
//! the Secret's volume but the kubelet's `..` entries, empty ones skipped).
//!
//! Unlike KubeVirt we keep only lines that look like OpenSSH public keys:
//! a Secret mounted here by mistake (a `userPassword` one) then serves
//! nothing to the guest, whose unprivileged users can all read metadata.

use std::{
    collections::BTreeSet,
    io::{self, Read},
    path::{Path, PathBuf},
};

use super::{
    PublicKey,
    data::{DataError, MAX_BYTES},
};

/// Where the keys are: one directory per `sshPublicKey` Secret.
#[derive(Debug, Clone, Default)]
pub struct SshKeySources {
    pub dirs: Vec<PathBuf>,
}

impl SshKeySources {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Every key of every Secret, named uniquely (see [`name_keys`]). A
    /// directory that cannot be read is an error: serving metadata without
    /// the keys would let cloud-init finish first boot without them.
    pub async fn load(&self) -> Result<Vec<PublicKey>, DataError> {
        let dirs = self.dirs.clone();
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            for dir in &dirs {
                files.extend(read_secret_dir(dir)?);
            }
            Ok(name_keys(&files))
        })
        .await
        .unwrap_or_else(|join| Err(DataError::Read(PathBuf::new(), io::Error::other(join))))
    }
}

/// `(file name, contents)` of one Secret volume, sorted by name. At most
/// [`MAX_BYTES`] in all, a Secret's own limit.
fn read_secret_dir(dir: &Path) -> Result<Vec<(String, String)>, DataError> {
    let read_err = |e| DataError::Read(dir.to_owned(), e);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        // `..data` and the timestamped directory it points at.
        if !name.starts_with("..") {
            names.push(name);
        }
    }
    names.sort();
    let mut budget = MAX_BYTES;
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(&name);
        // The entries are symlinks into `..data`: follow them.
        let meta = std::fs::metadata(&path).map_err(|e| DataError::Read(path.clone(), e))?;
        if !meta.is_file() {
            continue;
        }
        let file = std::fs::File::open(&path).map_err(|e| DataError::Read(path.clone(), e))?;
        let mut bytes = Vec::new();
        file.take(budget + 1).read_to_end(&mut bytes).map_err(|e| DataError::Read(path.clone(), e))?;
        if bytes.len() as u64 > budget {
            return Err(DataError::TooLarge(path));
        }
        budget -= bytes.len() as u64;
        files.push((name, String::from_utf8_lossy(&bytes).into_owned()));
    }
    Ok(files)
}

/// The keys of `files` (`(Secret key, contents)`), one per line that looks
/// like an OpenSSH public key, each key once. Named after the Secret's key
/// (`laptop`, then `laptop-2` for its second line), made unique: EC2 lists
/// `N=name`, OpenStack's `public_keys` is a map by name. Secret keys are
/// `[-._a-zA-Z0-9]+`, so a name never holds `=` or a newline.
pub fn name_keys(files: &[(String, String)]) -> Vec<PublicKey> {
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut keys = Vec::new();
    for (file, contents) in files {
        let base = if is_secret_key(file) { file.as_str() } else { "key" };
        for (i, line) in contents.lines().map(str::trim).filter(|l| is_public_key(l)).enumerate() {
            if !seen.insert(line.to_owned()) {
                continue;
            }
            let wanted = if i == 0 { base.to_owned() } else { format!("{base}-{}", i + 1) };
            let name = unique(&names, wanted);
            names.insert(name.clone());
            keys.push(PublicKey { name, openssh_key: line.to_owned() });
        }
    }
    keys
}

fn unique(taken: &BTreeSet<String>, wanted: String) -> String {
    if !taken.contains(&wanted) {
        return wanted;
    }
    (2..).map(|n| format!("{wanted}-{n}")).find(|n| !taken.contains(n)).unwrap_or(wanted)
}

/// What the API server allows as a Secret's key.
fn is_secret_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An `authorized_keys` line (options allowed before the key) holding a key
/// type OpenSSH knows followed by its base64 blob: not a comment, not a
/// password, no control characters.
pub fn is_public_key(line: &str) -> bool {
    const MAX_LINE: usize = 16 * 1024;
    if line.is_empty() || line.starts_with('#') || line.len() > MAX_LINE {
        return false;
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return false;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|pair| is_key_type(pair[0]) && is_blob(pair[1]))
}

fn is_key_type(word: &str) -> bool {
    let base = word.strip_suffix("-cert-v01@openssh.com").unwrap_or(word);
    matches!(
        base,
        "ssh-rsa"
            | "ssh-dss"
            | "ssh-ed25519"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
            | "sk-ssh-ed25519@openssh.com"
            | "sk-ecdsa-sha2-nistp256@openssh.com"
    )
}

/// The base64 of a key: long enough to be one, only base64 characters.
fn is_blob(word: &str) -> bool {
    word.len() >= 16 && word.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmZ9gS0Lq0Q1pZ2sWb4yT1o2z3XkS2u8dFy0R2VvY6P alice@laptop";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bob";

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn only_key_lines_are_served() {
        for good in [
            ED,
            RSA,
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=",
            "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t",
            "from=\"10.0.0.0/8\",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA x",
            "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQ=",
        ] {
            assert!(is_public_key(good), "{good}");
        }
        for bad in [
            "",
            "# ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
            "hunter2",
            "ssh-ed25519",
            "ssh-ed25519 short",
            "ssh-foo AAAAC3NzaC1lZDI1NTE5AAAA",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\u{1b}[2J",
            "ssh-ed25519 AAAAC3Nza!C1lZDI1NTE5AAAA",
        ] {
            assert!(!is_public_key(bad), "{bad:?}");
        }
        assert!(!is_public_key(&format!("ssh-rsa {}", "A".repeat(20_000))));
    }

    #[test]
    fn keys_are_named_after_the_secret_s_keys_and_made_unique() {
        let keys = name_keys(&files(&[
            ("laptop", &format!("{ED}\n\n# old one\n{RSA}\r\n")),
            ("laptop-2", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAother"),
            // The same key again, in another Secret: served once.
            ("ci", ED),
            ("password", "hunter2"),
        ]));
        let names: Vec<(&str, &str)> =
            keys.iter().map(|k| (k.name.as_str(), k.openssh_key.as_str())).collect();
        assert_eq!(
            names,
            [("laptop", ED), ("laptop-2", RSA), ("laptop-2-2", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAother"),]
        );
        // A file name that is no Secret key cannot reach EC2's `N=name`.
        assert_eq!(name_keys(&files(&[("a=b\nc", ED)]))[0].name, "key");
    }

    #[tokio::test]
    async fn reads_kubelet_secret_volumes_and_fails_on_a_missing_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        let data = dir.join("..2026_11_23_10_00_00.000000001");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("key"), format!("{ED}\n")).unwrap();
        std::fs::write(data.join("empty"), "").unwrap();
        std::os::unix::fs::symlink(data.file_name().unwrap(), dir.join("..data")).unwrap();
        for name in ["key", "empty"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        let sources = SshKeySources { dirs: vec![dir.clone()] };
        let keys = sources.load().await.unwrap();
        assert_eq!(keys, [PublicKey { name: "key".into(), openssh_key: ED.into() }]);

        let missing = SshKeySources { dirs: vec![dir, root.path().join("1")] };
        assert!(matches!(missing.load().await, Err(DataError::Read(..))));

        let big = root.path().join("big");
        std::fs::create_dir(&big).unwrap();
        std::fs::write(big.join("a"), vec![b'x'; MAX_BYTES as usize / 2 + 1]).unwrap();
        std::fs::write(big.join("b"), vec![b'x'; MAX_BYTES as usize / 2 + 1]).unwrap();
        let too_large = SshKeySources { dirs: vec![big] };
        assert!(matches!(too_large.load().await, Err(DataError::TooLarge(_))));
    }
}
