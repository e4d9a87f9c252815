//! The per-VM facts the IMDS serves, fixed for the life of the sidecar:
//! the bodies of `GET /v1/identity` and `GET /v1/aws`, defined once in
//! `imds-api` for the server and the guest helper alike.

pub use imds_api::{AwsRole, Identity};
