//! Where the agent pins each pod's programs, maps and links in bpffs, so
//! that they outlive the agent process: a restarted or upgraded agent finds
//! them and carries on, and a guest never notices.
//!
//! ```text
//! <bpffs>/<pod uid>/gen-<ifindex of imds-redirect>/
//!     prog_imds_from_guest  prog_imds_to_guest  prog_imds_guard
//!     prog_imds_to_uplink   prog_imds_from_pod
//!     map_IMDS_COUNTERS  map_IMDS_FLOWS
//!     link_<program>_<ifindex>          one per attachment (TCX)
//! ```
//!
//! The programs have the veth's ifindex and MAC baked in at load time, so a
//! pod whose veth was recreated gets a new generation and the old one goes.
//! bpffs holds nothing but BPF objects and directories: all the state is in
//! the names.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use crate::cgroup::is_pod_uid;

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails unless `dir` is on a bpffs (pins anywhere else vanish with the
/// agent's mount namespace, or cannot be made at all).
pub fn check_bpffs(dir: &Path) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills the zeroed struct for a NUL-terminated path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(io::Error::other(format!(
            "{} is not a bpffs (mount one there: mount -t bpf bpf {})",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// The pins of every pod under `root`.
#[derive(Debug, Clone)]
pub struct PinRoot(PathBuf);

impl PinRoot {
    pub fn new(root: PathBuf) -> Self {
        Self(root)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The pods that have pins.
    pub fn pods(&self) -> io::Result<Vec<String>> {
        let mut uids = Vec::new();
        match std::fs::read_dir(&self.0) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry?.file_name();
                    if let Some(name) = name.to_str().filter(|n| is_pod_uid(n)) {
                        uids.push(name.to_owned());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        uids.sort();
        Ok(uids)
    }

    pub fn pod(&self, uid: &str) -> PodPins {
        PodPins(self.0.join(uid))
    }
}

/// One pod's directory.
#[derive(Debug, Clone)]
pub struct PodPins(PathBuf);

impl PodPins {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn generation(&self, redirect_ifindex: u32) -> Generation {
        Generation(self.0.join(format!("gen-{redirect_ifindex}")))
    }

    /// Generations present, by their ifindex.
    pub fn generations(&self) -> io::Result<Vec<u32>> {
        let mut found = Vec::new();
        match std::fs::read_dir(&self.0) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry?.file_name();
                    if let Some(n) =
                        name.to_str().and_then(|n| n.strip_prefix("gen-")).and_then(|n| n.parse().ok())
                    {
                        found.push(n);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        found.sort();
        Ok(found)
    }

    /// Removes every pin of the pod: links detach, programs and maps are
    /// freed (unless something else still holds them).
    pub fn remove(&self) -> io::Result<()> {
        remove_tree(&self.0)
    }
}

/// One generation of a pod's pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(PathBuf);

impl Generation {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.0.join(format!("prog_{name}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(format!("map_{name}"))
    }

    pub fn link(&self, program: &str, ifindex: u32) -> PathBuf {
        self.0.join(format!("link_{program}_{ifindex}"))
    }

    /// The pinned links, as `(program, ifindex)`.
    pub fn links(&self) -> io::Result<Vec<(String, u32)>> {
        let mut links = Vec::new();
        match std::fs::read_dir(&self.0) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry?.file_name();
                    if let Some(link) = name.to_str().and_then(parse_link_name) {
                        links.push(link);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        links.sort();
        Ok(links)
    }

    pub fn exists(&self) -> bool {
        self.0.is_dir()
    }

    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.0)
    }

    pub fn remove(&self) -> io::Result<()> {
        remove_tree(&self.0)
    }
}

/// `link_<program>_<ifindex>` → `(program, ifindex)`.
fn parse_link_name(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix("link_")?;
    let (program, ifindex) = rest.rsplit_once('_')?;
    let ifindex = ifindex.parse().ok()?;
    (!program.is_empty()).then(|| (program.to_owned(), ifindex))
}

/// `rm -r`, for bpffs (unlinking a pin drops the kernel object's reference).
fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        let g = Generation(PathBuf::from("/x/gen-7"));
        let path = g.link("imds_from_guest", 12);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_link_name(name), Some(("imds_from_guest".into(), 12)));
        for bad in ["link_", "link__3", "link_x_", "link_x_-1", "prog_x", "link_x_99999999999"] {
            assert_eq!(parse_link_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_layout_on_an_ordinary_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_bpffs(dir.path()).unwrap_err().to_string().contains("not a bpffs"));
        let root = PinRoot::new(dir.path().to_owned());
        assert_eq!(root.pods().unwrap(), Vec::<String>::new());
        let uid = "0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f";
        let pod = root.pod(uid);
        let generation = pod.generation(9);
        generation.create().unwrap();
        std::fs::write(generation.link("imds_to_guest", 9), "").unwrap();
        std::fs::create_dir(dir.path().join("not-a-uid")).unwrap();
        assert_eq!(root.pods().unwrap(), vec![uid.to_owned()]);
        assert_eq!(pod.generations().unwrap(), vec![9]);
        assert_eq!(generation.links().unwrap(), vec![("imds_to_guest".into(), 9)]);
        pod.remove().unwrap();
        pod.remove().unwrap();
        assert_eq!(root.pods().unwrap(), Vec::<String>::new());
    }
}
