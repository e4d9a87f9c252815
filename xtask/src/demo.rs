//! `cargo xtask demo`: the whole data path on this machine, no cluster.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use imds_tests::{
    imds::{Identity, Imds},
    tokens::{ProjectedVolume, jwt},
    topology::{Binding, GuestKind, PodLayout, TAP},
    vm::{GuestKit, default_cache_dir},
};

use crate::{build, cmd, setup};

const ID: Identity = Identity { namespace: "demo", service_account: "vm-builder", vm_name: "fedora-demo" };

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the demo creates network namespaces and loads eBPF: run `cargo xtask demo` as root");
    }
    setup::ensure()?;
    crate::test::sweep_leftovers()?;
    let binaries = build::all(false)?;
    crate::test::point_harness_at(&binaries);

    step("Preparing a guest VM image (Debian kernel, busybox, curl)");
    let kit = GuestKit::prepare(&default_cache_dir())?;

    step("Laying out a virt-launcher pod: bridge k6t-eth0 (10.0.2.1), TAP tap0, masquerade binding");
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Tap)?;
    let volume_dir = tempfile::tempdir()?;
    let volume = ProjectedVolume::new(&volume_dir.path().join("token"))?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let token = jwt(ID.namespace, ID.service_account, exp, "demo");
    volume.publish(&token)?;
    println!(
        "  pod namespace {}; sample token written kubelet-style to {}",
        layout.pod.name(),
        volume.token_path().display()
    );

    step("Starting the node agent and, in the pod, the unprivileged sidecar (uid 107, no capabilities)");
    let mut imds = Imds::start(&layout.pod, &ID, volume.dir(), &[])?;
    imds.wait_until_guest_attached()?;
    for line in imds
        .agent
        .log()
        .lines()
        .filter(|l| l.contains("attached") || l.contains("plumbed") || l.contains("probe"))
    {
        println!("  agent:   {}", line.trim());
    }
    for line in imds.sidecar.as_ref().map(|s| s.log()).unwrap_or_default().lines() {
        println!("  sidecar: {}", line.trim());
    }

    step("Booting the guest (QEMU, software emulation: ~10 s); its init runs curl");
    let script = r#"
ip addr add 10.0.2.2/24 dev eth0
ip route add default via 10.0.2.1
section identity curl -sS -m 20 -H 'Metadata: true' http://169.254.169.254/v1/identity
section token curl -sS -m 20 -H 'Metadata: true' http://169.254.169.254/v1/token
section no-header curl -sS -m 20 -w ' (HTTP %{http_code})' http://169.254.169.254/v1/token
"#;
    let started = std::time::Instant::now();
    let run = kit.run(&layout.pod, TAP, "52:54:00:de:30:01", script, Duration::from_secs(180))?;
    println!("  guest booted, ran its requests and powered off in {:.1} s", started.elapsed().as_secs_f64());

    step("What the guest got");
    for name in ["identity", "token", "no-header"] {
        let body = run.section(name).with_context(|| format!("guest printed no {name}:\n{}", run.console))?;
        println!("  GET {name:<9} -> {}", body.trim());
    }
    let served = run.section("token").unwrap_or_default();
    let matches =
        serde_json::from_str::<serde_json::Value>(&served).ok().is_some_and(|v| v["token"] == token.as_str());
    println!("  token served == token file: {matches}");

    let pin = imds.counters_pin()?;
    step(&format!("Data path counters (bpftool map dump pinned {}, summed)", pin.display()));
    for counter in ["guest_redirected", "reply_forwarded", "guest_arp_answered", "foreign_dropped"] {
        println!("  {counter:<20} {}", imds_tests::bpf::counter_at(&pin, counter)?);
    }

    step("Stopping the agent and the sidecar, removing the namespaces");
    drop(imds);
    if !matches {
        bail!("the guest did not receive the token");
    }
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}
