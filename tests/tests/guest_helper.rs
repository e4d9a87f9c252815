//! `kubevirt-imds-guest`, the guest helper, against the real sidecar: the
//! static musl build run in a namespace guest (fast), its arm64 build under
//! qemu-user, and (in `guest_helper_vm.rs`) a real booted VM.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use imds_guest::log_lines;
use imds_tests::{
    fake_apiserver::FakeApiServer,
    imds::{Identity, Imds},
    netns::{exclusive, require_root},
    process::Process,
    stand_in::{captured, form, install_cgi, sts_assume_role_reply},
    tokens::{EXP, ProjectedVolume, jwt, jwt_issued, now_secs},
    topology::{Binding, GuestKind, PodLayout},
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };
const ROLE: &str = "arn:aws:iam::111122223333:role/vm-reader";
/// Short enough that the helper refreshes within the test (at 80–85 %).
const TTL: u64 = 10;

/// The IMDS of one pod for a namespace guest: the sidecar serving `files`
/// (a kubelet-style volume) with `args`, and the guest helper's builds.
/// Fields drop in order: the processes before the namespaces.
struct Served {
    imds: Imds,
    volume: ProjectedVolume,
    dir: tempfile::TempDir,
    layout: PodLayout,
    builds: PathBuf,
}

impl Served {
    fn start(binding: Binding, files: &[(&str, &[u8])], args: &[&str]) -> Self {
        let builds = imds_tests::guest_helper::binaries_dir();
        let layout = PodLayout::build(binding, GuestKind::Namespace).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let volume = ProjectedVolume::new(&dir.path().join("volume")).unwrap();
        volume.publish_files(files).unwrap();
        let builds_arg = builds.to_str().unwrap().to_owned();
        let args: Vec<&str> = args.iter().copied().chain(["--guest-binaries-dir", &builds_arg]).collect();
        let mut imds = Imds::start(&layout.pod, &ID, volume.dir(), &args).unwrap();
        imds.wait_until_guest_attached().unwrap();
        Self { imds, volume, dir, layout, builds }
    }

    /// The build for `imds_api::GUEST_BINARIES[index]`.
    fn build(&self, index: usize) -> PathBuf {
        self.builds.join(imds_api::GUEST_BINARIES[index].name)
    }

    /// The x86_64 build, to run in the guest.
    fn helper(&self) -> Command {
        self.layout.guest().command(self.build(0).to_str().unwrap())
    }
}

/// Whether `done` became true within `timeout`.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn logs(helper: &Process, imds: &Imds) -> String {
    format!("--- helper:\n{}\n{}", helper.log(), imds.logs())
}

/// Reads a token file in a loop, as Vault Agent or an SDK would, and
/// records every distinct content and every read that found nothing.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, u64, u64)>,
}

impl Reader {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut seen, mut missing, mut reads) = (Vec::<String>::new(), 0u64, 0u64);
            while !flag.load(Ordering::Relaxed) {
                match std::fs::read_to_string(&path) {
                    Ok(t) if seen.last() != Some(&t) => seen.push(t),
                    Ok(_) => {}
                    Err(_) => missing += 1,
                }
                reads += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (seen, missing, reads)
        });
        Self { stop, thread }
    }

    fn finish(self) -> (Vec<String>, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("reader thread")
    }
}

