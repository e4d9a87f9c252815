//! The HTTP API over [`ImdsState`]: an axum [`Router`], and in front of it
//! the requests guests repeat ([`fast_path`]), together an [`Api`]. No
//! sockets here: [`crate::http_server`] serves it, tests call it in-process.

pub mod cloud;
pub mod error;
mod fast_path;
mod guards;
mod guest_downloads;

use std::{
    convert::Infallible,
    future::{Ready, ready},
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    BoxError, Json, Router,
    body::{Body, Bytes, HttpBody},
    extract::{RawQuery, State},
    http::{HeaderValue, Request, header},
    response::{IntoResponse, Response},
    routing::{future::RouteFuture, get},
};
use futures_util::future::Either;
use imds_api::IdentityResponse;
use imds_common::http_server::{ConnectionService, WithPeer};
use tower_service::Service;

use crate::{
    contract,
    metadata::{AwsRole, Identity},
    token::{TokenError, TokenSet},
};
use error::ApiError;
use fast_path::FastPath;

/// What the handlers read.
#[derive(Debug)]
pub struct ImdsState {
    pub identity: Identity,
    pub tokens: TokenSet,
    pub aws: Option<AwsRole>,
    pub cloud: cloud::CloudState,
    /// The guest helper's builds served under [`imds_api::GUEST_PATH`].
    pub guest_binaries: crate::guest_binaries::GuestBinaries,
}

/// The API as served: one [`Connection`] per client connection.
#[derive(Debug, Clone)]
pub struct Api {
    router: Router,
    fast_path: Arc<FastPath>,
}

impl Api {
    pub fn new(state: Arc<ImdsState>) -> Self {
        // Fixed for the life of the sidecar: serialised once.
        let identity = identity_body(&state);
        Self {
            router: router(state.clone(), identity.clone()),
            fast_path: Arc::new(FastPath { state, identity }),
        }
    }
}

impl ConnectionService for Api {
    type Service = Connection;

    fn for_peer(&self, peer: SocketAddr) -> Connection {
        Connection { router: WithPeer::new(self.router.clone(), peer), fast_path: self.fast_path.clone() }
    }
}

/// Answers one connection's requests: the fast path's, or the router's
/// (which sees the peer: EC2's `local-ipv4` answers with it).
#[derive(Debug, Clone)]
pub struct Connection {
    router: WithPeer<Router>,
    fast_path: Arc<FastPath>,
}

impl<B> Service<Request<B>> for Connection
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.fast_path.answer(request.method(), request.uri(), request.headers()) {
            Some(response) => Either::Left(ready(Ok(response))),
            None => Either::Right(self.router.call(request)),
        }
    }
}

fn router(state: Arc<ImdsState>, identity: Bytes) -> Router {
    let metadata = Router::new()
        .route(imds_api::TOKEN_PATH, get(token))
        .route(imds_api::IDENTITY_PATH, get(move || std::future::ready(json_body(identity.clone()))))
        .route(imds_api::AWS_PATH, get(aws))
        .merge(guest_downloads::routes());
    Router::new()
        .route(imds_api::HEALTHZ_PATH, get(healthz))
        .merge(metadata)
        .fallback(cloud::dispatch)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed { allow: error::GET_HEAD } })
        .layer(guards::Guards)
        .with_state(state)
}

async fn healthz() -> &'static str {
    "OK"
}

fn identity_body(state: &ImdsState) -> Bytes {
    let body = IdentityResponse {
        identity: state.identity.clone(),
        audiences: state.tokens.audiences(),
        default_token: state.tokens.default_token().is_some(),
    };
    // Strings and a bool: serde_json cannot fail on them.
    serde_json::to_vec(&body).map(Bytes::from).unwrap_or_default()
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A prepared JSON body (a clone of `Bytes` is a reference count), with
/// room for one more header. Built by hand: `(headers, Bytes)` would
/// insert a content type for the bytes and then replace it.
fn json_body(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.reserve(2);
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    response
}

async fn aws(State(state): State<Arc<ImdsState>>) -> Response {
    match &state.aws {
        Some(role) => Json(role).into_response(),
        None => ApiError::AwsNotConfigured.into_response(),
    }
}

/// The `audience` query parameter: absent, or one well-formed value.
fn audience_param(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "audience" {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::AudienceInvalid("give `audience` once".into()));
        }
        contract::check_audience(&value).map_err(ApiError::AudienceInvalid)?;
        found = Some(value.into_owned());
    }
    Ok(found)
}

