//! Real cloud-init (Debian's, its datasources unmodified) crawls the
//! sidecar's NoCloud, OpenStack and EC2 flavours through the eBPF path,
//! from a guest namespace, as a booting cloud image does.

use std::path::PathBuf;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use imds_common::contract::SEED_SERIAL;
use imds_tests::{
    imds::{Identity, Imds},
    netns::{Netns, exclusive, require_root},
    tokens::{EXP, ProjectedVolume, jwt},
    topology::{Binding, GuestKind, PodLayout},
};
use serde_json::Value;

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };
const HOSTNAME: &str = "web-1";
const USER_DATA: &str =
    "#cloud-config\n# ünïcödé survives byte for byte\nruncmd:\n  - [sh, -c, 'echo hello > /run/imds']\n";
const VENDOR_DATA: &str = "#cloud-config\npackages: [curl]\n";
/// Two `sshPublicKey` Secrets of the VM's accessCredentials, as KubeVirt
/// mounts them: one with two keys under one Secret key, and a comment.
const LAPTOP_KEYS: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKd1Y0q5yJ3m6aVw0W4b3q0x alice@laptop\n\
                           # retired: ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7old\n\
                           ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDf8n alice@desktop\n";
const CI_KEY: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= ci@runner";

/// The keys cloud-init must end up with, sorted as the crawl prints them.
fn expected_keys(files: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = files
        .iter()
        .flat_map(|f| f.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Into::into)
        .collect();
    keys.sort();
    keys
}

struct Crawl {
    found: bool,
    instance_id: Option<String>,
    hostname: Option<String>,
    user_data: Option<Vec<u8>>,
    vendor_data: Option<Vec<u8>>,
    api_token_used: bool,
    /// `local` or `net`: cloud-init's network stage uses only a `net` one.
    dsmode: Option<String>,
    /// What cloud-init would put into `authorized_keys`, sorted.
    public_keys: Vec<String>,
}

/// Runs cloud-init's datasource for `flavour` in `guest`, the NoCloud one
/// with the seed serial the webhook sets.
fn crawl(guest: &Netns, flavour: &str, max_wait: u32) -> Crawl {
    crawl_with_serial(guest, flavour, max_wait, SEED_SERIAL)
}

fn crawl_with_serial(guest: &Netns, flavour: &str, max_wait: u32, serial: &str) -> Crawl {
    let pythonpath = std::env::var_os("IMDS_CLOUD_INIT_PYTHONPATH")
        .expect("IMDS_CLOUD_INIT_PYTHONPATH is not set: run the tests with `cargo xtask test`");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/cloud_init_crawl.py");
    let out = guest
        .command("env")
        .arg(format!("PYTHONPATH={}", pythonpath.to_string_lossy()))
        .arg("/usr/bin/python3")
        .arg(script)
        .args([flavour, &max_wait.to_string(), serial])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "cloud-init {flavour}: no result\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let bytes = |k: &str| v[k].as_str().map(|b| STANDARD.decode(b).unwrap());
    Crawl {
        found: v["found"] == true,
        instance_id: v["instance_id"].as_str().map(Into::into),
        hostname: v["hostname"].as_str().map(Into::into),
        user_data: bytes("userdata_b64"),
        vendor_data: bytes("vendordata_b64"),
        api_token_used: v["api_token_used"] == true,
        dsmode: v["dsmode"].as_str().map(Into::into),
        public_keys: v["public_keys"]
            .as_array()
            .map(|keys| keys.iter().filter_map(|k| k.as_str().map(Into::into)).collect())
            .unwrap_or_default(),
    }
}

/// The firmware UUID of KubeVirt v1.9's VMI fixture, as the webhook hands it
/// to the sidecar.
const FIRMWARE_UUID: &str = "d6b1c2a4-8e3f-4b5a-9c7d-1e2f3a4b5c6d";

