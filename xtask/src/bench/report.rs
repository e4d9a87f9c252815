//! Everything measured, and its Markdown. Figures are medians of the
//! repetitions with the spread of the runs beside them; the HTTP
//! comparisons are paired ratios with their confidence intervals; the
//! targets are in [`super::targets`].

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    bpf::{Pinned, ProgRun},
    http::Way,
    machine::Busy,
    options::Options,
    pinning::Placement,
    procfs::Memory,
    stats::{PairedRatio, Summary, percentile, slope},
    targets, token,
    wrk::{Http, LOADS, Load},
};

/// The sidecar before the privilege split (one privileged process per VM
/// that also loaded the programs), from BENCHMARKS.md of 2026-11-23
/// (commit 3969703): idle RSS and its RssAnon, MiB.
pub const PREVIOUS_SIDECAR_RSS_IDLE: f64 = 13.0;
pub const PREVIOUS_SIDECAR_PRIVATE: f64 = 3.5;

#[derive(Default)]
pub struct Report {
    pub machine: String,
    /// How busy the machine was, at the start and after each section.
    pub busy: Vec<(String, Busy)>,
    /// Every run, by load label and way, in repetition order (run i of
    /// every way ran in the same repetition).
    pub http: BTreeMap<String, BTreeMap<Way, Vec<Http>>>,
    /// Where wrk and the servers ran during the HTTP loads.
    pub http_placement: Option<Placement>,
    /// Per load: our path's drop counters and TCP retransmissions that
    /// rose, and any way's wrk socket errors.
    pub losses: BTreeMap<String, BTreeMap<String, u64>>,
    pub traffic: Vec<TrafficRow>,
    /// Each program's run time and runs during the BPF statistics run.
    pub per_packet: BTreeMap<&'static str, ProgRun>,
    /// The empty classifier where each of those runs, same traffic.
    pub floor: BTreeMap<&'static str, ProgRun>,
    /// ns per run on a 64-byte UDP frame under `BPF_PROG_TEST_RUN`, no
    /// accounting (`super::test_run`), by program; the empty one under
    /// `PROG_FLOOR`.
    pub test_run: BTreeMap<&'static str, f64>,
    /// 64-byte UDP as the per-packet costs predict it, by way.
    pub implied_udp: Vec<ImpliedUdp>,
    pub footprint: Footprint,
    pub guest_helper: GuestHelper,
    pub scale: Vec<ScalePoint>,
    pub token_read: BTreeMap<String, f64>,
    /// How late a rotation can be served (token section).
    pub staleness: Option<super::staleness::Staleness>,
    /// Instructions per request of the API layer, by path.
    pub api_instructions: BTreeMap<String, f64>,
}

