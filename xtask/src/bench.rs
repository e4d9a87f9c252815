//! `cargo xtask bench`: the IMDS over its eBPF path against the other ways
//! of intercepting 169.254.169.254, the cost to the VM's other traffic, and
//! the sidecar's footprint, all in one run on this machine. Every figure is
//! the median of several repetitions. Load comes from wrk and iperf3.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail, ensure};
use imds_tests::{
    imds::{Identity, Imds, SIDECAR_LISTENING},
    netns::{Background, Netns},
    tokens::{ProjectedVolume, jwt},
    topology::{BRIDGE, Binding, GuestKind, PodLayout},
};

use crate::{build, cmd, setup};

const ID: Identity = Identity { namespace: "bench", service_account: "bench-sa", vm_name: "bench-vm" };
const IMDS: &str = "169.254.169.254";

pub struct Options {
    pub duration: Duration,
    pub repetitions: usize,
    pub output: PathBuf,
    /// Empty: every section.
    pub only: Vec<Section>,
}

/// The parts of the run, selectable with `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// IMDS requests over the eBPF path.
    Http,
    /// The same requests through nft DNAT, a veth on the bridge, and nginx.
    Alternatives,
    /// The VM's other traffic with and without the programs.
    Traffic,
    /// RSS, binary size, start-up and attach times.
    Footprint,
    /// Reading the token file against the cache.
    Token,
}

impl Options {
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

/// One load configuration.
#[derive(Clone, Copy)]
struct Load {
    path: &'static str,
    connections: u32,
    keep_alive: bool,
}

impl Load {
    fn label(&self) -> String {
        format!(
            "{} c={} {}",
            self.path,
            self.connections,
            if self.keep_alive { "keep-alive" } else { "new conn/req" }
        )
    }
}

const LOADS: [Load; 8] = [
    Load { path: "/v1/token", connections: 1, keep_alive: true },
    Load { path: "/v1/token", connections: 64, keep_alive: true },
    Load { path: "/v1/token", connections: 1, keep_alive: false },
    Load { path: "/v1/token", connections: 64, keep_alive: false },
    Load { path: "/v1/identity", connections: 1, keep_alive: true },
    Load { path: "/v1/identity", connections: 64, keep_alive: true },
    Load { path: "/v1/identity", connections: 1, keep_alive: false },
    Load { path: "/v1/identity", connections: 64, keep_alive: false },
];

/// The ways of reaching the server that are measured side by side.
const EBPF: &str = "eBPF (ours)";
const DNAT: &str = "nft DNAT";
const VETH: &str = "veth on bridge";
const NGINX: &str = "nginx";

/// wrk's answer.
#[derive(Clone, Copy, Debug, Default)]
struct Http {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    socket_errors: u64,
}

impl Http {
    /// Each figure's median over the runs.
    fn median(runs: &[Http]) -> Http {
        let of = |f: fn(&Http) -> f64| median(runs.iter().map(f).collect());
        Http {
            rps: of(|h| h.rps),
            p50_us: of(|h| h.p50_us),
            p99_us: of(|h| h.p99_us),
            socket_errors: runs.iter().map(|h| h.socket_errors).sum(),
        }
    }
}

/// The alternatives' addresses, next to the IMDS one (see `Bench::http`).
const DNAT_ADDR: &str = "169.254.169.253";
const VETH_ADDR: &str = "169.254.169.252";
/// Footprint figures the targets are judged on.
const RSS_IDLE: &str = "sidecar RSS idle (MiB)";
const ATTACH_DELAY: &str = "TAP appears → programs attached (ms)";
/// The node end of the pod's eth0 in the masquerade layout.
const NODE_IP: &str = "10.244.0.1";

/// What every section shares: the release binary, the pod-like namespaces
/// with a namespace guest on the bridge, and a kubelet-style token volume.
struct Bench<'a> {
    options: &'a Options,
    binaries: build::Binaries,
    layout: PodLayout,
    volume: ProjectedVolume,
    scratch: tempfile::TempDir,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark builds network namespaces and loads eBPF: run `cargo xtask bench` as root");
    }
    ensure!(options.repetitions >= 1, "--repetitions must be at least 1");
    ensure!(options.duration >= Duration::from_secs(1), "--duration must be at least 1 second");
    setup::ensure()?;
    let binaries = build::all(true)?;
    crate::test::point_harness_at(&binaries);
    let scratch = tempfile::tempdir()?;
    let volume = ProjectedVolume::new(&scratch.path().join("token"))?;
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs() + 3600;
    volume.publish(&jwt(ID.namespace, ID.service_account, exp, "bench"))?;
    let bench = Bench {
        options,
        binaries,
        layout: PodLayout::build(Binding::Masquerade, GuestKind::Namespace)?,
        volume,
        scratch,
    };

    // wrk opening a connection per request at 20k/s runs through the guest's
    // ephemeral ports in about a second; without reuse of TIME_WAIT ports
    // the client, not the server, becomes the bottleneck.
    bench.guest().sh("sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 65000'")?;
    let mut report = Report { machine: machine()?, ..Report::default() };
    if options.runs(Section::Footprint) {
        bench.footprint(&mut report)?;
    }
    if options.runs(Section::Http) || options.runs(Section::Alternatives) {
        bench.http(&mut report)?;
    }
    if options.runs(Section::Traffic) {
        bench.traffic(&mut report)?;
    }
    if options.runs(Section::Token) {
        report.token_read = token_read(bench.volume.token_path(), options.repetitions)?;
    }

    let text = report.render(options);
    println!("{text}");
    if let Some(parent) = options.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.output, &text)?;
    eprintln!("bench: report written to {}", options.output.display());
    Ok(())
}

