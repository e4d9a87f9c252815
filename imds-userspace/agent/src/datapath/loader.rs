//! One pod's eBPF programs: loaded once per pod (its veth's ifindex and MAC
//! are baked into them), pinned with their maps and links in bpffs (see
//! [`crate::pins`]), attached and detached as the plan says. Everything is
//! done through the pins, so a restarted agent works on what it finds
//! exactly as on what it just loaded.
//!
//! Call these from a thread inside the pod's network namespace: interface
//! names and ifindexes are resolved there.

use std::{
    collections::BTreeSet,
    io,
    sync::{Mutex, mpsc},
};

use aya::{
    EbpfLoader,
    maps::{Map, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, SchedClassifierLink, TcHandle},
    },
};
use imds_ebpf::abi::{Config, Counter, Counters, GLOBAL_CONFIG, MAP_COUNTERS, MAP_FLOWS, flows_max_entries};

use super::plan::{Attachment, Changes, Direction, Role};
use crate::{net::tc_filters::TcFilter, pins::Generation};

/// The object built by `cargo xtask build-ebpf`, embedded at compile time
/// (see `build.rs`).
#[cfg(imds_ebpf_embedded)]
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("IMDS_EBPF_OBJECT_PATH"));
#[cfg(not(imds_ebpf_embedded))]
static OBJECT: &[u8] = &[];