#[test]
fn the_helper_keeps_kubelet_style_files_through_rotation_and_an_outage() {
    let _serial = exclusive();
    require_root();
    let fresh = |nonce: &str| {
        let now = now_secs();
        jwt_issued(ID.namespace, ID.service_account, now, now + TTL, nonce)
    };
    let (sts, vault) = (
        jwt(ID.namespace, ID.service_account, EXP, "sts"),
        jwt(ID.namespace, ID.service_account, EXP, "vault"),
    );
    let first = fresh("first");
    // The pod's volume: the default token, and the two audiences' (fixed).
    let volume_files = |token: &str| {
        [("token", token.to_owned()), ("audience-0", sts.clone()), ("audience-1", vault.clone())]
    };
    fn as_bytes<'a>(f: &'a [(&'static str, String); 3]) -> [(&'static str, &'a [u8]); 3] {
        f.each_ref().map(|(n, c)| (*n, c.as_bytes()))
    }
    let args = ["--token-audience", "sts.amazonaws.com,vault", "--aws-role-arn", ROLE];
    let mut s = Served::start(Binding::Masquerade, &as_bytes(&volume_files(&first)), &args);
    let publish = |volume: &ProjectedVolume, token: &str| {
        volume.publish_files(&as_bytes(&volume_files(token))).unwrap()
    };

    let root = s.dir.path().join("guest-root");
    let (k8s, aws, vault_dir) = (root.join("k8s-sa"), root.join("eks-sa"), root.join("vault"));
    let env_file = root.join("etc/aws.env");
    let config = root.join("guest.toml");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        &config,
        format!(
            "timeout = \"2s\"\n[kubernetes]\ndir = \"{}\"\n[aws]\ndir = \"{}\"\nenv_file = \"{}\"\n\
             [[audience]]\naudience = \"vault\"\ndir = \"{}\"\nmode = 0o640\ngroup = 4242\n",
            k8s.display(),
            aws.display(),
            env_file.display(),
            vault_dir.display()
        ),
    )
    .unwrap();
    let mut command = s.helper();
    command.arg("--config").arg(&config).arg("--verbose");
    let mut helper = Process::spawn("guest-helper", command).unwrap();
    let token_path = k8s.join("token");
    let written = wait_until(Duration::from_secs(20), || token_path.exists());
    assert!(written, "no token file:\n{}", logs(&helper, &s.imds));
    let reader = Reader::start(token_path.clone());

    // The layout a pod's projected volume has, and what goes beside the token.
    assert_eq!(std::fs::read_to_string(&token_path).unwrap(), first);
    assert_eq!(std::fs::read_to_string(k8s.join("namespace")).unwrap(), ID.namespace);
    assert!(!k8s.join("ca.crt").exists(), "no CA was configured: none may be invented");
    assert_eq!(std::fs::read_link(&token_path).unwrap(), Path::new("..data/token"));
    assert!(std::fs::read_link(k8s.join("..data")).unwrap().to_string_lossy().starts_with(".."));
    assert_eq!(std::fs::read_to_string(aws.join("token")).unwrap(), sts);
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        format!("AWS_ROLE_ARN={ROLE}\nAWS_WEB_IDENTITY_TOKEN_FILE={}\n", aws.join("token").display())
    );
    let vault_file = std::fs::metadata(vault_dir.join("token")).unwrap();
    assert_eq!(std::fs::read_to_string(vault_dir.join("token")).unwrap(), vault);
    assert_eq!((vault_file.permissions().mode() & 0o777, vault_file.gid()), (0o640, 4242));

    // The kubelet rotates the pod's token: the helper follows at 80–85 %
    // of the first one's lifetime.
    let second = fresh("second");
    publish(&s.volume, &second);
    let holds = |t: &str| std::fs::read_to_string(&token_path).is_ok_and(|c| c == t);
    let rotated = wait_until(Duration::from_secs(TTL + 10), || holds(&second));
    assert!(rotated, "the rotation was not followed:\n{}", logs(&helper, &s.imds));

    // The sidecar goes away: the refresh fails, the file stays as it was.
    s.imds.kill_sidecar().unwrap();
    helper.wait_for_log(log_lines::REFRESH_FAILED, Duration::from_secs(TTL + 10)).unwrap();
    assert!(holds(&second), "a failed refresh changed the file");
    let third = fresh("third");
    publish(&s.volume, &third);
    s.imds.restart_sidecar(&s.layout.pod).unwrap();
    let recovered = wait_until(Duration::from_secs(30), || holds(&third));
    assert!(recovered, "no token after the outage:\n{}", logs(&helper, &s.imds));

    let (seen, missing, reads) = reader.finish();
    assert_eq!(missing, 0, "the token file was missing for {missing} of {reads} reads");
    assert_eq!(
        seen,
        [first.clone(), second, third.clone()],
        "reads saw something else than the three whole tokens"
    );
    let versions = std::fs::read_dir(&k8s).unwrap().filter(|e| {
        let name = e.as_ref().unwrap().file_name();
        name.to_string_lossy().starts_with("..2")
    });
    assert_eq!(versions.count(), 1, "old versions are removed");
    // Files removed behind its back come back at the next refresh, even
    // with the same token.
    std::fs::remove_dir_all(&k8s).unwrap();
    let restored = wait_until(Duration::from_secs(TTL + 10), || holds(&third));
    assert!(restored, "the removed files were not written again:\n{}", logs(&helper, &s.imds));
    assert!(helper.is_running(), "the helper exited:\n{}", helper.log());
    assert!(!helper.log().contains(&first), "a token reached the helper's log");
}

