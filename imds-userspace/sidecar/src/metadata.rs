//! The per-VM facts the IMDS serves, fixed for the life of the sidecar.

use serde::Serialize;

/// Who the VM is, as `GET /v1/identity` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub namespace: String,
    pub service_account_name: String,
    pub vm_name: String,
}

/// The ServiceAccount's AWS IRSA role, as `GET /v1/aws` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsRole {
    pub role_arn: String,
    /// The audience of the token to present to STS.
    pub audience: String,
}
