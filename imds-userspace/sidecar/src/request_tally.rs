//! Counts the requests the API answers and notes the agent's probe nonces
//! ([`channel::PROBE_HEADER`]) in [`crate::readiness`]: a wrapper around
//! each connection's service, so the API knows nothing of it. The probe
//! itself is a plain `GET /healthz`. Hand-written rather than
//! `middleware::from_fn`, which boxes the request's way through it: this
//! runs on every request.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{http::Request, response::Response};
use imds_common::{channel, http_server::ConnectionService};
use tower_service::Service;

use crate::readiness::SharedReadiness;

/// `app`, tallying every request of every connection into `readiness`.
#[derive(Debug, Clone)]
pub struct Tally<A> {
    app: A,
    readiness: SharedReadiness,
}

impl<A> Tally<A> {
    pub fn new(app: A, readiness: SharedReadiness) -> Self {
        Self { app, readiness }
    }
}

impl<A: ConnectionService> ConnectionService for Tally<A> {
    type Service = Tallied<A::Service>;

    fn for_peer(&self, peer: SocketAddr) -> Tallied<A::Service> {
        Tallied { inner: self.app.for_peer(peer), readiness: self.readiness.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Tallied<S> {
    inner: S,
    readiness: SharedReadiness,
}

impl<S, B> Service<Request<B>> for Tallied<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Copied only when present (the agent's probe; guests do not send
        // it), before the request moves into the handler.
        let nonce = request
            .headers()
            .get(channel::PROBE_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Counted { inner: self.inner.call(request), readiness: Some(self.readiness.clone()), nonce }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future; notes the request once it has an answer.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        readiness: Option<SharedReadiness>,
        nonce: Option<String>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx));
        // Noted before the response is written: the agent reports the
        // nonce only after reading the answer.
        if let Some(readiness) = this.readiness.take() {
            readiness.update(|r| r.request_served(this.nonce.as_deref()));
        }
        Poll::Ready(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::Listener;
    use axum::{Router, body::Body, http::StatusCode, routing::get};
    use imds_common::contract::{IMDS_HOST, IMDS_IP, IMDS_PORT};
    use std::{net::SocketAddrV4, time::SystemTime};
    use tower::ServiceExt as _;

    /// `path` through a connection's service, as `http_server` makes it.
    async fn call<A>(app: &Tally<A>, path: &str, headers: &[(&str, &str)]) -> StatusCode
    where
        A: ConnectionService,
        Tallied<A::Service>: Service<Request<Body>, Response = Response, Error = Infallible>,
    {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let connection = app.for_peer(SocketAddr::from(([10, 0, 2, 2], 41000)));
        connection.oneshot(request.body(Body::empty()).unwrap()).await.unwrap().status()
    }

    #[tokio::test]
    async fn every_request_is_counted_and_probe_nonces_noted() {
        let readiness = SharedReadiness::default();
        readiness.update(|r| {
            r.set_listener(Listener::Listening { addr: SocketAddrV4::new(IMDS_IP, IMDS_PORT), ifindex: 7 })
        });
        let app = Tally::new(Router::new().route("/healthz", get(|| async { "OK" })), readiness.clone());

        assert_eq!(call(&app, "/healthz", &[]).await, StatusCode::OK);
        assert_eq!(call(&app, "/healthz", &[(channel::PROBE_HEADER, "nonce-1")]).await, StatusCode::OK);
        // Unrouted requests are answered, so counted, too.
        assert_eq!(call(&app, "/nope", &[]).await, StatusCode::NOT_FOUND);
        assert_eq!(readiness.status().served, 3);

        let report = |nonce: &str| readiness.update(|r| r.probe_succeeded(nonce, None, SystemTime::now()));
        assert!(report("nonce-2").is_err(), "a nonce never sent was accepted");
        assert_eq!(report("nonce-1"), Ok(true));
        assert!(readiness.status().ready);
    }

    #[tokio::test]
    async fn the_real_api_is_tallied_fast_path_included() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            api: crate::config::ApiArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let token_dir = dir.path().to_str().unwrap();
        let argv = [
            "x",
            "--namespace",
            "ns",
            "--service-account-name",
            "sa",
            "--vm-name",
            "vm",
            "--token-dir",
            token_dir,
        ];
        let args = <Cli as clap::Parser>::try_parse_from(argv).unwrap().api;
        let readiness = SharedReadiness::default();
        let app = Tally::new(crate::api::Api::new(std::sync::Arc::new(args.state())), readiness.clone());
        assert_eq!(call(&app, "/healthz", &[(channel::PROBE_HEADER, "n")]).await, StatusCode::OK);
        assert_eq!(readiness.status().served, 1);
        // Answered before the router (see api::fast_path), counted all the same.
        let guest = [("host", IMDS_HOST), ("metadata", "true")];
        assert_eq!(call(&app, imds_api::IDENTITY_PATH, &guest).await, StatusCode::OK);
        assert_eq!(call(&app, imds_api::IDENTITY_PATH, &[]).await, StatusCode::BAD_REQUEST);
        assert_eq!(readiness.status().served, 3);
    }
}
