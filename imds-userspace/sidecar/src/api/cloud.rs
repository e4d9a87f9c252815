//! Serving the cloud metadata flavours (see [`crate::cloud`]): every path
//! the explicit `/v1` routes do not claim comes here.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    Extension, Json,
    body::Body,
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderValue, Method, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{ImdsState, error::ApiError};
use crate::{
    cloud::{
        Client, InstanceFacts, Missing, Resource, Segments,
        data::{DataError, DataSources},
        ec2,
        imdsv2::{self, Sessions},
        nocloud, openstack,
        ssh_keys::SshKeySources,
    },
    contract::{Flavor, Imdsv2},
};

/// The flavours of one VM and what they serve.
#[derive(Debug)]
pub struct CloudState {
    pub facts: InstanceFacts,
    pub flavors: BTreeSet<Flavor>,
    pub data: DataSources,
    pub ssh_keys: SshKeySources,
    pub imdsv2: Imdsv2,
    pub sessions: Sessions,
}

impl CloudState {
    /// OpenStack serves the EC2-compatible tree too (cloud-init's OpenStack
    /// datasource reads it).
    fn serves_ec2(&self) -> bool {
        self.flavors.contains(&Flavor::Ec2) || self.flavors.contains(&Flavor::Openstack)
    }
}

/// `peer` is the connection's address, which [`crate::http_server`] adds to
/// every request; in-process callers may leave it out.
pub async fn dispatch(
    State(state): State<std::sync::Arc<ImdsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let cloud = &state.cloud;
    let client = peer.map(|Extension(ConnectInfo(addr))| Client::from_peer(addr)).unwrap_or_default();
    if uri.path() == ec2::TOKEN_PATH && cloud.serves_ec2() {
        return issue_session(cloud, &method, &headers);
    }
    let Some(path) = Segments::parse(uri.path()) else {
        return ApiError::NotFound.into_response();
    };
    let flavor = match path.parts.first() {
        Some(&nocloud::PREFIX) if cloud.flavors.contains(&Flavor::Nocloud) => Flavor::Nocloud,
        Some(&openstack::PREFIX) if cloud.flavors.contains(&Flavor::Openstack) => Flavor::Openstack,
        _ if cloud.serves_ec2() && ec2::is_ec2_path(&path) => {
            if let Err(e) = check_session(cloud, &headers) {
                return e.into_response();
            }
            Flavor::Ec2
        }
        _ => return ApiError::NotFound.into_response(),
    };
    let facts = match facts_now(cloud).await {
        Ok(facts) => facts,
        Err(e) => return unavailable(e),
    };
    let resource = match flavor {
        Flavor::Nocloud => nocloud::resolve(&path, &facts),
        Flavor::Openstack => openstack::resolve(&path, &facts),
        Flavor::Ec2 => ec2::resolve(&path, &facts, &client),
    };
    let Some(resource) = resource else {
        return ApiError::MetadataNotFound.into_response();
    };
    // `password` refuses every method alike: cloudbase-init POSTs there.
    let any_method = matches!(resource, Resource::PasswordNotStored);
    if !any_method && method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed { allow: super::error::GET_HEAD }.into_response();
    }
    let response = render(resource, &cloud.data).await;
    if method == Method::HEAD { without_body(response) } else { response }
}

/// `PUT /latest/api/token`, with AWS's answers: 400 for a missing or
/// out-of-range TTL, the TTL echoed in a header. (A request with
/// `X-Forwarded-For` never gets here: it is refused with 403 first.)
fn issue_session(cloud: &CloudState, method: &Method, headers: &HeaderMap) -> Response {
    if method != Method::PUT {
        return ApiError::MethodNotAllowed { allow: "PUT" }.into_response();
    }
    let ttl = match imdsv2::parse_ttl(headers.get(imdsv2::TTL_HEADER).map(HeaderValue::as_bytes)) {
        Ok(ttl) => ttl,
        Err(e) => return ApiError::Ec2TtlInvalid(e).into_response(),
    };
    match cloud.sessions.issue(Duration::from_secs(u64::from(ttl)), Instant::now()) {
        Ok(token) => (
            [
                (header::CONTENT_TYPE, "text/plain"),
                (header::HeaderName::from_static(imdsv2::TTL_HEADER), &ttl.to_string()),
            ],
            token,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "no randomness for an IMDSv2 session token");
            ApiError::MetadataUnavailable.into_response()
        }
    }
}

/// The facts with the SSH keys the Secret volumes hold now (they change
/// with the Secrets, like user-data).
async fn facts_now(cloud: &CloudState) -> Result<std::borrow::Cow<'_, InstanceFacts>, DataError> {
    if cloud.ssh_keys.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(&cloud.facts));
    }
    let public_keys = cloud.ssh_keys.load().await?;
    Ok(std::borrow::Cow::Owned(InstanceFacts { public_keys, ..cloud.facts.clone() }))
}

/// A presented token must be valid; none at all is fine unless required.
fn check_session(cloud: &CloudState, headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(imdsv2::TOKEN_HEADER) {
        Some(token) if cloud.sessions.is_valid(token.as_bytes(), Instant::now()) => Ok(()),
        Some(_) => Err(ApiError::Ec2SessionInvalid),
        None if cloud.imdsv2 == Imdsv2::Required => Err(ApiError::Ec2SessionRequired),
        None => Ok(()),
    }
}

async fn render(resource: Resource, data: &DataSources) -> Response {
    match resource {
        Resource::Text(text) => ([(header::CONTENT_TYPE, "text/plain")], text).into_response(),
        Resource::Json(value) => Json(value).into_response(),
        Resource::UserData(missing) => raw(data.user_data().await, missing),
        Resource::VendorData(missing) => raw(data.vendor_data().await, missing),
        Resource::VendorDataJson => match data.vendor_data().await {
            Ok(Some(bytes)) => match String::from_utf8(bytes) {
                // cloud-init takes the "cloud-init" key of vendor_data.json as its vendor-data.
                Ok(text) => Json(json!({ "cloud-init": text })).into_response(),
                Err(_) => Json(json!({})).into_response(),
            },
            Ok(None) => Json(json!({})).into_response(),
            Err(e) => unavailable(e),
        },
        Resource::NetworkConfig => raw(data.network_data().await, Missing::Empty),
        Resource::NetworkDataJson => match data.network_data().await {
            Ok(Some(bytes)) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(value) if value.get("links").is_some() => Json(value).into_response(),
                // NoCloud-style (YAML) network data has no OpenStack form.
                _ => ApiError::MetadataNotFound.into_response(),
            },
            Ok(None) => ApiError::MetadataNotFound.into_response(),
            Err(e) => unavailable(e),
        },
        Resource::PasswordNotStored => ApiError::PasswordNotStored.into_response(),
    }
}

fn raw(read: Result<Option<Vec<u8>>, DataError>, missing: Missing) -> Response {
    match (read, missing) {
        (Ok(Some(bytes)), _) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        (Ok(None), Missing::Empty) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], Vec::new()).into_response()
        }
        (Ok(None), Missing::NotFound) => ApiError::MetadataNotFound.into_response(),
        (Err(e), _) => unavailable(e),
    }
}

fn unavailable(e: DataError) -> Response {
    tracing::warn!(error = %crate::errors::chain(&e), "metadata answered 503");
    ApiError::MetadataUnavailable.into_response()
}

fn without_body(response: Response) -> Response {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Body::empty())
}