impl Bench<'_> {
    fn guest(&self) -> &Netns {
        self.layout.guest()
    }

    /// The agent and the sidecar, serving the pod's namespace guest. Dropping
    /// it takes the whole data path away (the agent's bpffs goes with it).
    fn sidecar(&self) -> anyhow::Result<Imds> {
        Imds::start(&self.layout.pod, &ID, self.volume.dir(), &[])
    }

    /// Every way of reaching the server is up at once and the runs are
    /// interleaved (each repetition of a load runs every way in turn), so
    /// drift on the machine hits them alike. The alternatives use
    /// neighbouring link-local addresses: 169.254.169.254 itself belongs to
    /// the eBPF path, and neither DNAT nor a veth costs more or less for the
    /// address it serves.
    fn http(&self, report: &mut Report) -> anyhow::Result<()> {
        let (pod, guest) = (&self.layout.pod, self.guest());
        let mut sidecar = self.sidecar()?;
        sidecar.wait_for_log("program=\"imds_from_guest\"", Duration::from_secs(10))?;
        let pid = sidecar.sidecar.as_mut().and_then(|s| s.process().pid()).context("sidecar pid")?;
        // Idle: settled after start-up, before any request.
        std::thread::sleep(Duration::from_secs(1));
        report.footprint.insert(RSS_IDLE, rss_mib(pid, "VmRSS")?);
        // Private memory: what each further VM's sidecar adds (the binary's
        // pages are shared by every sidecar on the node).
        report.footprint.insert("sidecar RSS idle, private (MiB)", rss_mib(pid, "RssAnon")?);
        report.footprint.insert("sidecar RSS peak during start-up (MiB)", rss_mib(pid, "VmHWM")?);

        let mut ways: Vec<(&'static str, String)> = Vec::new();
        // The servers and nginx live as long as these guards.
        let mut servers = Vec::new();
        if self.options.runs(Section::Http) {
            ways.push((EBPF, format!("http://{IMDS}")));
        }
        if self.options.runs(Section::Alternatives) {
            // (a) nftables DNAT to the same server on the pod's address.
            servers.push(serve(pod, &self.binaries.sidecar, "10.0.2.1:8080", self.volume.dir())?);
            pod.sh(&format!(
                "nft -f - <<'EOF'\ntable ip imdsbench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
                 ip daddr {DNAT_ADDR} tcp dport 80 dnat to 10.0.2.1:8080\n }}\n}}\nEOF"
            ))?;
            ways.push((DNAT, format!("http://{DNAT_ADDR}")));
            // (b) The address on a veth plugged into the bridge, no eBPF:
            // the guest reaches it by ARP on its own segment.
            pod.ip("link add imdsb type veth peer name imdsb-br")?;
            pod.ip(&format!("link set imdsb-br master {BRIDGE} up"))?;
            pod.ip(&format!("addr add {VETH_ADDR}/32 dev imdsb"))?;
            pod.ip("link set imdsb up")?;
            guest.ip(&format!("route add {VETH_ADDR}/32 dev eth0"))?;
            servers.push(serve(pod, &self.binaries.sidecar, &format!("{VETH_ADDR}:80"), self.volume.dir())?);
            ways.push((VETH, format!("http://{VETH_ADDR}")));
            // (c) nginx serving the bodies our server returns, from the pod.
            let bodies = ["/v1/token", "/v1/identity"]
                .into_iter()
                .map(|p| Ok((p, guest.sh(&format!("curl -sf -H 'Metadata: true' http://{DNAT_ADDR}{p}"))?)))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            servers.push(nginx(pod, "10.0.2.1:8081", &bodies, self.scratch.path())?);
            ways.push((NGINX, "http://10.0.2.1:8081".into()));
        }

        let sampler = RssSampler::start(pid);
        for load in LOADS {
            let mut runs: BTreeMap<&str, Vec<Http>> = BTreeMap::new();
            let mut losses: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..self.options.repetitions {
                for (way, base) in &ways {
                    let before = if *way == EBPF { Some(self.loss_counters()?) } else { None };
                    let run = wrk(guest, base, load, self.options.duration)?;
                    if run.socket_errors > 0 {
                        *losses.entry(format!("{way}: wrk socket errors")).or_default() += run.socket_errors;
                    }
                    runs.entry(way).or_default().push(run);
                    if let Some(before) = before {
                        for (k, v) in self.loss_counters()? {
                            let grew = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
                            *losses.entry(k).or_default() += grew;
                        }
                    }
                }
            }
            for (way, r) in runs {
                report.http.entry(load.label()).or_default().insert(way, r);
            }
            losses.retain(|_, v| *v > 0);
            report.losses.insert(load.label(), losses);
        }
        report.footprint.insert("sidecar RSS peak under load (MiB)", sampler.stop());
        report.footprint.insert("sidecar RSS after load (MiB)", rss_mib(pid, "VmRSS")?);
        drop(sidecar);
        drop(servers);
        Ok(())
    }

    /// The data path's drop counters and both ends' TCP retransmissions:
    /// a load that loses packets shows here, not just as a slow figure.
    fn loss_counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut all: BTreeMap<String, u64> = datapath_counters()?
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "guest_redirected" | "reply_forwarded"))
            .collect();
        for (side, ns) in [("guest", self.guest()), ("pod", &self.layout.pod)] {
            let out = ns.sh("nstat -asz TcpRetransSegs")?;
            let n = out
                .lines()
                .find_map(|l| l.strip_prefix("TcpRetransSegs"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("nstat printed {out:?}"))?;
            all.insert(format!("{side} TCP retransmits"), n);
        }
        Ok(all)
    }

    /// Interleaved: each repetition measures with the programs attached,
    /// then without, so drift on the machine hits both sides alike.
    /// Two paths a VM's traffic takes: bridged to a neighbour on the bridge
    /// (only `imds_from_guest` sees it) and out of the pod through KubeVirt's
    /// masquerade NAT to the node (`imds_from_guest`, then `imds_guard` on
    /// the bridge device).
    fn traffic(&self, report: &mut Report) -> anyhow::Result<()> {
        let (pod, node) = (&self.layout.pod, &self.layout.node);
        pod.sh(
            "sysctl -qw net.ipv4.ip_forward=1 && nft -f - <<'EOF'\ntable ip imdsbench_nat {\n chain post {\n  \
             type nat hook postrouting priority srcnat;\n  oifname \"eth0\" ip saddr 10.0.2.0/24 masquerade\n }\n}\nEOF",
        )?;
        let paths: [(&'static str, &Netns, &str); 2] = [
            ("to a neighbour on the bridge", &self.layout.foreign, self.layout.addressing.foreign_ip),
            ("through the pod's masquerade NAT to the node", node, NODE_IP),
        ];
        let mut servers = Vec::new();
        for (_, ns, ip) in paths {
            servers.push(ns.spawn("iperf3", &["-s", "-B", ip])?);
            wait_for(
                || ns.sh("ss -Hltn 'sport = :5201'").is_ok_and(|out| !out.trim().is_empty()),
                "iperf3 server",
            )?;
        }
        let secs = self.options.duration.as_secs().to_string();
        let mut with: BTreeMap<&str, Traffic> = BTreeMap::new();
        let mut without: BTreeMap<&str, Traffic> = BTreeMap::new();
        // Single-flow figures on a small machine are noisy: at least five.
        for _ in 0..self.options.repetitions.max(5) {
            let mut sidecar = self.sidecar()?;
            sidecar.wait_for_log("program=\"imds_from_guest\"", Duration::from_secs(10))?;
            for (path, _, ip) in paths {
                with.entry(path).or_default().add(self.guest(), ip, &secs)?;
            }
            drop(sidecar);
            for (path, _, ip) in paths {
                without.entry(path).or_default().add(self.guest(), ip, &secs)?;
            }
        }
        // The kernel's own account of the programs' run time, in a run of
        // its own (the accounting itself costs time per packet): a
        // per-packet cost free of the noise of two flows sharing two CPUs.
        {
            let mut sidecar = self.sidecar()?;
            sidecar.wait_for_log("program=\"imds_from_guest\"", Duration::from_secs(10))?;
            let stats = BpfStats::enable()?;
            for (_, _, ip) in paths {
                Traffic::default().add(self.guest(), ip, &secs)?;
            }
            for program in ["imds_from_guest", "imds_guard"] {
                report.per_packet.insert(program, prog_run_stats(program)?);
            }
            drop(stats);
            drop(sidecar);
        }
        for (path, _, _) in paths {
            let (w, wo) = (&with[path], &without[path]);
            report.traffic.push((
                format!("{path}: TCP (Gbit/s)"),
                median(w.tcp_gbps.clone()),
                median(wo.tcp_gbps.clone()),
            ));
            report.traffic.push((
                format!("{path}: 64-byte UDP received (kpps)"),
                median(w.udp_kpps.clone()),
                median(wo.udp_kpps.clone()),
            ));
        }
        drop(servers);
        Ok(())
    }

    fn footprint(&self, report: &mut Report) -> anyhow::Result<()> {
        // Process start → "IMDS serving" (veth up, listener answering), by
        // the sidecar's own log clock.
        let mut serving = Vec::new();
        for _ in 0..self.options.repetitions {
            let before = SystemTime::now();
            let sidecar = self.sidecar()?;
            let log = sidecar.sidecar.as_ref().map(|s| s.log()).unwrap_or_default();
            serving.push(log_delay_ms(&log, SIDECAR_LISTENING, before)?);
            drop(sidecar);
        }
        report.footprint.insert("sidecar start → serving (ms)", median(serving));

        // A TAP appearing on the bridge, as virt-launcher makes it → the
        // sidecar's "attached" line for it.
        let mut sidecar = self.sidecar()?;
        let mut attach = Vec::new();
        for i in 0..self.options.repetitions {
            let tap = format!("tap9{i}");
            let before = SystemTime::now();
            self.layout.pod.ip(&format!("tuntap add dev {tap} mode tap"))?;
            self.layout.pod.ip(&format!("link set {tap} master {BRIDGE} up"))?;
            let needle = format!("ifname=\"{tap}\"");
            sidecar.wait_for_log(&needle, Duration::from_secs(5))?;
            attach.push(log_delay_ms(&sidecar.agent.log(), &needle, before)?);
            self.layout.pod.ip(&format!("link del {tap}"))?;
        }
        drop(sidecar);
        report.footprint.insert(ATTACH_DELAY, median(attach));

        let stripped = self.scratch.path().join("kubevirt-imds-sidecar.stripped");
        std::fs::copy(&self.binaries.sidecar, &stripped)?;
        cmd::run(Command::new("strip").arg(&stripped))?;
        report.footprint.insert("binary, stripped (MiB)", mib(&stripped)?);
        report.footprint.insert("binary, as built (MiB)", mib(&self.binaries.sidecar)?);
        Ok(())
    }
}