/// The guest helper inside a VM (`super::guest_helper`).
#[derive(Default)]
pub struct GuestHelper {
    /// Each static build: name, MiB.
    pub binaries: Vec<(&'static str, f64)>,
    /// Keeping one token file, settled (MiB).
    pub rss: Option<Summary>,
    pub private: Option<Summary>,
    pub peak: Option<Summary>,
    /// `--once`, start to exit, one token (ms).
    pub once_ms: Option<Summary>,
}

/// What a way's programs cost a 64-byte UDP flow, from their per-packet
/// time: a packet takes 1/rate of the flow's time without them, and their
/// `programs_ns` more with them.
pub struct ImpliedUdp {
    pub what: &'static str,
    /// The sum over the way's programs (`BPF_PROG_TEST_RUN`, no accounting).
    pub programs_ns: f64,
    /// Received without programs, median.
    pub kpps: f64,
}

impl ImpliedUdp {
    pub fn ratio(&self) -> f64 {
        1.0 / (1.0 + self.programs_ns * self.kpps * 1e-6)
    }
}

/// One way of the VM's other traffic, through a plumbed pod and an unplumbed one.
pub struct TrafficRow {
    pub what: String,
    pub programs: String,
    pub with: Summary,
    pub without: Summary,
}

impl TrafficRow {
    pub fn ratio(&self) -> f64 {
        self.with.median / self.without.median
    }
}

/// The sidecar of one VM (MiB, ms), medians over the repetitions.
#[derive(Default)]
pub struct Footprint {
    pub to_channel_ms: Option<Summary>,
    pub to_found_ms: Option<Summary>,
    pub to_listening_ms: Option<Summary>,
    pub to_ready_ms: Option<Summary>,
    pub rss_idle: Option<Summary>,
    pub anon_idle: Option<Summary>,
    pub private_idle: Option<Summary>,
    pub pss_idle: Option<Summary>,
    pub startup_peak: Option<Summary>,
    pub attach_ms: Option<Summary>,
    pub under_load_peak: Option<f64>,
    pub after_load: Option<f64>,
    pub binary: Option<f64>,
    pub binary_stripped: Option<f64>,
}

/// The node with `pods` plumbed pods.
pub struct ScalePoint {
    pub pods: usize,
    /// Pods added (and plumbed) since the previous count.
    pub plumbed: usize,
    pub plumb_wall_s: f64,
    /// The agent's CPU time while it plumbed them.
    pub plumb_cpu_s: f64,
    /// Sidecar start → ready, for the pods added.
    pub ready_ms: Option<Summary>,
    pub agent: Memory,
    /// % of one core over the idle window.
    pub agent_idle_cpu_pct: f64,
    /// Every sidecar together, % of one core.
    pub sidecars_idle_cpu_pct: f64,
    pub idle_window_s: f64,
    pub sidecar_rss: Option<Summary>,
    pub sidecar_private: Option<Summary>,
    pub sidecar_pss: Option<Summary>,
    pub pinned: Pinned,
    pub attach_ms: Vec<f64>,
    pub ip_ms: Option<Summary>,
}

/// What each further VM adds, from the two largest pod counts (MiB, % of a core).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerVm {
    /// (smaller, larger) pod count the slopes are taken between.
    pub between: (usize, usize),
    pub sidecar_rss: f64,
    pub sidecar_private: f64,
    pub agent_rss: f64,
    pub kernel_bpf: f64,
    pub agent_idle_cpu_pct: f64,
}

impl PerVm {
    pub fn private_total(&self) -> f64 {
        self.sidecar_private + self.agent_rss.max(0.0) + self.kernel_bpf
    }
}

const MIB: f64 = 1_048_576.0;

impl Report {
    /// One figure of `way` under `load`, over the runs.
    pub fn http_summary(&self, load: &Load, way: Way, pick: fn(&Http) -> f64) -> Option<Summary> {
        let runs = self.http.get(&load.label())?.get(&way)?;
        Summary::of(&runs.iter().map(pick).collect::<Vec<_>>())
    }

    /// Ours against `way` under `load`, repetition by repetition, oriented
    /// so that > 1 means ours is better.
    pub fn http_ratio(
        &self,
        load: &Load,
        way: Way,
        pick: fn(&Http) -> f64,
        higher_is_better: bool,
    ) -> Option<PairedRatio> {
        let runs = self.http.get(&load.label())?;
        let figures = |w| runs.get(&w).map(|r: &Vec<Http>| r.iter().map(pick).collect::<Vec<_>>());
        PairedRatio::of(&figures(Way::Ebpf)?, &figures(way)?, higher_is_better)
    }

    /// The slopes between the two largest pod counts (or, with one, that
    /// count's figures divided by its pods).
    pub fn per_vm(&self) -> Option<PerVm> {
        let last = self.scale.last()?;
        let first = if self.scale.len() >= 2 { &self.scale[self.scale.len() - 2] } else { last };
        let per_pod = |pick: &dyn Fn(&ScalePoint) -> f64| {
            slope((first.pods as f64, pick(first)), (last.pods as f64, pick(last)))
                .unwrap_or_else(|| pick(last) / last.pods as f64)
        };
        Some(PerVm {
            between: (first.pods, last.pods),
            sidecar_rss: last.sidecar_rss?.median,
            sidecar_private: last.sidecar_private?.median,
            agent_rss: per_pod(&|p| p.agent.rss),
            kernel_bpf: per_pod(&|p| p.pinned.kernel_bytes as f64 / MIB),
            agent_idle_cpu_pct: per_pod(&|p| p.agent_idle_cpu_pct),
        })
    }

