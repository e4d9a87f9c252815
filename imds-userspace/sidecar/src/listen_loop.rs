//! Keeps the API listening on the agent's veth end: waits for the interface
//! to appear, binds (retrying while the port is still privileged), serves,
//! and binds again with a new filter when the agent recreates the
//! interface. Every step is reported to [`crate::readiness`].

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    errors::chain,
    http_server::{self, Limits},
    interface::InterfaceIndex,
    listener::{self, BindError, BindStep},
    log_lines,
    log_reminder::LogReminder,
    readiness::{Listener, SharedReadiness},
};

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often to look for the interface while it is missing.
    pub interface_poll: Duration,
    /// How often to retry a failed bind.
    pub bind_retry: Duration,
    /// How often to check, while serving, that the interface is the same.
    pub watch: Duration,
    /// How often to repeat that we are still waiting, and for what.
    pub reminder: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            interface_poll: Duration::from_millis(100),
            bind_retry: Duration::from_millis(100),
            watch: Duration::from_secs(2),
            reminder: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The kernel refuses a process without capabilities one step of the
    /// bind: no retry will help.
    #[error("this kernel does not let an unprivileged process {what}")]
    NeedsPrivilege {
        what: &'static str,
        #[source]
        source: BindError,
    },
}

pub struct ListenLoop<A> {
    /// Where to find the interface's index.
    pub interface: InterfaceIndex,
    /// The interface's name, for SO_BINDTODEVICE.
    pub device: String,
    pub addr: SocketAddrV4,
    /// The IP TTL of the listener, inherited by every connection.
    pub hop_limit: u8,
    /// The API, already wrapped in [`crate::request_tally`].
    pub app: A,
    pub limits: Limits,
    pub readiness: SharedReadiness,
    pub timing: Timing,
}

/// Why serving on one listener stopped.
enum Stopped {
    Shutdown,
    /// The interface is gone (`None`) or was recreated with a new index.
    InterfaceChanged(Option<u32>),
}