struct Running {
    layout: PodLayout,
    secret: ProjectedVolume,
    ci_keys: ProjectedVolume,
    _laptop_keys: ProjectedVolume,
    _imds: Imds,
    _dir: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Running {
    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = ProjectedVolume::new(&dir.path().join("tokens")).unwrap();
    tokens.publish(&jwt(ID.namespace, ID.service_account, EXP, "ci")).unwrap();
    // The user-data Secret's volume, maintained kubelet-style.
    let secret = ProjectedVolume::new(&dir.path().join("user-data")).unwrap();
    secret
        .publish_files(&[("userdata", USER_DATA.as_bytes()), ("vendordata", VENDOR_DATA.as_bytes())])
        .unwrap();
    let user_data_dir = secret.dir().to_str().unwrap().to_owned();
    let laptop_keys = ProjectedVolume::new(&dir.path().join("laptop-access-cred")).unwrap();
    laptop_keys.publish_files(&[("key", LAPTOP_KEYS.as_bytes())]).unwrap();
    let ci_keys = ProjectedVolume::new(&dir.path().join("ci-access-cred")).unwrap();
    ci_keys.publish_files(&[("ci", CI_KEY.as_bytes())]).unwrap();
    let key_dirs = format!("{},{}", laptop_keys.dir().display(), ci_keys.dir().display());
    let mut args = vec![
        "--metadata-flavor",
        "nocloud,openstack,ec2",
        "--hostname",
        HOSTNAME,
        "--firmware-uuid",
        FIRMWARE_UUID,
        "--user-data-dir",
    ];
    args.push(&user_data_dir);
    args.extend(["--ssh-key-dir", &key_dirs]);
    args.extend_from_slice(extra);
    let mut sidecar = Imds::start(&layout.pod, &ID, tokens.dir(), &args).unwrap();
    sidecar.wait_until_guest_attached().unwrap();
    Running { layout, secret, ci_keys, _laptop_keys: laptop_keys, _imds: sidecar, _dir: dir }
}

fn assert_configured(flavour: &str, c: &Crawl, user_data: &str) {
    assert!(c.found, "cloud-init's {flavour} datasource found nothing");
    // KubeVirt's instance-id (the VM's firmware UUID), in every flavour.
    assert_eq!(c.instance_id.as_deref(), Some(FIRMWARE_UUID), "{flavour}");
    assert_eq!(c.hostname.as_deref(), Some(HOSTNAME), "{flavour}");
    assert_eq!(c.user_data.as_deref(), Some(user_data.as_bytes()), "{flavour}: user-data not byte for byte");
    // The VM's accessCredentials keys, every one, in every flavour.
    assert_eq!(c.public_keys, expected_keys(&[LAPTOP_KEYS, CI_KEY]), "{flavour}");
}

#[test]
fn cloud_init_crawls_every_flavour_and_follows_the_secret() {
    let _serial = exclusive();
    let r = start(&[]);
    let guest = r.layout.guest();

    let nocloud = crawl(guest, "nocloud", 30);
    assert_configured("nocloud", &nocloud, USER_DATA);
    assert_eq!(nocloud.vendor_data.as_deref(), Some(VENDOR_DATA.as_bytes()));
    // The network stage uses only a `net` datasource (cloud-init 22.4's
    // main.py: "[net] Exiting. datasource … in local mode").
    assert_eq!(
        nocloud.dsmode.as_deref(),
        Some("net"),
        "the seed serial must make NoCloud a network datasource"
    );
    // Why the serial carries dsmode=net: the one the README gave before
    // reads the same data but leaves the datasource in local mode, which
    // cloud-init 22.4 then never applies (tests/tests/stock_images.rs boots it).
    let old = crawl_with_serial(guest, "nocloud", 30, "ds=nocloud;s=http://169.254.169.254/nocloud/");
    assert!(old.found);
    assert_eq!(old.dsmode.as_deref(), Some("local"));

    let openstack = crawl(guest, "openstack", 30);
    assert_configured("openstack", &openstack, USER_DATA);
    // vendor_data.json {"cloud-init": …} becomes the vendor-data.
    assert_eq!(openstack.vendor_data.as_deref(), Some(VENDOR_DATA.as_bytes()));

    let ec2 = crawl(guest, "ec2", 30);
    assert_configured("ec2", &ec2, USER_DATA);
    assert!(!ec2.api_token_used, "off AWS cloud-init reads without a session");

    let ec2_aws = crawl(guest, "ec2-aws", 30);
    assert_configured("ec2 (AWS)", &ec2_aws, USER_DATA);
    assert!(ec2_aws.api_token_used, "on AWS cloud-init uses an IMDSv2 session");

    // Odd and hostile requests through the real path: clean 4xx, and the
    // server is still there afterwards.
    let long = format!("/latest/meta-data/{}", "x".repeat(12 * 1024));
    for (method, path, expected) in [
        ("GET", "/latest/meta-data/../user-data", 404),
        ("GET", "/latest//meta-data/", 404),
        ("GET", "/nocloud/%2e%2e/%2e%2e/etc/passwd", 404),
        ("GET", "/openstack/latest/../../../etc/shadow", 404),
        ("GET", long.as_str(), 404),
        ("HEAD", "/nocloud/user-data", 200),
        ("GET", "/latest/meta-data/instance-id?foo=bar&baz", 200),
        ("DELETE", "/latest/meta-data/instance-id", 405),
        ("PUT", "/latest/api/token", 400),
    ] {
        let out = guest
            .command("curl")
            .args(["-s", "--path-as-is", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .arg(format!("http://169.254.169.254{path}"))
            .args(if method == "HEAD" { &["-I"][..] } else { &[][..] })
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(code, expected.to_string(), "{method} {}", &path[..path.len().min(60)]);
    }

    // The Secret changes; once the kubelet has updated its volume, the new
    // user-data is what the guest reads.
    let updated = "#cloud-config\nruncmd: [[echo, updated]]\n";
    r.secret
        .publish_files(&[("userdata", updated.as_bytes()), ("vendordata", VENDOR_DATA.as_bytes())])
        .unwrap();
    assert_configured("nocloud after the update", &crawl(guest, "nocloud", 30), updated);
    assert_configured("ec2 after the update", &crawl(guest, "ec2", 30), updated);

    // A key Secret changes: the next boot's cloud-init gets the new key.
    let rotated = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRotatedKeyOfTheRunner ci@runner-2";
    r.ci_keys.publish_files(&[("ci", rotated.as_bytes())]).unwrap();
    for flavour in ["nocloud", "openstack", "ec2"] {
        let keys = crawl(guest, flavour, 30).public_keys;
        assert_eq!(keys, expected_keys(&[LAPTOP_KEYS, rotated]), "{flavour} after the key Secret changed");
    }
}

#[test]
fn required_imdsv2_serves_only_clients_with_a_session() {
    let _serial = exclusive();
    let r = start(&["--ec2-imdsv2", "required"]);
    let guest = r.layout.guest();
    let aws = crawl(guest, "ec2-aws", 30);
    assert_configured("ec2 (AWS, sessions required)", &aws, USER_DATA);
    assert!(aws.api_token_used);
    // Off AWS cloud-init asks for no session: with sessions required it
    // finds nothing (it gives up after max_wait).
    assert!(!crawl(guest, "ec2", 3).found, "served a client without a session");
}
