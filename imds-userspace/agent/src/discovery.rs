//! Finding the opted-in pods of this node, and their network namespaces,
//! without the Kubernetes API.
//!
//! The webhook gives every opted-in virt-launcher pod an emptyDir
//! ([`contract::RUN_VOLUME`]) where the sidecar listens on a unix socket.
//! The kubelet keeps emptyDirs at
//! `<kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>`, so
//! the agent sees every such pod of its node by listing that directory —
//! the way KubeVirt's virt-handler finds virt-launcher's own socket
//! (`pkg/virt-handler/cmd-client/client.go`) — and finds the pod's network
//! namespace from the process at the other end of the socket
//! (`SO_PEERCRED`, as virt-handler's `isolation/detector.go` does), after
//! checking that the process sits in that pod's cgroup ([`crate::cgroup`]).
//! The volume disappears when the kubelet tears the pod down: that is when
//! the agent lets go of the pod.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use imds_common::contract;
use tokio::net::UnixStream;

use crate::{cgroup, netns::Netns};

/// What the kubelet's directory says about one opted-in pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenPod {
    /// The sidecar's socket, when there is one (the sidecar may be starting,
    /// crashed or restarting: the volume outlives it).
    pub socket: Option<PathBuf>,
}

/// The opted-in pods of this node: pod UID → what is there.
pub fn scan(kubelet_root: &Path) -> io::Result<BTreeMap<String, SeenPod>> {
    let pods_dir = kubelet_root.join("pods");
    let mut seen = BTreeMap::new();
    let entries = match std::fs::read_dir(&pods_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(seen),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(uid) = name.to_str().filter(|n| cgroup::is_pod_uid(n)) else { continue };
        let volume = contract::kubelet_empty_dir(kubelet_root, uid, contract::RUN_VOLUME);
        if !volume.is_dir() {
            continue;
        }
        let socket = contract::kubelet_socket_path(kubelet_root, uid);
        let is_socket = socket.symlink_metadata().is_ok_and(|m| m.file_type().is_socket());
        seen.insert(uid.to_owned(), SeenPod { socket: is_socket.then_some(socket) });
    }
    Ok(seen)
}

/// Whether the pod's volume is still there (the kubelet removes it once the
/// pod's containers are gone).
pub fn still_there(kubelet_root: &Path, uid: &str) -> bool {
    contract::kubelet_empty_dir(kubelet_root, uid, contract::RUN_VOLUME).is_dir()
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("connecting to {0}")]
    Connect(PathBuf, #[source] io::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(PathBuf, Duration),
    #[error("reading the credentials of the process behind {0}")]
    PeerCred(PathBuf, #[source] io::Error),
    #[error("the process behind {0} has no pid in this PID namespace (is the agent running with hostPID?)")]
    NoPid(PathBuf),
    #[error("reading /proc/{0}/cgroup")]
    Cgroup(u32, #[source] io::Error),
    #[error("process {pid} behind {socket} is not in pod {uid}'s cgroup: not ours, ignored")]
    WrongPod { pid: u32, socket: PathBuf, uid: String },
    #[error("opening the network namespace of process {0}")]
    Netns(u32, #[source] io::Error),
    #[error("no process of pod {0} found in /proc")]
    NoProcess(String),
}

/// A pod's network namespace, found through its sidecar, and the sidecar's
/// connection (kept: it is how the agent talks to the sidecar).
pub struct Located {
    pub netns: Netns,
    pub pid: u32,
    pub stream: UnixStream,
}

/// Connects to a unix socket at a kubelet path (see
/// [`imds_common::socket_path`]: often longer than a socket address holds).
pub async fn connect(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let (dir, short) = imds_common::socket_path::shorten(socket)?;
    let connected = tokio::time::timeout(timeout, UnixStream::connect(&short)).await;
    drop(dir);
    connected.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")))?
}

/// Connects to the sidecar of pod `uid` and finds its network namespace.
pub async fn locate(socket: &Path, uid: &str, timeout: Duration) -> Result<Located, LocateError> {
    let stream = connect(socket, timeout).await.map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => LocateError::Timeout(socket.to_owned(), timeout),
        _ => LocateError::Connect(socket.to_owned(), e),
    })?;
    let cred = stream.peer_cred().map_err(|e| LocateError::PeerCred(socket.to_owned(), e))?;
    let pid = cred
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| LocateError::NoPid(socket.to_owned()))?;
    let netns = netns_of_pod_process(pid, uid).map_err(|e| match e {
        LocateError::WrongPod { pid, uid, .. } => {
            LocateError::WrongPod { pid, uid, socket: socket.to_owned() }
        }
        other => other,
    })?;
    Ok(Located { netns, pid, stream })
}

