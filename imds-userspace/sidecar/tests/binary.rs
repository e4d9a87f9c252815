//! The `kubevirt-imds-sidecar` binary as the kubelet runs it, without root:
//! `run` waits for an interface that never comes here, and `probe` says so.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use imds_sidecar::{
    channel::{PROTOCOL, PodSettings},
    channel_server::{self, ChannelLimits},
    contract::{IMDS_IP, IMDS_PORT, SOCKET_NAME},
    readiness::{Listener, SharedReadiness},
};
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_kubevirt-imds-sidecar");

fn probe(run_dir: &Path) -> Output {
    Command::new(BINARY)
        .args(["probe", "--timeout", "2s", "--run-dir"])
        .arg(run_dir)
        .env_remove("IMDS_RUN_DIR")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_exits_0_only_when_ready_and_prints_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let listener = channel_server::bind(&dir.path().join(SOCKET_NAME)).unwrap();
    let readiness = SharedReadiness::default();
    let stop = CancellationToken::new();
    let settings = PodSettings {
        protocol: PROTOCOL,
        bridge: None,
        guest_port_prefix: "tap".into(),
        namespace: "ns".into(),
        pod_name: None,
        vm_name: "vm".into(),
    };
    tokio::spawn(channel_server::serve(
        listener,
        settings,
        readiness.clone(),
        ChannelLimits::default(),
        stop.clone(),
    ));

    let path = dir.path().to_owned();
    let not_ready = tokio::task::spawn_blocking(move || probe(&path)).await.unwrap();
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(
        stdout(&not_ready).starts_with("no interface imds-sidecar in this pod yet"),
        "{}",
        stdout(&not_ready)
    );

    readiness.update(|r| {
        r.set_listener(Listener::Listening {
            addr: std::net::SocketAddrV4::new(IMDS_IP, IMDS_PORT),
            ifindex: 5,
        });
        r.request_served(Some("nonce"));
        r.probe_succeeded("nonce", Some("node-1"), std::time::SystemTime::now()).unwrap();
    });
    let path = dir.path().to_owned();
    let ready = tokio::task::spawn_blocking(move || probe(&path)).await.unwrap();
    assert_eq!(ready.status.code(), Some(0), "{}", stdout(&ready));
    assert!(stdout(&ready).starts_with("serving: the agent on node node-1"), "{}", stdout(&ready));
    stop.cancel();
}

#[test]
fn probe_without_a_sidecar_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let output = probe(dir.path());
    assert_eq!(output.status.code(), Some(1));
    let expected =
        format!("the kubevirt-imds sidecar is not listening on {}", dir.path().join(SOCKET_NAME).display());
    assert!(stdout(&output).starts_with(&expected), "{}", stdout(&output));
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["probe", "--timeout", "soon"][..], &["probe", "--bogus"], &[], &["run"]] {
        let output = Command::new(BINARY).args(args).env_remove("IMDS_NAMESPACE").output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_waits_for_the_agent_and_leaves_nothing_behind_on_sigterm() {
    let run_dir = tempfile::tempdir().unwrap();
    let token_dir = tempfile::tempdir().unwrap();
    let child = Command::new(BINARY)
        .args(["run", "--namespace", "ns", "--service-account-name", "sa", "--vm-name", "vm"])
        .arg("--run-dir")
        .arg(run_dir.path())
        .arg("--token-dir")
        .arg(token_dir.path())
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let socket = run_dir.path().join(SOCKET_NAME);
    until("the channel socket", || socket.exists());

    let output = probe(run_dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("kubevirt-imds-agent DaemonSet"), "{}", stdout(&output));

    // SAFETY: signalling our own child.
    let rc = unsafe { libc::kill(running.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let mut status = None;
    until("the exit", || {
        status = running.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!socket.exists(), "the socket file was left behind");

    let mut log = String::new();
    std::io::Read::read_to_string(running.0.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains(imds_sidecar::log_lines::LOG_CHANNEL_LISTENING), "{log}");
    assert!(log.contains("token not readable yet"), "{log}");
    assert!(log.contains("no interface imds-sidecar in this pod yet"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
}
