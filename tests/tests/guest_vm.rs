//! Privileged end-to-end tests with a real booted guest VM (QEMU) behind a
//! TAP, for both KubeVirt bindings: what a user's VM does, with curl.

use std::time::Duration;

use imds_tests::{
    bpf,
    imds::{Identity, Imds},
    netns::{exclusive, require_root},
    tokens::{EXP, EXP_RFC3339, ProjectedVolume, jwt},
    topology::{Binding, GuestKind, PodLayout, TAP},
    vm::{GuestKit, default_cache_dir},
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };
const GUEST_MAC: &str = "52:54:00:12:34:56";

fn scenario(binding: Binding) {
    let _serial = exclusive();
    require_root();
    let kit = GuestKit::prepare(&default_cache_dir()).expect("guest kit");
    let layout = PodLayout::build(binding, GuestKind::Tap).unwrap();
    let a = layout.addressing;
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("token")).unwrap();
    let token = jwt(ID.namespace, ID.service_account, EXP, "vm");
    volume.publish(&token).unwrap();
    let mut sidecar = Imds::start(&layout.pod, &ID, volume.dir(), &[]).unwrap();
    sidecar.wait_until_guest_attached().unwrap();
    let www = tempfile::tempdir().unwrap();
    let _neighbour_http = layout.foreign.http_server(a.foreign_ip, 8080, www.path()).unwrap();

    let script = format!(
        r#"
ip addr add {ip}/{len} dev eth0
ip route add default via {gw}
md='Metadata: true'
section identity curl -sS -m 20 -H "$md" http://169.254.169.254/v1/identity
section token curl -sS -m 20 -H "$md" http://169.254.169.254/v1/token
section noheader curl -sS -m 20 -w '\n%{{http_code}}' http://169.254.169.254/v1/token
section ping sh -c 'ping -c 2 -W 5 {gw} >/dev/null && echo reachable'
section tcp curl -sS -m 20 http://{foreign}:8080/hello
ip route add 169.254.0.0/16 dev eth0
ip neigh flush dev eth0
section arp_identity curl -sS -m 20 -H "$md" http://169.254.169.254/v1/identity
section neigh ip neigh show 169.254.169.254
"#,
        ip = a.guest_ip,
        len = a.prefix_len,
        gw = a.gateway_ip,
        foreign = a.foreign_ip,
    );
    let run = kit.run(&layout.pod, TAP, GUEST_MAC, &script, Duration::from_secs(180)).expect("guest run");
    let section =
        |name: &str| run.section(name).unwrap_or_else(|| panic!("no section {name}:\n{}", run.console));
    assert_eq!(run.script_exit(), Some(0), "{}", run.console);

    let expected_identity = r#"{"namespace":"vm-team","serviceAccountName":"builder","vmName":"fedora-42","audiences":[],"defaultToken":true}"#;
    assert_eq!(section("identity"), expected_identity);
    let served: serde_json::Value = serde_json::from_str(&section("token")).expect("token JSON");
    assert_eq!(served, serde_json::json!({"token": token, "expirationTimestamp": EXP_RFC3339}));
    let noheader = section("noheader");
    assert!(noheader.ends_with("\n400"), "{noheader}");
    assert!(noheader.contains("metadata_header_missing"), "{noheader}");
    assert_eq!(section("ping").trim(), "reachable");
    assert_eq!(section("tcp"), format!("hello from {}", a.foreign_ip));
    assert_eq!(section("arp_identity"), expected_identity);
    let (_, sidecar_mac) = layout.pod.link("imds-sidecar").unwrap();
    assert!(
        section("neigh").contains(&sidecar_mac),
        "guest did not ARP-resolve the IMDS to the sidecar: {}",
        section("neigh")
    );
    let counters = sidecar.counters_pin().unwrap();
    assert!(bpf::counter_at(&counters, "guest_arp_answered").unwrap() >= 1);
    assert!(bpf::counter_at(&counters, "guest_redirected").unwrap() >= 4);
}

#[test]
fn real_vm_reads_identity_and_token_masquerade() {
    scenario(Binding::Masquerade);
}

#[test]
fn real_vm_reads_identity_and_token_bridge() {
    scenario(Binding::Bridge);
}
