//! The IMDS's HTTP API from the guest's side: plain HTTP/1.1, no proxy
//! (the IMDS refuses forwarded requests), a deadline on every request and
//! a bound on every body.

use std::time::Duration;

use imds_api::{
    AUDIENCE_PARAM, AWS_PATH, AwsRole, IDENTITY_PATH, IdentityResponse, METADATA_HEADER,
    METADATA_HEADER_VALUE, TOKEN_PATH, TokenResponse,
};

/// A token response is ~1–2 KiB; the bound only stops a runaway peer.
const MAX_BODY: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("GET {url}: {source}")]
    Unreachable { url: String, source: Box<ureq::Error> },
    #[error("GET {url} answered {status}: {reason}")]
    Refused { url: String, status: u16, reason: String },
    #[error("GET {url}: the body is not the expected JSON: {message}")]
    BadBody { url: String, message: String },
}

impl ImdsError {
    /// 404: the IMDS does not serve this (no role, audience not configured).
    pub fn is_not_served(&self) -> bool {
        matches!(self, Self::Refused { status: 404 | 403, .. })
    }
}

pub struct ImdsClient {
    base: String,
    agent: ureq::Agent,
}

impl ImdsClient {
    pub fn new(base: &str, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("kubevirt-imds-guest/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { base: base.trim_end_matches('/').to_owned(), agent }
    }

    pub fn token(&self, audience: Option<&str>) -> Result<TokenResponse, ImdsError> {
        self.get_json(TOKEN_PATH, audience.map(|a| (AUDIENCE_PARAM, a)))
    }

    pub fn identity(&self) -> Result<IdentityResponse, ImdsError> {
        self.get_json(IDENTITY_PATH, None)
    }

    /// The IRSA role, `None` when the IMDS has none for this VM.
    pub fn aws(&self) -> Result<Option<AwsRole>, ImdsError> {
        match self.get_json(AWS_PATH, None) {
            Ok(role) => Ok(Some(role)),
            Err(e) if e.is_not_served() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: Option<(&str, &str)>,
    ) -> Result<T, ImdsError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url).header(METADATA_HEADER, METADATA_HEADER_VALUE);
        if let Some((k, v)) = query {
            request = request.query(k, v);
        }
        let shown = match query {
            Some((k, v)) => format!("{url}?{k}={v}"),
            None => url.clone(),
        };
        let unreachable = |source| ImdsError::Unreachable { url: shown.clone(), source: Box::new(source) };
        let mut response = request.call().map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(MAX_BODY).read_to_vec().map_err(unreachable)?;
        if status != 200 {
            return Err(ImdsError::Refused { url: shown, status, reason: error_reason(&body) });
        }
        serde_json::from_slice(&body).map_err(|e| ImdsError::BadBody { url: shown, message: e.to_string() })
    }
}

/// The IMDS's error body is `{"error":"<code>","message":…}`
/// (`imds-sidecar`'s `api/error.rs`); anything else is shown as text,
/// shortened, control characters removed.
fn error_reason(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        error: String,
        message: String,
    }
    if let Ok(b) = serde_json::from_slice::<Body>(body) {
        return format!("{}: {}", b.error, b.message);
    }
    let text: String = String::from_utf8_lossy(body).chars().filter(|c| !c.is_control()).take(200).collect();
    if text.is_empty() { "(no body)".into() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_summarised() {
        let json = br#"{"error":"audience_not_configured","message":"configured: vault"}"#;
        assert_eq!(error_reason(json), "audience_not_configured: configured: vault");
        assert_eq!(error_reason(b""), "(no body)");
        assert_eq!(error_reason(b"bad\ngateway\x1b[31m"), "badgateway[31m");
        assert_eq!(error_reason(&[b'x'; 5000]).len(), 200);
    }
}
