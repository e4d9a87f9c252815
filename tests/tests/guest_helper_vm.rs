//! The guest helper in a real booted VM (QEMU, the Debian kernel, busybox):
//! run from the initramfs as a service while the pod's token rotates and
//! the sidecar goes away for a while, a shell loop in the guest reading the
//! token file all along (as Vault Agent or an SDK would); then downloaded
//! from the IMDS, checked against its digest and run `--once`.

use std::time::Duration;

use imds_tests::{
    imds::{Identity, Imds},
    netns::{exclusive, require_root},
    tokens::{ProjectedVolume, jwt_issued, now_secs},
    topology::{Binding, GuestKind, PodLayout, TAP},
    vm::{GuestKit, default_cache_dir},
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };
const GUEST_MAC: &str = "52:54:00:12:34:56";
/// Long enough to outlive the guest's boot under emulation, short enough
/// that the helper refreshes (at 80–85 %) within the test.
const TTL: u64 = 40;

#[test]
fn a_real_vm_downloads_the_helper_and_its_token_file_follows_rotation() {
    let _serial = exclusive();
    require_root();
    let kit = GuestKit::prepare(&default_cache_dir()).expect("guest kit");
    let guest_dir = imds_tests::guest_helper::binaries_dir();
    let amd64 = imds_api::GUEST_BINARIES[0].name;
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Tap).unwrap();
    let a = layout.addressing;
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("volume")).unwrap();
    let fresh = |nonce: &str| {
        let now = now_secs();
        (jwt_issued(ID.namespace, ID.service_account, now, now + TTL, nonce), now)
    };
    let (first, _) = fresh("first");
    volume.publish(&first).unwrap();
    let args = ["--guest-binaries-dir", guest_dir.to_str().unwrap()];
    let mut imds = Imds::start(&layout.pod, &ID, volume.dir(), &args).unwrap();
    imds.wait_until_guest_attached().unwrap();

    let configs = tempfile::tempdir().unwrap();
    let service_config = configs.path().join("guest.toml");
    std::fs::write(&service_config, "timeout = \"3s\"\n").unwrap();
    let once_config = configs.path().join("once.toml");
    std::fs::write(&once_config, "[kubernetes]\ndir = \"/run/once\"\n").unwrap();
    let script = format!(
        r#"
ip addr add {ip}/{len} dev eth0
ip route add default via {gw}
md='Metadata: true'
kubevirt-imds-guest > /tmp/helper.log 2>&1 &
t=/var/run/secrets/kubernetes.io/serviceaccount/token
i=0
while [ ! -s $t ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "===HELPER-WROTE==="
last=; n=0; missing=0; reads=0
while [ $n -lt 3 ] && [ $reads -lt 2400 ]; do
  if now=$(cat $t 2>/dev/null) && [ -n "$now" ]; then
    if [ "$now" != "$last" ]; then echo "TOKEN $now"; last=$now; n=$((n+1)); fi
  else
    missing=$((missing+1))
  fi
  reads=$((reads+1))
  sleep 0.1
done
echo "MISSING $missing READS $reads"
url=http://169.254.169.254/v1/guest/{amd64}
section download sh -c "cd /tmp && curl -sSf -m 120 -H '$md' -O $url && curl -sSf -m 20 -H '$md' -O $url.sha256 && sha256sum -c {amd64}.sha256 && chmod +x {amd64} && ./{amd64} --version"
section once /tmp/{amd64} --once --config /etc/kubevirt-imds/once.toml
section once_token cat /run/once/token
section layout ls -la /var/run/secrets/kubernetes.io/serviceaccount/
section namespace cat /var/run/secrets/kubernetes.io/serviceaccount/namespace
section helper_log cat /tmp/helper.log
"#,
        ip = a.guest_ip,
        len = a.prefix_len,
        gw = a.gateway_ip,
    );
    let files = [
        ("usr/bin/kubevirt-imds-guest", guest_dir.join(amd64)),
        ("etc/kubevirt-imds/guest.toml", service_config),
        ("etc/kubevirt-imds/once.toml", once_config),
    ];
    let files: Vec<(&str, &std::path::Path)> = files.iter().map(|(d, s)| (*d, s.as_path())).collect();
    let vm = kit.boot(&layout.pod, TAP, GUEST_MAC, &script, &files).expect("guest boot");

    // The kubelet rotates the pod's token once the helper has written the
    // first; the helper picks it up at 80–85 % of the first's lifetime.
    vm.wait_for("===HELPER-WROTE===", Duration::from_secs(180)).unwrap();
    let (second, second_iat) = fresh("second");
    volume.publish(&second).unwrap();
    vm.wait_for(&format!("TOKEN {second}"), Duration::from_secs(TTL + 30)).unwrap();

    // The sidecar goes away past the second token's refresh point: the
    // helper's refresh fails and the file must stay as it is.
    imds.kill_sidecar().unwrap();
    let refresh_by = second_iat + TTL * 85 / 100 + 4;
    std::thread::sleep(Duration::from_secs(refresh_by.saturating_sub(now_secs())));
    let (third, _) = fresh("third");
    volume.publish(&third).unwrap();
    imds.restart_sidecar(&layout.pod).unwrap();
    let run = vm.wait(Duration::from_secs(180)).expect("guest run");
    let section =
        |name: &str| run.section(name).unwrap_or_else(|| panic!("no section {name}:\n{}", run.console));
    assert_eq!(run.script_exit(), Some(0), "{}", run.console);

    let download = section("download");
    assert!(download.contains(&format!("{amd64}: OK")), "digest not checked: {download}");
    assert!(download.contains(concat!("kubevirt-imds-guest ", env!("CARGO_PKG_VERSION"))), "{download}");
    assert_eq!(section("once_token"), third, "--once of the downloaded binary:\n{}", section("once"));

    let tokens: Vec<&str> = run.console.lines().filter_map(|l| l.strip_prefix("TOKEN ")).collect();
    assert_eq!(tokens, [first.as_str(), second.as_str(), third.as_str()], "{}", section("helper_log"));
    assert!(run.console.contains("MISSING 0 READS"), "the token file went missing:\n{}", run.console);
    let helper_log = section("helper_log");
    assert!(helper_log.contains(imds_guest::log_lines::REFRESH_FAILED), "{helper_log}");
    assert!(!helper_log.contains(&second), "a token reached the helper's log");
    let layout_listing = section("layout");
    assert!(
        layout_listing.contains("..data -> ..") && layout_listing.contains("token -> ..data/token"),
        "{layout_listing}"
    );
    assert_eq!(section("namespace"), ID.namespace);
}
