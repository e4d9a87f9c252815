//! A local HTTPS endpoint that answers ServiceAccount reads the way the
//! Kubernetes API server does, for the webhook's IRSA lookup: a normal
//! account, one with EKS annotations, a 403, and one that hangs.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::json;

/// The bearer token the kubeconfig carries and the fake insists on.
pub const TOKEN: &str = "fake-apiserver-token";

pub struct FakeApiServer {
    pub addr: SocketAddr,
    /// ServiceAccount reads so far, by `namespace/name`.
    pub reads: Arc<Mutex<HashMap<String, usize>>>,
    /// Bearer tokens accepted besides [`TOKEN`].
    accepted: Arc<Mutex<Vec<String>>>,
    runtime: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct Shared {
    reads: Arc<Mutex<HashMap<String, usize>>>,
    accepted: Arc<Mutex<Vec<String>>>,
}

impl FakeApiServer {
    /// Serves with `tls.crt`/`tls.key` from `tls_dir`.
    pub fn start(tls_dir: &Path) -> anyhow::Result<Self> {
        let certs = CertificateDer::pem_file_iter(tls_dir.join("tls.crt"))?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(tls_dir.join("tls.key"))?;
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let reads = Arc::new(Mutex::new(HashMap::new()));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/api/v1/namespaces/{namespace}/serviceaccounts/{name}", get(service_account))
            .with_state(Shared { reads: reads.clone(), accepted: accepted.clone() });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).context("binding")?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let service = TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, reads, accepted, runtime })
    }

    /// Accepts `token` as a bearer too (a ServiceAccount token a client
    /// read from a file).
    pub fn accept_bearer(&self, token: &str) {
        if let Ok(mut accepted) = self.accepted.lock() {
            accepted.push(token.to_owned());
        }
    }

    /// A kubeconfig for this endpoint, trusting `ca`, verifying the name
    /// `server_name` (the fake's certificate is not for 127.0.0.1).
    pub fn kubeconfig(&self, ca: &Path, server_name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://{}\n    \
             certificate-authority: {}\n    tls-server-name: {server_name}\nusers:\n- name: webhook\n  user:\n    \
             token: {TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: webhook\n\
             current-context: fake\n",
            self.addr,
            ca.display()
        )
    }

    pub fn reads_of(&self, namespace: &str, name: &str) -> usize {
        self.reads.lock().map(|r| r.get(&format!("{namespace}/{name}")).copied().unwrap_or(0)).unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        // Hanging handlers must not keep the test alive.
        let runtime = std::mem::replace(
            &mut self.runtime,
            tokio::runtime::Builder::new_current_thread().build().expect("a runtime"),
        );
        runtime.shutdown_background();
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body)).into_response()
}

async fn service_account(
    State(Shared { reads, accepted }): State<Shared>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Ok(mut reads) = reads.lock() {
        *reads.entry(format!("{namespace}/{name}")).or_default() += 1;
    }
    // The scheme is case-insensitive (RFC 9110 §11.1): the Python client sends `bearer`.
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    let known = bearer.is_some_and(|b| b == TOKEN || accepted.lock().is_ok_and(|a| a.iter().any(|t| t == b)));
    if !known {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let account = |annotations: serde_json::Value| {
        Json(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": namespace, "uid": "5d4c7b1a-0000-4000-8000-000000000001",
                                 "annotations": annotations}}))
        .into_response()
    };
    match name.as_str() {
        "plain" | "default" => account(json!({})),
        "irsa" => account(json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/vm-reader"})),
        "irsa-custom" => {
            account(json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/vm-writer",
                                        "eks.amazonaws.com/audience": "my-sts"}))
        }
        "forbidden" => status(
            403,
            "Forbidden",
            &format!(
                "serviceaccounts \"{name}\" is forbidden: User \"system:serviceaccount:kubevirt-imds:kubevirt-imds-webhook\" cannot get resource \"serviceaccounts\" in API group \"\" in the namespace \"{namespace}\""
            ),
        ),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            account(json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/too-late"}))
        }
        _ => status(404, "NotFound", &format!("serviceaccounts \"{name}\" not found")),
    }
}
