//! `GET /v1/token` (the default token: no query) and `GET /v1/identity`,
//! the requests guests repeat, answered before the router: the same checks
//! ([`guards::check`]) and the same answers as its routes (a test compares
//! them request by request). Anything else, `HEAD` and queries included,
//! is left to the router. What this skips is what the router does for
//! every request on its way to a handler: a map of extensions allocated,
//! filled and dropped (the peer, axum's URL parameters), the request body
//! boxed, the handler's future boxed (`cargo xtask bench --only api`
//! counts the instructions).

use std::sync::Arc;

use axum::{
    body::Bytes,
    http::{HeaderMap, Method, Uri},
    response::{IntoResponse, Response},
};
use imds_api::{IDENTITY_PATH, TOKEN_PATH};

use super::{ImdsState, guards, json_body, token_response};

#[derive(Debug)]
pub struct FastPath {
    pub state: Arc<ImdsState>,
    /// The `/v1/identity` body, prepared once.
    pub identity: Bytes,
}

impl FastPath {
    /// The answer to this request, or `None`: the router's to give.
    pub fn answer(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
        if method != Method::GET || uri.query().is_some() {
            return None;
        }
        let token = match uri.path() {
            TOKEN_PATH => true,
            IDENTITY_PATH => false,
            _ => return None,
        };
        if let Err(refused) = guards::check(headers, uri) {
            return Some(refused.into_response());
        }
        Some(if token { token_response(&self.state, None) } else { json_body(self.identity.clone()) })
    }
}
