//! The mutating admission webhook: injects the IMDS sidecar into
//! virt-launcher pods of VMs that ask for it, and the SMBIOS datasource hint
//! into their VirtualMachineInstances.

pub use imds_common::{contract, errors, http_server};

pub mod admission_head;
pub mod annotations;
pub mod aws;
pub mod config;
pub mod datasource_hint;
pub mod firmware_uuid;
pub mod json_budget;
pub mod mutation;
pub mod policy;
pub mod qos;
pub mod quantity;
pub mod server;
pub mod sidecar_resources;
pub mod sidecar_spec;
pub mod ssh_keys;
#[cfg(test)]
mod test_requests;
pub mod tls;
pub mod validation;
pub mod vmi;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::http_server::Limits;
pub use config::WebhookArgs;
use tls::ReloadingCertificate;

pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let template = args.template()?;
    let certificate =
        ReloadingCertificate::load(args.certificate_files()).context("loading the TLS certificate")?;
    let acceptor = TlsAcceptor::from(Arc::new(certificate.server_config()?));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let stop = CancellationToken::new();
    tokio::spawn(certificate.clone().watch(args.cert_reload_interval, stop.clone()));
    let limits = Limits { head_timeout: Duration::from_secs(10), max_connections: 512, ..Limits::default() };
    let service_accounts = if args.aws_irsa {
        match aws::ServiceAccounts::connect(args.api_timeout).await {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(error = %crate::errors::chain(&e), "no Kubernetes API access: AWS IRSA hints are off");
                None
            }
        }
    } else {
        None
    };
    let state = Arc::new(server::WebhookState::new(template, args.policy(), service_accounts));
    tracing::info!(
        listen = %args.listen,
        image = %state.template.image,
        mode = ?state.template.mode,
        aws_irsa = state.service_accounts.is_some(),
        "webhook serving"
    );
    let server = tokio::spawn(http_server::serve(
        listener,
        server::router(state),
        limits,
        tls::Handshake(acceptor),
        stop.clone(),
    ));

    let mut sigterm = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    stop.cancel();
    let _ = server.await;
    Ok(())
}
