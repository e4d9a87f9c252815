//! Privileged tests of the data path with namespace guests: real kernels,
//! real packets, the real agent and the real unprivileged sidecar. Run by
//! `cargo xtask test` as root; they fail (never skip) when they cannot run.

use std::time::Duration;

use imds_common::kernel;
use imds_tests::{
    bpf,
    imds::{Identity, Imds, ServedGuest, sidecar_binary},
    kubelet::CgroupLayout,
    netns::{Netns, exclusive, require_root},
    tokens::{EXP, EXP_RFC3339, LoopingClient, ProjectedVolume, jwt},
    topology::{Addressing, Binding, GuestKind, PodLayout, attach_namespace_guest},
};
use serde_json::Value;

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };

type Running = ServedGuest;

fn start(binding: Binding) -> Running {
    ServedGuest::start(binding, &ID, &[]).expect("agent and sidecar")
}

/// `curl` from `ns`; returns (HTTP status, body). Status 0: no connection.
fn curl(ns: &Netns, path: &str, headers: &[&str]) -> (u16, String) {
    let mut script = String::from("curl -s -m 3 -w '\\n%{http_code}'");
    for h in headers {
        script.push_str(&format!(" -H '{h}'"));
    }
    script.push_str(&format!(" http://169.254.169.254{path}"));
    let out = ns.sh_status(&script).expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

fn served(binding: Binding) {
    let _serial = exclusive();
    let r = start(binding);
    let guest = r.layout.guest();

    let (status, body) = curl(guest, "/v1/identity", &["Metadata: true"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"namespace": "vm-team", "serviceAccountName": "builder", "vmName": "fedora-42", "audiences": [], "defaultToken": true})
    );

    let (status, body) = curl(guest, "/v1/token", &["Metadata: true"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body), serde_json::json!({"token": r.token, "expirationTimestamp": EXP_RFC3339}));

    let (status, body) = curl(guest, "/v1/token", &[]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["error"], "metadata_header_missing");

    // DNS rebinding: a name resolved to the IMDS address sends its own
    // `Host` and is refused; an HTTP/1.0 client without `Host` is served.
    let rebound = guest
        .sh_status(
            "curl -s -m 3 -w '\\n%{http_code}' -H 'Metadata: true' \
             --resolve rebind.attacker.example:80:169.254.169.254 http://rebind.attacker.example/v1/token",
        )
        .unwrap();
    let rebound = String::from_utf8_lossy(&rebound.stdout).into_owned();
    let (body, status) = rebound.rsplit_once('\n').unwrap();
    assert_eq!(status, "403", "{rebound}");
    assert_eq!(json(body)["error"], "host_refused");
    assert!(!body.contains(&r.token));
    let (status, body) = curl(guest, "/v1/token", &["Metadata: true", "Host:"]);
    assert_eq!(status, 200, "no Host at all: {body}");
    assert_eq!(curl(guest, "/v1/identity", &["Metadata: true", "Host: 169.254.169.254:80"]).0, 200);

    assert_eq!(curl(guest, "/healthz", &[]), (200, "OK".to_owned()));
    assert!(r.counter("guest_redirected") >= 4);
    assert!(r.counter("reply_forwarded") >= 4);
    assert_eq!(r.counter("reply_no_flow"), 0);
    assert_eq!(r.counter("reply_unexpected_dropped"), 0, "IPv6 or other noise left the sidecar veth");
    assert_eq!(r.counter("uplink_dropped"), 0);
}

#[test]
fn namespace_guest_is_served_masquerade() {
    served(Binding::Masquerade);
}

#[test]
fn namespace_guest_is_served_bridge() {
    served(Binding::Bridge);
}

fn arp_answered(binding: Binding) {
    let _serial = exclusive();
    let r = start(binding);
    let guest = r.layout.guest();
    // The on-link route makes the guest ARP for 169.254.169.254 itself, as
    // Windows (APIPA) and many Linux images do.
    guest.ip("route add 169.254.0.0/16 dev eth0").unwrap();
    guest.ip("neigh flush dev eth0").unwrap();
    let (status, body) = curl(guest, "/v1/identity", &["Metadata: true"]);
    assert_eq!(status, 200, "{body}");
    let (_, sidecar_mac) = r.layout.pod.link("imds-sidecar").unwrap();
    let neigh = guest.ip("neigh show 169.254.169.254 dev eth0").unwrap();
    assert!(
        neigh.contains(&sidecar_mac),
        "guest neighbour entry {neigh:?} is not the sidecar's {sidecar_mac}"
    );
    assert!(r.counter("guest_arp_answered") >= 1);
}

