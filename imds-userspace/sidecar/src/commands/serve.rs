//! `kubevirt-imds-sidecar serve`: the API on a plain address, without the
//! data path or the agent, with the same limits as `run` (benchmarks
//! compare it against other ways of serving 169.254.169.254).

use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{api, cli::ServeArgs, http_server, log_lines, token_watch};

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let listen = args.listen;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, "{}", log_lines::LOG_SERVING_PLAIN);
    let stop = CancellationToken::new();
    let state = args.api.state();
    let _watch = token_watch::start_or_warn(&state.tokens);
    let app = api::Api::new(Arc::new(state));
    let server = http_server::serve(listener, app, args.api.limits(), http_server::Plain, stop.clone());
    tokio::pin!(server);
    tokio::select! {
        () = &mut server => return Ok(()),
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    stop.cancel();
    server.await;
    Ok(())
}
