//! What the API layer costs per request (fast path or router, guards,
//! tally, handler, body), without sockets or hyper: `requests` requests
//! handed in-process to one connection's service, as `run` makes it.
//! Under `valgrind --tool=callgrind` the instruction count does not depend
//! on how busy the machine is, so before/after comparisons of this layer
//! need no quiet machine (`cargo xtask bench --only api`).
//!
//! Usage: api_cost --path /v1/token --requests 10000 --namespace … (the
//! `serve` options that say what is served, e.g. `--token-dir`)

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode},
};
use clap::Parser as _;
use imds_sidecar::{
    api, config::ApiArgs, http_server::ConnectionService as _, readiness::SharedReadiness, request_tally,
    token_watch,
};
use tower::ServiceExt as _;

#[derive(clap::Parser)]
struct Args {
    /// The path every request asks for.
    #[arg(long)]
    path: String,
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Build the requests but send none: what the loop itself costs, to
    /// subtract.
    #[arg(long)]
    baseline: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread, as the sidecar runs.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let state = args.api.state();
        let _watch = token_watch::start_or_warn(&state.tokens);
        let app = request_tally::Tally::new(api::Api::new(Arc::new(state)), SharedReadiness::default());
        let peer = std::net::SocketAddr::from(([10, 0, 2, 2], 41000));
        let mut connection = app.for_peer(peer);
        let mut bytes = 0;
        for _ in 0..args.requests {
            let request = Request::get(args.path.as_str())
                .header("host", imds_sidecar::contract::IMDS_HOST)
                .header("metadata", "true")
                .header("user-agent", "curl/8.5.0")
                .header("accept", "*/*")
                .body(Body::empty())?;
            if args.baseline {
                bytes += std::hint::black_box(request).headers().len();
                continue;
            }
            let response = (&mut connection).oneshot(request).await.context("the API failed")?;
            ensure!(response.status() == StatusCode::OK, "{} answered {}", args.path, response.status());
            bytes += to_bytes(response.into_body(), 1 << 20).await?.len();
        }
        println!("{} requests, {bytes} body bytes", args.requests);
        Ok(())
    })
}
