//! Whether an interface exists in this pod, and its index, from sysfs: the
//! container's `/sys` belongs to the pod's network namespace, and a read
//! there costs a few microseconds and links no netlink code.

use std::{
    io,
    path::{Path, PathBuf},
};

/// Where the kernel lists the network namespace's interfaces.
pub const SYSFS_NET: &str = "/sys/class/net";

/// Reads `<sysfs_net>/<name>/ifindex`.
#[derive(Debug, Clone)]
pub struct InterfaceIndex {
    file: PathBuf,
}

impl InterfaceIndex {
    pub fn new(sysfs_net: &Path, name: &str) -> Self {
        Self { file: sysfs_net.join(name).join("ifindex") }
    }

    /// `Ok(None)` while the interface does not exist.
    pub fn read(&self) -> io::Result<Option<u32>> {
        match std::fs::read_to_string(&self.file) {
            Ok(text) => parse_ifindex(&text).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} holds {text:?}, not an interface index", self.file.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The file's content: a positive decimal number and a newline.
fn parse_ifindex(text: &str) -> Option<u32> {
    text.trim_ascii_end().parse().ok().filter(|&i| i > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_kernel_writes_and_nothing_else() {
        assert_eq!(parse_ifindex("17\n"), Some(17));
        assert_eq!(parse_ifindex("1"), Some(1));
        for bad in ["", "\n", "0\n", "-1\n", " 3\n", "3x\n", "99999999999\n"] {
            assert_eq!(parse_ifindex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_a_sysfs_like_tree() {
        let dir = tempfile::tempdir().unwrap();
        let index = InterfaceIndex::new(dir.path(), "imds-sidecar");
        assert_eq!(index.read().unwrap(), None);
        std::fs::create_dir(dir.path().join("imds-sidecar")).unwrap();
        assert_eq!(index.read().unwrap(), None, "directory without ifindex yet");
        std::fs::write(dir.path().join("imds-sidecar/ifindex"), "42\n").unwrap();
        assert_eq!(index.read().unwrap(), Some(42));
        std::fs::write(dir.path().join("imds-sidecar/ifindex"), "junk\n").unwrap();
        assert_eq!(index.read().unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn reads_the_real_loopback() {
        let lo = InterfaceIndex::new(Path::new(SYSFS_NET), "lo").read().unwrap();
        assert_eq!(lo, Some(1));
    }
}