async fn token(State(state): State<Arc<ImdsState>>, RawQuery(query): RawQuery) -> Response {
    match audience_param(query.as_deref()) {
        Ok(audience) => token_response(&state, audience),
        Err(e) => e.into_response(),
    }
}

/// The token for `audience` (the default token for `None`), or why not.
fn token_response(state: &ImdsState, audience: Option<String>) -> Response {
    let file = match &audience {
        None => state.tokens.default_token(),
        Some(a) => state.tokens.for_audience(a),
    };
    let Some(file) = file else {
        let configured = state.tokens.audiences();
        return match audience {
            None => ApiError::DefaultTokenDisabled { configured },
            Some(_) => ApiError::AudienceNotConfigured { configured },
        }
        .into_response();
    };
    let now = std::time::SystemTime::now();
    match file.prepared(now) {
        Ok(prepared) if prepared.token.is_expired(now) => {
            let expired_at = prepared.token.expiration_timestamp();
            tracing::warn!(
                file = %file.path().display(),
                %expired_at,
                "GET /v1/token answered 503: the token file holds an expired token (is the kubelet refreshing it?)"
            );
            ApiError::TokenExpired { expired_at }.into_response()
        }
        Ok(prepared) => {
            let mut response = json_body(prepared.body.clone());
            // A credential: no cache along the way may keep it.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            tracing::warn!(error = %crate::errors::chain(&e), "GET /v1/token answered 503");
            ApiError::TokenUnavailable(public_reason(&e)).into_response()
        }
    }
}