#[test]
fn guest_arp_for_imds_is_answered_masquerade() {
    arp_answered(Binding::Masquerade);
}

#[test]
fn guest_arp_for_imds_is_answered_bridge() {
    arp_answered(Binding::Bridge);
}

fn foreign_dropped(binding: Binding) {
    let _serial = exclusive();
    let r = start(binding);
    let foreign = &r.layout.foreign;
    let before = (r.counter("foreign_dropped"), r.counter("foreign_arp_dropped"));

    // Routed through the gateway (masquerade: the bridge's own address)…
    assert_eq!(curl(foreign, "/healthz", &[]).0, 0);
    // …and on-link, ARPing for the IMDS address on the bridge.
    foreign.ip("route add 169.254.0.0/16 dev eth0").unwrap();
    assert_eq!(curl(foreign, "/healthz", &[]).0, 0);
    // With a neighbour entry forged to the bridge's MAC.
    let (_, bridge_mac) = r.layout.pod.link("k6t-eth0").unwrap();
    foreign.ip(&format!("neigh replace 169.254.169.254 lladdr {bridge_mac} dev eth0 nud permanent")).unwrap();
    assert_eq!(curl(foreign, "/healthz", &[]).0, 0);

    let after = (r.counter("foreign_dropped"), r.counter("foreign_arp_dropped"));
    if binding == Binding::Masquerade {
        assert!(after.0 > before.0, "foreign IPv4 drops did not rise: {before:?} -> {after:?}");
    } else {
        assert!(after.0 > before.0, "forged-neighbour drops did not rise: {before:?} -> {after:?}");
    }
    assert!(after.1 > before.1, "foreign ARP drops did not rise: {before:?} -> {after:?}");

    // Processes of the pod itself do not reach the server either: it only
    // accepts what arrived through its veth.
    assert_eq!(curl(&r.layout.pod, "/healthz", &[]).0, 0);
    // The VM still is served.
    assert_eq!(curl(r.layout.guest(), "/healthz", &[]).0, 200);
}

#[test]
fn foreign_host_on_the_bridge_is_dropped_masquerade() {
    foreign_dropped(Binding::Masquerade);
}

#[test]
fn foreign_host_on_the_bridge_is_dropped_bridge() {
    foreign_dropped(Binding::Bridge);
}

fn ordinary_traffic(binding: Binding) {
    let _serial = exclusive();
    let r = start(binding);
    let a: Addressing = r.layout.addressing;
    let guest = r.layout.guest();
    let www = tempfile::tempdir().unwrap();

    guest.sh(&format!("ping -c 2 -W 2 {}", a.gateway_ip)).expect("guest pings its gateway");
    guest.sh(&format!("ping -c 2 -W 2 {}", a.foreign_ip)).expect("guest pings its neighbour");
    let _foreign_http = r.layout.foreign.http_server(a.foreign_ip, 8080, www.path()).unwrap();
    let got = guest.sh(&format!("curl -sf -m 3 http://{}:8080/hello", a.foreign_ip)).unwrap();
    assert_eq!(got, format!("hello from {}", a.foreign_ip));
    let _guest_http = guest.http_server(a.guest_ip, 8081, www.path()).unwrap();
    let got = r.layout.foreign.sh(&format!("curl -sf -m 3 http://{}:8081/hello", a.guest_ip)).unwrap();
    assert_eq!(got, format!("hello from {}", a.guest_ip));
    // TCP to the gateway: the pod's bridge (masquerade) or the node (bridge).
    let gateway_ns = if binding == Binding::Masquerade { &r.layout.pod } else { &r.layout.node };
    let _gw_http = gateway_ns.http_server(a.gateway_ip, 8082, www.path()).unwrap();
    let got = guest.sh(&format!("curl -sf -m 3 http://{}:8082/hello", a.gateway_ip)).unwrap();
    assert_eq!(got, format!("hello from {}", a.gateway_ip));
    assert_eq!(r.counter("guest_unsupported_dropped"), 0);
}

#[test]
fn ordinary_guest_traffic_passes_masquerade() {
    ordinary_traffic(Binding::Masquerade);
}

#[test]
fn ordinary_guest_traffic_passes_bridge() {
    ordinary_traffic(Binding::Bridge);
}

