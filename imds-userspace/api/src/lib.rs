//! The HTTP API of the IMDS, as the server (`imds-sidecar`) and its clients
//! in this workspace (`kubevirt-imds-guest`) see it: one definition of each
//! path, header and response body, and of the token claims both act on
//! ([`jwt`]). Small on purpose (serde, base64): the guest helper, which runs
//! inside every VM that wants token files, links this crate.

pub mod jwt;

use serde::{Deserialize, Serialize};

/// Every path under `/v1/` needs this header with [`METADATA_HEADER_VALUE`]
/// (SSRF defence, as Azure's IMDS does).
pub const METADATA_HEADER: &str = "Metadata";
pub const METADATA_HEADER_VALUE: &str = "true";

/// Liveness; the only path without the header.
pub const HEALTHZ_PATH: &str = "/healthz";
/// A ServiceAccount token: the default one, or `?audience=` one of the
/// configured extra audiences.
pub const TOKEN_PATH: &str = "/v1/token";
/// The query parameter of [`TOKEN_PATH`] naming the audience.
pub const AUDIENCE_PARAM: &str = "audience";
/// Who the VM is ([`IdentityResponse`]).
pub const IDENTITY_PATH: &str = "/v1/identity";
/// The ServiceAccount's IRSA role ([`AwsRole`]); 404 when none.
pub const AWS_PATH: &str = "/v1/aws";
/// The guest helper's binaries and their digests: `GUEST_PATH/<name>` and
/// `GUEST_PATH/<name>.sha256` for each of [`GUEST_BINARIES`].
pub const GUEST_PATH: &str = "/v1/guest";
/// The suffix of a binary's digest file, in `sha256sum` format
/// (`<hex>  <name>\n`, so `sha256sum -c` checks a download).
pub const DIGEST_SUFFIX: &str = ".sha256";

/// The guest helper's downloadable builds: file name under [`GUEST_PATH`]
/// (also the file name in the sidecar's image) and the Rust target built.
pub const GUEST_BINARIES: [GuestBinary; 2] = [
    GuestBinary { name: "kubevirt-imds-guest-linux-amd64", target: "x86_64-unknown-linux-musl" },
    GuestBinary { name: "kubevirt-imds-guest-linux-arm64", target: "aarch64-unknown-linux-musl" },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBinary {
    pub name: &'static str,
    pub target: &'static str,
}

impl GuestBinary {
    /// The binary named `name` (a path segment a client sent), if it is one.
    pub fn by_name(name: &str) -> Option<&'static GuestBinary> {
        GUEST_BINARIES.iter().find(|b| b.name == name)
    }
}

/// The body of [`TOKEN_PATH`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub token: String,
    /// RFC 3339, UTC, from the token's `exp` claim.
    pub expiration_timestamp: String,
}

/// Never prints the token.
impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .field("expiration_timestamp", &self.expiration_timestamp)
            .finish()
    }
}

/// The body of [`AWS_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsRole {
    pub role_arn: String,
    /// The audience of the token to present to STS.
    pub audience: String,
}

/// The body of [`IDENTITY_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub namespace: String,
    pub service_account_name: String,
    pub vm_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityResponse {
    #[serde(flatten)]
    pub identity: Identity,
    /// Extra audiences [`TOKEN_PATH`]`?audience=` serves.
    pub audiences: Vec<String>,
    /// Whether [`TOKEN_PATH`] without an audience (the API server's) is served.
    pub default_token: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_hides_the_token() {
        let t =
            TokenResponse { token: "eyJsecret".into(), expiration_timestamp: "2100-01-01T00:00:00Z".into() };
        let shown = format!("{t:?}");
        assert!(!shown.contains("eyJsecret"), "{shown}");
        assert!(shown.contains("2100-01-01T00:00:00Z"), "{shown}");
    }

    #[test]
    fn identity_is_flat_on_the_wire() {
        let body = r#"{"namespace":"vm-team","serviceAccountName":"builder","vmName":"fedora-42","audiences":["vault"],"defaultToken":true}"#;
        let parsed: IdentityResponse = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.identity.vm_name, "fedora-42");
        assert_eq!(serde_json::to_string(&parsed).unwrap(), body);
    }

    #[test]
    fn guest_binaries_are_found_by_exact_name_only() {
        assert_eq!(
            GuestBinary::by_name("kubevirt-imds-guest-linux-amd64").map(|b| b.target),
            Some("x86_64-unknown-linux-musl")
        );
        for hostile in [
            "",
            "..",
            "../kubevirt-imds-sidecar",
            "kubevirt-imds-guest-linux-amd64/",
            "KUBEVIRT-IMDS-GUEST-LINUX-AMD64",
        ] {
            assert_eq!(GuestBinary::by_name(hostile), None, "{hostile:?}");
        }
    }
}