/// What the guest is told; the log line carries the path and details.
fn public_reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::Missing(_) => "the token file is not there yet",
        TokenError::Unreadable { .. } => "the token file cannot be read",
        TokenError::TooLarge { .. } | TokenError::NotAJwt { .. } => "the token file does not hold a JWT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::jwt_with_claims;
    use axum::{
        body::{Body, to_bytes},
        http::{Method, Request, StatusCode},
    };
    use serde_json::Value;
    use tower::ServiceExt as _;

    struct Fixture {
        dir: tempfile::TempDir,
        token_path: std::path::PathBuf,
        app: Api,
    }

    fn fixture() -> Fixture {
        fixture_with(true, &[], None)
    }

    fn fixture_with(default_token: bool, audiences: &[&str], aws: Option<AwsRole>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let audiences: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
        let state = ImdsState {
            tokens: TokenSet::new(dir.path(), default_token, &audiences),
            aws,
            ..state(dir.path(), cloud_state(&[], contract::Imdsv2::Optional, None))
        };
        Fixture { app: Api::new(Arc::new(state)), token_path: dir.path().join("token"), dir }
    }

    /// The VM `fedora-1` in `vms`: the default token from `dir/token`, no
    /// AWS role, no guest builds, `cloud` as given.
    fn state(dir: &std::path::Path, cloud: cloud::CloudState) -> ImdsState {
        ImdsState {
            identity: Identity {
                namespace: "vms".into(),
                service_account_name: "builder".into(),
                vm_name: "fedora-1".into(),
            },
            tokens: TokenSet::new(dir, true, &[]),
            aws: None,
            cloud,
            guest_binaries: Default::default(),
        }
    }

    fn cloud_state(
        flavors: &[contract::Flavor],
        imdsv2: contract::Imdsv2,
        data_dir: Option<&std::path::Path>,
    ) -> cloud::CloudState {
        cloud::CloudState {
            facts: crate::cloud::InstanceFacts::new("fedora-1", "vms", Some("web-1")),
            flavors: flavors.iter().copied().collect(),
            data: crate::cloud::data::DataSources { user_dir: data_dir.map(Into::into), network_dir: None },
            ssh_keys: Default::default(),
            imdsv2,
            sessions: Default::default(),
        }
    }

    /// An app serving the given flavours, its user-data Secret in `dir/userdata`.
    fn cloud_fixture(flavors: &[contract::Flavor], imdsv2: contract::Imdsv2) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("userdata-secret");
        std::fs::create_dir(&data_dir).unwrap();
        let state = state(dir.path(), cloud_state(flavors, imdsv2, Some(&data_dir)));
        Fixture { app: Api::new(Arc::new(state)), token_path: dir.path().join("token"), dir }
    }

    async fn call(app: &Api, method: Method, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, Response) {
        let response = app.for_peer(PEER).oneshot(request(method, uri, headers)).await.unwrap();
        (response.status(), response)
    }

    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::empty()).unwrap()
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 2, 2)), 41000);

    async fn json(response: Response) -> Value {
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}"))
    }

    const MD: (&str, &str) = ("Metadata", "true");

    #[tokio::test]
    async fn healthz_needs_no_header() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, "/healthz", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&to_bytes(response.into_body(), 100).await.unwrap()[..], b"OK");
    }

    #[tokio::test]
    async fn identity_reports_the_configured_names() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, "/v1/identity", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(response).await,
            serde_json::json!({"namespace": "vms", "serviceAccountName": "builder", "vmName": "fedora-1",
                               "audiences": [], "defaultToken": true})
        );
    }

    #[tokio::test]
    async fn token_is_served_with_its_expiry_and_follows_the_file() {
        let f = fixture();
        let first = jwt_with_claims(r#"{"exp":4102444800}"#);
        std::fs::write(&f.token_path, &first).unwrap();
        let (status, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            json(response).await,
            serde_json::json!({"token": first, "expirationTimestamp": "2100-01-01T00:00:00Z"})
        );

        let second = jwt_with_claims(r#"{"exp":4102448400}"#);
        std::fs::write(&f.token_path, &second).unwrap();
        let (_, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(json(response).await["token"], second);
    }

    #[tokio::test]
    async fn broken_token_file_is_503_and_recovers() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body = json(response).await;
        assert_eq!(body["error"], "token_unavailable");
        assert!(!body["message"].as_str().unwrap().contains(f.token_path.to_str().unwrap()));

        std::fs::write(&f.token_path, "garbage").unwrap();
        let (status, _) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        // A kubelet that stopped refreshing leaves an expired token: not served.
        std::fs::write(&f.token_path, jwt_with_claims(r#"{"exp":1795000000}"#)).unwrap();
        let (status, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body = json(response).await;
        assert_eq!(body["error"], "token_expired");
        assert!(body["message"].as_str().unwrap().contains("expired at 2026-11-18T11:06:40Z"), "{body}");
        assert!(body.get("token").is_none());

        std::fs::write(&f.token_path, jwt_with_claims(r#"{"exp":4102444801}"#)).unwrap();
        let (status, _) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metadata_header_is_required_except_on_healthz() {
        let f = fixture();
        std::fs::write(&f.token_path, jwt_with_claims(r#"{"exp":4102444801}"#)).unwrap();
        for path in ["/v1/token", "/v1/identity"] {
            let (status, response) = call(&f.app, Method::GET, path, &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            let body = json(response).await;
            assert_eq!(body["error"], "metadata_header_missing");
            assert!(body["message"].as_str().unwrap().contains("Metadata: true"));

            let (status, response) = call(&f.app, Method::GET, path, &[("Metadata", "false")]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(json(response).await["error"], "metadata_header_invalid");
        }
    }

    #[tokio::test]
    async fn forwarded_requests_are_refused_everywhere() {
        let f = fixture();
        for path in ["/healthz", "/v1/token", "/v1/identity", "/nope"] {
            let (status, response) =
                call(&f.app, Method::GET, path, &[MD, ("X-Forwarded-For", "1.2.3.4")]).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            assert_eq!(json(response).await["error"], "forwarded_request_refused");
        }
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_get_json_errors() {
        let f = fixture();
        for path in ["/", "/v1", "/v1/token/", "/latest/meta-data/", "/../../etc/passwd", "/v1/%2e%2e/token"]
        {
            let (status, response) = call(&f.app, Method::GET, path, &[MD]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(json(response).await["error"], "not_found");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let (status, response) = call(&f.app, method.clone(), "/v1/token", &[MD]).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
            assert_eq!(json(response).await["error"], "method_not_allowed");
        }
        let (status, _) = call(&f.app, Method::HEAD, "/healthz", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }

    /// The fast path answers what the router would, byte for byte, on
    /// every request it takes (and takes the ones it should), whatever
    /// the token file holds.
    #[tokio::test]
    async fn the_fast_path_answers_as_the_router_does() {
        const HOST: (&str, &str) = ("Host", contract::IMDS_HOST);
        let taken: &[(&str, &[(&str, &str)])] = &[
            ("/v1/token", &[MD, HOST]),
            ("/v1/token", &[MD]),
            ("/v1/token", &[]),
            ("/v1/token", &[("Metadata", "false")]),
            ("/v1/token", &[MD, MD]),
            ("/v1/token", &[MD, ("X-Forwarded-For", "1.2.3.4")]),
            ("/v1/token", &[MD, ("Forwarded", "for=1.2.3.4")]),
            ("/v1/token", &[MD, ("Host", "attacker.example")]),
            ("/v1/token", &[MD, HOST, HOST]),
            ("http://169.254.169.254/v1/token", &[MD]),
            ("http://attacker.example/v1/token", &[MD, HOST]),
            ("/v1/identity", &[MD, HOST]),
            ("/v1/identity", &[]),
            ("/v1/identity", &[MD, ("Host", "169.254.169.254:8080")]),
        ];
        let left: &[(Method, &str)] = &[
            (Method::GET, "/v1/token?audience=vault"),
            (Method::GET, "/v1/token?"),
            (Method::GET, "/v1/identity?x=1"),
            (Method::HEAD, "/v1/token"),
            (Method::POST, "/v1/token"),
            (Method::GET, "/v1/token/"),
            (Method::GET, "/v1//token"),
            (Method::GET, "/healthz"),
        ];
        let expired = jwt_with_claims(r#"{"exp":1795000000}"#);
        let valid = jwt_with_claims(r#"{"exp":4102444800}"#);
        for default_token in [true, false] {
            let f = fixture_with(default_token, &["vault"], None);
            for file in [None, Some("garbage"), Some(expired.as_str()), Some(valid.as_str())] {
                match file {
                    Some(contents) => std::fs::write(&f.token_path, contents).unwrap(),
                    None => drop(std::fs::remove_file(&f.token_path)),
                }
                let requests = taken.iter().map(|&(uri, headers)| (Method::GET, uri, headers, true));
                let requests =
                    requests.chain(left.iter().map(|(m, uri)| (m.clone(), *uri, &[MD][..], false)));
                for (method, uri, headers, fast) in requests {
                    let case =
                        format!("{method} {uri} {headers:?}, default token {default_token}, file {file:?}");
                    let r = request(method.clone(), uri, headers);
                    let answered = f.app.fast_path.answer(r.method(), r.uri(), r.headers());
                    assert_eq!(answered.is_some(), fast, "{case}");
                    let ours = f.app.for_peer(PEER).oneshot(request(method.clone(), uri, headers)).await;
                    let routed =
                        WithPeer::new(f.app.router.clone(), PEER).oneshot(request(method, uri, headers));
                    let (mut ours, mut routed) = (ours.unwrap(), routed.await.unwrap());
                    assert_eq!(ours.status(), routed.status(), "{case}");
                    // The router writes the body's length into the headers;
                    // hyper writes the same from the body's exact size when
                    // it is absent: one Content-Length on the wire either way.
                    let length = |r: &mut Response| {
                        let header = r.headers_mut().remove(header::CONTENT_LENGTH);
                        header.map(|l| l.to_str().unwrap().parse::<u64>().unwrap())
                    };
                    if fast {
                        let size = ours.body().size_hint().exact();
                        assert_eq!((length(&mut ours), length(&mut routed)), (None, size), "{case}");
                    }
                    assert_eq!(ours.headers(), routed.headers(), "{case}");
                    let body = |r: Response| to_bytes(r.into_body(), 1 << 20);
                    assert_eq!(body(ours).await.unwrap(), body(routed).await.unwrap(), "{case}");
                }
            }
        }
    }

    #[tokio::test]
    async fn each_audience_is_served_from_its_own_file() {
        let f = fixture_with(true, &["sts.amazonaws.com", "vault"], None);
        let tokens = [
            ("token", jwt_with_claims(r#"{"exp":4102444801,"aud":["https://kubernetes.default.svc"]}"#)),
            ("audience-0", jwt_with_claims(r#"{"exp":4102444802,"aud":["sts.amazonaws.com"]}"#)),
            ("audience-1", jwt_with_claims(r#"{"exp":4102444803,"aud":["vault"]}"#)),
        ];
        for (file, jwt) in &tokens {
            std::fs::write(f.dir.path().join(file), jwt).unwrap();
        }
        for (uri, expected) in [
            ("/v1/token", &tokens[0].1),
            ("/v1/token?audience=sts.amazonaws.com", &tokens[1].1),
            ("/v1/token?audience=vault", &tokens[2].1),
            ("/v1/token?audience=vault&other=1", &tokens[2].1),
            ("/v1/token?audience=%76ault", &tokens[2].1),
        ] {
            let (status, response) = call(&f.app, Method::GET, uri, &[MD]).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(&json(response).await["token"], expected, "{uri}");
        }
        let (_, response) = call(&f.app, Method::GET, "/v1/identity", &[MD]).await;
        let body = json(response).await;
        assert_eq!(body["audiences"], serde_json::json!(["sts.amazonaws.com", "vault"]));
        assert_eq!(body["defaultToken"], true);
    }

    #[tokio::test]
    async fn unknown_and_hostile_audiences_never_reach_the_filesystem() {
        let f = fixture_with(true, &["vault"], None);
        std::fs::write(f.dir.path().join("token"), jwt_with_claims(r#"{"exp":4102444801}"#)).unwrap();
        // Files an audience-as-path bug would serve.
        std::fs::write(f.dir.path().join("audience-1"), jwt_with_claims(r#"{"exp":4102444809}"#)).unwrap();
        std::fs::write(f.dir.path().join("sts"), jwt_with_claims(r#"{"exp":4102444809}"#)).unwrap();
        let long = format!("/v1/token?audience={}", "a".repeat(10_000));
        let not_configured = [
            "/v1/token?audience=sts",
            "/v1/token?audience=audience-1",
            "/v1/token?audience=token",
            "/v1/token?audience=..%2F..%2Fetc%2Fpasswd",
            "/v1/token?audience=%2e%2e%2f",
            "/v1/token?audience=%2Fetc%2Fpasswd",
            "/v1/token?audience=%FF%FE",
            "/v1/token?audience=VAULT",
        ];
        for uri in not_configured {
            let (status, response) = call(&f.app, Method::GET, uri, &[MD]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            let body = json(response).await;
            assert_eq!(body["error"], "audience_not_configured", "{uri}");
            assert_eq!(body["configuredAudiences"], serde_json::json!(["vault"]), "{uri}");
        }
        let invalid = [
            "/v1/token?audience=",
            "/v1/token?audience=a%00b",
            "/v1/token?audience=a%0Ab",
            "/v1/token?audience=vault&audience=vault",
            long.as_str(),
        ];
        for uri in invalid {
            let (status, response) = call(&f.app, Method::GET, uri, &[MD]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{}", &uri[..uri.len().min(60)]);
            assert_eq!(json(response).await["error"], "audience_invalid");
        }
    }

    #[tokio::test]
    async fn without_the_default_token_only_audiences_are_served() {
        let f = fixture_with(false, &["vault"], None);
        // Even if a file named like the default token exists, it is not served.
        std::fs::write(f.dir.path().join("token"), jwt_with_claims(r#"{"exp":4102444801}"#)).unwrap();
        std::fs::write(f.dir.path().join("audience-0"), jwt_with_claims(r#"{"exp":4102444802}"#)).unwrap();
        let (status, response) = call(&f.app, Method::GET, "/v1/token", &[MD]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let body = json(response).await;
        assert_eq!(body["error"], "default_token_disabled");
        assert!(body["message"].as_str().unwrap().contains("imds.kubevirt.io/default-token"));
        assert_eq!(body["configuredAudiences"], serde_json::json!(["vault"]));
        let (status, _) = call(&f.app, Method::GET, "/v1/token?audience=vault", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        let (_, response) = call(&f.app, Method::GET, "/v1/identity", &[MD]).await;
        assert_eq!(json(response).await["defaultToken"], false);
    }

    #[tokio::test]
    async fn aws_role_is_served_when_known() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, "/v1/aws", &[MD]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json(response).await["error"], "aws_not_configured");
        let (status, _) = call(&f.app, Method::GET, "/v1/aws", &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let role = AwsRole {
            role_arn: "arn:aws:iam::111122223333:role/vm".into(),
            audience: "sts.amazonaws.com".into(),
        };
        let f = fixture_with(true, &["sts.amazonaws.com"], Some(role));
        let (status, response) = call(&f.app, Method::GET, "/v1/aws", &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(response).await,
            serde_json::json!({"roleArn": "arn:aws:iam::111122223333:role/vm", "audience": "sts.amazonaws.com"})
        );
    }

    async fn text(response: Response) -> String {
        String::from_utf8(to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap()
    }

    use contract::{Flavor, Imdsv2};

    #[tokio::test]
    async fn flavours_are_off_unless_asked_for() {
        let f = cloud_fixture(&[], Imdsv2::Optional);
        for path in ["/nocloud/meta-data", "/openstack", "/latest/meta-data/", "/", "/latest/api/token"] {
            assert_eq!(call(&f.app, Method::GET, path, &[]).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        let only_nocloud = cloud_fixture(&[Flavor::Nocloud], Imdsv2::Optional);
        assert_eq!(call(&only_nocloud.app, Method::GET, "/nocloud/meta-data", &[]).await.0, StatusCode::OK);
        assert_eq!(
            call(&only_nocloud.app, Method::GET, "/latest/meta-data/", &[]).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn nocloud_serves_the_seed_and_follows_the_secret() {
        let f = cloud_fixture(&[Flavor::Nocloud], Imdsv2::Optional);
        let (status, response) = call(&f.app, Method::GET, "/nocloud/meta-data", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            text(response).await,
            "instance-id: \"fedora-1.vms\"\nlocal-hostname: \"web-1\"\nhostname: \"web-1\"\n"
        );
        // No user-data yet: an empty 200 (cloud-init retries a 404 for seconds).
        let (status, response) = call(&f.app, Method::GET, "/nocloud/user-data", &[]).await;
        assert_eq!((status, text(response).await), (StatusCode::OK, String::new()));
        // No network data: an empty 200 too (cloud-init 25.1 retries a 404 ten times).
        let (status, response) = call(&f.app, Method::GET, "/nocloud/network-config", &[]).await;
        assert_eq!((status, text(response).await), (StatusCode::OK, String::new()));
        let secret = f.dir.path().join("userdata-secret");
        std::fs::write(secret.join("userdata"), "#cloud-config\nhostname: x\n").unwrap();
        std::fs::write(secret.join("networkdata"), "version: 2\n").unwrap();
        let (_, response) = call(&f.app, Method::GET, "/nocloud/user-data", &[]).await;
        assert_eq!(text(response).await, "#cloud-config\nhostname: x\n");
        let (_, response) = call(&f.app, Method::GET, "/nocloud/network-config", &[]).await;
        assert_eq!(text(response).await, "version: 2\n");
        // HEAD: headers only.
        let (status, response) = call(&f.app, Method::HEAD, "/nocloud/user-data", &[]).await;
        assert_eq!((status, text(response).await), (StatusCode::OK, String::new()));
        assert_eq!(
            call(&f.app, Method::POST, "/nocloud/user-data", &[]).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn openstack_serves_what_cloud_init_reads() {
        let f = cloud_fixture(&[Flavor::Openstack], Imdsv2::Optional);
        let (_, response) = call(&f.app, Method::GET, "/openstack", &[]).await;
        assert!(text(response).await.contains("2018-08-27"));
        let (_, response) = call(&f.app, Method::GET, "/openstack/2018-08-27/meta_data.json", &[]).await;
        let md = json(response).await;
        assert_eq!((md["uuid"].as_str(), md["hostname"].as_str()), (Some("fedora-1.vms"), Some("web-1")));
        assert_eq!(
            call(&f.app, Method::GET, "/openstack/latest/user_data", &[]).await.0,
            StatusCode::NOT_FOUND
        );
        let (_, response) = call(&f.app, Method::GET, "/openstack/latest/vendor_data.json", &[]).await;
        assert_eq!(json(response).await, serde_json::json!({}));
        let secret = f.dir.path().join("userdata-secret");
        std::fs::write(secret.join("vendordata"), "#cloud-config\n").unwrap();
        std::fs::write(secret.join("networkdata"), "version: 2\n").unwrap();
        let (_, response) = call(&f.app, Method::GET, "/openstack/latest/vendor_data.json", &[]).await;
        assert_eq!(json(response).await, serde_json::json!({"cloud-init": "#cloud-config\n"}));
        assert_eq!(
            call(&f.app, Method::GET, "/openstack/latest/network_data.json", &[]).await.0,
            StatusCode::NOT_FOUND
        );
        std::fs::write(secret.join("networkdata"), r#"{"links": [], "networks": [], "services": []}"#)
            .unwrap();
        assert_eq!(
            call(&f.app, Method::GET, "/openstack/latest/network_data.json", &[]).await.0,
            StatusCode::OK
        );
        // OpenStack brings the EC2-compatible tree along.
        let (_, response) = call(&f.app, Method::GET, "/latest/meta-data/instance-id", &[]).await;
        assert_eq!(text(response).await, "fedora-1.vms");
    }

    const TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
    const TOKEN: &str = "x-aws-ec2-metadata-token";

    async fn session(app: &Api, ttl: &str) -> String {
        let (status, response) = call(app, Method::PUT, "/latest/api/token", &[(TTL, ttl)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response.headers()[TTL], ttl);
        text(response).await
    }

    #[tokio::test]
    async fn imdsv2_sessions_answer_as_aws_does() {
        let f = cloud_fixture(&[Flavor::Ec2], Imdsv2::Optional);
        let token = session(&f.app, "21600").await;
        let path = "/latest/meta-data/instance-id";
        let (status, response) = call(&f.app, Method::GET, path, &[(TOKEN, &token)]).await;
        assert_eq!((status, text(response).await), (StatusCode::OK, "fedora-1.vms".into()));
        // Optional sessions: no token is fine, a wrong one is not.
        assert_eq!(call(&f.app, Method::GET, path, &[]).await.0, StatusCode::OK);
        assert_eq!(call(&f.app, Method::GET, path, &[(TOKEN, "forged")]).await.0, StatusCode::UNAUTHORIZED);
        // TTL rules.
        for bad in ["0", "21601", "abc", "", "-5", "3600.5"] {
            let (status, response) = call(&f.app, Method::PUT, "/latest/api/token", &[(TTL, bad)]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert_eq!(json(response).await["error"], "ec2_token_ttl_invalid");
        }
        assert_eq!(call(&f.app, Method::PUT, "/latest/api/token", &[]).await.0, StatusCode::BAD_REQUEST);
        // XFF on the token request: refused.
        let (status, _) =
            call(&f.app, Method::PUT, "/latest/api/token", &[(TTL, "60"), ("X-Forwarded-For", "1.2.3.4")])
                .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Only PUT on the token route; only GET/HEAD elsewhere: the header
        // and the message say the same.
        for (method, path, allow) in
            [(Method::GET, "/latest/api/token", "PUT"), (Method::PUT, "/latest/meta-data/", "GET, HEAD")]
        {
            let (status, response) = call(&f.app, method.clone(), path, &[(TTL, "60")]).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(response.headers()[header::ALLOW], allow, "{method} {path}");
            let body = json(response).await;
            assert!(body["message"].as_str().unwrap().ends_with(&format!("answers {allow}")), "{body}");
        }
        // A path of the flavour that resolves to nothing says so, not the /v1 routes.
        let (status, response) = call(&f.app, Method::GET, "/latest/meta-data/nothing", &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let body = json(response).await;
        assert_eq!(body["error"], "not_found");
        assert!(body["message"].as_str().unwrap().contains("no such metadata"), "{body}");
        // Expiry.
        let short = session(&f.app, "1").await;
        assert_eq!(call(&f.app, Method::GET, path, &[(TOKEN, &short)]).await.0, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(call(&f.app, Method::GET, path, &[(TOKEN, &short)]).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn required_imdsv2_refuses_tokenless_requests() {
        let f = cloud_fixture(&[Flavor::Ec2], Imdsv2::Required);
        let path = "/2021-03-23/meta-data/instance-id";
        let (status, response) = call(&f.app, Method::GET, path, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json(response).await["error"], "ec2_session_required");
        let token = session(&f.app, "60").await;
        assert_eq!(call(&f.app, Method::GET, path, &[(TOKEN, &token)]).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn odd_and_hostile_paths_are_clean_4xx_and_the_token_never_leaks() {
        let f = cloud_fixture(&Flavor::ALL, Imdsv2::Optional);
        std::fs::write(&f.token_path, jwt_with_claims(r#"{"exp":4102444801}"#)).unwrap();
        let huge = format!("/latest/meta-data/{}", "a".repeat(10_000));
        for path in [
            "/latest/meta-data/../user-data",
            "/latest//meta-data/",
            "/nocloud//meta-data",
            "/nocloud/%2e%2e/meta-data",
            "/openstack/latest/../../v1/token",
            "/latest/meta-data/iam/security-credentials/",
            "/2001-01-01/meta-data/",
            "/latest/meta-data/placement/../instance-id",
            "/latest/meta-data/public-keys/0/openssh-key",
            "/openstack/latest/password/x",
            "/openstack/2013-04-04/meta_data.json",
            huge.as_str(),
        ] {
            let (status, response) = call(&f.app, Method::GET, path, &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{}", &path[..path.len().min(60)]);
            assert!(!text(response).await.contains("eyJ"));
        }
        // Query strings are ignored, as on the real services.
        assert_eq!(
            call(&f.app, Method::GET, "/latest/meta-data/instance-id?x=1", &[]).await.0,
            StatusCode::OK
        );
        for path in
            ["/", "/latest/", "/latest/meta-data/", "/openstack/latest/meta_data.json", "/nocloud/meta-data"]
        {
            let (status, response) = call(&f.app, Method::GET, path, &[]).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(!text(response).await.contains("eyJ"), "{path} exposes a JWT");
        }
    }

    /// An app serving the guest helper's builds from `dir/guest` (only the
    /// amd64 one present).
    fn guest_fixture() -> (Fixture, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let guest = dir.path().join("guest");
        std::fs::create_dir(&guest).unwrap();
        let build: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(guest.join(imds_api::GUEST_BINARIES[0].name), &build).unwrap();
        let state = ImdsState {
            guest_binaries: crate::guest_binaries::GuestBinaries::scan(&guest),
            ..state(dir.path(), cloud_state(&[], contract::Imdsv2::Optional, None))
        };
        let token_path = dir.path().join("token");
        (Fixture { app: Api::new(Arc::new(state)), token_path, dir }, build)
    }

    const AMD64: &str = "/v1/guest/kubevirt-imds-guest-linux-amd64";

    #[tokio::test]
    async fn guest_builds_are_served_whole_with_their_digest() {
        let (f, build) = guest_fixture();
        let (status, response) = call(&f.app, Method::GET, AMD64, &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "70000");
        assert_eq!(to_bytes(response.into_body(), 1 << 20).await.unwrap(), build);

        let (status, response) = call(&f.app, Method::GET, &format!("{AMD64}.sha256"), &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        let line = text(response).await;
        let (hex, name) = line.strip_suffix('\n').unwrap().split_once("  ").unwrap();
        assert_eq!(name, "kubevirt-imds-guest-linux-amd64");
        assert_eq!(hex.len(), 64);
        assert_eq!(f.app_guest_digest(), hex);

        let (status, response) = call(&f.app, Method::HEAD, AMD64, &[MD]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "70000");
        assert!(to_bytes(response.into_body(), 1 << 20).await.unwrap().is_empty());

        for listing in ["/v1/guest", "/v1/guest/"] {
            let (status, response) = call(&f.app, Method::GET, listing, &[MD]).await;
            assert_eq!(status, StatusCode::OK, "{listing}");
            let body = json(response).await;
            assert_eq!(body[0]["name"], "kubevirt-imds-guest-linux-amd64");
            assert_eq!(body[0]["size"], 70000);
            assert_eq!(body[0]["sha256"], hex);
            assert_eq!(body.as_array().unwrap().len(), 1, "the arm64 build is not in the directory");
        }
    }

    impl Fixture {
        /// SHA-256 of the amd64 build as the scan computed it.
        fn app_guest_digest(&self) -> String {
            crate::guest_binaries::GuestBinaries::scan(&self.dir.path().join("guest")).served[0]
                .sha256
                .clone()
        }
    }

    #[tokio::test]
    async fn only_known_guest_builds_are_served() {
        let (f, _) = guest_fixture();
        std::fs::write(f.dir.path().join("guest/secret"), b"not for guests").unwrap();
        for path in [
            "/v1/guest/kubevirt-imds-guest-linux-arm64",
            "/v1/guest/kubevirt-imds-guest-linux-arm64.sha256",
            "/v1/guest/secret",
            "/v1/guest/..%2ftoken",
            "/v1/guest/kubevirt-imds-guest-linux-amd64.sha256.sha256",
            "/v1/guest/KUBEVIRT-IMDS-GUEST-LINUX-AMD64",
            "/v1/guest/.sha256",
        ] {
            let (status, response) = call(&f.app, Method::GET, path, &[MD]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            let body = json(response).await;
            assert_eq!(body["error"], "guest_binary_not_found", "{path}");
            assert!(
                body["message"].as_str().unwrap().contains("served: kubevirt-imds-guest-linux-amd64"),
                "{body}"
            );
        }
        for path in ["/v1/guest/a/b", "/v1/guest/%2e%2e/token", "/v1/guest/../token"] {
            let (status, response) = call(&f.app, Method::GET, path, &[MD]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(!text(response).await.contains("eyJ"), "{path}");
        }
        let (status, response) = call(&f.app, Method::GET, AMD64, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "the Metadata header is required");
        assert_eq!(json(response).await["error"], "metadata_header_missing");
        let (status, _) = call(&f.app, Method::POST, AMD64, &[MD]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn a_guest_build_changed_after_start_is_refused() {
        let (f, _) = guest_fixture();
        std::fs::write(f.dir.path().join("guest/kubevirt-imds-guest-linux-amd64"), b"replaced").unwrap();
        let (status, response) = call(&f.app, Method::GET, AMD64, &[MD]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(response).await["error"], "guest_binary_unavailable");
        std::fs::remove_file(f.dir.path().join("guest/kubevirt-imds-guest-linux-amd64")).unwrap();
        let (status, _) = call(&f.app, Method::GET, AMD64, &[MD]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn an_image_without_builds_says_so() {
        let f = fixture();
        let (status, response) = call(&f.app, Method::GET, AMD64, &[MD]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(json(response).await["message"].as_str().unwrap().contains("carries none"));
        let (_, response) = call(&f.app, Method::GET, "/v1/guest", &[MD]).await;
        assert_eq!(json(response).await, serde_json::json!([]));
    }
}