/// The pod's veths and rules, and the programs this test's agent pinned
/// (per name of `bpf::PROGRAMS`): never what else runs on the machine.
fn count_everything(r: &Running) -> (usize, usize, usize, Vec<usize>) {
    let pod = &r.layout.pod;
    let veths: Vec<Value> = serde_json::from_str(&pod.ip("-j link show type veth").unwrap()).unwrap();
    let named = |n: &str| veths.iter().filter(|l| l["ifname"] == n).count();
    let (sidecar_links, redirect_links) = (named("imds-sidecar"), named("imds-redirect"));
    let rules = pod.ip("rule show").unwrap().lines().filter(|l| l.contains("169254")).count();
    let programs = bpf::count_by_name(&pinned(r));
    (sidecar_links, redirect_links, rules, programs)
}

fn pinned(r: &Running) -> Vec<(u64, String)> {
    bpf::pinned_programs(&r.imds.agent.pins_dir()).unwrap()
}

/// Attachments (TCX links, or legacy tc filters) per program of this
/// test's agent: one per TAP, bridge, uplink and the veth.
fn links(r: &Running) -> Vec<usize> {
    bpf::attachments_by_name(&pinned(r), &r.layout.pod).unwrap()
}

/// The agent killed and restarted under a guest that never stops asking:
/// not one request fails, and the restarted agent adopts the pod's veth,
/// programs and links instead of making them again.
#[test]
fn the_agent_killed_and_restarted_under_a_looping_guest_loses_nothing() {
    for binding in [Binding::Masquerade, Binding::Bridge] {
        let _serial = exclusive();
        let mut r = start(binding);
        let guest = r.layout.guest();
        let before = (count_everything(&r), links(&r));
        assert_eq!(before.0, (1, 1, 1, vec![1, 1, 1, 1, 1]), "{binding:?}");
        let looping = LoopingClient::start(guest, "/v1/token").unwrap();
        looping.wait_for_more(5, Duration::from_secs(30)).unwrap();
        r.imds.agent.kill9().unwrap();
        // The guest goes on being served with no agent at all.
        looping.wait_for_more(5, Duration::from_secs(30)).unwrap();
        r.imds.agent.restart().unwrap();
        r.imds.wait_for_log("programs=\"adopted\"", Duration::from_secs(10)).unwrap();
        looping.wait_for_more(20, Duration::from_secs(60)).unwrap();
        let seen = looping.stop_and_check(std::slice::from_ref(&r.token)).unwrap();
        assert!(seen >= 1);
        let log = r.imds.agent.log();
        assert!(log.contains("veth=\"adopted\""), "{binding:?}: veth not adopted:\n{log}");
        assert!(!log.contains("attached"), "{binding:?}: the restarted agent attached anew:\n{log}");
        assert_eq!((count_everything(&r), links(&r)), before, "{binding:?}");
    }
}

/// SIGTERM (an upgrade, a drained node): the agent leaves every pod's data
/// path in place, and the VM goes on being served.
#[test]
fn the_agent_exiting_leaves_the_data_path_in_place() {
    let _serial = exclusive();
    let mut r = start(Binding::Bridge);
    let status = r.imds.agent.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(count_everything(&r), (1, 1, 1, vec![1, 1, 1, 1, 1]));
    assert_eq!(curl(r.layout.guest(), "/v1/identity", &["Metadata: true"]).0, 200);
}

/// The kubelet removing the pod's volume is the pod going: the agent lets
/// go of it and unpins everything (the kernel frees programs and links).
#[test]
fn a_pod_that_goes_is_unpinned() {
    let _serial = exclusive();
    let mut r = start(Binding::Masquerade);
    let pinned_before = pinned(&r);
    assert_eq!(bpf::count_by_name(&pinned_before), vec![1, 1, 1, 1, 1]);
    let ids: Vec<u64> = pinned_before.iter().map(|(id, _)| *id).collect();
    r.imds.kill_sidecar().unwrap();
    r.imds.pod.remove_volumes().unwrap();
    r.imds.wait_for_log("its programs, maps and links are unpinned", Duration::from_secs(10)).unwrap();
    let left = bpf::wait_until_freed(&ids, Duration::from_secs(5)).unwrap();
    assert!(left.is_empty(), "programs left behind: {left:?}\n{}", r.imds.logs());
    assert_eq!(bpf::attachments_by_name(&pinned_before, &r.layout.pod).unwrap(), vec![0, 0, 0, 0, 0]);
    assert!(!r.imds.agent.pins_dir().join(r.imds.pod.uid()).exists());
}

