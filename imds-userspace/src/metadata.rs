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