const LOG_RING: &str = "AYA_LOGS";
const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("this kubevirt-imds-agent was built without its eBPF object; build it with `cargo xtask build`")]
    NotEmbedded,
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning {0}")]
    Pin(String, #[source] aya::pin::PinError),
    #[error("eBPF map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("attaching {program} to {ifname}")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("removing the tc filter of {program} from {ifname}")]
    Detach {
        program: &'static str,
        ifname: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the link of {program} on ifindex {ifindex}")]
    Link {
        program: &'static str,
        ifindex: u32,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("bpffs {0}")]
    Io(String, #[source] io::Error),
}

/// Verbosity of the programs' aya-log messages. `Off` compiles the log
/// calls out at load time (the verifier prunes them), so the hot path pays
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl EbpfLogLevel {
    fn as_aya_level(self) -> u8 {
        match self {
            EbpfLogLevel::Off => 0,
            EbpfLogLevel::Error => aya_log::Level::Error as u8,
            EbpfLogLevel::Warn => aya_log::Level::Warn as u8,
            EbpfLogLevel::Info => aya_log::Level::Info as u8,
            EbpfLogLevel::Debug => aya_log::Level::Debug as u8,
            EbpfLogLevel::Trace => aya_log::Level::Trace as u8,
        }
    }
}

/// Whether this kernel has TCX (6.6): its links can be pinned. Before, tc
/// filters through a clsact qdisc, which outlive the process by themselves
/// and are read back from the kernel ([`crate::net::tc_filters`]).
pub fn kernel_has_tcx() -> bool {
    imds_common::kernel::has_tcx(&imds_common::kernel::running_release())
}

/// A pod's programs, from their pins.
pub struct PodDatapath {
    generation: Generation,
    programs: Vec<(Role, SchedClassifier)>,
    /// The kernel's id of each role's program: legacy filters are told
    /// apart from a previous generation's by it.
    program_ids: Vec<(Role, u32)>,
    legacy_tc: bool,
    /// Legacy tc: where this process last knew its programs to be on, so
    /// that an interface that vanished (taking its filters with it) is
    /// reported detached as with TCX.
    legacy_known: BTreeSet<(Role, u32)>,
    /// Forwards the programs' own log messages while it lives (only for a
    /// generation this process loaded with logging on).
    _log_reader: Option<tokio::task::JoinHandle<()>>,
}

impl PodDatapath {
    /// The programs of `generation`, loaded and pinned first if the
    /// generation has none yet. `log` only matters for a fresh load.
    pub fn open_or_load(
        generation: &Generation,
        config: &Config,
        log: EbpfLogLevel,
    ) -> Result<(Self, bool), DatapathError> {
        let fresh = !Role::ALL.iter().all(|r| generation.program(r.program()).exists());
        let log_reader = if fresh {
            let mut ebpf = load_on_loader_thread(generation, config, log)?;
            if log == EbpfLogLevel::Off { None } else { Some(spawn_log_reader(&mut ebpf)?) }
        } else {
            None
        };
        let mut programs = Vec::new();
        let mut program_ids = Vec::new();
        for role in Role::ALL {
            let name = role.program();
            let program = SchedClassifier::from_pin(generation.program(name))
                .map_err(|source| DatapathError::Program { name, source })?;
            let info = program.info().map_err(|source| DatapathError::Program { name, source })?;
            program_ids.push((role, info.id()));
            programs.push((role, program));
        }
        let legacy_tc = !kernel_has_tcx();
        let datapath = Self {
            generation: generation.clone(),
            programs,
            program_ids,
            legacy_tc,
            legacy_known: BTreeSet::new(),
            _log_reader: log_reader,
        };
        Ok((datapath, fresh))
    }

    /// Whether attachments are legacy tc filters, which the caller lists
    /// from the kernel ([`crate::net::tc_filters::dump`]) for
    /// [`Self::attached`] and [`Self::apply`].
    pub fn is_legacy_tc(&self) -> bool {
        self.legacy_tc
    }

    fn role_of(&self, prog_id: u32) -> Option<Role> {
        self.program_ids.iter().find(|(_, id)| *id == prog_id).map(|(role, _)| *role)
    }

    /// What is attached: the pinned links (TCX), or the filters among
    /// `filters` that run this generation's programs (legacy tc).
    pub fn attached(&self, filters: &[TcFilter]) -> Result<BTreeSet<(Role, u32)>, DatapathError> {
        if self.legacy_tc {
            let listed = filters.iter().filter_map(|f| {
                let role = self.role_of(f.prog_id)?;
                (role.direction() == f.direction).then_some((role, f.ifindex))
            });
            let vanished =
                self.legacy_known.iter().copied().filter(|(_, ifindex)| ifname_of(*ifindex).is_none());
            return Ok(listed.chain(vanished).collect());
        }
        let links = self
            .generation
            .links()
            .map_err(|e| DatapathError::Io(format!("listing {}", self.generation.path().display()), e))?;
        Ok(links
            .into_iter()
            .filter_map(|(program, ifindex)| Some((Role::from_program(&program)?, ifindex)))
            .collect())
    }

    /// Applies `changes`; returns what could not be done (the caller logs
    /// it and the next reconciliation retries). `filters` are the legacy tc
    /// filters as listed before (empty with TCX).
    pub fn apply(&mut self, changes: &Changes, filters: &[TcFilter]) -> Vec<DatapathError> {
        let mut errors = Vec::new();
        // Legacy tc: where this generation's programs are on once done.
        let mut now_on =
            if self.legacy_tc { self.attached(filters).unwrap_or_default() } else { BTreeSet::new() };
        for &(role, ifindex) in &changes.detach {
            match self.detach(role, ifindex, filters) {
                Ok(()) => {
                    now_on.remove(&(role, ifindex));
                    tracing::info!(program = role.program(), ifindex, "detached");
                }
                Err(e) => errors.push(e),
            }
        }
        for attachment in &changes.attach {
            match self.attach(attachment) {
                Ok(()) => {
                    now_on.insert(attachment.key());
                    tracing::info!(
                        program = attachment.role.program(),
                        ifname = attachment.ifname,
                        ifindex = attachment.ifindex,
                        "attached"
                    )
                }
                Err(e) => errors.push(e),
            }
        }
        if self.legacy_tc {
            self.remove_stale_filters(filters, &now_on);
            self.legacy_known = now_on;
        }
        errors
    }

    /// Legacy tc: removes the filters carrying one of our program names
    /// but another program (a previous generation's, whose veth is gone)
    /// from the hooks where this generation's program now runs; they were
    /// left until then so that no hook was ever without one.
    fn remove_stale_filters(&self, before: &[TcFilter], now_on: &BTreeSet<(Role, u32)>) {
        for stale in before {
            let Some(role) = Role::from_program(&stale.name) else { continue };
            if role.direction() != stale.direction
                || self.role_of(stale.prog_id) == Some(role)
                || !now_on.contains(&(role, stale.ifindex))
            {
                continue;
            }
            let Some(ifname) = ifname_of(stale.ifindex) else { continue };
            match remove_filter(&ifname, stale) {
                Ok(()) => tracing::info!(
                    program = role.program(),
                    ifname,
                    prog_id = stale.prog_id,
                    "removed a previous generation's filter"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, program = role.program(), ifname, "removing a stale filter")
                }
            }
        }
    }

    fn program(&mut self, role: Role) -> &mut SchedClassifier {
        // Every role has its program: `open_or_load` loads them all.
        &mut self.programs.iter_mut().find(|(r, _)| *r == role).expect("every role is loaded").1
    }

    fn attach(&mut self, a: &Attachment) -> Result<(), DatapathError> {
        let name = a.role.program();
        let attach_type = attach_type(a.role.direction());
        let legacy = self.legacy_tc;
        if legacy {
            // Idempotent: the qdisc may exist. A previous generation's
            // filter stays until this one is on (`remove_stale_filters`).
            let _ = tc::qdisc_add_clsact(&a.ifname);
        }
        let program = self.program(a.role);
        let id = program.attach(&a.ifname, attach_type).map_err(|source| DatapathError::Attach {
            program: name,
            ifname: a.ifname.clone(),
            source,
        })?;
        let link = program.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
        if legacy {
            // A tc filter stays in the kernel until removed; dropping its
            // aya handle would remove it.
            std::mem::forget(link);
            return Ok(());
        }
        let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
            program: name,
            ifindex: a.ifindex,
            source,
        })?;
        let path = self.generation.link(name, a.ifindex);
        fd_link.pin(&path).map_err(|e| DatapathError::Pin(path.display().to_string(), e))?;
        Ok(())
    }

    fn detach(&mut self, role: Role, ifindex: u32, filters: &[TcFilter]) -> Result<(), DatapathError> {
        let name = role.program();
        if self.legacy_tc {
            // The interface is usually gone, and its filters with it.
            let Some(ifname) = ifname_of(ifindex) else { return Ok(()) };
            for filter in
                filters.iter().filter(|f| f.ifindex == ifindex && self.role_of(f.prog_id) == Some(role))
            {
                remove_filter(&ifname, filter).map_err(|source| DatapathError::Detach {
                    program: name,
                    ifname: ifname.clone(),
                    source,
                })?;
            }
            return Ok(());
        }
        let path = self.generation.link(name, ifindex);
        // Unpinning and dropping the last descriptor detaches the link (the
        // kernel already did if the interface went away).
        let pinned = PinnedLink::from_pin(&path).map_err(|source| DatapathError::Link {
            program: name,
            ifindex,
            source,
        })?;
        let link =
            pinned.unpin().map_err(|e| DatapathError::Io(format!("unpinning {}", path.display()), e))?;
        drop(link);
        Ok(())
    }

    /// Attaches `role`'s program to `ifname` without pinning (the probe's
    /// temporary interface); the returned guard detaches it.
    pub fn attach_unpinned(
        &mut self,
        role: Role,
        ifname: &str,
    ) -> Result<aya::programs::tc::SchedClassifierLink, DatapathError> {
        let name = role.program();
        let attach_type = attach_type(role.direction());
        if self.legacy_tc {
            let _ = tc::qdisc_add_clsact(ifname);
        }
        let program = self.program(role);
        let id = program.attach(ifname, attach_type).map_err(|source| DatapathError::Attach {
            program: name,
            ifname: ifname.to_owned(),
            source,
        })?;
        program.take_link(id).map_err(|source| DatapathError::Program { name, source })
    }

    /// Current value of every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        counters(&self.generation)
    }
}