/// The sidecar's IMDS_COUNTERS map as bpftool prints it (BTF field names),
/// summed over CPUs.
fn datapath_counters() -> anyhow::Result<BTreeMap<String, u64>> {
    let out = cmd::output(Command::new("bpftool").args(["-j", "map", "dump", "name", "IMDS_COUNTERS"]))
        .context("bpftool map dump name IMDS_COUNTERS failed")?;
    let dump: serde_json::Value = serde_json::from_str(&out).context("bpftool map dump output")?;
    let mut sums = BTreeMap::new();
    let values = dump
        .pointer("/0/formatted/values")
        .and_then(|v| v.as_array())
        .context("bpftool: no per-CPU values")?;
    for cpu in values {
        for (field, n) in cpu["value"].as_object().context("bpftool: value is not a struct")? {
            *sums.entry(field.clone()).or_default() +=
                n.as_u64().context("bpftool: counter is not a number")?;
        }
    }
    Ok(sums)
}

/// `kernel.bpf_stats_enabled` on while it lives, then back as it was.
struct BpfStats(String);

impl BpfStats {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> anyhow::Result<Self> {
        let was = std::fs::read_to_string(Self::KNOB).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(Self::KNOB, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(was))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KNOB, self.0.trim());
    }
}

/// (run_time_ns, run_cnt) of the loaded program called `name`.
fn prog_run_stats(name: &str) -> anyhow::Result<(u64, u64)> {
    let out = cmd::output(Command::new("bpftool").args(["-j", "prog", "show", "name", name]))
        .with_context(|| format!("bpftool prog show name {name} failed"))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("bpftool prog show output")?;
    // One program is an object; several of the same name, an array.
    let programs = match v {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    ensure!(programs.len() == 1, "expected one loaded {name}, found {}", programs.len());
    let field = |k: &str| programs[0][k].as_u64().unwrap_or(0);
    Ok((field("run_time_ns"), field("run_cnt")))
}

/// Samples a process's RSS every 100 ms until stopped; the maximum seen.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid, "VmRSS").unwrap_or(0.0));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        Self { stop, thread }
    }

    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