impl<A: http_server::ConnectionService> ListenLoop<A> {
    /// Until `shutdown` fires (then in-flight requests are drained), or a
    /// failure no retry can fix.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ListenError> {
        let mut reminder = LogReminder::new(self.timing.reminder);
        loop {
            let Some((listener, ifindex)) = self.bind_when_possible(&mut reminder, &shutdown).await? else {
                return Ok(());
            };
            reminder.reset();
            let (addr, interface) = (self.addr, &self.device);
            self.readiness.update(|r| r.set_listener(Listener::Listening { addr, ifindex }));
            tracing::info!(%addr, interface = %interface, ifindex, "{}", log_lines::LOG_SERVING);

            let stop = shutdown.child_token();
            let server = tokio::spawn(http_server::serve(
                listener,
                self.app.clone(),
                self.limits,
                http_server::Plain,
                stop.clone(),
            ));
            let stopped = self.watch(ifindex, &shutdown).await;
            stop.cancel();
            let _ = server.await;
            match stopped {
                Stopped::Shutdown => return Ok(()),
                Stopped::InterfaceChanged(None) => {
                    tracing::warn!(
                        interface = %interface,
                        "the interface is gone; listening again once the agent recreates it"
                    )
                }
                Stopped::InterfaceChanged(Some(new)) => {
                    tracing::warn!(
                        interface = %interface,
                        old = ifindex,
                        new,
                        "the agent recreated the interface; listening again"
                    )
                }
            }
        }
    }

    /// Waits for the interface and binds on it; `None` on shutdown.
    async fn bind_when_possible(
        &self,
        reminder: &mut LogReminder,
        shutdown: &CancellationToken,
    ) -> Result<Option<(tokio::net::TcpListener, u32)>, ListenError> {
        loop {
            let (state, retry) = match self.read_ifindex() {
                None => (Listener::WaitingForInterface, self.timing.interface_poll),
                Some(ifindex) => match listener::bind(self.addr, &self.device, self.hop_limit) {
                    Ok(listener) => return Ok(Some((listener, ifindex))),
                    Err(e) => (retry_state(e)?, self.timing.bind_retry),
                },
            };
            let failed = matches!(state, Listener::BindFailed(_));
            let message = self.readiness.update(|r| {
                r.set_listener(state);
                r.message()
            });
            if reminder.due(&message, Instant::now()) {
                // Waiting for the agent is normal at start-up; a failing bind is not.
                if failed {
                    tracing::warn!(interface = %self.device, retry_every = ?retry, "{message}");
                } else {
                    tracing::info!(interface = %self.device, retry_every = ?retry, "{message}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Serves until shutdown or until the interface is no longer `ifindex`.
    async fn watch(&self, ifindex: u32, shutdown: &CancellationToken) -> Stopped {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Stopped::Shutdown,
                () = tokio::time::sleep(self.timing.watch) => {}
            }
            let now = self.read_ifindex();
            if now != Some(ifindex) {
                return Stopped::InterfaceChanged(now);
            }
        }
    }

    /// An unreadable sysfs counts as "no interface" (and is logged).
    fn read_ifindex(&self) -> Option<u32> {
        self.interface.read().unwrap_or_else(|e| {
            tracing::debug!(interface = %self.device, error = %e, "reading the interface index failed");
            None
        })
    }
}

/// What a failed bind means for readiness, if retrying can fix it.
fn retry_state(error: BindError) -> Result<Listener, ListenError> {
    let what = match (error.step, error.source.raw_os_error()) {
        (BindStep::Bind, Some(libc::EACCES)) => return Ok(Listener::PortPrivileged),
        // Before Linux 5.7 SO_BINDTODEVICE takes CAP_NET_RAW.
        (BindStep::Device, Some(libc::EPERM)) => {
            "bind a socket to an interface (SO_BINDTODEVICE needs Linux 5.7 or later)"
        }
        // ENODEV, EADDRNOTAVAIL: the interface went away between the
        // sysfs read and the bind; EADDRINUSE: a previous listener not
        // closed yet. Anything else is retried too, its reason reported.
        _ => return Ok(Listener::BindFailed(chain(&error))),
    };
    Err(ListenError::NeedsPrivilege { what, source: error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::Listener;
    use axum::routing::get;
    use std::{io, net::Ipv4Addr, path::Path};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn bind_error(step: BindStep, errno: i32) -> BindError {
        BindError {
            step,
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80),
            device: "imds-sidecar".into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn bind_failures_are_retried_unless_the_kernel_forbids_a_step() {
        assert_eq!(retry_state(bind_error(BindStep::Bind, libc::EACCES)).unwrap(), Listener::PortPrivileged);
        for (step, errno) in [
            (BindStep::Device, libc::ENODEV),
            (BindStep::Bind, libc::EADDRNOTAVAIL),
            (BindStep::Bind, libc::EADDRINUSE),
            (BindStep::Socket, libc::EMFILE),
        ] {
            let state = retry_state(bind_error(step, errno)).unwrap();
            assert!(
                matches!(&state, Listener::BindFailed(reason) if reason.contains("imds-sidecar")),
                "{state:?}"
            );
        }
        let fatal = retry_state(bind_error(BindStep::Device, libc::EPERM)).unwrap_err();
        assert!(fatal.to_string().contains("Linux 5.7"), "{fatal}");
    }

    /// The loop on loopback: a fake sysfs decides which ifindex "the
    /// interface" has; the device bound is `lo`, whose index is 1.
    struct Harness {
        sysfs: tempfile::TempDir,
        readiness: SharedReadiness,
        addr: SocketAddrV4,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), ListenError>>,
    }

    const LO: u32 = 1;

    fn set_ifindex(sysfs: &Path, ifindex: Option<u32>) {
        let dir = sysfs.join("fake-if");
        match ifindex {
            Some(i) => {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("ifindex"), format!("{i}\n")).unwrap();
            }
            None => std::fs::remove_dir_all(&dir).unwrap(),
        }
    }

    fn start() -> Harness {
        let sysfs = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let readiness = SharedReadiness::default();
        let app = crate::request_tally::Tally::new(
            axum::Router::new().route("/healthz", get(|| async { "OK" })),
            readiness.clone(),
        );
        let fast = Duration::from_millis(20);
        let lp = ListenLoop {
            interface: InterfaceIndex::new(sysfs.path(), "fake-if"),
            device: "lo".into(),
            addr,
            hop_limit: 1,
            app,
            limits: Limits { drain_timeout: Duration::from_millis(200), ..Limits::default() },
            readiness: readiness.clone(),
            timing: Timing {
                interface_poll: fast,
                bind_retry: fast,
                watch: fast,
                reminder: Duration::from_secs(30),
            },
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(lp.run(stop.clone()));
        Harness { sysfs, readiness, addr, stop, task }
    }

    /// `GET /healthz` through loopback: whether it was answered.
    async fn answered(addr: SocketAddrV4) -> bool {
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
            let mut text = String::new();
            s.read_to_string(&mut text).await?;
            io::Result::Ok(text.starts_with("HTTP/1.1 200"))
        };
        matches!(tokio::time::timeout(Duration::from_millis(500), exchange).await, Ok(Ok(true)))
    }

    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn listening_on(h: &Harness, ifindex: u32) -> bool {
        h.readiness.update(|r| r.listener() == &Listener::Listening { addr: h.addr, ifindex })
    }

    #[tokio::test]
    async fn waits_for_the_interface_then_serves_and_follows_its_index() {
        let h = start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.readiness.update(|r| r.listener().clone()), Listener::WaitingForInterface);
        assert!(!answered(h.addr).await, "answered before the interface existed");

        set_ifindex(h.sysfs.path(), Some(LO));
        until("the listener", || listening_on(&h, LO)).await;
        assert!(answered(h.addr).await, "not answered through the interface");
        assert!(h.readiness.status().served >= 1);

        // Recreated (another index): the listener is made anew, and serves.
        set_ifindex(h.sysfs.path(), Some(LO + 1000));
        until("the rebind", || listening_on(&h, LO + 1000)).await;
        assert!(answered(h.addr).await, "not answered after the rebind");

        set_ifindex(h.sysfs.path(), None);
        until("the wait", || h.readiness.update(|r| r.listener() == &Listener::WaitingForInterface)).await;
        set_ifindex(h.sysfs.path(), Some(LO));
        until("the second listener", || listening_on(&h, LO)).await;
        assert!(answered(h.addr).await);

        h.stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), h.task).await.unwrap().unwrap();
        assert!(ended.is_ok());
        assert!(!answered(h.addr).await, "still listening after shutdown");
    }

    #[tokio::test]
    async fn shutdown_while_waiting_ends_the_loop() {
        let h = start();
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), h.task).await.unwrap().unwrap();
        assert!(ended.is_ok());
    }
}
