//! Serving the API over HTTP/1.1 with limits a hostile guest cannot get
//! around: bounded head size and header count, a deadline for every request
//! head (which also bounds idle keep-alive connections), a deadline for
//! writing every response ([`crate::write_deadline`]: a client that never
//! reads loses its connection), and a cap on concurrent connections.
//! Request bodies are never read.
//!
//! What answers is made per connection ([`ConnectionService`]): a
//! [`Router`] gets the peer's address on every request ([`WithPeer`]); the
//! IMDS answers its hottest requests before its router and puts the peer
//! in a request only when the router needs it.

use std::{
    io,
    net::SocketAddr,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hyper::{Request, server::conn::http1};
use hyper_util::rt::TokioTimer;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tower::Service;

mod connection;

pub use connection::Answer;
use connection::Connection;

/// Makes the service that answers one connection, from its peer's address.
pub trait ConnectionService: Clone + Send + 'static {
    type Service: Answer + Send + 'static;

    fn for_peer(&self, peer: SocketAddr) -> Self::Service;
}

/// A router sees the peer as a `ConnectInfo` extension, for handlers that
/// answer with it (EC2's `local-ipv4`).
impl ConnectionService for Router {
    type Service = WithPeer<Router>;

    fn for_peer(&self, peer: SocketAddr) -> WithPeer<Router> {
        WithPeer { inner: self.clone(), peer }
    }
}

/// `inner`, with `ConnectInfo(peer)` inserted into every request's extensions.
#[derive(Debug, Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S> WithPeer<S> {
    pub fn new(inner: S, peer: SocketAddr) -> Self {
        Self { inner, peer }
    }
}

impl<S: Service<Request<B>>, B> Service<Request<B>> for WithPeer<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.inner.call(request)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, in bytes.
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// From the moment the server waits for a request head (connection
    /// opened, or previous response sent) until the head is complete.
    pub head_timeout: Duration,
    /// From the first byte of a response written until all of it is with
    /// the kernel.
    pub response_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight requests get to finish on shutdown.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 32,
            head_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            max_connections: 256,
            drain_timeout: Duration::from_secs(3),
        }
    }
}

/// What happens to an accepted connection before HTTP is spoken on it: for
/// the webhook a TLS handshake, for the IMDS nothing ([`Plain`]). It runs
/// under the head deadline, like the request head it precedes.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Accept: Future<Output = io::Result<Self::Io>> + Unpin + Send;
    fn handshake(&self, stream: TcpStream) -> Self::Accept;
}

/// Plain HTTP.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    type Accept = std::future::Ready<io::Result<TcpStream>>;
    fn handshake(&self, stream: TcpStream) -> Self::Accept {
        std::future::ready(Ok(stream))
    }
}

