//! One accepted connection as a future: its handshake under the head
//! deadline, then HTTP/1.1 until the peer or hyper ends it.
//!
//! A state machine rather than a spawned `async` block, for two reasons:
//! the accept loop polls every connection itself (no task, so no aligned
//! task allocation and no scheduler hand-off per connection), and shutdown
//! can reach the hyper connection to end it gracefully without a watch
//! channel every connection registers with on every poll.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::response::Response;
use hyper::{Request, body::Incoming, server::conn::http1};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::time::Sleep;
use tower::Service;

use super::Handshake;
use crate::write_deadline::WriteDeadline;

/// What answers the requests of one connection (hyper's needs, and
/// `Unpin` so that a connection can be moved into the drain at shutdown).
pub trait Answer:
    Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send + 'static> + Clone + Unpin
{
}

impl<S> Answer for S where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Unpin
{
}

type Http<H, S> = http1::Connection<TokioIo<WriteDeadline<<H as Handshake>::Io>>, TowerToHyperService<S>>;

pub(super) struct Connection<'a, H: Handshake, S: Answer> {
    peer: SocketAddr,
    state: State<'a, H, S>,
}

// Each connection is allocated once, whole, in the accept loop's set;
// boxing the large variant would add an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum State<'a, H: Handshake, S: Answer> {
    Handshaking {
        accept: H::Accept,
        /// Made when the handshake first has to wait: a plain connection's
        /// never does.
        deadline: Option<Pin<Box<Sleep>>>,
        http: &'a http1::Builder,
        limits: &'a super::Limits,
        service: S,
    },
    Serving(Http<H, S>),
    Done,
}

impl<'a, H: Handshake, S: Answer> Connection<'a, H, S> {
    pub(super) fn new(
        accept: H::Accept,
        peer: SocketAddr,
        service: S,
        http: &'a http1::Builder,
        limits: &'a super::Limits,
    ) -> Self {
        let state = State::Handshaking { accept, deadline: None, http, limits, service };
        Self { peer, state }
    }

    /// Shutdown: a connection still in its handshake is dropped (it has
    /// sent no request); HTTP finishes the request in flight, if any, and
    /// closes. The caller must poll the connection afterwards.
    pub(super) fn shut_down(&mut self) {
        match &mut self.state {
            State::Serving(http) => Pin::new(http).graceful_shutdown(),
            State::Handshaking { .. } => self.state = State::Done,
            State::Done => {}
        }
    }
}

impl<H: Handshake, S: Answer> Future for Connection<'_, H, S> {
    type Output = ();

    /// A panic while answering (a bug: nothing a client sends may cause
    /// one) ends this connection only, as it did when each connection was
    /// a task of its own; nothing of the connection is used afterwards.
    /// Where `panic = "abort"` (the sidecar), the process ends instead.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| this.advance(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                this.end(|peer| tracing::error!(%peer, "answering this connection panicked; it is closed"))
            }
        }
    }
}

impl<H: Handshake, S: Answer> Connection<'_, H, S> {
    fn advance(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let this = self;
        if let State::Handshaking { accept, deadline, limits, .. } = &mut this.state {
            let io = match Pin::new(accept).poll(cx) {
                Poll::Ready(Ok(io)) => io,
                Poll::Ready(Err(e)) => {
                    return this.end(|peer| tracing::debug!(%peer, error = %e, "handshake failed"));
                }
                Poll::Pending => {
                    let timer =
                        deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limits.head_timeout)));
                    ready!(timer.as_mut().poll(cx));
                    return this.end(|peer| tracing::debug!(%peer, "handshake timed out"));
                }
            };
            if let State::Handshaking { http, limits, service, .. } =
                std::mem::replace(&mut this.state, State::Done)
            {
                let io = TokioIo::new(WriteDeadline::new(io, limits.response_timeout));
                this.state = State::Serving(http.serve_connection(io, TowerToHyperService::new(service)));
            }
        }
        match &mut this.state {
            State::Serving(http) => {
                if let Err(e) = ready!(Pin::new(http).poll(cx)) {
                    let peer = this.peer;
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                this.state = State::Done;
                Poll::Ready(())
            }
            State::Handshaking { .. } | State::Done => Poll::Ready(()),
        }
    }

    fn end(&mut self, log: impl FnOnce(SocketAddr)) -> Poll<()> {
        log(self.peer);
        self.state = State::Done;
        Poll::Ready(())
    }
}
