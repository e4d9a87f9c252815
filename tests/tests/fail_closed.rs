//! Failing closed, for both bindings: the node has its own metadata service
//! at 169.254.169.254 (as every EC2 or GCP node does, with the node's cloud
//! credentials behind it), and whatever our processes do — the sidecar
//! killed, OOM-killed (SIGKILL looks the same), exiting, restarting; the
//! agent gone while KubeVirt adds an interface — no guest packet for the
//! address reaches the node. The guest gets a refusal or nothing, and is
//! served again once the sidecar is back.

use std::time::Duration;

use imds_tests::{
    bpf,
    imds::{Identity, Imds},
    netns::{Netns, exclusive, require_root},
    tokens::{EXP, ProjectedVolume, jwt},
    topology::{
        Addressing, Binding, GuestKind, NODE_SECRET, NodeMetadata, PodLayout, attach_namespace_guest,
    },
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };

struct Pod {
    layout: PodLayout,
    node_imds: NodeMetadata,
    token: String,
    _volume: ProjectedVolume,
    _dir: tempfile::TempDir,
}

/// A pod of `binding` whose guest, left to itself, would reach the node's
/// metadata service (checked: the test can fail).
fn pod(binding: Binding) -> Pod {
    require_root();
    let layout = PodLayout::build(binding, GuestKind::Namespace).unwrap();
    if binding == Binding::Masquerade {
        layout.masquerade_nat().unwrap();
    }
    let node_imds = layout.node_metadata_service().unwrap();
    let (code, body) = get(layout.guest(), 5);
    assert_eq!(
        (code, body.as_str()),
        (200, NODE_SECRET),
        "{binding:?}: without kubevirt-imds the guest must reach the node's metadata (else this test proves nothing)"
    );
    assert!(node_imds.packets_reached().unwrap() > 0);
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("token")).unwrap();
    let token = jwt(ID.namespace, ID.service_account, EXP, "fail-closed");
    volume.publish(&token).unwrap();
    Pod { layout, node_imds, token, _volume: volume, _dir: dir }
}

/// `GET /v1/token` from `ns`: (HTTP status, body); status 0 when no answer
/// came (refused or timed out).
fn get(ns: &Netns, timeout_secs: u32) -> (u16, String) {
    let out = ns
        .sh_status(&format!(
            "curl -s -m {timeout_secs} -w '\\n%{{http_code}}' -H 'Metadata: true' http://169.254.169.254/v1/token"
        ))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn served(p: &Pod, ns: &Netns) {
    let (code, body) = get(ns, 5);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&p.token), "{body}");
}

/// No answer, and none from the node.
fn refused(p: &Pod, ns: &Netns, what: &str) {
    let before = p.node_imds.packets_reached().unwrap();
    let (code, body) = get(ns, 2);
    assert_ne!(body, NODE_SECRET, "{what}: the guest read the node's metadata");
    assert_eq!(code, 0, "{what}: answered {code} {body}");
    assert_eq!(p.node_imds.packets_reached().unwrap(), before, "{what}: packets reached the node");
}

fn sidecar_down_and_back(binding: Binding) {
    let _serial = exclusive();
    let p = pod(binding);
    let guest = p.layout.guest();
    let mut imds = Imds::start(&p.layout.pod, &ID, p._volume.dir(), &[]).unwrap();
    imds.wait_until_guest_attached().unwrap();
    let baseline = p.node_imds.packets_reached().unwrap();
    served(&p, guest);
    let counters = imds.counters_pin().unwrap();
    let resets = bpf::counter_at(&counters, "reply_reset").unwrap();

    // SIGKILL (an OOM kill is the same signal).
    imds.kill_sidecar().unwrap();
    refused(&p, guest, "sidecar killed");
    assert!(bpf::counter_at(&counters, "reply_reset").unwrap() > resets, "the refusal is not counted");
    imds.restart_sidecar(&p.layout.pod).unwrap();
    served(&p, guest);

    // A clean exit (SIGTERM, as the kubelet stops a container).
    let status = imds.sidecar.as_mut().unwrap().process().terminate().unwrap();
    assert!(status.success(), "{status}");
    imds.sidecar = None;
    refused(&p, guest, "sidecar exited");
    imds.restart_sidecar(&p.layout.pod).unwrap();
    served(&p, guest);

    assert_eq!(
        p.node_imds.packets_reached().unwrap(),
        baseline,
        "packets reached the node:\n{}",
        imds.logs()
    );
}

#[test]
fn sidecar_killed_exiting_and_back_masquerade() {
    sidecar_down_and_back(Binding::Masquerade);
}

#[test]
fn sidecar_killed_exiting_and_back_bridge() {
    sidecar_down_and_back(Binding::Bridge);
}

