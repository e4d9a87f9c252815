//! Network namespaces by file descriptor, and threads that live in one.
//!
//! `setns(2)` moves only the calling thread, so everything the agent does
//! for a pod (netlink, attaching programs, sysctls, which all act on the
//! caller's namespace) runs on a thread of its own that entered the pod's
//! namespace first. Holding the descriptor keeps a namespace alive, so the
//! agent holds one only while it works on the pod.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

/// A network namespace, as an open `…/ns/net` file.
#[derive(Debug)]
pub struct Netns(OwnedFd);

/// What identifies a namespace across descriptors: the nsfs inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl Netns {
    /// The namespace of process `pid` (needs ptrace access to it: root
    /// with CAP_SYS_PTRACE in the host's PID namespace).
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        Self::open(&Path::new("/proc").join(pid.to_string()).join("ns/net"))
    }

    /// The calling thread's namespace.
    pub fn of_current_thread() -> io::Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    fn open(path: &Path) -> io::Result<Self> {
        Ok(Self(File::open(path)?.into()))
    }

    pub fn id(&self) -> io::Result<NetnsId> {
        let meta = File::from(self.0.try_clone()?).metadata()?;
        Ok(NetnsId { dev: meta.dev(), ino: meta.ino() })
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor of a network namespace; setns only
        // changes the calling thread's namespace.
        if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor, for netlink requests that move a link here.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }

    /// A new, empty namespace (made on a short-lived thread, so the caller
    /// stays where it is).
    pub fn create() -> io::Result<Self> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: unshare only changes the calling thread, which
                    // ends right after.
                    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Self::of_current_thread()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        })
    }

    /// Runs `f` on a thread inside this namespace and returns its result;
    /// the thread ends with `f`, so no other work ever runs in the wrong
    /// namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter()?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a thread working in a pod's namespace panicked")))
        })
    }
}

/// Runs the future `make()` builds on a thread of its own, inside `netns`,
/// with a single-threaded tokio runtime. Returns once the future ends.
pub fn block_on_in<F, Fut>(netns: &Netns, make: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future,
    Fut::Output: Send,
{
    netns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(runtime.block_on(make()))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: plain getter.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn threads_run_in_the_namespace_they_entered() {
        let here = Netns::of_current_thread().unwrap().id().unwrap();
        if !is_root() {
            // Creating namespaces needs root; the privileged tests cover it.
            assert!(Netns::create().is_err());
            return;
        }
        let other = Netns::create().unwrap();
        let other_id = other.id().unwrap();
        assert_ne!(here, other_id);
        let seen = other.run(|| Netns::of_current_thread().unwrap().id().unwrap()).unwrap();
        assert_eq!(seen, other_id);
        // The caller never moved.
        assert_eq!(Netns::of_current_thread().unwrap().id().unwrap(), here);
        let in_runtime =
            block_on_in(&other, || async { Netns::of_current_thread().unwrap().id().unwrap() }).unwrap();
        assert_eq!(in_runtime, other_id);
    }
}
