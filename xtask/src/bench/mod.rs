//! `cargo xtask bench`: the IMDS over its eBPF path against the other ways
//! of intercepting 169.254.169.254, the cost to the VM's other traffic,
//! what one VM's sidecar costs, and what the node agent costs per pod at
//! 1, 10 and 100 pods, all in one run on this machine. Load comes from wrk
//! and iperf3; every figure is a median with the spread of its runs, and
//! every HTTP comparison a paired ratio with its confidence interval.
//!
//! One file per concern: `options` (what to run), `http` (the load matrix)
//! with `wrk`, `alternatives` (nft DNAT, veth, nginx) and `pinning` (wrk
//! and the servers on CPUs of their own), `traffic` with `iperf`,
//! `footprint` and `scale` on a `node` of plumbed pods, `procfs`, `bpf` and
//! `logs` (what the kernel and the processes say), `stats`, `machine`,
//! `token`, and `report` with its `targets`.

mod alternatives;
mod api_cost;
mod bpf;
mod floor;
mod footprint;
mod guest_helper;
mod http;
mod iperf;
mod logs;
mod machine;
mod node;
mod options;
mod pinning;
mod procfs;
mod report;
mod scale;
mod staleness;
mod stats;
mod targets;
mod test_run;
mod token;
mod traffic;
mod wrk;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure};
use imds_tests::{
    imds::Identity,
    tokens::{ProjectedVolume, jwt},
};
pub use options::Options;
use options::Section;

use crate::{build, cmd, setup};

const ID: Identity = Identity { namespace: "bench", service_account: "bench-sa", vm_name: "bench-vm" };
/// [`ID`] as the sidecar's options (`run`, `serve`, and the examples that take `ApiArgs`).
const ID_ARGS: [&str; 6] =
    ["--namespace", ID.namespace, "--service-account-name", ID.service_account, "--vm-name", ID.vm_name];

/// What every section shares: the release binaries and a kubelet-style
/// token volume.
struct Context {
    options: Options,
    binaries: build::Binaries,
    volume: ProjectedVolume,
    scratch: tempfile::TempDir,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark builds network namespaces and loads eBPF: run `cargo xtask bench` as root");
    }
    options.check()?;
    setup::ensure()?;
    crate::test::sweep_leftovers()?;
    let mut binaries = build::all(true)?;
    if let Some(sidecar) = &options.sidecar {
        binaries.sidecar = std::path::absolute(sidecar)?;
    }
    if let Some(agent) = &options.agent {
        binaries.agent = std::path::absolute(agent)?;
    }
    // A binary just linked sits dirty in the page cache until written
    // back, and its mapped code would count as the sidecars' private dirty
    // memory until then: write it back first.
    cmd::run(&mut std::process::Command::new("sync"))?;
    crate::test::point_harness_at(&binaries);
    let scratch = tempfile::tempdir()?;
    let volume = ProjectedVolume::new(&scratch.path().join("token"))?;
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs() + 3600;
    volume.publish(&jwt(ID.namespace, ID.service_account, exp, "bench"))?;
    let output = if options.output.is_absolute() {
        options.output.clone()
    } else {
        cmd::workspace_root().join(&options.output)
    };
    let bench = Context { options, binaries, volume, scratch };

    let mut report = report::Report { machine: machine::describe()?, ..report::Report::default() };
    report.busy.push(("start".into(), machine::Busy::now()));
    type Measure = fn(&Context, &mut report::Report) -> anyhow::Result<()>;
    let sections: [(Section, &str, Measure); 7] = [
        (Section::Footprint, "footprint", footprint::run),
        (Section::Guest, "guest helper", guest_helper::run),
        (Section::Http, "HTTP", http::run),
        (Section::Traffic, "traffic", traffic::run),
        (Section::Scale, "scale", scale::run),
        (Section::Token, "token reads", |bench, report| {
            report.token_read = token::run(&bench.volume.token_path(), bench.options.repetitions())?;
            report.staleness = Some(staleness::run(&bench.binaries.sidecar, bench.scratch.path())?);
            Ok(())
        }),
        (Section::Api, "API layer", |bench, report| {
            report.api_instructions = api_cost::run(bench.volume.dir())?;
            Ok(())
        }),
    ];
    for (section, name, measure) in sections {
        // Alternatives alone still need the HTTP section's pod.
        let wanted = bench.options.runs(section)
            || (section == Section::Http && bench.options.runs(Section::Alternatives));
        if !wanted {
            continue;
        }
        eprintln!("bench: {name}");
        let started = Instant::now();
        measure(&bench, &mut report)?;
        report
            .busy
            .push((format!("after {name} ({:.0} s)", started.elapsed().as_secs_f64()), machine::Busy::now()));
    }

    let text = report.render(&bench.options);
    println!("{text}");
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&output, &text)?;
    eprintln!("bench: report written to {}", output.display());
    Ok(())
}

/// Polls `ready` every 50 ms for up to 10 s.
fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        ensure!(Instant::now() < deadline, "{what} did not happen within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