/// The counters of a pinned generation.
pub fn counters(generation: &Generation) -> Result<Vec<(Counter, u64)>, DatapathError> {
    let data =
        MapData::from_pin(generation.map(MAP_COUNTERS)).map_err(|e| DatapathError::Map(MAP_COUNTERS, e))?;
    let map = PerCpuArray::<_, Counters>::try_from(Map::PerCpuArray(data))
        .map_err(|e| DatapathError::Map(MAP_COUNTERS, e))?;
    let per_cpu = map.get(&0, 0).map_err(|e| DatapathError::Map(MAP_COUNTERS, e))?;
    Ok(Counter::ALL.into_iter().map(|c| (c, per_cpu.iter().map(|cpu| cpu.get(c)).sum())).collect())
}

fn attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

/// Removes one legacy filter by its priority and handle (never by name: a
/// name also matches the filter that replaced it).
fn remove_filter(ifname: &str, filter: &TcFilter) -> Result<(), aya::programs::ProgramError> {
    let handle = TcHandle::new((filter.handle >> 16) as u16, filter.handle as u16);
    let link =
        SchedClassifierLink::attached(ifname, attach_type(filter.direction), filter.priority, handle, None)
            .map_err(aya::programs::ProgramError::IOError)?;
    link.detach()
}

fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0)?;
    String::from_utf8(buf[..len].to_vec()).ok()
}

/// One load, handed to the loader thread.
struct LoadJob {
    generation: Generation,
    config: Config,
    log: EbpfLogLevel,
    reply: mpsc::SyncSender<Result<aya::Ebpf, DatapathError>>,
}

