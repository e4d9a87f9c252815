//! What boot agents other than cloud-init request, path by path, taken from
//! their own sources, against the real API in-process. Each request goes
//! through a connection's service made for the guest's address, as
//! `http_server` makes it, so `local-ipv4` answers as it does for a VM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    body::{Body, to_bytes},
    http::{HeaderMap, Method, Request, StatusCode},
};
use imds_sidecar::http_server::ConnectionService as _;
use imds_sidecar::{
    api::{Api, ImdsState, cloud::CloudState},
    cloud::{InstanceFacts, PublicKey, data::DataSources},
    contract::{Flavor, Imdsv2},
    metadata::Identity,
    token::TokenSet,
};
use serde_json::Value;
use tower::ServiceExt as _;

const GUEST: &str = "10.0.2.2";
const TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN: &str = "x-aws-ec2-metadata-token";
const USER_DATA: &[u8] = b"{\"ignition\": {\"version\": \"3.4.0\"}}";

struct Imds {
    dir: tempfile::TempDir,
    app: Api,
}

impl Imds {
    fn new(flavors: &[Flavor], imdsv2: Imdsv2) -> Self {
        Self::with_facts(flavors, imdsv2, InstanceFacts::new("fedora-1", "vms", Some("web-1")))
    }

    fn with_facts(flavors: &[Flavor], imdsv2: Imdsv2, facts: InstanceFacts) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("userdata-secret")).unwrap();
        let state = ImdsState {
            identity: Identity {
                namespace: "vms".into(),
                service_account_name: "builder".into(),
                vm_name: "fedora-1".into(),
            },
            tokens: TokenSet::new(dir.path(), true, &[]),
            aws: None,
            cloud: CloudState {
                facts,
                flavors: flavors.iter().copied().collect(),
                data: DataSources { user_dir: Some(dir.path().join("userdata-secret")), network_dir: None },
                ssh_keys: Default::default(),
                imdsv2,
                sessions: Default::default(),
            },
            guest_binaries: Default::default(),
        };
        Self { app: Api::new(Arc::new(state)), dir }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("userdata-secret")
    }

    async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::empty()).unwrap();
        let peer: SocketAddr = format!("{GUEST}:41000").parse().unwrap();
        let response = self.app.for_peer(peer).oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: to_bytes(body, 1 << 20).await.unwrap().to_vec(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.call(Method::GET, path, headers).await
    }

    /// `PUT /latest/api/token`: must be 200 (Ignition fails the boot on
    /// anything but 200, 204 or 404), the TTL echoed.
    async fn session(&self, ttl: &str) -> String {
        let answer = self.call(Method::PUT, "/latest/api/token", &[(TTL, ttl)]).await;
        assert_eq!(answer.status, StatusCode::OK, "PUT /latest/api/token: {}", answer.text());
        assert_eq!(answer.headers[TTL], ttl);
        answer.text()
    }
}

fn write_user_data(secret: &Path) {
    std::fs::write(secret.join("userdata"), USER_DATA).unwrap();
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }

    /// Afterburn's client (`return_on_404`) takes 200 as the value and 404
    /// as "absent"; anything else fails the run.
    fn assert_200_or_404(&self, what: &str) {
        assert!(matches!(self.status, StatusCode::OK | StatusCode::NOT_FOUND), "{what}: {}", self.status);
    }
}

// coreos/ignition internal/providers/aws/aws.go: a session from
// `PUT /latest/api/token` (TTL 21600), then `2019-10-01/user-data` with it;
// the S3 region hint through the vendored aws-sdk-go-v2
// feature/ec2/imds GetRegion, which takes its own session (TTL 300) and
// reads the identity document's `region` (empty is an error).
#[tokio::test]
async fn ignition_aws() {
    for imdsv2 in [Imdsv2::Optional, Imdsv2::Required] {
        let imds = Imds::new(&[Flavor::Ec2], imdsv2);
        let token = imds.session("21600").await;
        let sdk_token = imds.session("300").await;

        let document = imds.get("/latest/dynamic/instance-identity/document", &[(TOKEN, &sdk_token)]).await;
        assert_eq!(document.status, StatusCode::OK);
        assert!(document.json()["region"].as_str().is_some_and(|r| !r.is_empty()), "{}", document.text());

        let missing = imds.get("/2019-10-01/user-data", &[(TOKEN, &token)]).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        write_user_data(&imds.secret());
        let user_data = imds.get("/2019-10-01/user-data", &[(TOKEN, &token)]).await;
        assert_eq!((user_data.status, user_data.body.as_slice()), (StatusCode::OK, USER_DATA));
    }
}