/// Accepts connections on `listener` until `shutdown` fires, then lets
/// in-flight requests finish for up to `limits.drain_timeout`. Every
/// connection goes through `handshake` first, within the head deadline,
/// and is answered by `app.for_peer(its peer)`.
///
/// The connections are futures this one polls ([`connection`]), not tasks:
/// a tokio task costs a cache-aligned allocation and a scheduler hand-off
/// per connection, and reaching a spawned connection at shutdown costs a
/// watch channel every connection polls. The webhook's connections thus
/// share one thread too: they interleave at every wait, but their CPU work
/// (TLS handshakes, reviews) runs one at a time (its cost not measured).
pub async fn serve<H: Handshake, A: ConnectionService>(
    listener: TcpListener,
    app: A,
    limits: Limits,
    handshake: H,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    // Once on the listener rather than a system call per connection: Linux
    // copies it to every socket accepted from it (tested below).
    if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "setting TCP_NODELAY on the listener; answers may wait for ACKs");
    }
    let mut connections = FuturesUnordered::new();
    let cancelled = shutdown.cancelled();
    // After an accept error (EMFILE and friends): a pause instead of a spin.
    let backoff = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(cancelled, backoff);
    let mut backing_off = false;
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            Some(()) = connections.next(), if !connections.is_empty() => {}
            () = &mut backoff, if backing_off => backing_off = false,
            // At the cap, excess connections queue in the kernel's backlog
            // instead of costing memory here.
            accepted = listener.accept(), if !backing_off && connections.len() < limits.max_connections => {
                match accepted {
                    Ok((stream, peer)) => connections.push(Connection::new(
                        handshake.handshake(stream),
                        peer,
                        app.for_peer(peer),
                        &http,
                        &limits,
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        backoff.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(50));
                        backing_off = true;
                    }
                }
            }
        }
    }
    drop(listener);
    // Polled anew: a connection told to end must be polled to end, and
    // only a woken one would be.
    let mut draining: FuturesUnordered<_> = connections
        .into_iter()
        .map(|mut c: Connection<'_, H, A::Service>| {
            c.shut_down();
            c
        })
        .collect();
    let drained = async { while draining.next().await.is_some() {} };
    if tokio::time::timeout(limits.drain_timeout, drained).await.is_err() {
        tracing::warn!("in-flight requests did not finish in time; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::{pin::Pin, time::Instant};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    async fn start(limits: Limits) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        start_app(limits, Router::new().route("/", get(|| async { "hi" }))).await
    }

    async fn start_app(
        limits: Limits,
        app: Router,
    ) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, app, limits, Plain, stop.clone()));
        (addr, stop, task)
    }

    /// Reads until the peer closes; returns what arrived and how long it took.
    async fn read_to_close(stream: &mut TcpStream) -> (String, Duration) {
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
        (String::from_utf8_lossy(&buf).into_owned(), started.elapsed())
    }

    #[tokio::test]
    async fn silent_and_slow_clients_are_cut_off() {
        let limits = Limits { head_timeout: Duration::from_millis(300), ..Limits::default() };
        let (addr, _stop, _task) = start(limits).await;

        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (_, waited) = read_to_close(&mut silent).await;
        assert!(waited < Duration::from_secs(3), "silent client held {waited:?}");

        // Slowloris: a header byte every 50 ms, never finishing the head.
        let slow = TcpStream::connect(addr).await.unwrap();
        let (mut rx, mut tx) = slow.into_split();
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            let _ = tx.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.write_all(b"X").await.is_err() {
                    break;
                }
            }
        });
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut buf)).await;
        trickle.abort();
        assert!(started.elapsed() < Duration::from_millis(1500), "slow client held {:?}", started.elapsed());
    }

    /// A client that pipelines requests for a large body and never reads
    /// holds the only slot until the response deadline, no longer: the
    /// next client is served.
    #[tokio::test]
    async fn a_client_that_never_reads_loses_its_slot_at_the_response_deadline() {
        let body = "x".repeat(1024 * 1024);
        let app = Router::new().route("/big", get(move || std::future::ready(body.clone())));
        let limits = Limits {
            max_connections: 1,
            response_timeout: Duration::from_millis(500),
            head_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let (addr, _stop, _task) = start_app(limits, app).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stuck = socket.connect(addr).await.unwrap();
        let pipelined = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
        stuck.write_all(pipelined.as_bytes()).await.unwrap();
        // Let the server fill every buffer on the way.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let started = Instant::now();
        let mut other = TcpStream::connect(addr).await.unwrap();
        other.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (text, _) = read_to_close(&mut other).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the second client waited {:?}",
            started.elapsed()
        );
        drop(stuck);
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed() {
        let limits = Limits { head_timeout: Duration::from_millis(300), ..Limits::default() };
        let (addr, _stop, _task) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (text, waited) = read_to_close(&mut s).await;
        assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
        assert!(waited < Duration::from_secs(3), "idle connection held {waited:?}");
    }

    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let (addr, _stop, _task) = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
        let _ = s.write_all(huge.as_bytes()).await;
        let (text, _) = read_to_close(&mut s).await;
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

        let mut s = TcpStream::connect(addr).await.unwrap();
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
        let (text, _) = read_to_close(&mut s).await;
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let limits =
            Limits { max_connections: 1, head_timeout: Duration::from_millis(500), ..Limits::default() };
        let (addr, _stop, _task) = start(limits).await;
        let _holder = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let (text, _) = read_to_close(&mut waiting).await;
        // Served only once the holder timed out and freed the slot.
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }

    /// What `serve` relies on to set it once: an accepted socket inherits
    /// TCP_NODELAY from its listener.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        for nodelay in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            socket2::SockRef::from(&listener).set_tcp_nodelay(nodelay).unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert_eq!(accepted.nodelay().unwrap(), nodelay);
        }
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let app = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| async move { peer.to_string() }),
        );
        let (addr, _stop, _task) = start_app(Limits::default(), app).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let local = s.local_addr().unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (text, _) = read_to_close(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with(&local.to_string()), "{text}");
    }

    /// A handshake that waits for one byte from the client (as TLS waits
    /// for a ClientHello), and refuses a `!`.
    #[derive(Clone)]
    struct ByteFirst;

    impl Handshake for ByteFirst {
        type Io = TcpStream;
        type Accept = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;
        fn handshake(&self, mut stream: TcpStream) -> Self::Accept {
            Box::pin(async move {
                let mut byte = [0u8];
                stream.read_exact(&mut byte).await?;
                if byte == *b"!" {
                    return Err(io::Error::other("refused"));
                }
                Ok(stream)
            })
        }
    }

    /// The handshake runs under the head deadline, and a connection still
    /// in it does not hold up the others (they are polled by one task).
    #[tokio::test]
    async fn a_stalled_handshake_is_cut_off_and_holds_up_no_one() {
        let limits = Limits { head_timeout: Duration::from_millis(500), ..Limits::default() };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "hi" }));
        let _task = tokio::spawn(serve(listener, app, limits, ByteFirst, CancellationToken::new()));

        let mut stalled = TcpStream::connect(addr).await.unwrap();
        let mut refused = TcpStream::connect(addr).await.unwrap();
        refused.write_all(b"!").await.unwrap();
        let mut served = TcpStream::connect(addr).await.unwrap();
        served.write_all(b"-GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (text, took) = read_to_close(&mut served).await;
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("hi"), "{text}");
        assert!(took < Duration::from_millis(400), "served after {took:?}");
        let (text, took) = read_to_close(&mut refused).await;
        assert!(text.is_empty() && took < Duration::from_millis(400), "{text:?} after {took:?}");
        let (text, took) = read_to_close(&mut stalled).await;
        assert!(text.is_empty(), "{text}");
        assert!(
            (Duration::from_millis(100)..Duration::from_secs(3)).contains(&took),
            "the stalled handshake was closed after {took:?} more"
        );
    }

    /// A handler's panic (a bug) costs its own connection, not the server.
    #[tokio::test]
    async fn a_panicking_handler_loses_its_connection_only() {
        let app = Router::new().route("/", get(|| async { "hi" })).route(
            "/boom",
            get(|| async {
                if true {
                    panic!("a handler's bug");
                }
                "unreached"
            }),
        );
        let (addr, _stop, _task) = start_app(Limits::default(), app).await;
        let mut bad = TcpStream::connect(addr).await.unwrap();
        bad.write_all(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (text, _) = read_to_close(&mut bad).await;
        assert!(text.is_empty(), "{text}");
        let mut good = TcpStream::connect(addr).await.unwrap();
        good.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (text, _) = read_to_close(&mut good).await;
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("hi"), "{text}");
    }

    /// A request in flight at shutdown is answered; an idle keep-alive
    /// connection and one that has sent nothing are closed at once, not at
    /// the drain deadline.
    #[tokio::test]
    async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
        let app = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let limits = Limits { drain_timeout: Duration::from_secs(5), ..Limits::default() };
        let (addr, stop, task) = start_app(limits, app).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let started = Instant::now();
        stop.cancel();
        let (answer, _) = read_to_close(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
        for stream in [&mut idle, &mut silent] {
            let (_, waited) = read_to_close(stream).await;
            assert!(waited < Duration::from_secs(2), "an idle connection was held {waited:?} after shutdown");
        }
        tokio::time::timeout(Duration::from_secs(2), task).await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "shutdown took {:?}", started.elapsed());
    }

    /// The drain has a deadline: a request still running then loses its
    /// connection, and the server ends.
    #[tokio::test]
    async fn a_request_still_running_at_the_drain_deadline_is_cut() {
        let app = Router::new().route(
            "/stuck",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        );
        let limits = Limits { drain_timeout: Duration::from_millis(300), ..Limits::default() };
        let (addr, stop, task) = start_app(limits, app).await;
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck.write_all(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        let (text, waited) = read_to_close(&mut stuck).await;
        assert!(text.is_empty(), "{text}");
        assert!(
            (Duration::from_millis(200)..Duration::from_secs(3)).contains(&waited),
            "closed {waited:?} after shutdown"
        );
        tokio::time::timeout(Duration::from_secs(2), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let (addr, stop, task) = start(Limits::default()).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
