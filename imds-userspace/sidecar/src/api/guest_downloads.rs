//! `GET /v1/guest/…`: the guest helper's builds and their digests, so a
//! stock image installs the helper from the IMDS with `curl` and
//! `sha256sum -c` (`deploy/guest/cloud-init.yaml`). Only names in
//! `imds_api::GUEST_BINARIES` that the sidecar found at start are served:
//! a path segment is compared with them, never joined to a path.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use imds_api::{DIGEST_SUFFIX, GUEST_PATH};
use serde_json::json;

use super::{ImdsState, error::ApiError};
use crate::guest_binaries::GuestBinary;

pub fn routes() -> Router<Arc<ImdsState>> {
    Router::new()
        .route(GUEST_PATH, get(listing))
        .route(&format!("{GUEST_PATH}/"), get(listing))
        .route(&format!("{GUEST_PATH}/{{file}}"), get(download))
}

/// `[{"name", "size", "sha256"}]` of what is served.
async fn listing(State(state): State<Arc<ImdsState>>) -> Response {
    let served: Vec<_> = state
        .guest_binaries
        .served
        .iter()
        .map(|b| json!({"name": b.name, "size": b.size, "sha256": b.sha256}))
        .collect();
    Json(served).into_response()
}

async fn download(State(state): State<Arc<ImdsState>>, Path(file): Path<String>) -> Response {
    let binaries = &state.guest_binaries;
    let not_found = || ApiError::GuestBinaryNotFound { served: binaries.names() }.into_response();
    if let Some(name) = file.strip_suffix(DIGEST_SUFFIX) {
        return match binaries.find(name) {
            // `sha256sum -c` format: two spaces, the name, a newline.
            Some(b) => {
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}  {}\n", b.sha256, b.name))
                    .into_response()
            }
            None => not_found(),
        };
    }
    match binaries.find(&file) {
        Some(b) => stream(b).await,
        None => not_found(),
    }
}

/// The file from disk, refused when it is no longer the one whose digest
/// is served (replaced in a running container, say).
async fn stream(binary: &GuestBinary) -> Response {
    let opened = async {
        let file = tokio::fs::File::open(&binary.path).await?;
        let len = file.metadata().await?.len();
        if len != binary.size {
            return Err(std::io::Error::other(format!("{len} bytes now, {} at start", binary.size)));
        }
        Ok(file)
    };
    match opened.await {
        Ok(file) => {
            let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(binary.size));
            response
        }
        Err(e) => {
            tracing::warn!(
                path = %binary.path.display(), error = %e,
                "GET {GUEST_PATH}/{} answered 503: the build changed or vanished since start", binary.name
            );
            ApiError::GuestBinaryUnavailable.into_response()
        }
    }
}