// coreos/ignition internal/providers/openstack/openstack.go: the metadata
// service's `openstack/latest/user_data`; 404 is "no config", any other
// status but 200 an error.
#[tokio::test]
async fn ignition_openstack() {
    let imds = Imds::new(&[Flavor::Openstack], Imdsv2::Optional);
    assert_eq!(imds.get("/openstack/latest/user_data", &[]).await.status, StatusCode::NOT_FOUND);
    write_user_data(&imds.secret());
    let user_data = imds.get("/openstack/latest/user_data", &[]).await;
    assert_eq!((user_data.status, user_data.body.as_slice()), (StatusCode::OK, USER_DATA));
}

/// Afterburn's `fetch_keys`, shared by its aws and openstack providers:
/// `public-keys` (no trailing slash) lists `N=name`, each key at
/// `public-keys/N/openssh-key`. Returns the keys.
async fn afterburn_keys(imds: &Imds, base: &str, headers: &[(&str, &str)]) -> Vec<String> {
    let listing = imds.get(&format!("{base}/meta-data/public-keys"), headers).await;
    assert_eq!(listing.status, StatusCode::OK, "public-keys: {}", listing.text());
    let mut keys = Vec::new();
    for line in listing.text().lines() {
        let tokens: Vec<&str> = line.split('=').collect();
        assert_eq!(tokens.len(), 2, "Afterburn cannot parse {line:?}");
        let key = imds.get(&format!("{base}/meta-data/public-keys/{}/openssh-key", tokens[0]), headers).await;
        assert_eq!(key.status, StatusCode::OK, "{line}");
        keys.push(key.text());
    }
    keys
}

fn with_one_key() -> InstanceFacts {
    let mut facts = InstanceFacts::new("fedora-1", "vms", Some("web-1"));
    facts.public_keys =
        vec![PublicKey { name: "laptop".into(), openssh_key: "ssh-ed25519 AAAA laptop".into() }];
    facts
}

// coreos/afterburn src/providers/openstack/network.rs (openstack-metadata):
// `openstack/2012-08-10/meta_data.json` for the uuid, then the EC2-style
// `latest/meta-data/` leaves and keys.
#[tokio::test]
async fn afterburn_openstack_metadata() {
    let imds = Imds::new(&[Flavor::Openstack], Imdsv2::Optional);
    let meta_data = imds.get("/openstack/2012-08-10/meta_data.json", &[]).await;
    assert_eq!(meta_data.status, StatusCode::OK);
    assert_eq!(meta_data.json()["uuid"], "fedora-1.vms");
    for (leaf, required) in [
        ("hostname", true),
        ("instance-id", true),
        ("instance-type", false),
        ("local-ipv4", true),
        ("public-ipv4", false),
    ] {
        let answer = imds.get(&format!("/latest/meta-data/{leaf}"), &[]).await;
        answer.assert_200_or_404(leaf);
        if required {
            assert_eq!(answer.status, StatusCode::OK, "{leaf}");
        }
    }
    assert_eq!(imds.get("/latest/meta-data/local-ipv4", &[]).await.text(), GUEST);
    assert_eq!(afterburn_keys(&imds, "/latest", &[]).await, Vec::<String>::new());

    let keyed = Imds::with_facts(&[Flavor::Openstack], Imdsv2::Optional, with_one_key());
    assert_eq!(afterburn_keys(&keyed, "/latest", &[]).await, ["ssh-ed25519 AAAA laptop"]);
}

