//! Privileged tests of tokens for several audiences through the real data
//! path: a namespace guest behind the real sidecar.

use std::time::Duration;

use imds_tests::{
    imds::{Identity, Imds},
    netns::{Netns, exclusive, require_root},
    tokens::{EXP, LoopingClient, ProjectedVolume, jwt},
    topology::{Binding, GuestKind, PodLayout},
};
use serde_json::Value;

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };

struct Running {
    layout: PodLayout,
    volume: ProjectedVolume,
    _imds: Imds,
    _dir: tempfile::TempDir,
}

/// The kubelet's projected volume: every source in one atomic version.
fn publish(volume: &ProjectedVolume, default: &str, sts: &str, vault: &str) {
    volume
        .publish_files(&[
            ("token", default.as_bytes()),
            ("audience-0", sts.as_bytes()),
            ("audience-1", vault.as_bytes()),
        ])
        .unwrap();
}

fn start(args: &[&str], default: &str, sts: &str, vault: &str) -> Running {
    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("tokens")).unwrap();
    publish(&volume, default, sts, vault);
    let mut sidecar = Imds::start(&layout.pod, &ID, volume.dir(), args).unwrap();
    sidecar.wait_until_guest_attached().unwrap();
    Running { layout, volume, _imds: sidecar, _dir: dir }
}

/// GET from the guest namespace: (status, body). The path goes to curl
/// as-is (`--path-as-is`), hostile bytes and all.
fn get(guest: &Netns, path: &str) -> (u16, String) {
    let url = format!("http://169.254.169.254{path}");
    let out = guest
        .command("curl")
        .args(["-s", "--path-as-is", "-m", "5", "-H", "Metadata: true", "-w", "\n%{http_code}", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

fn token_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["token"].as_str().unwrap_or_else(|| panic!("no token: {body}")).to_owned()
}

fn tokens(generation: u64) -> (String, String, String) {
    let exp = EXP + generation * 3600;
    (
        jwt(ID.namespace, ID.service_account, exp, &format!("api-{generation}")),
        jwt(ID.namespace, ID.service_account, exp, &format!("sts-{generation}")),
        jwt(ID.namespace, ID.service_account, exp, &format!("vault-{generation}")),
    )
}

const TWO_AUDIENCES: [&str; 4] = ["--token-audience", "sts.amazonaws.com", "--token-audience", "vault"];

#[test]
fn each_audience_and_the_default_are_served_byte_equal_to_their_files() {
    let _serial = exclusive();
    let (api, sts, vault) = tokens(0);
    let r = start(&TWO_AUDIENCES, &api, &sts, &vault);
    let guest = r.layout.guest();
    for (path, file) in [
        ("/v1/token", "token"),
        ("/v1/token?audience=sts.amazonaws.com", "audience-0"),
        ("/v1/token?audience=vault", "audience-1"),
    ] {
        let (status, body) = get(guest, path);
        assert_eq!(status, 200, "{path}: {body}");
        let on_disk = std::fs::read(r.volume.dir().join(file)).unwrap();
        assert_eq!(token_of(&body).as_bytes(), &on_disk[..], "{path}");
    }
    let (_, body) = get(guest, "/v1/identity");
    let identity: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(identity["audiences"], serde_json::json!(["sts.amazonaws.com", "vault"]));
}

#[test]
fn unknown_and_hostile_audiences_are_refused_and_nothing_else_is_read() {
    let _serial = exclusive();
    let (api, sts, vault) = tokens(0);
    let r = start(&TWO_AUDIENCES, &api, &sts, &vault);
    let guest = r.layout.guest();
    // Canaries an audience-as-path bug would serve.
    let canary = jwt("evil", "evil", EXP, "canary");
    let parent = r.volume.dir().parent().unwrap().to_owned();
    for name in ["passwd", "sts", "audience-9"] {
        std::fs::write(parent.join(name), &canary).unwrap();
        std::fs::write(r.volume.dir().join(name), &canary).unwrap();
    }
    let long = format!("/v1/token?audience={}", "a".repeat(10 * 1024));
    let cases = [
        ("/v1/token?audience=aws", 404),
        ("/v1/token?audience=sts", 404),
        ("/v1/token?audience=audience-9", 404),
        ("/v1/token?audience=../../etc/passwd", 404),
        ("/v1/token?audience=..%2F..%2Fpasswd", 404),
        ("/v1/token?audience=%2e%2e%2f", 404),
        ("/v1/token?audience=%2e%2e%2fpasswd", 404),
        ("/v1/token?audience=/etc/passwd", 404),
        ("/v1/token?audience=vault%00", 400),
        ("/v1/token?audience=%00", 400),
        ("/v1/token?audience=", 400),
        (long.as_str(), 400),
    ];
    for (path, expected) in cases {
        let (status, body) = get(guest, path);
        let shown = &path[..path.len().min(60)];
        assert_eq!(status, expected, "{shown}: {body}");
        assert!(!body.contains(&canary), "{shown} served a file outside the configured tokens");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{shown}: not JSON: {body}"));
        if expected == 404 {
            assert_eq!(
                v["configuredAudiences"],
                serde_json::json!(["sts.amazonaws.com", "vault"]),
                "{shown}"
            );
        }
    }
    // Still serving.
    assert_eq!(get(guest, "/v1/token?audience=vault").0, 200);
}

#[test]
fn without_the_default_token_the_api_audience_is_not_served() {
    let _serial = exclusive();
    let (api, sts, vault) = tokens(0);
    let r = start(
        &["--default-token=false", "--token-audience", "sts.amazonaws.com", "--token-audience", "vault"],
        &api,
        &sts,
        &vault,
    );
    let guest = r.layout.guest();
    let (status, body) = get(guest, "/v1/token");
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains(&api));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "default_token_disabled");
    assert_eq!(token_of(&get(guest, "/v1/token?audience=vault").1), vault);
    let (_, body) = get(guest, "/v1/identity");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["defaultToken"], false);
}

#[test]
fn rotating_one_audience_under_a_looping_client() {
    let _serial = exclusive();
    let (api, sts, vault) = tokens(0);
    let r = start(&TWO_AUDIENCES, &api, &sts, &vault);
    let guest = r.layout.guest();
    let looping = LoopingClient::start(guest, "/v1/token?audience=vault").unwrap();
    let mut published = vec![vault.clone()];
    for generation in 1..=5 {
        std::thread::sleep(Duration::from_millis(300));
        // Only the vault token changes; the volume is rewritten as a whole.
        let (_, _, new_vault) = tokens(generation);
        publish(&r.volume, &api, &sts, &new_vault);
        assert_eq!(token_of(&get(guest, "/v1/token?audience=vault").1), new_vault, "generation {generation}");
        assert_eq!(token_of(&get(guest, "/v1/token?audience=sts.amazonaws.com").1), sts, "sts changed");
        assert_eq!(token_of(&get(guest, "/v1/token").1), api, "the default token changed");
        published.push(new_vault);
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = looping.stop_and_check(&published).unwrap();
    assert!(seen >= 3, "the loop saw only {seen} generations");
}
