//! Stock Debian cloud images really boot from the IMDS (issue 10): Debian's
//! cloud-init, configuration untouched, in a QEMU VM of a virt-launcher-like
//! pod (masquerade binding, KubeVirt's DHCP server), configured by the real
//! sidecar through the eBPF path. The VM's SMBIOS is what KubeVirt derives
//! from the VirtualMachineInstance after the real webhook, over TLS, added
//! its datasource hint to a VMI as KubeVirt v1.9 creates it for a VM (with
//! KubeVirt's own random firmware UUID and serial). What the guest did is
//! read from its disk after it powered off.
//!
//! One boot per flavour and Debian release (cloud-init 22.4.2 and 25.1.4),
//! each minutes under TCG; the images are built once (see
//! `imds_tests::stock_image`).

use std::time::Duration;

use imds_common::contract::Flavor;
use imds_tests::{
    cloud_init_outcome::CloudInitOutcome,
    dhcp::{DhcpServer, Lease},
    imds::{Identity, Imds},
    netns::{exclusive, require_root},
    smbios,
    stock_image::{self, Booted, Release, StockImage},
    tokens::{EXP, ProjectedVolume, jwt},
    topology::{BRIDGE, Binding, GuestKind, PodLayout, TAP},
    webhook::{VMI, Webhook, admission_review, generate_certs, patched},
};
use imds_webhook::{
    annotations::{DATASOURCE_HINT_APPLIED, ENABLED, METADATA_FLAVORS},
    firmware_uuid, ssh_keys,
};
use serde_json::{Value, json};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };
/// The pod's `spec.hostname`, served as the guest's hostname in the
/// metadata; the user-data sets none.
const HOSTNAME: &str = "web-1";
const GUEST_MAC: &str = "52:54:00:12:34:56";
const BOOT_TIMEOUT: Duration = Duration::from_secs(6 * 60);

/// A VMI as virt-controller creates it for a VM on KubeVirt v1.9.
const VMI_FROM_VM: &str = include_str!("../fixtures/vmi/vmi-from-vm-v1.9.json");
/// What the README recommended before: `ds=nocloud` alone means dsmode
/// local to cloud-init 22.4, which then finds the http seed only in its
/// network stage and stops there.
const OLD_SEED_SERIAL: &str = "ds=nocloud;s=http://169.254.169.254/nocloud/";

/// cloud-init's network stage giving up on a datasource found in local
/// mode (main.py: `[net] Exiting. datasource … in local mode`).
const NET_STAGE_SKIPPED: &str = "[net] Exiting. datasource";

const WRITTEN_FILE: &str = "/etc/imds-test/written-by-write-files";
const WRITTEN_CONTENT: &str = "from the IMDS user-data\n";
const RUNCMD_MARKER: &str = "/var/lib/imds-test-runcmd";
const RUNCMD_CONTENT: &str = "runcmd ran\n";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMf3yGqPjD0l9x8B6rZ1Rk0cHq0v2bq7Qm3x6WcY1Tt2 imds-test";
/// A key of the VM's `accessCredentials` (an `sshPublicKey` Secret), served
/// as the flavour's public keys.
const ACCESS_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq2m0n8Jd1cV4yQ7pX3kR6tW9zB2fL5sA8gE1hN4uC7 alice@laptop";
const ACCESS_SECRET: &str = "fedora-imds-ssh";
/// Debian's cloud.cfg `default_user`.
const DEFAULT_USER_KEYS: &str = "/home/debian/.ssh/authorized_keys";

/// The instance-id the sidecar serves for `vmi`: the firmware UUID the VMI
/// webhook recorded, else KubeVirt's UUID for the VMI's name (what the pod
/// webhook then hands the sidecar; `imds_webhook::firmware_uuid`).
fn instance_id(vmi: &Value) -> String {
    match vmi["metadata"]["annotations"][firmware_uuid::ANNOTATION].as_str() {
        Some(recorded) => recorded.to_owned(),
        None => firmware_uuid::legacy(vmi["metadata"]["name"].as_str().unwrap()),
    }
}

fn user_data() -> String {
    format!(
        "#cloud-config
write_files:
  - path: {WRITTEN_FILE}
    content: |
      {written}
runcmd:
  - [sh, -c, 'echo {ran} > {RUNCMD_MARKER}']
ssh_authorized_keys:
  - {SSH_KEY}
",
        written = WRITTEN_CONTENT.trim_end(),
        ran = RUNCMD_CONTENT.trim_end(),
    )
}

