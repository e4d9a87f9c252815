//! Loading the tc programs with aya and keeping their attachments in line
//! with the plan.

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType, tc, tc::SchedClassifierLinkId},
    util::KernelVersion,
};
use imds_ebpf::abi::{
    Config, Counter, Counters, GLOBAL_CONFIG, MAP_COUNTERS, PROG_FROM_GUEST, PROG_GUARD, PROG_TO_GUEST,
};

use super::plan::{Attachment, Changes, Role};

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
    #[error("this kubevirt-imds binary was built without its eBPF object; build it with `cargo xtask build`")]
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
    #[error("attaching {program} to {ifname}")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("reading eBPF map {MAP_COUNTERS}")]
    Counters(#[from] aya::maps::MapError),
    #[error("starting the eBPF log reader: {0}")]
    Logger(String),
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

/// The loaded programs and where they are attached. Dropping it detaches
/// everything (TCX links close with their file descriptors).
pub struct Datapath {
    ebpf: Ebpf,
    attached: BTreeMap<(Role, u32), (String, SchedClassifierLinkId)>,
    /// Kernels before 6.6 have no TCX: programs go through a clsact qdisc
    /// and outlive the process, so leftovers must be removed by name.
    legacy_tc: bool,
    _log_reader: Option<tokio::task::JoinHandle<()>>,
}

impl Datapath {
    pub fn load(config: &Config, log_level: EbpfLogLevel) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NotEmbedded);
        }
        let level = log_level.as_aya_level();
        let mut loader = EbpfLoader::new();
        loader.override_global(GLOBAL_CONFIG, config, true).override_global(LOG_LEVEL_GLOBAL, &level, true);
        if log_level == EbpfLogLevel::Off {
            // Nothing is ever written: keep the ring at its minimum (a page).
            loader.map_max_entries(LOG_RING, 4096);
        }
        let mut ebpf = loader.load(OBJECT)?;
        for name in [PROG_TO_GUEST, PROG_GUARD, PROG_FROM_GUEST] {
            classifier(&mut ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        let log_reader =
            if log_level == EbpfLogLevel::Off { None } else { Some(spawn_log_reader(&mut ebpf)?) };
        let legacy_tc = KernelVersion::current().map(|v| v < KernelVersion::new(6, 6, 0)).unwrap_or(false);
        Ok(Self { ebpf, attached: BTreeMap::new(), legacy_tc, _log_reader: log_reader })
    }

    /// Kernel ids of the loaded programs, for the startup log line.
    pub fn program_ids(&self) -> Vec<(&'static str, u32)> {
        [PROG_TO_GUEST, PROG_GUARD, PROG_FROM_GUEST]
            .into_iter()
            .filter_map(|name| {
                let program: &SchedClassifier = self.ebpf.program(name)?.try_into().ok()?;
                Some((name, program.info().ok()?.id()))
            })
            .collect()
    }

    pub fn attached(&self) -> std::collections::BTreeSet<(Role, u32)> {
        self.attached.keys().copied().collect()
    }

    /// Applies `changes`; returns what could not be done (the caller logs it
    /// and the next link event retries).
    pub fn apply(&mut self, changes: Changes) -> Vec<DatapathError> {
        let mut errors = Vec::new();
        for key in changes.detach {
            if let Some((ifname, link)) = self.attached.remove(&key) {
                // The interface is usually gone already, and its link with it.
                let _ = classifier(&mut self.ebpf, key.0.program()).map(|p| p.detach(link));
                tracing::info!(program = key.0.program(), ifname, ifindex = key.1, "detached");
            }
        }
        for attachment in changes.attach {
            match self.attach(&attachment) {
                Ok(link) => {
                    tracing::info!(
                        program = attachment.role.program(),
                        ifname = attachment.ifname,
                        ifindex = attachment.ifindex,
                        "attached"
                    );
                    self.attached.insert(attachment.key(), (attachment.ifname, link));
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    fn attach(&mut self, a: &Attachment) -> Result<SchedClassifierLinkId, DatapathError> {
        let program = a.role.program();
        if self.legacy_tc {
            // Idempotent: the qdisc may exist, a killed predecessor's filter may too.
            let _ = tc::qdisc_add_clsact(&a.ifname);
            let _ = tc::qdisc_detach_program(&a.ifname, TcAttachType::Ingress, program);
        }
        classifier(&mut self.ebpf, program)?
            .attach(&a.ifname, TcAttachType::Ingress)
            .map_err(|source| DatapathError::Attach { program, ifname: a.ifname.clone(), source })
    }

    pub fn detach_all(&mut self) {
        let all = self.attached.keys().copied().collect();
        self.apply(Changes { attach: Vec::new(), detach: all });
    }

    /// Current value of every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(aya::maps::MapError::InvalidName { name: MAP_COUNTERS.to_owned() })?;
        let per_cpu = PerCpuArray::<_, Counters>::try_from(map)?.get(&0, 0)?;
        Ok(Counter::ALL.into_iter().map(|c| (c, per_cpu.iter().map(|cpu| cpu.get(c)).sum())).collect())
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Forwards aya-log records (through the `log` facade) into tracing.
fn spawn_log_reader(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>, DatapathError> {
    let logger = aya_log::EbpfLogger::init(ebpf).map_err(|e| DatapathError::Logger(e.to_string()))?;
    // SAFETY: the logger owns the ring buffer's fd for as long as it lives,
    // and the AsyncFd owns the logger.
    let mut logger =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|e| DatapathError::Logger(e.to_string()))?;
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
