//! A client for the sidecar's own `/healthz`, used to prove the server is
//! answering before any guest traffic is redirected to it (and, later, as
//! the container's startup probe).
//!
//! The listener only admits what arrived through the veth, and the probe's
//! marked socket (see [`crate::listener`]).

use std::{net::SocketAddrV4, time::Duration};

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, client::conn::http1};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connecting to {addr} through {device}")]
    Connect { addr: SocketAddrV4, device: String, source: std::io::Error },
    #[error("HTTP exchange with {addr}: {0}", addr = .1)]
    Http(String, SocketAddrV4),
    #[error("{addr}/healthz answered {status} {body:?}")]
    Unhealthy { addr: SocketAddrV4, status: StatusCode, body: String },
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddrV4, Duration),
}

/// One `GET /healthz`; succeeds on `200 OK` with body `OK`.
pub async fn healthz(addr: SocketAddrV4, device: &str, timeout: Duration) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, exchange(addr, device))
        .await
        .unwrap_or(Err(ProbeError::Timeout(addr, timeout)))
}

async fn exchange(addr: SocketAddrV4, device: &str) -> Result<(), ProbeError> {
    let connect_error = |source| ProbeError::Connect { addr, device: device.to_owned(), source };
    let socket = crate::listener::probe_socket(device).map_err(connect_error)?;
    let stream = socket.connect(addr.into()).await.map_err(connect_error)?;

    let http_error = |e: hyper::Error| ProbeError::Http(e.to_string(), addr);
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(http_error)?;
    let connection = tokio::spawn(connection);
    let request = Request::get("/healthz")
        .header(hyper::header::HOST, addr.ip().to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http(e.to_string(), addr))?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), 1024)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    connection.abort();
    if status == StatusCode::OK && body == "OK" {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy { addr, status, body })
    }
}