/// Loads on the one thread that does nothing else, then gives the heap back.
///
/// The flow table's size for this node's CPUs (see
/// [`imds_ebpf::abi::flows_max_entries`]). Should the CPU count be
/// unreadable, 256 CPUs' worth: too large costs memory, too small live flows.
fn flows_table_size() -> u32 {
    let cpus = aya::util::nr_cpus().map(|n| u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or_else(|(path, e)| {
        tracing::warn!(path, error = %e, "cannot read the number of possible CPUs; sizing the flow table for 256");
        256
    });
    flows_max_entries(cpus)
}

/// Every `EbpfLoader::new` parses the kernel's BTF (`/sys/kernel/btf/vmlinux`,
/// about 5 MiB, some 80 MiB of allocations at the peak), and aya offers no
/// loader without it. Done on each pod's own thread, glibc kept most of each
/// parse in that thread's arena: the agent grew by 18.5 MiB per pod (176 MiB
/// at 10 pods, against a 256Mi limit; `cargo xtask bench --only scale`). On
/// one thread the parse reuses one arena, and `malloc_trim` returns it.
fn load_on_loader_thread(
    generation: &Generation,
    config: &Config,
    log: EbpfLogLevel,
) -> Result<aya::Ebpf, DatapathError> {
    static JOBS: Mutex<Option<mpsc::Sender<LoadJob>>> = Mutex::new(None);
    let (reply, result) = mpsc::sync_channel(1);
    let job = LoadJob { generation: generation.clone(), config: *config, log, reply };
    {
        let mut jobs = JOBS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if jobs.is_none() {
            let (tx, rx) = mpsc::channel::<LoadJob>();
            std::thread::Builder::new()
                .name("ebpf-loader".into())
                .spawn(move || {
                    for job in rx {
                        // A panicking load fails that load only: the thread
                        // goes on serving the other pods.
                        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            load_and_pin(&job.generation, &job.config, job.log)
                        }))
                        .unwrap_or_else(|_| {
                            Err(DatapathError::Io(
                                "loading the programs".into(),
                                io::Error::other("the load panicked"),
                            ))
                        });
                        let _ = job.reply.send(loaded);
                        release_free_heap();
                    }
                })
                .map_err(|e| DatapathError::Io("starting the eBPF loader thread".into(), e))?;
            *jobs = Some(tx);
        }
        if let Some(tx) = jobs.as_ref()
            && tx.send(job).is_err()
        {
            // The thread has ended (no load can end it; this is a guard):
            // start another next time.
            *jobs = None;
            return Err(DatapathError::Io(
                "the eBPF loader thread".into(),
                io::Error::other("it has stopped"),
            ));
        }
    }
    result.recv().map_err(|_| {
        DatapathError::Io("the eBPF loader thread".into(), io::Error::other("it stopped mid-load"))
    })?
}

/// Returns the free pages of every malloc arena to the kernel.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads the object with `config`, pins its programs and maps in
/// `generation`.
fn load_and_pin(
    generation: &Generation,
    config: &Config,
    log: EbpfLogLevel,
) -> Result<aya::Ebpf, DatapathError> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NotEmbedded);
    }
    generation
        .create()
        .map_err(|e| DatapathError::Io(format!("creating {}", generation.path().display()), e))?;
    let level = log.as_aya_level();
    let mut loader = EbpfLoader::new();
    loader.override_global(GLOBAL_CONFIG, config, true).override_global(LOG_LEVEL_GLOBAL, &level, true);
    if log == EbpfLogLevel::Off {
        // Nothing is ever written: keep the ring at its minimum (a page).
        loader.map_max_entries(LOG_RING, 4096);
    }
    loader.map_max_entries(MAP_FLOWS, flows_table_size());
    let mut ebpf = loader.load(OBJECT)?;
    // Every program through the verifier before any is pinned: a refusal
    // leaves no partial generation for the next attempt to trip on.
    for role in Role::ALL {
        let name = role.program();
        let program = classifier(&mut ebpf, name)?;
        program.load().map_err(|source| DatapathError::Program { name, source })?;
    }
    // A generation is only used once all of it is pinned, so pins found
    // here are what an agent killed mid-pin left: replaced.
    for role in Role::ALL {
        let name = role.program();
        let program = classifier(&mut ebpf, name)?;
        let path = generation.program(name);
        let _ = std::fs::remove_file(&path);
        program.pin(&path).map_err(|e| DatapathError::Pin(path.display().to_string(), e))?;
    }
    for name in [MAP_COUNTERS, MAP_FLOWS] {
        let map = ebpf
            .map(name)
            .ok_or(DatapathError::Map(name, aya::maps::MapError::InvalidName { name: name.to_owned() }))?;
        let path = generation.map(name);
        let _ = std::fs::remove_file(&path);
        map.pin(&path).map_err(|e| DatapathError::Pin(path.display().to_string(), e))?;
    }
    Ok(ebpf)
}

fn classifier<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Forwards aya-log records (through the `log` facade) into tracing.
fn spawn_log_reader(ebpf: &mut aya::Ebpf) -> Result<tokio::task::JoinHandle<()>, DatapathError> {
    let logger = aya_log::EbpfLogger::init(ebpf).map_err(|e| {
        DatapathError::Io("starting the eBPF log reader".into(), io::Error::other(e.to_string()))
    })?;
    // SAFETY: the logger owns the ring buffer's fd for as long as it lives,
    // and the AsyncFd owns the logger.
    let mut logger =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|e| {
                DatapathError::Io("starting the eBPF log reader".into(), io::Error::other(e.to_string()))
            })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
