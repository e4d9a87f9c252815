//! Unix socket paths longer than a socket address holds.
//!
//! A `sockaddr_un` holds 108 bytes; the kubelet keeps a pod's emptyDir at
//! `<kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>/`,
//! which with the socket's name is often longer (KubeVirt's virt-handler
//! mounts the kubelet's pods at `/pods` for the same reason). Any such path
//! is reachable as `/proc/self/fd/<directory>/<name>` while the directory is
//! open.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// A short name for `path`, valid while the returned guard lives.
pub fn shorten(path: &Path) -> io::Result<(File, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a socket path", path.display()),
        ));
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    Ok((dir, short))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_bind_and_connect() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar.sock");
        assert!(std::os::unix::net::UnixListener::bind(&path).is_err(), "the path should be too long");
        let (_guard, short) = shorten(&path).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
        let (_guard, short) = shorten(&path).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&short).unwrap();
        assert!(listener.accept().is_ok());
        assert!(path.exists(), "bound at the long path itself");
    }
}
