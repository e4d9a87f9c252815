//! The webhook's certificate, reloaded from its files when they change (a
//! renewed cert-manager Secret) without a restart: new handshakes get the
//! new certificate, connections already open keep theirs.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} is not a PEM certificate chain")]
    BadCertificate(PathBuf, #[source] rustls::pki_types::pem::Error),
    #[error("{0} is not a PEM private key")]
    BadKey(PathBuf, #[source] rustls::pki_types::pem::Error),
    #[error("the key in {key} does not fit the certificate in {cert}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// Where the certificate and key are (a mounted `kubernetes.io/tls` Secret).
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.to_owned(), e));
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    fn parse(&self, cert: &[u8], key: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate(self.cert.clone(), e))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::BadKey(self.key.clone(), e))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }
}

/// Hands the current certificate to every new handshake.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: CertificateFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

/// The certificate in use and the file contents it came from.
#[derive(Debug)]
struct Loaded {
    certified: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: KeyPem,
}

/// The private key file's bytes, kept to notice a change. Its `Debug`
/// (reached through rustls' `ServerConfig`) never shows them.
#[derive(PartialEq, Eq)]
struct KeyPem(Vec<u8>);

impl std::fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<private key, {} bytes>", self.0.len())
    }
}

impl ReloadingCertificate {
    /// Loads the files; fails if they are missing or invalid now.
    pub fn load(files: CertificateFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = files.read()?;
        let certified = Arc::new(files.parse(&cert, &key, &provider)?);
        let current = RwLock::new(Loaded { certified, cert_pem: cert, key_pem: KeyPem(key) });
        Ok(Arc::new(Self { files, provider, current }))
    }

    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Re-reads the files; swaps the certificate if they changed and are
    /// valid. Returns whether it swapped. A broken new pair (e.g. the key
    /// written before the certificate) keeps the old one until it is whole.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = self.files.read()?;
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.cert_pem == cert && current.key_pem.0 == key {
                return Ok(false);
            }
        }
        let certified = Arc::new(self.files.parse(&cert, &key, &self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Loaded { certified, cert_pem: cert, key_pem: KeyPem(key) };
        Ok(true)
    }

    /// Polls the files every `interval` until `stop`.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => match self.reload() {
                    Ok(true) => tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %crate::errors::chain(&e), "new TLS certificate not usable; keeping the current one"),
                },
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).certified.clone())
    }
}

/// The TLS handshake of every webhook connection, for [`crate::http_server::serve`].
#[derive(Clone)]
pub struct Handshake(pub tokio_rustls::TlsAcceptor);

impl crate::http_server::Handshake for Handshake {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Accept = tokio_rustls::Accept<tokio::net::TcpStream>;

    fn handshake(&self, stream: tokio::net::TcpStream) -> Self::Accept {
        self.0.accept(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_debug_output_shows_the_private_key() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["kubevirt-imds-webhook.kubevirt-imds.svc".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = CertificateFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let loaded = ReloadingCertificate::load(files).unwrap();
        let config = loaded.server_config().unwrap();
        let printed = format!("{loaded:?} {config:?} {:#?}", loaded.current.read().unwrap());
        // The key as text, and as Debug renders bytes ("77, 73, 71, …"),
        // of its PEM and of its DER. The windows hold the private scalar
        // (a P-256 PKCS#8 key: DER bytes 36..68): the algorithm prefix
        // before it is in the certificate too.
        let pem = key.serialize_pem();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!printed.contains(line), "the key's PEM leaked into Debug");
        }
        let as_debug_bytes = |bytes: &[u8]| format!("{bytes:?}").trim_matches(['[', ']']).to_owned();
        assert!(
            !printed.contains(&as_debug_bytes(&pem.as_bytes()[78..92])),
            "the key file's bytes leaked into Debug"
        );
        assert!(
            !printed.contains(&as_debug_bytes(&key.serialize_der()[36..68])),
            "the key's DER leaked into Debug"
        );
        assert!(printed.contains("<private key,"), "{printed}");
    }
}