/// The sidecar as the webhook runs it: uid and gid 107, no capabilities in
/// any set, no way to gain one; its startup probe passes once serving.
#[test]
fn the_sidecar_runs_unprivileged_and_its_probe_passes() {
    let _serial = exclusive();
    let mut r = start(Binding::Masquerade);
    let pid = r.imds.sidecar.as_mut().and_then(|s| s.process().pid()).unwrap();
    // The shell that joined the cgroups exec'd `ip netns exec`, which forks:
    // the sidecar is the newest process of the pod's cgroup.
    let status = sidecar_status(&r, pid);
    for (field, wanted) in [
        ("Uid", "107\t107\t107\t107"),
        ("Gid", "107\t107\t107\t107"),
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapEff", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
    ] {
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_default();
        assert_eq!(line.split_once(':').map(|(_, v)| v.trim()), Some(wanted), "{field}: {status}");
    }
    let probe = r
        .layout
        .pod
        .command(sidecar_binary().to_str().unwrap())
        .args(["probe", "--timeout", "2s", "--run-dir"])
        .arg(r.imds.pod.run_dir())
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "probe: {}{}",
        String::from_utf8_lossy(&probe.stdout),
        String::from_utf8_lossy(&probe.stderr)
    );
    assert_eq!(curl(r.layout.guest(), "/v1/token", &["Metadata: true"]).0, 200);
}

/// `/proc/<pid>/status` of the sidecar process itself (the harness's
/// wrapper shell and `ip netns exec` are its ancestors).
fn sidecar_status(r: &Running, wrapper_pid: u32) -> String {
    let procs = r.imds.pod.cgroup_procs();
    let pids = std::fs::read_to_string(&procs[0]).unwrap();
    let binary = sidecar_binary();
    for pid in pids.split_whitespace() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe == binary {
            return std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        }
    }
    panic!("no sidecar process in the pod's cgroup (wrapper {wrapper_pid}): {pids:?}");
}

#[test]
fn token_rotation_is_atomic_under_a_looping_client() {
    let _serial = exclusive();
    let r = start(Binding::Masquerade);
    let guest = r.layout.guest();
    let looping = LoopingClient::start(guest, "/v1/token").unwrap();
    let mut published = vec![r.token.clone()];
    for generation in 1..=5 {
        looping.wait_for_more(4, Duration::from_secs(30)).unwrap();
        let token =
            jwt(ID.namespace, ID.service_account, EXP + generation * 3600, &format!("gen{generation}"));
        r.volume.publish(&token).unwrap();
        // The very next request sees the new token.
        let (status, body) = curl(guest, "/v1/token", &["Metadata: true"]);
        assert_eq!(status, 200);
        assert_eq!(json(&body)["token"], token, "generation {generation} not served right after the swap");
        published.push(token);
    }
    looping.wait_for_more(4, Duration::from_secs(30)).unwrap();
    let seen = looping.stop_and_check(&published).unwrap();
    assert!(seen >= 3, "the loop saw only {seen} generations");
}

#[test]
fn bridges_and_taps_created_after_start_are_attached() {
    let _serial = exclusive();
    require_root();
    // A pod before KubeVirt has plugged the VM: just eth0.
    let pod = Netns::new("pod").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("token")).unwrap();
    volume.publish(&jwt(ID.namespace, ID.service_account, EXP, "late")).unwrap();
    let mut sidecar = Imds::start(&pod, &ID, volume.dir(), &[]).unwrap();

    pod.ip("link add k6t-eth0 type bridge").unwrap();
    pod.ip("addr add 10.0.2.1/24 dev k6t-eth0").unwrap();
    pod.ip("link set k6t-eth0 up").unwrap();
    let a =
        Addressing { guest_ip: "10.0.2.2", prefix_len: 24, gateway_ip: "10.0.2.1", foreign_ip: "10.0.2.9" };
    let guest = attach_namespace_guest(&pod, "tap0", &a).unwrap();
    sidecar.wait_for_log("ifname=\"tap0\"", Duration::from_secs(5)).unwrap();
    assert_eq!(curl(&guest, "/healthz", &[]).0, 200);

    // A second interface hot-plugged later (KubeVirt names its TAP tap<hash>).
    pod.ip("link add k6t-net1 type bridge").unwrap();
    pod.ip("addr add 10.1.0.1/24 dev k6t-net1").unwrap();
    pod.ip("link set k6t-net1 up").unwrap();
    let guest2 = Netns::new("guest").unwrap();
    pod.ip(&format!("link add tap1a2b3c type veth peer name eth0 netns {}", guest2.name())).unwrap();
    pod.ip("link set tap1a2b3c master k6t-net1 up").unwrap();
    guest2.ip("addr add 10.1.0.2/24 dev eth0").unwrap();
    guest2.ip("link set eth0 up").unwrap();
    guest2.ip("route add default via 10.1.0.1").unwrap();
    sidecar.wait_for_log("ifname=\"tap1a2b3c\"", Duration::from_secs(5)).unwrap();
    assert_eq!(curl(&guest2, "/v1/identity", &["Metadata: true"]).0, 200);

    // Unplugged: detached, and the first VM interface is unaffected.
    pod.ip("link del tap1a2b3c").unwrap();
    sidecar.wait_for_log("detached", Duration::from_secs(5)).unwrap();
    assert_eq!(curl(&guest, "/healthz", &[]).0, 200);
}