fn mib(path: &Path) -> anyhow::Result<f64> {
    Ok(std::fs::metadata(path)?.len() as f64 / 1_048_576.0)
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        ensure!(Instant::now() < deadline, "{what} did not come up within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `kubevirt-imds-sidecar serve` (the same API and limits, no data path) in `ns`.
fn serve(ns: &Netns, binary: &Path, listen: &str, token_dir: &Path) -> anyhow::Result<Background> {
    let server = ns.spawn(
        binary.to_str().context("binary path")?,
        &[
            "serve",
            "--listen",
            listen,
            "--namespace",
            ID.namespace,
            "--service-account-name",
            ID.service_account,
            "--vm-name",
            ID.vm_name,
            "--token-dir",
            token_dir.to_str().context("token dir")?,
        ],
    )?;
    wait_listening(ns, listen)?;
    Ok(server)
}

fn nginx(
    ns: &Netns,
    listen: &str,
    bodies: &BTreeMap<&str, String>,
    dir: &Path,
) -> anyhow::Result<Background> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    // /healthz: what wait_listening polls.
    let mut locations = String::from("    location = /healthz { return 200 \"ok\"; }\n");
    for (path, body) in bodies {
        // nginx's `return` takes a quoted string: escape quotes and backslashes.
        let escaped = body.replace('\\', "\\\\").replace('"', "\\\"");
        writeln!(
            locations,
            "    location = {path} {{ default_type application/json; return 200 \"{escaped}\"; }}"
        )?;
    }
    let config = format!(
        "worker_processes 2;\ndaemon off;\npid {p}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  \
         client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  \
         uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  server {{\n    listen {listen};\n{locations}  }}\n}}\n",
        p = prefix.display()
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let server =
        ns.spawn("nginx", &["-p", prefix.to_str().context("path")?, "-c", conf.to_str().context("path")?])?;
    wait_listening(ns, listen)?;
    Ok(server)
}

fn wait_listening(ns: &Netns, addr: &str) -> anyhow::Result<()> {
    wait_for(|| ns.sh(&format!("curl -s -m 1 -o /dev/null http://{addr}/healthz")).is_ok(), addr)
}

/// One wrk run from the guest namespace.
fn wrk(guest: &Netns, base: &str, load: Load, duration: Duration) -> anyhow::Result<Http> {
    let threads = load.connections.min(2);
    let mut script = format!(
        "wrk -t{threads} -c{} -d{}s --latency -H 'Metadata: true'",
        load.connections,
        duration.as_secs()
    );
    if !load.keep_alive {
        script.push_str(" -H 'Connection: close'");
    }
    write!(script, " {base}{}", load.path)?;
    let out = guest.sh(&script)?;
    parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> anyhow::Result<Http> {
    let mut http = Http::default();
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => http.p50_us = duration_us(v)?,
            (Some("99%"), Some(v)) => http.p99_us = duration_us(v)?,
            (Some("Requests/sec:"), Some(v)) => http.rps = v.parse()?,
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            (Some("Socket"), Some("errors:")) => {
                http.socket_errors =
                    line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum();
            }
            _ => {}
        }
        ensure!(!line.starts_with("Non-2xx"), "wrk saw non-2xx responses: {line}");
    }
    ensure!(http.rps > 0.0 && http.p50_us > 0.0, "incomplete wrk output");
    Ok(http)
}

fn duration_us(v: &str) -> anyhow::Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).context("no unit")?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n,
        "ms" => n * 1000.0,
        "s" => n * 1_000_000.0,
        _ => bail!("unknown unit {unit}"),
    })
}