// coreos/afterburn src/providers/aws/mod.rs: a session (TTL 21600, under
// `latest`), then everything under `2021-01-03` with it; the identity
// document parses into a struct whose `region: String` is not optional.
#[tokio::test]
async fn afterburn_aws() {
    for imdsv2 in [Imdsv2::Optional, Imdsv2::Required] {
        let imds = Imds::with_facts(&[Flavor::Ec2], imdsv2, with_one_key());
        let token = imds.session("21600").await;
        let with_token = [(TOKEN, token.as_str())];
        for (leaf, required) in [
            ("instance-id", true),
            ("instance-type", false),
            ("local-ipv4", true),
            ("public-ipv4", false),
            ("ipv6", false),
            ("placement/availability-zone", true),
            ("placement/availability-zone-id", false),
            ("hostname", true),
            ("public-hostname", false),
        ] {
            let answer = imds.get(&format!("/2021-01-03/meta-data/{leaf}"), &with_token).await;
            answer.assert_200_or_404(leaf);
            if required {
                assert_eq!(answer.status, StatusCode::OK, "{leaf}");
            }
        }
        let document = imds.get("/2021-01-03/dynamic/instance-identity/document", &with_token).await;
        assert_eq!(document.status, StatusCode::OK);
        assert_eq!(document.json()["region"], "kubevirt");
        assert_eq!(afterburn_keys(&imds, "/2021-01-03", &with_token).await, ["ssh-ed25519 AAAA laptop"]);
    }
}

// cloudbase-init cloudbaseinit/metadata/services/httpservice.py and
// baseopenstackservice.py: `openstack/latest/meta_data.json` (uuid,
// hostname, public_keys, keys), user_data and network_data.json (404 is
// "absent"); `can_post_password` GETs `openstack/2013-04-04/meta_data.json`
// and must see a 404, else it goes on to the password route.
#[tokio::test]
async fn cloudbase_init_http_service() {
    let imds = Imds::new(&[Flavor::Openstack], Imdsv2::Optional);
    let meta_data = imds.get("/openstack/latest/meta_data.json", &[]).await;
    assert_eq!(meta_data.status, StatusCode::OK);
    let meta_data = meta_data.json();
    assert_eq!(
        (meta_data["uuid"].as_str(), meta_data["hostname"].as_str()),
        (Some("fedora-1.vms"), Some("web-1"))
    );
    assert!(meta_data["public_keys"].is_object() && meta_data["keys"].is_array(), "{meta_data}");
    imds.get("/openstack/latest/user_data", &[]).await.assert_200_or_404("user_data");
    imds.get("/openstack/latest/network_data.json", &[]).await.assert_200_or_404("network_data.json");

    assert_eq!(imds.get("/openstack/2013-04-04/meta_data.json", &[]).await.status, StatusCode::NOT_FOUND);
    for method in [Method::POST, Method::PUT, Method::GET] {
        for path in ["/openstack/latest/password", "/openstack/2013-04-04/password"] {
            let answer = imds.call(method.clone(), path, &[]).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(answer.json()["error"], "password_not_stored", "{method} {path}");
        }
    }
    let head = imds.call(Method::HEAD, "/openstack/latest/password", &[]).await;
    assert_eq!((head.status, head.body.len()), (StatusCode::NOT_FOUND, 0));
}

// cloudbase-init cloudbaseinit/metadata/services/ec2service.py: version
// 2009-04-04, no session; `load` needs local-hostname, and
// `get_public_keys` fails on a 404 of `meta-data/public-keys`.
#[tokio::test]
async fn cloudbase_init_ec2_service() {
    let imds = Imds::new(&[Flavor::Ec2], Imdsv2::Optional);
    let hostname = imds.get("/2009-04-04/meta-data/local-hostname", &[]).await;
    assert_eq!((hostname.status, hostname.text()), (StatusCode::OK, "web-1".to_owned()));
    let instance_id = imds.get("/2009-04-04/meta-data/instance-id", &[]).await;
    assert_eq!((instance_id.status, instance_id.text()), (StatusCode::OK, "fedora-1.vms".to_owned()));
    imds.get("/2009-04-04/user-data", &[]).await.assert_200_or_404("user-data");
    let keys = imds.get("/2009-04-04/meta-data/public-keys", &[]).await;
    assert_eq!((keys.status, keys.text()), (StatusCode::OK, String::new()));
}
