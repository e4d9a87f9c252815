//! The sidecar's end of [`imds_common::channel`]: a unix socket in the run
//! volume where the node agent asks for the pod's settings and reports its
//! probe, and the startup probe asks for [`crate::readiness`].
//!
//! Only root on the node and this container's own user can reach the
//! socket, but it is read as hostile input all the same: lines are
//! bounded, every line must arrive within a deadline, a few connections at
//! a time, and what cannot be decoded is answered with an error and the
//! connection closed.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use imds_common::channel::{self, MAX_LINE, PROTOCOL, PodSettings, Request, Response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;

use crate::{log_lines, readiness::SharedReadiness};

#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    /// How long a connection may take to send its next line (also how long
    /// an idle one is kept) and to take an answer.
    pub idle_timeout: Duration,
    /// More connections wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        Self { idle_timeout: Duration::from_secs(10), max_connections: 8 }
    }
}

/// Listens on `path`, replacing a socket a previous run left behind.
/// Only the owner may connect (the agent is root).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = bind_long(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Binds at `path`, however deep (see [`imds_common::socket_path`]).
fn bind_long(path: &Path) -> io::Result<UnixListener> {
    let (_dir, short) = imds_common::socket_path::shorten(path)?;
    UnixListener::bind(short)
}

/// What every conversation answers from.
#[derive(Debug)]
struct Context {
    settings: PodSettings,
    readiness: SharedReadiness,
    limits: ChannelLimits,
}

/// Answers connections on `listener` until `shutdown` fires; open
/// conversations end then too.
pub async fn serve(
    listener: UnixListener,
    settings: PodSettings,
    readiness: SharedReadiness,
    limits: ChannelLimits,
    shutdown: CancellationToken,
) {
    let context = Arc::new(Context { settings, readiness, limits });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A slot first, as the HTTP server does: excess connections wait in
        // the backlog rather than cost a task each.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the channel socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (context, shutdown) = (context.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                () = converse(stream, &context) => {}
            }
            drop(permit);
        });
    }
}

/// The agent this connection introduced, if any.
#[derive(Debug, Default)]
struct Conversation {
    agent_node: Option<String>,
}

/// Reads requests and answers each until the peer closes, falls silent or
/// sends something undecodable.
async fn converse(stream: UnixStream, context: &Context) {
    let idle = context.limits.idle_timeout;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let mut conversation = Conversation::default();
    loop {
        line.clear();
        // One byte past the limit tells an overlong line from a full one.
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        match tokio::time::timeout(idle, limited.read_until(b'\n', &mut line)).await {
            Err(_) => {
                tracing::debug!("channel connection silent for {idle:?}; closing it");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "channel connection failed");
                return;
            }
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
        }
        // A last line without its newline (the peer shut down its side
        // after writing) is answered like any other.
        let (request, keep_open) = if line.last() == Some(&b'\n') {
            line.pop();
            (channel::decode::<Request>(&line), true)
        } else if line.len() > MAX_LINE {
            (Err(format!("line longer than {MAX_LINE} bytes")), false)
        } else {
            (channel::decode::<Request>(&line), true)
        };
        let (response, keep_open) = match request {
            Ok(request) => (answer(request, &mut conversation, context), keep_open),
            Err(reason) => {
                tracing::warn!(reason, "refused a line on the channel socket; closing the connection");
                (Response::Error { message: reason }, false)
            }
        };
        let sent = tokio::time::timeout(idle, write.write_all(&channel::encode(&response))).await;
        if !matches!(sent, Ok(Ok(()))) || !keep_open {
            return;
        }
    }
}

/// The answer to one request; the readiness changes it causes.
fn answer(request: Request, conversation: &mut Conversation, context: &Context) -> Response {
    match request {
        Request::AgentHello { protocol, node, agent_version } => {
            if protocol != PROTOCOL {
                tracing::warn!(
                    node = ?node,
                    agent_version = ?agent_version,
                    "an agent speaking protocol {protocol} connected; this sidecar speaks {PROTOCOL}"
                );
                return error(format!("this sidecar speaks protocol {PROTOCOL}, not {protocol}"));
            }
            if let Err(reason) = check_node_name(&node) {
                tracing::warn!(node = ?node, "refused an agent hello: {reason}");
                return error(format!("node name {node:?}: {reason}"));
            }
            if conversation.agent_node.as_deref() != Some(node.as_str()) {
                let line = log_lines::agent_connected(&node);
                tracing::info!(node = %node, agent_version = ?agent_version, "{line}");
                context.readiness.update(|r| r.agent_hello(&node));
                conversation.agent_node = Some(node);
            }
            Response::PodSettings(context.settings.clone())
        }
        Request::ProbeSucceeded { nonce } => {
            let node = conversation.agent_node.as_deref();
            let node_field = node.unwrap_or("-");
            match context.readiness.update(|r| r.probe_succeeded(&nonce, node, SystemTime::now())) {
                Ok(true) => {
                    tracing::info!(node = node_field, "{}", log_lines::LOG_READY);
                    Response::Ack
                }
                Ok(false) => Response::Ack,
                Err(e) => {
                    tracing::warn!(node = node_field, error = %e, "refused the agent's probe report");
                    error(e.to_string())
                }
            }
        }
        Request::Status => Response::Status(context.readiness.status()),
    }
}