#[derive(Default)]
struct Traffic {
    tcp_gbps: Vec<f64>,
    udp_kpps: Vec<f64>,
}

impl Traffic {
    /// One iperf3 TCP run and one 64-byte UDP run (unlimited rate) from the
    /// guest to `host`; UDP counts what arrived, not what was sent.
    fn add(&mut self, guest: &Netns, host: &str, secs: &str) -> anyhow::Result<()> {
        let out = guest.sh(&format!("iperf3 -J -c {host} -t {secs}"))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 TCP output")?;
        self.tcp_gbps
            .push(v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 TCP result")? / 1e9);
        let out = guest.sh(&format!("iperf3 -J -u -l 64 -b 0 -c {host} -t {secs}"))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 UDP output")?;
        let sum = &v["end"]["sum"];
        let packets = sum["packets"].as_f64().context("iperf3 UDP packets")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"].as_f64().context("iperf3 UDP seconds")?;
        self.udp_kpps.push((packets - lost) / seconds / 1000.0);
        Ok(())
    }
}

/// From `before` to the timestamp of the first sidecar log line containing
/// `needle`.
fn log_delay_ms(log: &str, needle: &str, before: SystemTime) -> anyhow::Result<f64> {
    let line =
        log.lines().find(|l| l.contains(needle)).with_context(|| format!("no log line with {needle}"))?;
    let stamp = line.split_whitespace().next().context("log line without a timestamp")?;
    let at = humantime::parse_rfc3339_weak(stamp).with_context(|| format!("timestamp {stamp}"))?;
    Ok(at.duration_since(before).unwrap_or_default().as_secs_f64() * 1000.0)
}

fn rss_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .context("no such field")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// The token_read example (ns per token served, each way it can be got);
/// the median of the repetitions of its own medians.
fn token_read(token: PathBuf, repetitions: usize) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..repetitions {
        let mut c = cmd::cargo(None);
        c.args(["run", "--quiet", "--release", "-p", "imds-sidecar", "--example", "token_read", "--"])
            .arg(&token)
            .arg(TOKEN_READS.to_string());
        let out = cmd::output(&mut c).context("running the token_read example")?;
        let v: BTreeMap<String, f64> =
            serde_json::from_str(out.trim()).with_context(|| format!("token_read printed {out:?}"))?;
        for (k, ns) in v {
            runs.entry(k).or_default().push(ns);
        }
    }
    Ok(runs.into_iter().map(|(k, v)| (k, median(v))).collect())
}

