//! How the agent finds the pods of its node: through each sidecar's socket
//! in the pod's emptyDir, as the kubelet lays them out, checking the
//! process behind it against the pod's cgroup (cgroup v2 and v1, systemd and
//! cgroupfs drivers, containerd and CRI-O naming), one worker per pod, and
//! letting go of a pod when the kubelet removes its volume.

use std::time::Duration;

use imds_tests::{
    imds::{Agent, Identity, Imds, Sidecar, sidecar_binary},
    kubelet::{CgroupLayout, KubeletPod},
    netns::{Netns, exclusive, require_root},
    tokens::{EXP, ProjectedVolume, jwt},
    topology::{Binding, GuestKind, PodLayout},
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };

struct Tokens {
    volume: ProjectedVolume,
    _dir: tempfile::TempDir,
}

fn tokens() -> Tokens {
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("token")).unwrap();
    volume.publish(&jwt(ID.namespace, ID.service_account, EXP, "discovery")).unwrap();
    Tokens { volume, _dir: dir }
}

fn http_code(guest: &Netns) -> u16 {
    let out = guest
        .sh_status("curl -s -m 3 -o /dev/null -w '%{http_code}' -H 'Metadata: true' http://169.254.169.254/v1/identity")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn probe(pod_netns: &Netns, pod: &KubeletPod) -> (bool, String) {
    let out = pod_netns
        .command(sidecar_binary().to_str().unwrap())
        .args(["probe", "--timeout", "2s", "--run-dir"])
        .arg(pod.run_dir())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn pods_are_found_whatever_the_cgroup_layout() {
    for layout in [CgroupLayout::SystemdV2, CgroupLayout::CgroupfsV1, CgroupLayout::SystemdV2Guaranteed] {
        let _serial = exclusive();
        require_root();
        let pod = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
        let t = tokens();
        let imds = Imds::start_with(&pod.pod, &ID, t.volume.dir(), &[], &[], layout)
            .unwrap_or_else(|e| panic!("{layout:?}: {e:#}"));
        assert!(
            imds.agent.log().contains(&format!("uid={}", imds.pod.uid())),
            "{layout:?}:\n{}",
            imds.logs()
        );
        assert_eq!(http_code(pod.guest()), 200, "{layout:?}");
    }
}

/// A socket in a pod's volume whose process is not in that pod's cgroup
/// (another pod's process, or one of the node's) is not the pod's sidecar:
/// the agent does not touch the namespace behind it.
#[test]
fn a_socket_whose_process_is_not_in_the_pod_is_ignored() {
    let _serial = exclusive();
    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let t = tokens();
    let mut agent = Agent::start(&[]).unwrap();
    let victim = KubeletPod::new(&agent.node, CgroupLayout::SystemdV2).unwrap();
    let other = KubeletPod::new(&agent.node, CgroupLayout::SystemdV2).unwrap();
    // The sidecar's socket in `victim`'s volume, its process in `other`'s cgroup.
    let mut sidecar = Sidecar::start_in_cgroups(
        &layout.pod,
        victim.run_dir(),
        &other.cgroup_procs(),
        &ID,
        t.volume.dir(),
        &[],
    )
    .unwrap();
    sidecar.process().wait_for_log("channel listening", Duration::from_secs(10)).unwrap();
    agent.process().unwrap().wait_for_log("does not belong to its pod", Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        layout.pod.ip("link show imds-sidecar").is_err(),
        "the agent plumbed a namespace that is not the pod's"
    );
    let (ready, message) = probe(&layout.pod, &victim);
    assert!(!ready, "{message}");
    assert!(message.contains("kubevirt-imds"), "the probe does not say what is missing: {message}");
}

/// Without an agent on the node the VM never starts: the startup probe
/// fails and says which piece is missing.
#[test]
fn without_an_agent_the_probe_fails_naming_it() {
    let _serial = exclusive();
    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let t = tokens();
    let mut agent = Agent::start(&[]).unwrap();
    agent.kill9().unwrap();
    let pod = KubeletPod::new(&agent.node, CgroupLayout::SystemdV2).unwrap();
    let mut sidecar = Sidecar::start(&layout.pod, &pod, &ID, t.volume.dir(), &[]).unwrap();
    sidecar.process().wait_for_log("channel listening", Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (ready, message) = probe(&layout.pod, &pod);
    assert!(!ready, "{message}");
    assert!(message.contains("kubevirt-imds-agent"), "{message}");
    assert!(
        sidecar.log().contains("kubevirt-imds-agent"),
        "the sidecar's log does not name the agent:\n{}",
        sidecar.log()
    );
    assert_eq!(http_code(layout.guest()), 0);
}

/// One agent, three pods; one goes: only its pins go, the others are
/// still served.
#[test]
fn one_agent_serves_many_pods_and_lets_go_of_the_one_that_goes() {
    let _serial = exclusive();
    require_root();
    let t = tokens();
    let mut agent = Agent::start(&[]).unwrap();
    let mut pods = Vec::new();
    for layout in [CgroupLayout::SystemdV2, CgroupLayout::CgroupfsV1, CgroupLayout::SystemdV2Guaranteed] {
        let net = PodLayout::build(Binding::Bridge, GuestKind::Namespace).unwrap();
        let pod = KubeletPod::new(&agent.node, layout).unwrap();
        let mut sidecar = Sidecar::start(&net.pod, &pod, &ID, t.volume.dir(), &[]).unwrap();
        sidecar
            .process()
            .wait_for_log(imds_tests::imds::SIDECAR_READY, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}\nagent:\n{}", agent.log()));
        pods.push((net, pod, sidecar));
    }
    for (net, _, _) in &pods {
        assert_eq!(http_code(net.guest()), 200);
    }
    let (_, gone, mut sidecar) = pods.remove(1);
    sidecar.process().kill9().unwrap();
    gone.remove_volumes().unwrap();
    agent
        .process()
        .unwrap()
        .wait_for_log("its programs, maps and links are unpinned", Duration::from_secs(10))
        .unwrap();
    assert!(!agent.pins_dir().join(gone.uid()).exists());
    for (net, pod, _) in &pods {
        assert!(agent.pins_dir().join(pod.uid()).exists());
        assert_eq!(http_code(net.guest()), 200);
    }
}

/// A restarted agent finds a pod whose sidecar is down through the pod's
/// sandbox process (its cgroup), adopts its pinned programs, and probes the
/// path again once the sidecar is back.
#[test]
fn a_restarted_agent_adopts_a_pod_whose_sidecar_is_down() {
    let _serial = exclusive();
    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let t = tokens();
    let mut imds = Imds::start(&layout.pod, &ID, t.volume.dir(), &[]).unwrap();
    let _sandbox = imds.pod.start_sandbox(&layout.pod).unwrap();
    assert_eq!(http_code(layout.guest()), 200);
    imds.kill_sidecar().unwrap();
    imds.agent.kill9().unwrap();
    imds.agent.restart().unwrap();
    imds.wait_for_log("programs=\"adopted\"", Duration::from_secs(10)).unwrap();
    assert_eq!(http_code(layout.guest()), 0, "served with no sidecar");
    imds.restart_sidecar(&layout.pod).unwrap();
    assert_eq!(http_code(layout.guest()), 200);
    assert!(imds.agent.log().contains("the data path answered the probe"), "{}", imds.logs());
}