/// KubeVirt plugs a new interface while no agent runs (an upgrade, a
/// crash): its TAP has no program yet, and the guest behind it asks for the
/// IMDS. Nothing reaches the node; once the agent is back, it is served.
fn interface_added_while_no_agent(binding: Binding) {
    let _serial = exclusive();
    let p = pod(binding);
    let mut imds = Imds::start(&p.layout.pod, &ID, p._volume.dir(), &[]).unwrap();
    imds.wait_until_guest_attached().unwrap();
    let baseline = p.node_imds.packets_reached().unwrap();
    let counters = imds.counters_pin().unwrap();
    imds.agent.kill9().unwrap();

    // A second guest on a new port of the VM's bridge, as a hot-plugged NIC
    // of the same network would be.
    let a = p.layout.addressing;
    let second =
        Addressing { guest_ip: if binding == Binding::Masquerade { "10.0.2.3" } else { "10.244.0.11" }, ..a };
    let guest2 = attach_namespace_guest(&p.layout.pod, "tap1", &second).unwrap();
    let (code, body) = get(&guest2, 2);
    assert_ne!(body, NODE_SECRET, "the new guest read the node's metadata");
    assert_eq!(code, 0, "answered {code} {body}");
    assert_eq!(p.node_imds.packets_reached().unwrap(), baseline, "packets reached the node");
    // Which guard stopped it: the bridge binding switches it to the uplink,
    // masquerade routes it to the pod's own stack, where the bridge's guard is.
    let stopped_by = if binding == Binding::Bridge { "uplink_dropped" } else { "foreign_dropped" };
    assert!(bpf::counter_at(&counters, stopped_by).unwrap() > 0, "{stopped_by} did not count it");
    // The first guest never noticed.
    served(&p, p.layout.guest());

    imds.agent.restart().unwrap();
    imds.wait_for_log("ifname=\"tap1\"", Duration::from_secs(10)).unwrap();
    served(&p, &guest2);
    assert_eq!(p.node_imds.packets_reached().unwrap(), baseline);
}

#[test]
fn interface_added_while_no_agent_masquerade() {
    interface_added_while_no_agent(Binding::Masquerade);
}

#[test]
fn interface_added_while_no_agent_bridge() {
    interface_added_while_no_agent(Binding::Bridge);
}

/// A guest sending its request through a VLAN interface: the receiving
/// kernel moves the 802.1Q tag into skb metadata before tc runs, so the
/// frame looks untagged to the programs. Such frames are left alone at the
/// TAP (served, their reply would go back untagged and be lost), and in
/// bridge binding the uplink guard stops them, tag or not. The frames are
/// sent raw: this machine's kernel has no 8021q module for a VLAN device
/// (the receiving side's untagging is in the core and needs none).
fn vlan_tagged_requests_are_passed_untouched(binding: Binding) {
    let _serial = exclusive();
    let p = pod(binding);
    let guest = p.layout.guest();
    let mut imds = Imds::start(&p.layout.pod, &ID, p._volume.dir(), &[]).unwrap();
    imds.wait_until_guest_attached().unwrap();
    let counters = imds.counters_pin().unwrap();
    let counter = |name: &str| bpf::counter_at(&counters, name).unwrap();
    let reached = p.node_imds.packets_reached().unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/send_syn.py");
    let send = |vlan: Option<&str>| {
        let mut command = guest.command("python3");
        command.arg(&script).args(["eth0", p.layout.addressing.guest_ip]).args(vlan);
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Long enough for the SYN-ACK and the guest's RST to come and go.
        std::thread::sleep(Duration::from_secs(1));
    };

    // Untagged, the raw SYN is redirected: the injection works.
    let redirected = counter("guest_redirected");
    send(None);
    // (Its SYN-ACK draws the guest kernel's RST, redirected too.)
    assert!(counter("guest_redirected") > redirected, "an untagged raw SYN was not redirected");

    let (redirected, uplink) = (counter("guest_redirected"), counter("uplink_dropped"));
    send(Some("100"));
    assert_eq!(
        counter("guest_redirected"),
        redirected,
        "a tagged frame was redirected (its reply would be lost)"
    );
    if binding == Binding::Bridge {
        // The bridge switches it toward the node; the uplink guard stops it.
        assert!(counter("uplink_dropped") > uplink, "the uplink guard did not stop it");
    }
    assert_eq!(p.node_imds.packets_reached().unwrap(), reached, "packets reached the node");
    served(&p, guest);
}

#[test]
fn vlan_tagged_requests_masquerade() {
    vlan_tagged_requests_are_passed_untouched(Binding::Masquerade);
}

#[test]
fn vlan_tagged_requests_bridge() {
    vlan_tagged_requests_are_passed_untouched(Binding::Bridge);
}
