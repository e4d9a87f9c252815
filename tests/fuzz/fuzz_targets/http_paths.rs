//! Any request a guest can send, through the sidecar's whole API as served
//! (the fast path, the guards, `/v1`, and the NoCloud, OpenStack and EC2
//! flavours with IMDSv2), in-process. The input is split into method, request target and headers
//! at the first two newlines (then one header per line, `name: value`).
//! Checked: no panic, every answer a valid status, the token never in an
//! answer without `Metadata: true` and the IMDS `Host`.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::{
    body::Body,
    http::{HeaderName, HeaderValue, Method, Request},
};
use http_body_util::BodyExt as _;
use imds_sidecar::{
    api::{Api, ImdsState, cloud::CloudState},
    cloud::{InstanceFacts, data::DataSources, ssh_keys::SshKeySources},
    contract::{Flavor, Imdsv2},
    http_server::ConnectionService as _,
    metadata::{AwsRole, Identity},
    token::TokenSet,
};
use tower::ServiceExt as _;

/// A JWT that expires in 2100, as the kubelet would write it.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.c2lnbmF0dXJl";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: Api,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::write(dir.path().join("audience-0"), TOKEN).unwrap();
        let user = dir.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("userdata"), "#cloud-config\n").unwrap();
        std::fs::write(user.join("networkdata"), "{\"links\": []}").unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::write(keys.join("laptop"), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKd1 alice\n").unwrap();
        let state = ImdsState {
            identity: Identity {
                namespace: "vms".into(),
                service_account_name: "builder".into(),
                vm_name: "fedora-1".into(),
            },
            tokens: TokenSet::new(dir.path(), true, &["vault".to_owned()]),
            aws: Some(AwsRole {
                role_arn: "arn:aws:iam::1:role/r".into(),
                audience: "sts.amazonaws.com".into(),
            }),
            cloud: CloudState {
                facts: InstanceFacts::new("fedora-1", "vms", Some("web-1"))
                    .with_firmware_uuid(Some("5a9fc181-957e-5c32-9e5a-2de5e9673531")),
                flavors: Flavor::ALL.into_iter().collect(),
                data: DataSources { user_dir: Some(user), network_dir: None },
                ssh_keys: SshKeySources { dirs: vec![keys] },
                imdsv2: Imdsv2::Optional,
                sessions: Default::default(),
            },
            guest_binaries: Default::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Fixture { runtime, app: Api::new(Arc::new(state)), _dir: dir }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else { return };
    let Ok(method) = Method::from_bytes(method) else { return };
    let mut request = Request::builder().method(method);
    request = request.uri(target);
    let mut authorised = (false, true);
    for line in lines.next().unwrap_or_default().split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        if name == "metadata" {
            authorised.0 = value == "true";
        }
        if name == "host" && value != "169.254.169.254" && value != "169.254.169.254:80" {
            authorised.1 = false;
        }
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Body::empty()) else { return };
    let peer = std::net::SocketAddr::from(([10, 0, 2, 2], 41000));
    let response = f.runtime.block_on(f.app.for_peer(peer).oneshot(request)).unwrap();
    let status = response.status();
    assert!(status.is_success() || status.is_client_error() || status.is_server_error(), "{status}");
    let body = f.runtime.block_on(response.into_body().collect()).unwrap().to_bytes();
    if body.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()) {
        assert!(
            authorised.0 && authorised.1,
            "the token was served without Metadata: true and the IMDS Host"
        );
    }
});