/// The namespace of `pid`, once its cgroup says it belongs to pod `uid`.
fn netns_of_pod_process(pid: u32, uid: &str) -> Result<Netns, LocateError> {
    let cgroup_file = Path::new("/proc").join(pid.to_string()).join("cgroup");
    let cgroups = std::fs::read_to_string(&cgroup_file).map_err(|e| LocateError::Cgroup(pid, e))?;
    if !cgroup::belongs_to_pod(&cgroups, uid) {
        return Err(LocateError::WrongPod { pid, socket: PathBuf::new(), uid: uid.to_owned() });
    }
    // The pid could have been reused between the two reads only if the
    // process died, and then the namespace we open is checked against the
    // cgroup again below.
    let netns = Netns::of_pid(pid).map_err(|e| LocateError::Netns(pid, e))?;
    let again = std::fs::read_to_string(&cgroup_file).map_err(|e| LocateError::Cgroup(pid, e))?;
    if !cgroup::belongs_to_pod(&again, uid) {
        return Err(LocateError::WrongPod { pid, socket: PathBuf::new(), uid: uid.to_owned() });
    }
    Ok(netns)
}

/// The pod's network namespace found without its sidecar: any process of
/// the pod's cgroup (a restarted agent adopting a pod whose sidecar is
/// down). Reads every `/proc/<pid>/cgroup`, so it is for rare use.
pub fn locate_by_cgroup(uid: &str) -> Result<(Netns, u32), LocateError> {
    let entries = std::fs::read_dir("/proc").map_err(|e| LocateError::Cgroup(0, e))?;
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        if cgroup::belongs_to_pod(&cgroups, uid)
            && let Ok(netns) = netns_of_pod_process(pid, uid)
        {
            return Ok((netns, pid));
        }
    }
    Err(LocateError::NoProcess(uid.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0c1e7f0a-2d3b-4c5d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn scan_finds_volumes_and_sockets_as_the_kubelet_lays_them_out() {
        let root = tempfile::tempdir().unwrap();
        assert!(scan(root.path()).unwrap().is_empty(), "no pods dir yet");
        let other = "11111111-2222-3333-4444-555555555555";
        for uid in [UID, other] {
            std::fs::create_dir_all(contract::kubelet_empty_dir(root.path(), uid, contract::RUN_VOLUME))
                .unwrap();
        }
        // A pod without our volume, and junk.
        std::fs::create_dir_all(root.path().join("pods/22222222-2222-3333-4444-555555555555/volumes"))
            .unwrap();
        std::fs::create_dir_all(root.path().join("pods/not-a-uid")).unwrap();
        let socket = contract::kubelet_socket_path(root.path(), UID);
        assert!(socket.as_os_str().len() > 108, "the kubelet's paths are longer than a socket address");
        let _listener = bind_long(&socket);
        // A regular file where the socket should be is not a socket.
        std::fs::write(contract::kubelet_socket_path(root.path(), other), "").unwrap();

        let seen = scan(root.path()).unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[UID].socket.as_deref(), Some(socket.as_path()));
        assert_eq!(seen[other].socket, None);
        assert!(still_there(root.path(), UID));
        std::fs::remove_dir_all(root.path().join("pods").join(UID)).unwrap();
        assert!(!still_there(root.path(), UID));
    }

    /// A listener at a path longer than a socket address (as a kubelet path is).
    fn bind_long(path: &Path) -> std::os::unix::net::UnixListener {
        let (_dir, short) = imds_common::socket_path::shorten(path).unwrap();
        std::os::unix::net::UnixListener::bind(short).unwrap()
    }

    #[tokio::test]
    async fn long_socket_paths_are_reachable() {
        let root = tempfile::tempdir().unwrap();
        let socket = contract::kubelet_socket_path(root.path(), UID);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = bind_long(&socket);
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        let (client, server) = tokio::join!(connect(&socket, Duration::from_secs(1)), listener.accept());
        assert!(client.is_ok() && server.is_ok());
    }

    #[tokio::test]
    async fn a_process_outside_the_pod_is_refused() {
        // This test process is not in any pod's cgroup.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        match locate(&path, UID, Duration::from_secs(1)).await {
            Err(LocateError::WrongPod { pid, .. }) => assert_eq!(pid, std::process::id()),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a process outside the pod was accepted"),
        }
        let missing = locate(&dir.path().join("none.sock"), UID, Duration::from_secs(1)).await;
        assert!(matches!(missing, Err(LocateError::Connect(..))));
    }
}