#[test]
fn requests_racing_startup_never_fail_once_one_succeeded() {
    let _serial = exclusive();
    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("token")).unwrap();
    volume.publish(&jwt(ID.namespace, ID.service_account, EXP, "race")).unwrap();
    let log = dir.path().join("codes");
    // A guest that polls from boot, like cloud-init does.
    let poller = layout
        .guest()
        .spawn(
            "sh",
            &["-c", &format!(
                "while :; do curl -s -o /dev/null -m 1 -w '%{{http_code}}\\n' http://169.254.169.254/healthz; done > {}",
                log.display()
            )],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut sidecar = Imds::start(&layout.pod, &ID, volume.dir(), &[]).unwrap();
    sidecar.wait_until_guest_attached().unwrap();
    // Enough requests after the first success, however slow the machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let codes = std::fs::read_to_string(&log).unwrap_or_default();
        let served_since = codes.lines().skip_while(|c| *c != "200").count();
        if served_since > 10 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(poller);

    let codes = std::fs::read_to_string(&log).unwrap();
    let codes: Vec<&str> = codes.lines().collect();
    let first_ok = codes.iter().position(|c| *c == "200").expect("never served");
    let after: Vec<&&str> = codes[first_ok..codes.len() - 1].iter().filter(|c| **c != "200").collect();
    assert!(after.is_empty(), "requests failed after the first success: {after:?} (all: {codes:?})");
    assert!(codes.len() - first_ok > 5, "too few requests after startup: {codes:?}");
}

/// The agent's `--ebpf-log debug` turns on the programs' own messages,
/// which reach the agent's log; by default (`off`) there are none.
#[test]
fn ebpf_log_messages_are_opt_in() {
    let _serial = exclusive();
    let quiet = start(Binding::Masquerade);
    assert_eq!(curl(quiet.layout.guest(), "/healthz", &[]).0, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !quiet.imds.agent.log().contains("imds_ebpf"),
        "eBPF messages without --ebpf-log:\n{}",
        quiet.imds.agent.log()
    );
    drop(quiet);

    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("token")).unwrap();
    volume.publish(&jwt(ID.namespace, ID.service_account, EXP, "log")).unwrap();
    let mut sidecar = Imds::start_with(
        &layout.pod,
        &ID,
        volume.dir(),
        &[],
        &["--ebpf-log", "debug"],
        CgroupLayout::SystemdV2,
    )
    .unwrap();
    sidecar.wait_until_guest_attached().unwrap();
    assert_eq!(curl(layout.guest(), "/healthz", &[]).0, 200);
    sidecar.wait_for_log("guest 10.0.2.2:", Duration::from_secs(5)).unwrap();
}