#[test]
fn once_writes_every_token_and_says_why_when_it_cannot() {
    let _serial = exclusive();
    require_root();
    let token = jwt(ID.namespace, ID.service_account, EXP, "once");
    let s = Served::start(Binding::Bridge, &[("token", token.as_bytes())], &[]);
    let run = |config: &str, extra: &[&str]| {
        let path = s.dir.path().join("guest.toml");
        std::fs::write(&path, config).unwrap();
        let out = s.helper().arg("--once").arg("--config").arg(&path).args(extra).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let k8s = s.dir.path().join("sa");
    let (code, log) = run(&format!("[kubernetes]\ndir = \"{}\"", k8s.display()), &[]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(std::fs::read_to_string(k8s.join("token")).unwrap(), token);

    let (code, log) = run("[[audience]]\naudience = \"vault\"\ndir = \"/tmp/never\"", &[]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains(r#"audience "vault" is not served to this VM; the IMDS serves []"#), "{log}");

    let (code, log) = run("[aws]\nenabled = true", &[]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("no AWS role for this VM"), "{log}");

    let (code, log) = run("timeout = \"1s\"", &["--imds", "http://192.0.2.1", "--deadline", "3s"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("could not be reached before the deadline") && log.contains("192.0.2.1"), "{log}");

    let (code, log) = run("[kubernetes]\nmode = 0o4755", &[]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("kubernetes.mode must be permission bits"), "{log}");

    // The snippet's install step, as cloud-init runs it, with /usr/local/bin
    // a private tmpfs so the host's stays untouched.
    let snippet = cloud_init_snippet();
    let install = snippet["runcmd"][0][2].as_str().expect("the install script");
    let installed = s
        .layout
        .guest()
        .command("unshare")
        .args(["--mount", "sh", "-c", "mount -t tmpfs imds-test /usr/local/bin && sh -c \"$1\" && /usr/local/bin/kubevirt-imds-guest --version", "sh"])
        .arg(install)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&installed.stdout);
    assert!(installed.status.success(), "{said}{}", String::from_utf8_lossy(&installed.stderr));
    assert!(said.contains("kubevirt-imds-guest-linux-amd64: OK"), "{said}");
    assert!(said.contains(concat!("kubevirt-imds-guest ", env!("CARGO_PKG_VERSION"))), "{said}");
}

/// The arm64 build is a working program too (run by qemu-user), and talks
/// to the IMDS.
#[test]
fn the_arm64_build_writes_the_token_under_qemu_user() {
    let _serial = exclusive();
    require_root();
    let token = jwt(ID.namespace, ID.service_account, EXP, "arm64");
    let s = Served::start(Binding::Masquerade, &[("token", token.as_bytes())], &[]);
    let arm64 = s.build(1);
    let file = imds_tests::netns::run(Command::new("file").arg(&arm64)).unwrap();
    assert!(file.contains("ARM aarch64") && file.contains("statically linked"), "{file}");
    let k8s = s.dir.path().join("sa");
    let config = s.dir.path().join("guest.toml");
    std::fs::write(&config, format!("[kubernetes]\ndir = \"{}\"", k8s.display())).unwrap();
    let out = s
        .layout
        .guest()
        .command("qemu-aarch64-static")
        .arg(&arm64)
        .arg("--once")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(k8s.join("token")).unwrap(), token);
}

/// The venv's Python, with botocore and the Kubernetes client
/// (`cargo xtask setup`; `cargo xtask test` sets the variable).
fn python() -> PathBuf {
    let path = PathBuf::from(
        std::env::var_os("IMDS_VENV_PYTHON").expect("IMDS_VENV_PYTHON: run `cargo xtask test`"),
    );
    assert!(path.is_file(), "{} is missing: run `cargo xtask setup`", path.display());
    path
}

const BOTOCORE: &str = r#"
import botocore.session
credentials = botocore.session.get_session().get_credentials()
print(credentials.method, credentials.get_frozen_credentials().access_key)
"#;

const KUBERNETES_CLIENT: &str = r#"
import sys
from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader
configuration = client.Configuration()
InClusterConfigLoader(token_filename=sys.argv[1], cert_filename=sys.argv[2]).load_and_set(configuration)
# The fake API server's certificate names kubernetes.default.svc, not 127.0.0.1.
configuration.tls_server_name = "kubernetes.default.svc"
account = client.CoreV1Api(client.ApiClient(configuration)).read_namespaced_service_account("plain", "vm-team")
print(account.metadata.name)
"#;

/// botocore's web identity provider and the Kubernetes Python client's
/// in-cluster loader, unmodified, read what the helper wrote: the first
/// against a recording STS stand-in, the second over TLS against a fake
/// API server that only accepts the helper's token.
#[test]
fn botocore_and_the_kubernetes_client_read_the_helpers_files() {
    let _serial = exclusive();
    require_root();
    let (api, sts) = (
        jwt(ID.namespace, ID.service_account, EXP, "api"),
        jwt(ID.namespace, ID.service_account, EXP, "sts"),
    );
    let files = [("token", api.as_bytes()), ("audience-0", sts.as_bytes())];
    let s = Served::start(
        Binding::Masquerade,
        &files,
        &["--token-audience", "sts.amazonaws.com", "--aws-role-arn", ROLE],
    );
    let (dir, layout) = (&s.dir, &s.layout);

    // The API server's CA, which the user gives the helper to copy in.
    let api_tls = dir.path().join("api-tls");
    imds_tests::webhook::generate_certs_for(&api_tls, "kubernetes", "default").unwrap();
    let root = dir.path().join("guest-root");
    let (k8s, aws, env_file) = (root.join("k8s-sa"), root.join("eks-sa"), root.join("aws.env"));
    let config = dir.path().join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\ndir = \"{}\"\nca_file = \"{}\"\n[aws]\ndir = \"{}\"\nenv_file = \"{}\"\n",
            k8s.display(),
            api_tls.join("ca.crt").display(),
            aws.display(),
            env_file.display()
        ),
    )
    .unwrap();
    let out = s.helper().arg("--once").arg("--config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(k8s.join("ca.crt")).unwrap(), std::fs::read(api_tls.join("ca.crt")).unwrap());

    // botocore, in the guest, with the environment file the helper wrote.
    let www = dir.path().join("www");
    let captures = dir.path().join("captures");
    std::fs::create_dir_all(&www).unwrap();
    install_cgi(&www, &captures, "sts", "text/xml", &sts_assume_role_reply("ASIAFROMTHEHELPER")).unwrap();
    let _sts = layout.pod.http_server("10.0.2.1", 8080, &www).unwrap();
    let mut botocore = layout.guest().command("env");
    botocore.arg("-i");
    for line in std::fs::read_to_string(&env_file).unwrap().lines() {
        botocore.arg(line);
    }
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = botocore
        .arg(format!("HOME={}", home.display()))
        .args(["AWS_ENDPOINT_URL_STS=http://10.0.2.1:8080/cgi-bin/sts", "AWS_REGION=us-east-1"])
        .args([
            "AWS_EC2_METADATA_DISABLED=true",
            "AWS_CONFIG_FILE=/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE=/dev/null",
        ])
        .arg(python())
        .args(["-c", BOTOCORE])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "botocore: {}{said}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(said.trim(), "assume-role-with-web-identity ASIAFROMTHEHELPER");
    let sent = form(&captured(&captures, "sts", "body").unwrap());
    assert_eq!(sent["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(sent["RoleArn"], ROLE);
    assert_eq!(sent["WebIdentityToken"], sts, "STS got another token than the helper's file");

    // The Kubernetes client's in-cluster loading, over TLS with the copied CA.
    let apiserver = FakeApiServer::start(&api_tls).unwrap();
    apiserver.accept_bearer(&api);
    let out = Command::new(python())
        .args(["-c", KUBERNETES_CLIENT])
        .arg(k8s.join("token"))
        .arg(k8s.join("ca.crt"))
        .env("KUBERNETES_SERVICE_HOST", apiserver.addr.ip().to_string())
        .env("KUBERNETES_SERVICE_PORT", apiserver.addr.port().to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kubernetes client: {}{said}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(said.trim(), "plain");
    assert_eq!(apiserver.reads_of("vm-team", "plain"), 1);
}

fn deploy_guest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/guest").join(name)
}

/// `deploy/guest/cloud-init.yaml` as JSON (Debian's PyYAML reads it, as
/// cloud-init would).
fn cloud_init_snippet() -> serde_json::Value {
    let script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let json = imds_tests::netns::run(
        Command::new("python3").args(["-c", script]).arg(deploy_guest("cloud-init.yaml")),
    )
    .expect("PyYAML reads the snippet");
    serde_json::from_str(&json).unwrap()
}

/// The snippet carries the unit verbatim and a valid configuration; the
/// unit passes `systemd-analyze verify` without a warning; every key the
/// example configuration documents is one the helper reads.
#[test]
fn the_unit_the_snippet_and_the_example_configuration_hold_together() {
    let unit = std::fs::read_to_string(deploy_guest("kubevirt-imds-guest.service")).unwrap();
    let snippet_text = std::fs::read_to_string(deploy_guest("cloud-init.yaml")).unwrap();
    assert!(snippet_text.starts_with("#cloud-config\n"), "cloud-init ignores user data without the header");
    let snippet = cloud_init_snippet();
    let file = |path: &str| {
        snippet["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("the snippet writes no {path}"))["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        file("/etc/systemd/system/kubevirt-imds-guest.service"),
        unit,
        "the snippet's unit differs from the file"
    );
    imds_guest::config::Config::parse(&file("/etc/kubevirt-imds/guest.toml"))
        .expect("the snippet's configuration");

    // systemd's own check, in a root holding the unit, systemd's units and the binary.
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(root.path().join("usr/local/bin")).unwrap();
    std::fs::write(units.join("kubevirt-imds-guest.service"), &unit).unwrap();
    let helper = imds_tests::guest_helper::binaries_dir().join(imds_api::GUEST_BINARIES[0].name);
    std::fs::copy(helper, root.path().join("usr/local/bin/kubevirt-imds-guest")).unwrap();
    std::fs::create_dir_all(root.path().join("usr/lib")).unwrap();
    let copied =
        Command::new("cp").arg("-r").arg("/usr/lib/systemd").arg(root.path().join("usr/lib/")).status();
    assert!(copied.is_ok_and(|s| s.success()), "copying systemd's units");
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", root.path().display()))
        .args(["verify", "kubevirt-imds-guest.service"])
        .output()
        .expect("systemd-analyze (Debian's systemd)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    // The example, with every documented key uncommented, is read.
    let example = std::fs::read_to_string(deploy_guest("kubevirt-imds-guest.toml")).unwrap();
    let key = |l: &str| {
        let l = l.strip_prefix("# ").unwrap_or(l);
        l.starts_with("[[audience]]")
            || l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    };
    let uncommented: String = example
        .lines()
        .map(|l| if key(l) { l.strip_prefix("# ").unwrap_or(l) } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.matches(" = ").count() >= 15, "the heuristic found too few keys:\n{uncommented}");
    let config =
        imds_guest::config::Config::parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(config.audiences.len(), 2);
}
