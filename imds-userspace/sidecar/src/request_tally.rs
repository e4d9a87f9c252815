//! Counts the requests the API answers and notes the agent's probe nonces
//! ([`channel::PROBE_HEADER`]) in [`crate::readiness`]: a layer around the
//! router, so the handlers know nothing of it. The probe itself is a plain
//! `GET /healthz`. Hand-written rather than `middleware::from_fn`, which
//! boxes the request's way through it: this runs on every request.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{Router, extract::Request, response::Response};
use imds_common::channel;
use tower_layer::Layer;
use tower_service::Service;

use crate::readiness::SharedReadiness;

/// `app`, tallying into `readiness`.
pub fn layer(app: Router, readiness: SharedReadiness) -> Router {
    app.layer(Tally { readiness })
}

#[derive(Debug, Clone)]
struct Tally {
    readiness: SharedReadiness,
}

impl<S> Layer<S> for Tally {
    type Service = Tallied<S>;

    fn layer(&self, inner: S) -> Tallied<S> {
        Tallied { inner, readiness: self.readiness.clone() }
    }
}

#[derive(Debug, Clone)]
struct Tallied<S> {
    inner: S,
    readiness: SharedReadiness,
}

impl<S> Service<Request> for Tallied<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
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
    struct Counted<F> {
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
    use axum::{body::Body, http::StatusCode, routing::get};
    use imds_common::contract::{IMDS_IP, IMDS_PORT};
    use std::{net::SocketAddrV4, time::SystemTime};
    use tower::ServiceExt as _;

    async fn call(app: &Router, headers: &[(&str, &str)]) -> StatusCode {
        let mut request = Request::get("/healthz");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap().status()
    }

    #[tokio::test]
    async fn every_request_is_counted_and_probe_nonces_noted() {
        let readiness = SharedReadiness::default();
        readiness.update(|r| {
            r.set_listener(Listener::Listening { addr: SocketAddrV4::new(IMDS_IP, IMDS_PORT), ifindex: 7 })
        });
        let app = layer(Router::new().route("/healthz", get(|| async { "OK" })), readiness.clone());

        assert_eq!(call(&app, &[]).await, StatusCode::OK);
        assert_eq!(call(&app, &[(channel::PROBE_HEADER, "nonce-1")]).await, StatusCode::OK);
        // Unrouted requests are answered, so counted, too.
        let missing = app.clone().oneshot(Request::get("/nope").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(readiness.status().served, 3);

        let report = |nonce: &str| readiness.update(|r| r.probe_succeeded(nonce, None, SystemTime::now()));
        assert!(report("nonce-2").is_err(), "a nonce never sent was accepted");
        assert_eq!(report("nonce-1"), Ok(true));
        assert!(readiness.status().ready);
    }

    #[tokio::test]
    async fn the_real_router_is_tallied() {
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
        let app = layer(crate::api::router(std::sync::Arc::new(args.state())), readiness.clone());
        assert_eq!(call(&app, &[(channel::PROBE_HEADER, "n")]).await, StatusCode::OK);
        assert_eq!(readiness.status().served, 1);
    }
}
