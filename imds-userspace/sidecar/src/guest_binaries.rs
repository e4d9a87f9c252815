//! The guest helper's builds this sidecar serves (`imds_api::GUEST_BINARIES`,
//! found by exact name in one directory of the image), each with its size
//! and SHA-256 computed once at start. Only those few facts are kept: the
//! files themselves (~1.3 MiB each) are streamed from disk per download,
//! never held in memory.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

/// One servable build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBinary {
    pub name: &'static str,
    pub path: PathBuf,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, Default)]
pub struct GuestBinaries {
    pub served: Vec<GuestBinary>,
}

impl GuestBinaries {
    /// Looks for each build in `dir`. A missing directory or file is not an
    /// error (an image may carry none); an unreadable one is logged and
    /// left out.
    pub fn scan(dir: &Path) -> Self {
        let mut served = Vec::new();
        for binary in imds_api::GUEST_BINARIES {
            let path = dir.join(binary.name);
            match digest(&path) {
                Ok(Some((size, sha256))) => {
                    served.push(GuestBinary { name: binary.name, path, size, sha256 })
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    path = %path.display(), error = %e,
                    "the guest helper's build cannot be read: it is not served"
                ),
            }
        }
        let names: Vec<&str> = served.iter().map(|b| b.name).collect();
        tracing::info!(dir = %dir.display(), served = ?names, "guest helper builds");
        Self { served }
    }

    pub fn find(&self, name: &str) -> Option<&GuestBinary> {
        self.served.iter().find(|b| b.name == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.served.iter().map(|b| b.name).collect()
    }
}

/// Size and SHA-256 of the regular file at `path`; `None` when absent.
fn digest(path: &Path) -> std::io::Result<Option<(u64, String)>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 16 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some((size, sha256)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_of_the_files_and_missing_ones_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(imds_api::GUEST_BINARIES[0].name), b"abc").unwrap();
        let found = GuestBinaries::scan(dir.path());
        assert_eq!(found.names(), [imds_api::GUEST_BINARIES[0].name]);
        let b = &found.served[0];
        assert_eq!(b.size, 3);
        // FIPS 180-2's example: SHA-256("abc").
        assert_eq!(b.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_missing_directory_serves_nothing_and_a_directory_in_place_of_a_file_is_skipped() {
        assert!(GuestBinaries::scan(Path::new("/nonexistent/guest")).served.is_empty());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(imds_api::GUEST_BINARIES[1].name)).unwrap();
        assert!(GuestBinaries::scan(dir.path()).served.is_empty());
    }

    #[test]
    fn a_large_file_is_hashed_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join(imds_api::GUEST_BINARIES[0].name), &content).unwrap();
        let found = GuestBinaries::scan(dir.path());
        let whole: String = Sha256::digest(&content).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((found.served[0].size, found.served[0].sha256.as_str()), (100_000, whole.as_str()));
    }
}