/// The VMI after the webhook's `/mutate-vmi`, over verified TLS, for a VM
/// asking for `flavor`: what KubeVirt then turns into the guest's SMBIOS.
fn hinted_vmi(flavor: Flavor) -> Value {
    let mut vmi: Value = serde_json::from_str(VMI_FROM_VM).unwrap();
    vmi["metadata"]["annotations"][ENABLED] = json!("true");
    vmi["metadata"]["annotations"][METADATA_FLAVORS] = json!(flavor.name());
    // KubeVirt's admitter would also want a cloudInitNoCloud volume for
    // this propagation method; its disk is left out here, as the guest
    // would read it before the IMDS (with the same keys).
    vmi["spec"]["accessCredentials"] = json!([{"sshPublicKey": {
        "source": {"secret": {"secretName": ACCESS_SECRET}},
        "propagationMethod": {"noCloud": {}},
    }}]);
    let tls = tempfile::tempdir().unwrap();
    generate_certs(tls.path()).unwrap();
    let ca = tls.path().join("ca.crt");
    let webhook = Webhook::start(tls.path(), &ca, &[]).unwrap();
    let review = admission_review(&VMI, vmi.clone(), ID.namespace, "admission.k8s.io/v1");
    let (status, body) = webhook.post("/mutate-vmi", &review, &ca).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let hinted = patched(&vmi, &answer).unwrap();
    eprintln!(
        "webhook: {}\nfirmware: {}\nchassis: {}",
        hinted["metadata"]["annotations"][DATASOURCE_HINT_APPLIED],
        hinted["spec"]["domain"]["firmware"],
        hinted["spec"]["domain"]["chassis"]
    );
    hinted
}

/// The pod around one VM: namespaces, the sidecar serving NoCloud with the
/// user-data Secret, and KubeVirt's DHCP server.
struct Pod {
    layout: PodLayout,
    dhcp: DhcpServer,
    _imds: Imds,
    _dir: tempfile::TempDir,
}

/// The sidecar gets the key Secrets the VMI webhook recorded, as the pod
/// webhook mounts them.
fn pod(flavor: Flavor, vmi: &Value, user_data: &str, extra_args: &[&str]) -> Pod {
    let instance_id = instance_id(vmi);
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Tap).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = ProjectedVolume::new(&dir.path().join("tokens")).unwrap();
    tokens.publish(&jwt(ID.namespace, ID.service_account, EXP, "stock")).unwrap();
    let secret = ProjectedVolume::new(&dir.path().join("user-data")).unwrap();
    secret.publish_files(&[("userdata", user_data.as_bytes())]).unwrap();
    let user_data_dir = secret.dir().to_str().unwrap().to_owned();
    let keys = ProjectedVolume::new(&dir.path().join(format!("{ACCESS_SECRET}-access-cred"))).unwrap();
    keys.publish_files(&[("key", format!("{ACCESS_KEY}\n").as_bytes())]).unwrap();
    let key_dir = keys.dir().to_str().unwrap().to_owned();
    let mut args = vec![
        "--metadata-flavor",
        flavor.name(),
        "--hostname",
        HOSTNAME,
        "--user-data-dir",
        &user_data_dir,
        "--firmware-uuid",
        &instance_id,
    ];
    let recorded = vmi["metadata"]["annotations"][ssh_keys::ANNOTATION].as_str().map(ssh_keys::parse);
    if recorded.is_some_and(|secrets| secrets == [ACCESS_SECRET]) {
        args.extend(["--ssh-key-dir", &key_dir]);
    }
    args.extend(extra_args);
    let mut sidecar = Imds::start(&layout.pod, &ID, tokens.dir(), &args).unwrap();
    sidecar.wait_until_guest_attached().unwrap();

    let a = layout.addressing;
    let mtu: u32 = layout.pod.sh("cat /sys/class/net/eth0/mtu").unwrap().trim().parse().unwrap();
    let namespace_domain = format!("{}.svc.cluster.local", ID.namespace);
    let search = [namespace_domain.as_str(), "svc.cluster.local", "cluster.local"];
    let dhcp = DhcpServer::start(
        &layout.pod,
        &Lease {
            interface: BRIDGE,
            server_ip: a.gateway_ip,
            client_mac: GUEST_MAC,
            client_ip: a.guest_ip,
            prefix_len: a.prefix_len,
            router: a.gateway_ip,
            // Nothing listens on port 53 there: the guest's DNS queries are
            // refused at once instead of timing out.
            dns_servers: &[a.gateway_ip],
            search_domains: &search,
            mtu,
            // server.go sends the pod's hostname, which in KubeVirt equals
            // the metadata's; a different one here keeps a hostname only
            // DHCP supplied from passing for the metadata's.
            hostname: ID.vm_name,
        },
    )
    .unwrap();
    Pod { layout, dhcp, _imds: sidecar, _dir: dir }
}

