//! What the guest helper (`kubevirt-imds-guest`) costs inside a VM: its
//! static builds' sizes, its memory while it keeps a token file, and how
//! long `--once` takes. It runs against the release sidecar's `serve` on
//! 169.254.169.254:80 in a namespace of its own (the data path is measured
//! elsewhere; this is the helper alone).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use imds_tests::netns::Netns;

use super::{
    Context as Bench,
    procfs::Memory,
    report::{GuestHelper, Report},
    stats::Summary,
};

pub fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let mut g = GuestHelper::default();
    for binary in imds_api::GUEST_BINARIES {
        let size = std::fs::metadata(bench.binaries.guest_dir.join(binary.name))?.len();
        g.binaries.push((binary.name, size as f64 / 1_048_576.0));
    }
    let vm = Netns::new("bench-guest")?;
    vm.ip(&format!("addr add {}/32 dev lo", imds_common::contract::IMDS_IP))?;
    let listen = format!("{}:80", imds_common::contract::IMDS_IP);
    let _imds = super::alternatives::serve(&vm, &bench.binaries.sidecar, &listen, bench.volume.dir(), None)?;
    let helper = bench.binaries.guest_dir.join(imds_api::GUEST_BINARIES[0].name);
    let (mut rss, mut private, mut peak, mut once_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..bench.options.repetitions() {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("guest.toml");
        let tokens = dir.path().join("sa");
        std::fs::write(
            &config,
            format!("[kubernetes]\ndir = \"{}\"\n[aws]\nenabled = false\n", tokens.display()),
        )?;

        let started = Instant::now();
        let out = vm
            .command(helper.to_str().context("path")?)
            .arg("--once")
            .arg("--config")
            .arg(&config)
            .output()?;
        ensure!(out.status.success(), "--once failed: {}", String::from_utf8_lossy(&out.stderr));
        once_ms.push(started.elapsed().as_secs_f64() * 1000.0);

        std::fs::remove_dir_all(&tokens)?;
        let mut keeping = vm
            .command(helper.to_str().context("path")?)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let written = super::wait_for(|| tokens.join("token").exists(), "the helper writing its token");
        // Settled: the token written, the helper asleep until its refresh.
        std::thread::sleep(Duration::from_secs(1));
        // `ip netns exec` execs the helper: the child's pid is the helper's.
        let m = Memory::read(keeping.id());
        let _ = keeping.kill();
        let _ = keeping.wait();
        written?;
        let m = m?;
        rss.push(m.rss);
        private.push(m.private);
        peak.push(m.peak);
    }
    g.rss = Summary::of(&rss);
    g.private = Summary::of(&private);
    g.peak = Summary::of(&peak);
    g.once_ms = Summary::of(&once_ms);
    report.guest_helper = g;
    Ok(())
}