    pub fn render(&self, options: &Options) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Machine: {}\n", self.machine);
        for (what, binary) in [("sidecar", &options.sidecar), ("agent and its eBPF programs", &options.agent)]
        {
            if let Some(binary) = binary {
                let _ =
                    writeln!(s, "Measured the {what} of `{}`, not the one just built.\n", binary.display());
            }
        }
        self.render_busy(&mut s);
        let http_runs = if self.http.is_empty() {
            String::new()
        } else {
            format!(" ({} for the HTTP loads)", options.http_repetitions)
        };
        let _ = writeln!(
            s,
            "Every figure is the median of {} runs of {} s{http_runs} unless it says otherwise; where a \
             range is shown it is the lowest and highest run.\n",
            options.repetitions, options.duration_secs
        );
        if !self.http.is_empty() {
            self.render_http(&mut s);
        }
        if !self.losses.is_empty() {
            self.render_losses(&mut s);
        }
        if !self.traffic.is_empty() {
            self.render_traffic(&mut s);
        }
        self.render_footprint(&mut s);
        self.render_guest_helper(&mut s);
        if !self.scale.is_empty() {
            self.render_scale(&mut s, options);
        }
        if !self.token_read.is_empty() {
            let _ = writeln!(
                s,
                "### Token reads (ns per token served, median of {})\n\n| | ns |\n|---|---|",
                token::READS
            );
            for (k, v) in &self.token_read {
                let _ = writeln!(s, "| {k} | {v:.0} |");
            }
            s.push('\n');
        }
        if let Some(st) = &self.staleness {
            let _ = writeln!(
                s,
                "### Token rotation: how stale an answer can be\n\nThe release `serve` on loopback under wrk \
                 (64 keep-alive connections on `/v1/token`) and a probe looping on one more; the kubelet-style \
                 volume rotated {} times, 200 ms apart. Median (lowest–highest) over the rotations, µs.\n\n\
                 | | µs |\n|---|---|\n\
                 | a request sent this long after the rename still got the old token (0: none did) | {} |\n\
                 | rename → first answer with the new token | {} |\n\
                 | rotations in which any request sent after the rename got the old token | {} of {} |\n",
                st.rotations,
                st.stale_after_us.show(0),
                st.first_new_us.show(0),
                st.rotations_with_stale,
                st.rotations
            );
        }
        if !self.api_instructions.is_empty() {
            let _ = writeln!(
                s,
                "### The API layer: instructions per request\n\nRouter, request checks, tally and handler, \
                 in-process without sockets or hyper (`examples/api_cost.rs` under callgrind: repeatable \
                 whatever the machine's load).\n\n| path | instructions |\n|---|---|"
            );
            for (path, n) in &self.api_instructions {
                let _ = writeln!(s, "| `{path}` | {n:.0} |");
            }
            s.push('\n');
        }
        targets::render(&targets::rows(self), &mut s);
        s
    }

    fn render_busy(&self, s: &mut String) {
        if self.busy.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "How busy the machine was besides the benchmark (load average 1 / 5 / 15 min, which includes \
             the benchmark's own load; other heavy processes seen):\n\n| when | load |\n|---|---|"
        );
        for (when, busy) in &self.busy {
            let _ = writeln!(s, "| {when} | {} |", busy.show());
        }
        s.push('\n');
    }

    /// Paired runs per load: the fewest any way has (they are equal
    /// unless a run was lost).
    fn http_pairs(&self) -> usize {
        self.http.values().flat_map(|ways| ways.values().map(Vec::len)).min().unwrap_or(0)
    }

    fn render_http(&self, s: &mut String) {
        let placement = match &self.http_placement {
            Some(p) => format!("{p}."),
            None => "Where wrk and the servers ran was not recorded.".to_owned(),
        };
        let pairs = self.http_pairs();
        let _ = writeln!(
            s,
            "HTTP load: wrk in the guest namespace (2 threads; `Connection: close` for a new connection per \
             request), every way up at once in one plumbed pod and run in turn for each repetition, so \
             that repetition i of ours and of each other way ran back to back and make a pair: {pairs} \
             paired runs per load. The alternatives listen on {} (DNAT) and {} (veth), as .254 belongs to \
             the eBPF path, whose programs stay attached throughout: the DNAT and nginx ways pass \
             `imds_from_guest` and `imds_guard`, the veth way `imds_from_guest` (their cost on passing \
             traffic: see below). {placement} The kernel's share of each request (veth, bridge, our \
             programs, nft) runs mostly on the CPU of the side sending the packet.\n",
            super::alternatives::DNAT_ADDR,
            super::alternatives::VETH_ADDR
        );
        type Pick = fn(&Http) -> f64;
        // (title, figure, higher is better)
        let tables: [(&str, Pick, bool); 3] = [
            ("requests/s", |h| h.rps, true),
            ("p50 latency, µs", |h| h.p50_us, false),
            ("p99 latency, µs", |h| h.p99_us, false),
        ];
        for (title, pick, higher_is_better) in tables {
            let _ = writeln!(s, "### IMDS requests: {title}\n");
            let _ = writeln!(
                s,
                "Median, then ± half the range of the runs as a share of it. The \"vs\" columns: ours \
                 against theirs pair by pair, oriented so that > 1 means ours is better; the geometric mean \
                 of the {pairs} paired ratios, then its 95 % confidence interval (Student's t on the \
                 log-ratios); **win** when all of the interval is above 1, **loss** when all of it is below, \
                 **tie** when it holds 1 (these runs cannot tell the two apart).\n\n\
                 | load | {} | vs DNAT | vs veth | vs nginx |\n|---|---|---|---|---|---|---|---|",
                Way::ALL.map(Way::label).join(" | ")
            );
            for load in &LOADS {
                let cells: Vec<String> = Way::ALL
                    .iter()
                    .map(|w| match self.http_summary(load, *w, pick) {
                        Some(f) if f.median > 0.0 => format!("{:.0} ±{:.0}%", f.median, f.spread_pct()),
                        _ => "—".into(),
                    })
                    .collect();
                let versus = |way| {
                    self.http_ratio(load, way, pick, higher_is_better)
                        .map_or_else(|| "—".to_owned(), |r| r.show())
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    load.label(),
                    cells.join(" | "),
                    versus(Way::Dnat),
                    versus(Way::Veth),
                    versus(Way::Nginx)
                );
            }
            s.push('\n');
        }
    }

    fn render_losses(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "### Losses: eBPF drop counters and TCP retransmissions during our runs, wrk socket errors in any\n\n\
             | load | counters that rose |\n|---|---|"
        );
        for load in &LOADS {
            let Some(drops) = self.losses.get(&load.label()) else { continue };
            let text: Vec<String> = drops.iter().map(|(k, v)| format!("{k} +{v}")).collect();
            let _ = writeln!(
                s,
                "| {} | {} |",
                load.label(),
                if text.is_empty() { "none".into() } else { text.join(", ") }
            );
        }
        s.push('\n');
    }

    fn render_traffic(&self, s: &mut String) {
        let runs = self.traffic.first().map_or(0, |r| r.with.count);
        let _ = writeln!(
            s,
            "### Cost to the VM's other traffic\n\n\
             iperf3, one TCP flow and 64-byte UDP at an unlimited rate (packets received), through a pod the \
             agent plumbed and through an identical pod it never plumbed; both exist and the agent runs \
             throughout, the runs alternate (order flipped every repetition). Median of {runs} runs each, \
             lowest–highest in brackets.\n\n\
             | traffic | programs on its way | plumbed pod | unplumbed pod | ratio |\n|---|---|---|---|---|"
        );
        for row in &self.traffic {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} % |",
                row.what,
                row.programs,
                row.with.show(2),
                row.without.show(2),
                row.ratio() * 100.0
            );
        }
        s.push('\n');
        if !self.per_packet.is_empty() {
            let _ = writeln!(
                s,
                "Per packet, by the kernel's own accounting (`kernel.bpf_stats_enabled`, one more run of every \
                 way above; the accounting's two clock reads are included, so these are upper bounds):\n"
            );
            for (program, run) in &self.per_packet {
                let floor = self.floor.get(program).and_then(|f| Some((f.ns_per_run()?, f.run_cnt)));
                match (run.ns_per_run(), floor) {
                    (Some(ns), Some((floor, floor_runs))) => {
                        let _ = writeln!(
                            s,
                            "- `{program}`: {ns:.0} ns per packet, mean of {} runs; an empty program in \
                             its place on the unplumbed pod: {floor:.0} ns ({floor_runs} runs), so {:+.0} ns \
                             above it",
                            run.run_cnt,
                            ns - floor
                        );
                    }
                    (Some(ns), None) => {
                        let _ =
                            writeln!(s, "- `{program}`: {ns:.0} ns per packet, mean of {} runs", run.run_cnt);
                    }
                    (None, _) => {
                        let _ = writeln!(s, "- `{program}`: did not run");
                    }
                }
            }
            s.push('\n');
        }
        if !self.test_run.is_empty() {
            let _ = writeln!(
                s,
                "Per packet without the accounting: `BPF_PROG_TEST_RUN` (`bpftool prog run … repeat {}`), the \
                 median of {} such loops on a 64-byte UDP frame of the guest's:\n",
                super::test_run::REPEAT,
                super::test_run::MEASUREMENTS,
            );
            for (program, ns) in &self.test_run {
                let what = if *program == imds_ebpf::abi::PROG_FLOOR { " (the empty program)" } else { "" };
                let _ = writeln!(s, "- `{program}`{what}: {ns:.0} ns");
            }
            s.push('\n');
        }
        if !self.implied_udp.is_empty() {
            let _ = writeln!(
                s,
                "What these per-packet costs take from a 64-byte UDP flow (rate without programs r, the \
                 programs' sum c: 1 / (1 + c·r); an upper bound, as an unplumbed pod pays no hook at all):\n"
            );
            for u in &self.implied_udp {
                let _ = writeln!(
                    s,
                    "- {}: {:.0} ns a packet at {:.1} kpps: {:.2} %",
                    u.what,
                    u.programs_ns,
                    u.kpps,
                    u.ratio() * 100.0
                );
            }
            s.push('\n');
        }
    }

    fn render_footprint(&self, s: &mut String) {
        let f = &self.footprint;
        let rows: [(&str, Option<Summary>, usize); 10] = [
            ("sidecar RSS idle (MiB)", f.rss_idle, 1),
            ("… of it private: Private_Dirty, what each further sidecar adds (MiB)", f.private_idle, 2),
            ("… of it anonymous: RssAnon (MiB)", f.anon_idle, 2),
            ("sidecar Pss idle, the only sidecar on the node (MiB)", f.pss_idle, 1),
            ("sidecar RSS peak during start-up: VmHWM (MiB)", f.startup_peak, 1),
            ("sidecar start → channel socket listening (ms)", f.to_channel_ms, 1),
            ("sidecar start → the agent found the pod (ms)", f.to_found_ms, 1),
            (
                "sidecar start → IMDS listening (`LOG_SERVING`; the agent made its veth) (ms)",
                f.to_listening_ms,
                1,
            ),
            ("sidecar start → ready (`LOG_READY`; plumbed and probed) (ms)", f.to_ready_ms, 1),
            ("TAP appears → `imds_from_guest` attached, one pod on the node (ms)", f.attach_ms, 1),
        ];
        let singles: [(&str, Option<f64>); 4] = [
            ("sidecar RSS peak under the HTTP loads (MiB)", f.under_load_peak),
            ("sidecar RSS after the HTTP loads (MiB)", f.after_load),
            ("sidecar binary, as built (MiB)", f.binary),
            ("sidecar binary, stripped (MiB)", f.binary_stripped),
        ];
        if rows.iter().all(|r| r.1.is_none()) && singles.iter().all(|r| r.1.is_none()) {
            return;
        }
        let _ = writeln!(
            s,
            "### Footprint of one VM's sidecar\n\n\
             A fresh pod per repetition (namespace, bridge, TAP, the sidecar as uid 107 in the pod's cgroup, \
             serving the guest helper's builds as the image does), \
             alone on a node whose agent scans at its default interval; median (lowest–highest).\n\n| | |\n|---|---|"
        );
        for (what, v, decimals) in rows {
            if let Some(v) = v {
                let _ = writeln!(s, "| {what} | {} |", v.show(decimals));
            }
        }
        for (what, v) in singles {
            if let Some(v) = v {
                let _ = writeln!(s, "| {what} | {v:.1} |");
            }
        }
        s.push('\n');
    }

    fn render_guest_helper(&self, s: &mut String) {
        let g = &self.guest_helper;
        if g.binaries.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "### The guest helper (`kubevirt-imds-guest`)\n\n\
             The x86_64 build keeping the default token in a namespace whose 169.254.169.254:80 is the \
             release sidecar's `serve`; a fresh helper per repetition; median (lowest–highest).\n\n| | |\n|---|---|"
        );
        for (name, mib) in &g.binaries {
            let _ = writeln!(s, "| `{name}`, static, stripped (MiB) | {mib:.2} |");
        }
        let rows = [
            ("RSS keeping a token file, settled: VmRSS (MiB)", g.rss, 2),
            ("… of it private: Private_Dirty (MiB)", g.private, 2),
            ("RSS peak: VmHWM (MiB)", g.peak, 2),
            ("`--once`, one token, start to exit (ms)", g.once_ms, 1),
        ];
        for (what, v, decimals) in rows {
            if let Some(v) = v {
                let _ = writeln!(s, "| {what} | {} |", v.show(decimals));
            }
        }
        s.push('\n');
    }

    fn render_scale(&self, s: &mut String, options: &Options) {
        let _ = writeln!(
            s,
            "### The agent at scale\n\n\
             One node, one agent (default scan interval), pods added between counts and never removed. Each \
             pod: its own network namespace with `eth0` (a veth to the node), `k6t-eth0` and a TAP `tap0` on \
             it, and a running sidecar. Idle CPU: user+sys from /proc/<pid>/stat over {:.0} s with every pod \
             plumbed. TAP → attached: a TAP created and enslaved (one `ip -batch`, included) in one pod after \
             another, {} per count, to the agent's \"attached\" log line.\n",
            self.scale.iter().map(|p| p.idle_window_s).fold(0.0, f64::max),
            options.tap_samples()
        );
        let _ = write!(s, "| pods on the node |");
        for p in &self.scale {
            let _ = write!(s, " {} |", p.pods);
        }
        let _ = writeln!(s, "\n|---|{}", "---|".repeat(self.scale.len()));
        type Cell = fn(&ScalePoint) -> String;
        let rows: Vec<(&str, Cell)> = vec![
            ("pods added and plumbed at this step", |p| p.plumbed.to_string()),
            ("… wall time until all were ready (s)", |p| format!("{:.1}", p.plumb_wall_s)),
            ("… each: sidecar start → ready (ms)", |p| p.ready_ms.map_or("—".into(), |v| v.show(0))),
            ("… agent CPU per pod plumbed (ms)", |p| {
                format!("{:.0}", p.plumb_cpu_s * 1000.0 / p.plumbed.max(1) as f64)
            }),
            ("agent RSS (MiB)", |p| format!("{:.1}", p.agent.rss)),
            ("agent RssAnon (MiB)", |p| format!("{:.1}", p.agent.anon)),
            // A load parses the kernel's BTF (tens of MiB, then trimmed):
            // the peak is what the DaemonSet's memory limit must allow.
            ("agent peak RSS since start, VmHWM (MiB)", |p| format!("{:.1}", p.agent.peak)),
            ("agent threads", |p| p.agent.threads.to_string()),
            ("agent CPU idle (% of one core)", |p| format!("{:.2}", p.agent_idle_cpu_pct)),
            ("all sidecars' CPU idle (% of one core)", |p| format!("{:.2}", p.sidecars_idle_cpu_pct)),
            ("sidecar RSS, median (lowest–highest) (MiB)", |p| {
                p.sidecar_rss.map_or("—".into(), |v| v.show(1))
            }),
            ("sidecar private (Private_Dirty) (MiB)", |p| {
                p.sidecar_private.map_or("—".into(), |v| v.show(2))
            }),
            ("sidecar Pss (MiB)", |p| p.sidecar_pss.map_or("—".into(), |v| v.show(2))),
            ("pins per pod: programs / maps / links", |p| {
                let n = p.pods.max(1) as f64;
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    p.pinned.program_pins as f64 / n,
                    p.pinned.map_pins as f64 / n,
                    p.pinned.link_pins as f64 / n
                )
            }),
            ("kernel objects per pod: programs / maps (pinned or not)", |p| {
                let n = p.pods.max(1) as f64;
                format!("{:.1} / {:.1}", p.pinned.programs as f64 / n, p.pinned.maps as f64 / n)
            }),
            ("kernel memory of them per pod, bytes_memlock (KiB)", |p| {
                format!("{:.0}", p.pinned.kernel_bytes as f64 / 1024.0 / p.pods.max(1) as f64)
            }),
            ("TAP → attached p50 (ms)", |p| {
                percentile(&p.attach_ms, 50.0).map_or("—".into(), |v| format!("{v:.1}"))
            }),
            ("TAP → attached p99 (ms)", |p| {
                percentile(&p.attach_ms, 99.0).map_or("—".into(), |v| format!("{v:.1}"))
            }),
            ("TAP → attached max (ms)", |p| {
                percentile(&p.attach_ms, 100.0).map_or("—".into(), |v| format!("{v:.1}"))
            }),
            ("… of which `ip` itself, median (ms)", |p| {
                p.ip_ms.map_or("—".into(), |v| format!("{:.1}", v.median))
            }),
        ];
        for (what, cell) in rows {
            let cells: Vec<String> = self.scale.iter().map(cell).collect();
            let _ = writeln!(s, "| {what} | {} |", cells.join(" | "));
        }
        s.push('\n');
        if let Some(v) = self.per_vm() {
            let (a, b) = v.between;
            let how = if a == b {
                format!("at {b} pods, divided by {b}")
            } else {
                format!("slope from {a} to {b} pods")
            };
            let _ = writeln!(
                s,
                "### What each further VM adds\n\n\
                 | per VM | before the split (one privileged sidecar, 2026-11-23) | now |\n|---|---|---|\n\
                 | sidecar RSS idle (MiB; mostly the binary's pages, shared by every sidecar) | {PREVIOUS_SIDECAR_RSS_IDLE:.1} | {:.1} (at {b} pods) |\n\
                 | sidecar private (MiB; then RssAnon, now Private_Dirty) | {PREVIOUS_SIDECAR_PRIVATE:.1} | {:.2} (at {b} pods) |\n\
                 | agent RSS (MiB, {how}) | — | {:.2} |\n\
                 | eBPF programs and maps in the kernel (MiB, {how}) | in the sidecar's (not measured) | {:.2} |\n\
                 | **memory no other VM shares (MiB)** | {PREVIOUS_SIDECAR_PRIVATE:.1} + its programs | **{:.2}** |\n\
                 | agent CPU idle (% of one core, {how}) | — | {:.3} |\n",
                v.sidecar_rss,
                v.sidecar_private,
                v.agent_rss,
                v.kernel_bpf,
                v.private_total(),
                v.agent_idle_cpu_pct
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(rps: &[f64]) -> Vec<Http> {
        rps.iter().map(|&rps| Http { rps, p50_us: 1e6 / rps, p99_us: 2e6 / rps, socket_errors: 0 }).collect()
    }

    #[test]
    fn http_tables_show_paired_ratios_and_where_the_runs_ran() {
        let mut report =
            Report { http_placement: Some(Placement::Pinned { client: 0, server: 1 }), ..Report::default() };
        let entry = report.http.entry(LOADS[0].label()).or_default();
        entry.insert(Way::Ebpf, runs(&[110.0, 112.0, 108.0]));
        entry.insert(Way::Nginx, runs(&[100.0, 101.0, 99.0]));
        let mut s = String::new();
        report.render_http(&mut s);
        assert!(s.contains("3 paired runs per load") && s.contains("of the 3 paired ratios"), "{s}");
        assert!(s.contains("wrk was pinned to CPU 0 and every server"), "{s}");
        // Latencies are 1/rps here: every table has the same ratio.
        let row = "| /v1/token c=1 keep-alive | 110 ±2% | — | — | 100 ±1% | — | — | 1.10× [1.08–1.12] win |";
        assert_eq!(s.matches(row).count(), 1, "{s}");
        assert_eq!(s.matches("| — | — | 1.10× [1.08–1.12] win |").count(), 3, "{s}");

        let report = Report {
            http_placement: Some(Placement::Unpinned { cpus: vec![0] }),
            http: report.http.clone(),
            ..Report::default()
        };
        let mut s = String::new();
        report.render_http(&mut s);
        assert!(s.contains("nothing was pinned: the benchmark could run on CPU 0 only"), "{s}");
    }
}