fn error(message: String) -> Response {
    Response::Error { message }
}

/// A node name ends up in log lines and messages: a DNS subdomain as
/// Kubernetes requires, so nothing in it can forge a line.
fn check_node_name(node: &str) -> Result<(), &'static str> {
    let valid = (1..=253).contains(&node.len())
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid { Ok(()) } else { Err("not a Kubernetes node name (1-253 characters from a-z, 0-9, '-', '.')") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::Listener;
    use imds_common::{
        channel::Status,
        contract::{IMDS_IP, IMDS_PORT},
    };
    use std::{net::SocketAddrV4, path::PathBuf, time::Instant};

    struct Server {
        _dir: tempfile::TempDir,
        path: PathBuf,
        readiness: SharedReadiness,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn settings() -> PodSettings {
        PodSettings {
            protocol: PROTOCOL,
            bridge: Some("k6t-eth0".into()),
            guest_port_prefix: "tap".into(),
            namespace: "vms".into(),
            pod_name: Some("virt-launcher-vm-1-abcde".into()),
            vm_name: "vm-1".into(),
        }
    }

    fn start(limits: ChannelLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.sock");
        // A stale socket file from a previous run is replaced.
        std::fs::write(&path, "stale").unwrap();
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let readiness = SharedReadiness::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, settings(), readiness.clone(), limits, stop.clone()));
        Server { _dir: dir, path, readiness, stop, task }
    }

    struct Client {
        reader: BufReader<tokio::net::unix::OwnedReadHalf>,
        writer: tokio::net::unix::OwnedWriteHalf,
    }

    impl Client {
        async fn connect(path: &Path) -> Self {
            let (read, writer) = UnixStream::connect(path).await.unwrap().into_split();
            Self { reader: BufReader::new(read), writer }
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.writer.write_all(bytes).await.unwrap();
        }

        /// The next answer, or `None` once the server closed.
        async fn receive(&mut self) -> Option<Response> {
            let mut line = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), self.reader.read_until(b'\n', &mut line));
            match read.await.expect("no answer within 5 s") {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(channel::decode(line.strip_suffix(b"\n").unwrap()).unwrap()),
            }
        }

        async fn ask(&mut self, request: &Request) -> Response {
            self.send_raw(&channel::encode(request)).await;
            self.receive().await.expect("closed instead of answering")
        }

        async fn status(&mut self) -> Status {
            match self.ask(&Request::Status).await {
                Response::Status(s) => s,
                other => panic!("{other:?}"),
            }
        }
    }

    fn hello(protocol: u32, node: &str) -> Request {
        Request::AgentHello { protocol, node: node.into(), agent_version: "0.1.0".into() }
    }

    fn listening() -> Listener {
        Listener::Listening { addr: SocketAddrV4::new(IMDS_IP, IMDS_PORT), ifindex: 7 }
    }

    #[tokio::test]
    async fn the_agent_gets_the_settings_and_its_probe_makes_the_sidecar_ready() {
        let server = start(ChannelLimits::default());
        let mut agent = Client::connect(&server.path).await;
        assert_eq!(agent.ask(&hello(PROTOCOL, "node-1")).await, Response::PodSettings(settings()));
        // Saying hello again on the same connection is harmless.
        assert_eq!(agent.ask(&hello(PROTOCOL, "node-1")).await, Response::PodSettings(settings()));

        let mut probe = Client::connect(&server.path).await;
        let status = probe.status().await;
        assert!(!status.ready);
        assert_eq!(status.agent_node.as_deref(), Some("node-1"));
        assert!(status.message.starts_with("no interface imds-sidecar"), "{}", status.message);

        server.readiness.update(|r| r.set_listener(listening()));
        let status = probe.status().await;
        assert!(!status.ready && status.message.contains("waiting for the agent's probe"), "{status:?}");

        // A nonce no request carried: refused, still not ready.
        let unknown = agent.ask(&Request::ProbeSucceeded { nonce: "made-up".into() }).await;
        assert!(
            matches!(&unknown, Response::Error { message } if message.contains("never seen")),
            "{unknown:?}"
        );
        assert!(!probe.status().await.ready);

        // The probe request went through the data path and carried the nonce.
        server.readiness.update(|r| r.request_served(Some("n-1")));
        assert_eq!(agent.ask(&Request::ProbeSucceeded { nonce: "n-1".into() }).await, Response::Ack);
        let status = probe.status().await;
        assert!(status.ready, "{status:?}");
        assert!(status.message.starts_with("serving: the agent on node node-1 probed the data path at "));
        assert_eq!(status.served, 1);
        server.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refused_hellos_change_nothing() {
        let server = start(ChannelLimits::default());
        let mut agent = Client::connect(&server.path).await;
        let answer = agent.ask(&hello(PROTOCOL + 1, "node-1")).await;
        assert!(matches!(&answer, Response::Error { message } if message.contains("protocol")), "{answer:?}");
        let answer = agent.ask(&hello(PROTOCOL, "node\n2026-01-01 INFO forged")).await;
        assert!(
            matches!(&answer, Response::Error { message } if message.contains("node name")),
            "{answer:?}"
        );
        assert_eq!(agent.status().await.agent_node, None);
    }

    #[tokio::test]
    async fn undecodable_and_overlong_lines_get_an_error_and_the_connection_closes() {
        let server = start(ChannelLimits::default());
        let bad: [&[u8]; 4] = [b"garbage\n", b"{\"op\":\"reboot\"}\n", b"\xff\xfe\n", b"\n"];
        for line in bad {
            let mut client = Client::connect(&server.path).await;
            client.send_raw(line).await;
            let answer = client.receive().await;
            assert!(matches!(answer, Some(Response::Error { .. })), "{line:?}: {answer:?}");
            assert_eq!(client.receive().await, None, "{line:?}: still open");
        }

        let mut client = Client::connect(&server.path).await;
        client.send_raw(&vec![b'x'; 20 * 1024]).await;
        client.send_raw(b"\n").await;
        let answer = client.receive().await;
        assert!(
            matches!(&answer, Some(Response::Error { message }) if message.contains("longer than")),
            "{answer:?}"
        );
        assert_eq!(client.receive().await, None);

        // A line of exactly the limit is read (and here refused as JSON).
        let mut client = Client::connect(&server.path).await;
        let mut full = vec![b' '; MAX_LINE - 15];
        full.extend_from_slice(br#"{"op":"status"}"#);
        full.push(b'\n');
        client.send_raw(&full).await;
        assert!(matches!(client.receive().await, Some(Response::Status(_))));

        // The server is unharmed.
        let mut client = Client::connect(&server.path).await;
        assert!(!client.status().await.ready);
    }

    #[tokio::test]
    async fn a_last_line_without_newline_is_answered() {
        let server = start(ChannelLimits::default());
        let mut client = Client::connect(&server.path).await;
        client.send_raw(br#"{"op":"status"}"#).await;
        client.writer.shutdown().await.unwrap();
        assert!(matches!(client.receive().await, Some(Response::Status(_))));
        assert_eq!(client.receive().await, None);
    }

    #[tokio::test]
    async fn silent_clients_are_cut_off_at_the_deadline() {
        let limits = ChannelLimits { idle_timeout: Duration::from_millis(300), ..ChannelLimits::default() };
        let server = start(limits);
        let mut silent = Client::connect(&server.path).await;
        let started = Instant::now();
        assert_eq!(silent.receive().await, None);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "{waited:?}");

        // Half a line, then nothing: the deadline covers the whole line.
        let mut slow = Client::connect(&server.path).await;
        slow.send_raw(br#"{"op":"#).await;
        assert_eq!(slow.receive().await, None);
    }

    #[tokio::test]
    async fn concurrent_connections_are_bounded() {
        let limits = ChannelLimits { idle_timeout: Duration::from_millis(500), max_connections: 3 };
        let server = start(limits);
        let mut holders = Vec::new();
        for _ in 0..3 {
            let mut c = Client::connect(&server.path).await;
            // Answered, so certainly holding a slot.
            c.status().await;
            holders.push(c);
        }
        // Connecting succeeds (the backlog), the answer waits for a slot.
        let mut waiting = Client::connect(&server.path).await;
        waiting.send_raw(&channel::encode(&Request::Status)).await;
        let started = Instant::now();
        assert!(matches!(waiting.receive().await, Some(Response::Status(_))));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "answered after {waited:?}: the cap did not hold");
        drop(holders);
    }

    #[tokio::test]
    async fn many_clients_at_once_are_all_answered_eventually() {
        let server = start(ChannelLimits::default());
        let clients = (0..40).map(|_| {
            let path = server.path.clone();
            tokio::spawn(async move { Client::connect(&path).await.status().await })
        });
        for client in clients.collect::<Vec<_>>() {
            assert!(!client.await.unwrap().ready);
        }
    }

    #[test]
    fn node_names() {
        for ok in ["node-1", "ip-10-0-0-1.ec2.internal", "a", &"a".repeat(253)] {
            assert_eq!(check_node_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a\nb", "a/b", "ünï", &"a".repeat(254)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }
}