/// A guest process that pipelines requests and never reads (a tiny receive
/// buffer) takes the only connection slot; it loses it at the response
/// deadline, and a well-behaved client is served within that deadline.
#[test]
fn a_guest_that_never_reads_loses_its_connection_and_others_are_served() {
    let _serial = exclusive();
    let args = ["--max-connections", "1", "--response-timeout", "2s"];
    let served = ServedGuest::start(Binding::Masquerade, &ID, &args).expect("agent and sidecar");
    let guest = served.guest();
    // 4000 pipelined token requests: megabytes of answers for a 4 KiB
    // receive window that is never drained. The process stays until killed.
    let script = "import socket, time\n\
                  s = socket.socket()\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n\
                  s.connect(('169.254.169.254', 80))\n\
                  s.sendall(b'GET /v1/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nMetadata: true\\r\\n\\r\\n' * 4000)\n\
                  print('sent', flush=True)\n\
                  time.sleep(60)\n";
    let mut stuck =
        guest.command("python3").args(["-c", script]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stuck.stdout.take().unwrap()), &mut line)
        .unwrap();
    assert_eq!(line.trim(), "sent");
    let started = std::time::Instant::now();
    let out = guest
        .sh_status("curl -s -m 8 -o /dev/null -w '%{http_code}' -H 'Metadata: true' http://169.254.169.254/v1/identity")
        .unwrap();
    let waited = started.elapsed();
    let _ = stuck.kill();
    let _ = stuck.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "the well-behaved client was not served");
    assert!(waited < Duration::from_secs(5), "the well-behaved client waited {waited:?}");
}

/// The agent says at start what the node's kernel lacks. Without TCX
/// (before 6.6) the programs run as legacy tc filters of a clsact qdisc,
/// which cannot be pinned: the warning names the kernel, nothing is pinned
/// but programs and maps, and the filters are in the kernel. With TCX,
/// nothing is degraded and every link is pinned.
#[test]
fn the_agent_says_at_start_what_the_kernel_lacks() {
    let _serial = exclusive();
    let r = start(Binding::Masquerade);
    let release = kernel::running_release();
    let log = r.imds.agent.log();
    let mut link_pins = 0;
    let mut stack = vec![r.imds.agent.pins_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap().to_string_lossy().starts_with("link_") {
                link_pins += 1;
            }
        }
    }
    // Every program attached somewhere (the uplink guard on each uplink).
    let attachments = links(&r);
    assert!(attachments.iter().all(|n| *n >= 1), "{release}: {attachments:?}");
    if kernel::has_tcx(&release) {
        assert!(!log.contains(kernel::LOG_LEGACY_TC), "{release}: {log}");
        assert_eq!(
            link_pins,
            attachments.iter().sum::<usize>(),
            "{release}: one pinned TCX link per attachment"
        );
    } else {
        let warning = log
            .lines()
            .find(|l| l.contains(kernel::LOG_LEGACY_TC))
            .unwrap_or_else(|| panic!("Linux {release} has no TCX, and the agent did not say so:\n{log}"));
        assert!(warning.contains(&format!("kernel={release}")), "{warning}");
        assert!(warning.contains("cannot be pinned"), "{warning}");
        assert_eq!(link_pins, 0, "{release}: legacy filters cannot be pinned");
        let hooks: Vec<String> =
            bpf::legacy_filters(&r.layout.pod).unwrap().into_iter().map(|f| f.1).collect();
        assert!(hooks.iter().all(|h| h == "clsact/ingress" || h == "clsact/egress"), "{hooks:?}");
    }
}

/// The pod's veth made again (deleted under the agent): a new generation of
/// programs is loaded and attached, the guest is served again, and the
/// previous generation's attachments go, on TCX (its pins) as on legacy tc
/// (its filters, removed once the new ones are on the same hooks), so its
/// programs are freed.
#[test]
fn a_veth_made_again_replaces_the_previous_generation() {
    let _serial = exclusive();
    let mut r = start(Binding::Masquerade);
    let before = pinned(&r);
    assert_eq!(bpf::count_by_name(&before), vec![1, 1, 1, 1, 1]);
    let old_ids: Vec<u64> = before.iter().map(|(id, _)| *id).collect();
    r.layout.pod.ip("link del imds-sidecar").unwrap();
    r.imds.wait_for_log("removed the pins of a previous veth", Duration::from_secs(30)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while curl(r.layout.guest(), "/v1/identity", &["Metadata: true"]).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "not served again:\n{}", r.imds.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = pinned(&r);
    assert_eq!(bpf::count_by_name(&after), vec![1, 1, 1, 1, 1]);
    assert!(after.iter().all(|(id, _)| !old_ids.contains(id)), "{after:?} reuses {old_ids:?}");
    let attachments = bpf::attachments_by_name(&after, &r.layout.pod).unwrap();
    assert!(attachments.iter().all(|n| *n >= 1), "{attachments:?}");
    // Nothing holds the previous generation any more.
    let left = bpf::wait_until_freed(&old_ids, Duration::from_secs(30)).unwrap();
    assert!(left.is_empty(), "the previous generation is still loaded: {left:?}\n{}", r.imds.logs());
}