const TOKEN_READS: u32 = 20_000;

fn machine() -> anyhow::Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = cmd::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")?.lines().next().unwrap_or_default().to_owned();
    Ok(format!("{cpu}, {cores} cores, kernel {}, {memory}", kernel.trim()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

#[derive(Default)]
struct Report {
    machine: String,
    /// Every run, by load and way.
    http: BTreeMap<String, BTreeMap<&'static str, Vec<Http>>>,
    /// (what, with the programs, without).
    traffic: Vec<(String, f64, f64)>,
    footprint: BTreeMap<&'static str, f64>,
    token_read: BTreeMap<String, f64>,
    /// Each program's total run time (ns) and runs (kernel BPF stats).
    per_packet: BTreeMap<&'static str, (u64, u64)>,
    /// Per load: the eBPF path's drop counters and TCP retransmissions that
    /// rose, and any way's wrk socket errors.
    losses: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Report {
    fn render(&self, options: &Options) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Machine: {}\n", self.machine);
        let _ = writeln!(
            s,
            "Every figure is the median of {} runs of {} s. HTTP load: wrk in the guest namespace \
             (2 threads; `Connection: close` for a new connection per request), every way up at once \
             and run in turn for each repetition; the alternatives listen on 169.254.169.253 (DNAT) \
             and .252 (veth), as .254 belongs to the eBPF path, whose programs stay attached \
             throughout (their cost on passing traffic: see below).\n",
            options.repetitions,
            options.duration.as_secs()
        );
        if !self.http.is_empty() {
            self.render_http(&mut s);
        }
        if !self.losses.is_empty() {
            let _ = writeln!(
                s,
                "### Losses: eBPF drop counters and TCP retransmissions during our runs, wrk socket errors in any\n"
            );
            let _ = writeln!(s, "| load | counters that rose |\n|---|---|");
            for (load, drops) in &self.losses {
                let text: Vec<String> = drops.iter().map(|(k, v)| format!("{k} +{v}")).collect();
                let _ = writeln!(
                    s,
                    "| {load} | {} |",
                    if text.is_empty() { "none".into() } else { text.join(", ") }
                );
            }
            s.push('\n');
        }
        if !self.traffic.is_empty() {
            let _ = writeln!(
                s,
                "### Cost to the VM's other traffic (guest → host across the bridge, iperf3; median of at least 5 runs, with and without interleaved)\n"
            );
            let _ = writeln!(s, "| | programs attached | no programs | ratio |\n|---|---|---|---|");
            for (k, with, without) in &self.traffic {
                let _ = writeln!(s, "| {k} | {with:.2} | {without:.2} | {:.2} % |", with / without * 100.0);
            }
            s.push('\n');
            for (program, (ns, runs)) in &self.per_packet {
                let _ = writeln!(
                    s,
                    "- `{program}`: {:.0} ns per packet, mean of {runs} runs (kernel BPF stats)",
                    *ns as f64 / (*runs).max(1) as f64
                );
            }
            s.push('\n');
        }
        if !self.footprint.is_empty() {
            let _ = writeln!(s, "### Footprint\n\n| | |\n|---|---|");
            for (k, v) in &self.footprint {
                let _ = writeln!(s, "| {k} | {v:.1} |");
            }
            s.push('\n');
        }
        if !self.token_read.is_empty() {
            let _ = writeln!(
                s,
                "### Token reads (ns per token served, median of {TOKEN_READS})\n\n| | ns |\n|---|---|"
            );
            for (k, v) in &self.token_read {
                let _ = writeln!(s, "| {k} | {v:.0} |");
            }
            s.push('\n');
        }
        self.render_targets(&mut s);
        s
    }

    fn runs(&self, load: &Load, way: &str) -> Option<&[Http]> {
        self.http.get(&load.label())?.get(way).map(Vec::as_slice)
    }

    fn figure(&self, load: &Load, way: &str) -> Option<Http> {
        self.runs(load, way).map(Http::median)
    }

    /// The lowest and highest of one figure over the runs.
    fn range(&self, load: &Load, way: &str, pick: fn(&Http) -> f64) -> Option<(f64, f64)> {
        let values = self.runs(load, way)?.iter().map(pick);
        Some(values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v))))
    }

    fn render_http(&self, s: &mut String) {
        type Pick = fn(&Http) -> f64;
        // (title, figure, higher is better)
        let tables: [(&str, Pick, bool); 3] = [
            ("requests/s", |h| h.rps, true),
            ("p50 latency, µs", |h| h.p50_us, false),
            ("p99 latency, µs", |h| h.p99_us, false),
        ];
        let ways = [EBPF, DNAT, VETH, NGINX];
        for (title, pick, higher_is_better) in tables {
            let _ = writeln!(s, "### IMDS requests: {title}\n");
            let _ = writeln!(
                s,
                "Median, then ± half the range of the runs as a share of it. Ratios are of medians, ours \
                 against theirs, oriented so that > 1 means ours is better.\n\n\
                 | load | {} | vs DNAT | vs veth | vs nginx |\n|---|---|---|---|---|---|---|---|",
                ways.join(" | ")
            );
            for load in &LOADS {
                let value = |way| self.figure(load, way).map(|h| pick(&h));
                let cells: Vec<String> = ways
                    .iter()
                    .map(|w| match (value(w), self.range(load, w, pick)) {
                        (Some(v), Some((lo, hi))) if v > 0.0 => {
                            format!("{v:.0} ±{:.0}%", (hi - lo) / 2.0 / v * 100.0)
                        }
                        _ => "—".into(),
                    })
                    .collect();
                let better = |way| match (value(EBPF), value(way)) {
                    (Some(o), Some(t)) if o > 0.0 && t > 0.0 => {
                        format!("{:.2}×", if higher_is_better { o / t } else { t / o })
                    }
                    _ => "—".into(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    load.label(),
                    cells.join(" | "),
                    better(DNAT),
                    better(VETH),
                    better(NGINX)
                );
            }
            s.push('\n');
        }
    }

    /// The issue's targets, each with the figure it is judged on.
    fn render_targets(&self, s: &mut String) {
        let mut rows: Vec<(String, String, bool)> = Vec::new();
        for (k, with, without) in &self.traffic {
            let ratio = with / without;
            rows.push((
                format!("{k}: ≥ 98 % of no-program"),
                format!("{:.2} %", ratio * 100.0),
                ratio >= 0.98,
            ));
        }
        // A load missed by medians whose runs overlap theirs is a tie
        // within this machine's noise, not a measured loss: say which.
        let mut versus =
            |way: &str, what: &str, pick: fn(&Http) -> f64, scale: f64, higher_is_better: bool| {
                let (mut loads, mut wins, mut overlapping) = (0, 0, 0);
                for load in &LOADS {
                    let (Some(o), Some(t), Some(or), Some(tr)) = (
                        self.figure(load, EBPF),
                        self.figure(load, way),
                        self.range(load, EBPF, pick),
                        self.range(load, way, pick),
                    ) else {
                        continue;
                    };
                    loads += 1;
                    let (o, t) = (pick(&o), pick(&t) * scale);
                    if (higher_is_better && o >= t) || (!higher_is_better && o <= t) {
                        wins += 1;
                    } else if or.0 <= tr.1 * scale && tr.0 * scale <= or.1 {
                        overlapping += 1;
                    }
                }
                if loads > 0 {
                    let mut result = format!("{wins} of {loads} loads");
                    if overlapping > 0 {
                        write!(result, " ({overlapping} more with overlapping runs)").ok();
                    }
                    rows.push((what.into(), result, wins == loads));
                }
            };
        versus(DNAT, "req/s ≥ nft DNAT", |h| h.rps, 1.0, true);
        versus(DNAT, "p50 ≤ nft DNAT", |h| h.p50_us, 1.0, false);
        versus(DNAT, "p99 ≤ nft DNAT", |h| h.p99_us, 1.0, false);
        versus(NGINX, "req/s ≥ ½ nginx", |h| h.rps, 0.5, true);
        if let Some(rss) = self.footprint.get(RSS_IDLE) {
            rows.push(("sidecar RSS idle ≤ 8 MiB".into(), format!("{rss:.1} MiB"), *rss <= 8.0));
        }
        if let Some(ms) = self.footprint.get(ATTACH_DELAY) {
            rows.push(("attach ≤ 100 ms after the TAP appears".into(), format!("{ms:.1} ms"), *ms <= 100.0));
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(s, "### Targets\n\n| target | result | met |\n|---|---|---|");
        for (target, result, met) in rows {
            let _ = writeln!(s, "| {target} | {result} | {} |", if met { "yes" } else { "**no**" });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1's output with `--latency`, as Debian ships it.
    const WRK: &str = "Running 5s test @ http://169.254.169.254/v1/token
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms    1.20ms  30.11ms   91.00%
    Req/Sec    30.11k     2.10k   35.00k    70.00%
  Latency Distribution
     50%  801.00us
     75%    1.10ms
     90%    1.80ms
     99%    3.13ms
  299000 requests in 5.00s, 380.12MB read
  Socket errors: connect 3, read 2, write 0, timeout 1
Requests/sec:  59880.12
Transfer/sec:     76.02MB
";

    #[test]
    fn wrk_output_is_parsed_with_units_and_socket_errors() {
        let h = parse_wrk(WRK).unwrap();
        assert_eq!((h.rps, h.p50_us, h.p99_us, h.socket_errors), (59880.12, 801.0, 3130.0, 6));
    }

    #[test]
    fn wrk_failures_are_errors_not_figures() {
        assert!(parse_wrk(&format!("{WRK}  Non-2xx or 3xx responses: 12\n")).is_err());
        assert!(parse_wrk("unable to connect to 169.254.169.254:80 Connection refused\n").is_err());
        assert!(duration_us("12furlongs").is_err());
    }

    #[test]
    fn medians_take_the_middle_run() {
        let runs = [3.0, 1.0, 2.0].map(|rps| Http { rps, p50_us: rps * 10.0, p99_us: 1.0, socket_errors: 1 });
        let m = Http::median(&runs);
        assert_eq!((m.rps, m.p50_us, m.socket_errors), (2.0, 20.0, 3));
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn a_sidecar_log_line_gives_the_delay_since_a_moment() {
        let before = humantime::parse_rfc3339_weak("2026-11-23T07:05:03.000000Z").unwrap();
        let log =
            "2026-11-23T07:05:03.019200Z  INFO imds_agent::datapath::loader: attached ifname=\"tap90\"\n";
        let ms = log_delay_ms(log, "ifname=\"tap90\"", before).unwrap();
        assert!((ms - 19.2).abs() < 1e-6, "{ms}");
        assert!(log_delay_ms(log, "ifname=\"tap91\"", before).is_err());
    }
}