/// One boot and what it left.
struct Run {
    booted: Booted,
    cloud_init: CloudInitOutcome,
    /// What a failure message quotes (also printed: `--nocapture` shows it).
    why: String,
    pod: Pod,
}

/// Boots `release` with the SMBIOS of `vmi` in a fresh pod whose sidecar
/// serves `flavor` and `user_data`, with `extra_args`.
fn boot(release: Release, flavor: Flavor, vmi: &Value, user_data: &str, extra_args: &[&str]) -> Run {
    let image = StockImage::prepare(release, &stock_image::cache_dir().unwrap()).unwrap();
    let pod = pod(flavor, vmi, user_data, extra_args);
    let smbios = smbios::qemu_args(vmi);
    eprintln!("qemu: {}", smbios.join(" "));
    let booted = image
        .boot(&pod.layout.pod, TAP, GUEST_MAC, &smbios, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nudhcpd:\n{}", pod.dhcp.log()));
    let cloud_init = booted.cloud_init().unwrap();
    let why = evidence(release, &booted, &cloud_init);
    eprintln!("{why}");
    Run { booted, cloud_init, why, pod }
}

/// The cloud-init facts and log lines a failure message quotes.
fn evidence(release: Release, booted: &Booted, o: &CloudInitOutcome) -> String {
    let mut lines = vec![
        format!("== {} boot, {:.1?}", release.codename(), booted.duration()),
        format!("status.json v1.datasource: {:?}", o.datasource()),
        format!("instance-id: {:?}", o.instance_id),
        format!("errors: {:?}", o.errors()),
        format!("recoverable_errors: {:?}", o.recoverable_errors()),
        "cloud-init.log:".to_owned(),
    ];
    const NEEDLES: [&str; 9] = [
        "Cloud-init v.",
        "Seed from",
        "Loaded datasource",
        "dsmode",
        "targeting instance id",
        "Exiting",
        "WARNING",
        "IMDSv2",
        "ds-identify",
    ];
    // The metadata answers and failed attempts (not every request line).
    let fetch = |l: &str| l.contains("url_helper.py[") && !l.contains("] open '");
    for line in o.log.lines().filter(|l| NEEDLES.iter().any(|n| l.contains(n)) || fetch(l)) {
        lines.push(format!("  {line}"));
    }
    lines.join("\n")
}

fn read(booted: &Booted, path: &str) -> Option<String> {
    booted.read_text(path).unwrap_or_else(|e| panic!("reading {path}: {e:#}"))
}

/// The datasource cloud-init must say it used, per flavour and release.
fn assert_datasource(release: Release, flavor: Flavor, datasource: &str, why: &str) {
    match flavor {
        Flavor::Nocloud => {
            assert!(datasource.starts_with("DataSourceNoCloudNet "), "{why}");
            assert!(datasource.contains("[seed=dmi,http://169.254.169.254/nocloud/]"), "{why}");
            match release {
                Release::Bookworm => assert!(datasource.contains("[dsmode=net]"), "{why}"),
                // 25.1 names the dsmode only when it is not net (NoCloud's __str__).
                Release::Trixie => assert!(!datasource.contains("[dsmode="), "{why}"),
            }
        }
        // The local stage finds it (with its own DHCP) on the chassis tag.
        Flavor::Openstack => assert!(datasource.starts_with("DataSourceOpenStack"), "{why}"),
        // On a platform that looks like AWS, Ec2Local (local stage, own DHCP).
        Flavor::Ec2 => assert!(datasource.starts_with("DataSourceEc2"), "{why}"),
    }
}

/// Warnings cloud-init ≥ 23.4 records as recoverable errors that are
/// expected here, each with its reason; any other fails the test.
fn expected_warning(flavor: Flavor, message: &str) -> bool {
    // Ec2 reads the guest's network layout from `meta-data/network/`, keyed
    // by the NIC's MAC, which the sidecar does not know; cloud-init falls
    // back to DHCP on the first NIC, which is what a KubeVirt guest wants.
    flavor == Flavor::Ec2 && message.contains("Metadata 'network' key not valid")
}

/// Everything the metadata and the user-data asked for is on the disk.
fn assert_configured_from_the_imds(release: Release, flavor: Flavor) {
    let _serial = exclusive();
    require_root();
    let vmi = hinted_vmi(flavor);
    let Run { booted, cloud_init: o, why, pod } = boot(release, flavor, &vmi, &user_data(), &[]);

    let datasource = o.datasource().unwrap_or_else(|| panic!("cloud-init left no status.json\n{why}"));
    assert_datasource(release, flavor, datasource, &why);
    // The network stage did not leave the datasource unused (22.4's failure
    // with a local-mode NoCloud seed).
    assert!(o.log_lines(NET_STAGE_SKIPPED).is_empty(), "{why}");
    assert_eq!(o.errors(), Vec::<String>::new(), "{why}");
    // 23.4 and later: warnings and deprecations a stage got past.
    let unexpected: Vec<String> =
        o.recoverable_errors().into_iter().filter(|m| !expected_warning(flavor, m)).collect();
    assert_eq!(unexpected, Vec::<String>::new(), "{why}");
    assert!(o.result.is_some(), "the final stage never ended\n{why}");
    // KubeVirt's firmware UUID, as its own cloud-init disks give it.
    assert_eq!(o.instance_id.as_deref(), Some(instance_id(&vmi).as_str()), "{why}");
    assert!(
        vmi["metadata"]["annotations"][firmware_uuid::ANNOTATION].is_string(),
        "not recorded by the webhook"
    );
    assert_eq!(read(&booted, "/etc/hostname").as_deref(), Some(format!("{HOSTNAME}\n").as_str()), "{why}");
    assert_eq!(read(&booted, WRITTEN_FILE).as_deref(), Some(WRITTEN_CONTENT), "{why}");
    assert_eq!(read(&booted, RUNCMD_MARKER).as_deref(), Some(RUNCMD_CONTENT), "{why}");
    let keys = read(&booted, DEFAULT_USER_KEYS).unwrap_or_default();
    assert!(keys.lines().any(|k| k == SSH_KEY), "{DEFAULT_USER_KEYS}: {keys:?}\n{why}");
    // The accessCredentials key, from the metadata.
    assert!(keys.lines().any(|k| k == ACCESS_KEY), "{DEFAULT_USER_KEYS}: {keys:?}\n{why}");
    if flavor == Flavor::Ec2 {
        // Looking like AWS, cloud-init asks for an IMDSv2 session first.
        assert!(!o.log_lines("latest/api/token").is_empty(), "no IMDSv2 session requested\n{why}");
    }

    // KubeVirt's DHCP server leased the guest its address, and the guest
    // used it (cloud-init prints its interfaces on the console).
    let guest_ip = pod.layout.addressing.guest_ip;
    assert!(pod.dhcp.log().contains(&format!("sending ACK to {guest_ip}")), "udhcpd:\n{}", pod.dhcp.log());
    let in_table = |l: &str| l.contains("ci-info:") && l.split('|').any(|cell| cell.trim() == guest_ip);
    assert!(booted.console().lines().any(in_table), "the guest never had {guest_ip}:\n{}", booted.console());
}

#[test]
fn bookworm_configures_itself_from_nocloud() {
    assert_configured_from_the_imds(Release::Bookworm, Flavor::Nocloud);
}

#[test]
fn bookworm_configures_itself_from_openstack() {
    assert_configured_from_the_imds(Release::Bookworm, Flavor::Openstack);
}

#[test]
fn bookworm_configures_itself_from_ec2() {
    assert_configured_from_the_imds(Release::Bookworm, Flavor::Ec2);
}

#[test]
fn trixie_configures_itself_from_nocloud() {
    assert_configured_from_the_imds(Release::Trixie, Flavor::Nocloud);
}

#[test]
fn trixie_configures_itself_from_openstack() {
    assert_configured_from_the_imds(Release::Trixie, Flavor::Openstack);
}

#[test]
fn trixie_configures_itself_from_ec2() {
    assert_configured_from_the_imds(Release::Trixie, Flavor::Ec2);
}

/// The harness tells a failed configuration from a good one: cloud-init
/// 22.4 with the old serial finds the seed only in the network stage, in
/// local mode, and stops there without applying the user-data.
#[test]
fn bookworm_ignores_the_user_data_with_the_old_serial() {
    let _serial = exclusive();
    require_root();
    let mut vmi: Value = serde_json::from_str(VMI_FROM_VM).unwrap();
    vmi["spec"]["domain"]["firmware"]["serial"] = json!(OLD_SEED_SERIAL);
    let Run { booted, cloud_init: o, why, .. } =
        boot(Release::Bookworm, Flavor::Nocloud, &vmi, &user_data(), &[]);
    let skipped = o.log_lines(NET_STAGE_SKIPPED);
    assert!(skipped.iter().any(|l| l.contains("in local mode")), "{why}");
    assert_ne!(o.instance_id.as_deref(), Some(instance_id(&vmi).as_str()), "{why}");
    assert_eq!(read(&booted, WRITTEN_FILE), None, "{why}");
    assert_eq!(read(&booted, RUNCMD_MARKER), None, "{why}");
    assert!(!read(&booted, DEFAULT_USER_KEYS).unwrap_or_default().contains(SSH_KEY), "{why}");
}

/// Where the evidence of the guest helper's install is copied to (on the
/// disk: `/run` is gone after power-off).
const HELPER_EVIDENCE: &str = "/root/imds-guest-helper";

/// `deploy/guest/cloud-init.yaml` as the user's whole user-data, plus one
/// `runcmd` entry of the test's that copies what happened to the disk.
fn helper_user_data() -> String {
    let snippet =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/guest/cloud-init.yaml"))
            .unwrap();
    assert!(
        snippet.trim_end().ends_with("kubevirt-imds-guest.service]"),
        "runcmd must stay the snippet's last key"
    );
    let e = HELPER_EVIDENCE;
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    format!(
        "{}\n  - [sh, -c, 'sleep 3; mkdir -p {e}; cp -L {sa}/token {sa}/namespace {e}/; ls -la {sa}/ > {e}/layout; \
         systemctl is-active kubevirt-imds-guest > {e}/active; systemctl is-enabled kubevirt-imds-guest > {e}/enabled; \
         journalctl -u kubevirt-imds-guest --no-pager > {e}/journal 2>&1; /usr/local/bin/kubevirt-imds-guest --version > {e}/version']\n",
        snippet.trim_end()
    )
}

/// The cloud-init snippet of `deploy/guest/` in a stock Debian 12 image:
/// cloud-init downloads the helper from the IMDS, checks its digest,
/// installs it, writes the token once and enables the systemd unit, which
/// systemd then runs.
#[test]
fn bookworm_installs_the_guest_helper_from_the_snippet() {
    let _serial = exclusive();
    require_root();
    let vmi = hinted_vmi(Flavor::Nocloud);
    let guest_binaries = imds_tests::guest_helper::binaries_dir();
    let args = ["--guest-binaries-dir", guest_binaries.to_str().unwrap()];
    let Run { booted, cloud_init: o, why, .. } =
        boot(Release::Bookworm, Flavor::Nocloud, &vmi, &helper_user_data(), &args);
    assert_eq!(o.errors(), Vec::<String>::new(), "{why}");
    let evidence = |name: &str| read(&booted, &format!("{HELPER_EVIDENCE}/{name}"));
    let journal = evidence("journal").unwrap_or_default();
    let token = jwt(ID.namespace, ID.service_account, EXP, "stock");
    assert_eq!(evidence("token").as_deref(), Some(token.as_str()), "{why}\njournal:\n{journal}");
    assert_eq!(evidence("namespace").as_deref(), Some(ID.namespace));
    assert_eq!(evidence("active").as_deref().map(str::trim), Some("active"), "{journal}");
    assert_eq!(evidence("enabled").as_deref().map(str::trim), Some("enabled"), "{journal}");
    assert!(journal.contains(imds_guest::log_lines::WRITTEN), "the service wrote nothing:\n{journal}");
    assert!(
        evidence("version")
            .is_some_and(|v| v.contains(concat!("kubevirt-imds-guest ", env!("CARGO_PKG_VERSION")))),
        "{why}"
    );
    let layout = evidence("layout").unwrap_or_default();
    assert!(layout.contains("token -> ..data/token"), "{layout}");
}
