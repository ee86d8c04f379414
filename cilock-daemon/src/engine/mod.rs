//! Steps: begin, end, reap; turning a trace into a signed attestation.
//!
//! A step is a cgroup v2 directory, a [`Recorder`] behind the step's
//! [`Sink`], and the backend's [`Tap`] on it. The engine holds one
//! `dyn` [`Backend`] (chosen by [`crate::backend::choose`]) and never asks
//! which one it is. Ending a step stops the tap, hashes what was opened,
//! runs the attestors after the command, and signs.
//!
//! - this module: [`Engine`] (start, begin, end, reap; one `step` tracing
//!   span per step operation), its settings, errors and specs;
//! - `step`: `Step` while traced, [`PendingStep`] once its
//!   trace is complete; [`run_ptrace`] (no daemon, no cgroups);
//! - `attest`: where the attestors run, command-run's observed and claimed
//!   fields, the capture facts as attestation strings, signing;
//! - `records`: step records and the recovery of interrupted steps;
//! - `kill`: `step end --kill`;
//! - `directory`: the steps as the Docker proxy sees them
//!   ([`crate::docker::StepDirectory`]);
//! - `containers`: what the proxy recorded for a step.
//!
//! A step's cgroup holds no process itself: the step's processes live in
//! its leaf `<step>/shell`, containers the step starts through the proxy
//! in `<step>/<id>` (see [`crate::cgroup`]). Container cgroups still
//! populated at the end stay, with the step's cgroup, and are swept by the
//! reaper once empty (with the v1 copies runc made on hybrid hosts).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cilock_evidence::attestors::command_run::{self, TraceInfo, WaitDescendants};
use cilock_evidence::attestors::lifecycle::AttestorOptions;
use cilock_evidence::attestors::AttestError;
use cilock_evidence::collection::Collection;
use cilock_evidence::dsse::DsseError;
use cilock_evidence::intoto::Statement;

use crate::attest_helper::{self, HelperConfig, Identity};
use crate::backend::{Backend, BackendChoice, BackendError, CaptureInfo, Sink, StepTarget, Tap};
use crate::cgroup::{Cgroup, CgroupError, Hierarchy, LockError, PidFd, V1Mounts};
use crate::trace::digest_cache::DigestCache;
use crate::trace::digest_cache::Reader;
use cilock_api::{ActiveStep, ApiError, ErrorKind};
use cilock_trace::fold::{Recorder, TraceLimits};

mod attest;
mod cleanup;
pub mod containers;
mod directory;
mod kill;
mod records;
mod step;

pub(crate) use attest::CommandRunAttestor;
use attest::{in_process_before, Attest};
pub use attest::{sign_slsa_export, sign_statement};
use records::{recover, warn_foreign};
pub use records::{InterruptedStep, HEARTBEAT_EVERY};
use step::Step;
pub use step::{run_ptrace, PendingStep};

/// Engine settings (the daemon reads them from its TOML config).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Which backend to use.
    pub backend: BackendChoice,
    /// A step that is not ended within this time is reaped.
    pub step_timeout: Duration,
    /// Name of the cgroup (under the cgroup2 root) that holds step cgroups.
    pub cgroup_parent: String,
    /// Attestors every step runs besides command-run, material and product.
    pub default_attestations: Vec<String>,
    /// A step whose cgroup has had no process for this long is ended.
    pub idle_timeout: Duration,
    /// Where the daemon keeps state: signed attestations not yet in their
    /// client's hands go to `<state_dir>/kept/<uid>/` ([`crate::kept`]).
    pub state_dir: PathBuf,
    /// Bounds on each step's trace and on the hashing at its end.
    pub trace_limits: TraceLimits,
    /// Run the attestors in an unprivileged helper process per stage (the
    /// daemon). `None`: in this process, as the calling user (the embedded
    /// engine of `cilock run`).
    pub helper: Option<HelperConfig>,
    /// Active steps one non-root uid may have at once.
    pub max_steps_per_user: usize,
    /// `cilock run`: after the command's root exited, how long to wait for
    /// its descendants when the client does not say.
    pub run_wait_descendants: Duration,
    /// Persist a record of each active step in
    /// `<state_dir>/steps/<parent>/` (the daemon): a step a dead daemon left
    /// is then ended at the next start with an attestation that says so.
    pub step_records: bool,
}

/// Default of [`EngineConfig::run_wait_descendants`]: the contract's, so the
/// CLI (which may have no engine) bounds its wait the same.
pub use cilock_api::DEFAULT_RUN_WAIT_DESCENDANTS;

/// Active steps at most, all users together: below the size of the eBPF
/// `STEPS` map (1 024 entries, `cilock-ebpf/src/common/maps.rs`).
pub const MAX_STEPS: usize = 1000;
/// Of [`MAX_STEPS`], how many only root may begin.
pub const ROOT_STEP_RESERVE: usize = 40;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            backend: BackendChoice::Auto,
            step_timeout: Duration::from_secs(6 * 3600),
            cgroup_parent: "cilock.steps".to_string(),
            default_attestations: Vec::new(),
            idle_timeout: Duration::from_secs(10 * 60),
            state_dir: PathBuf::from("/var/lib/cilock"),
            trace_limits: TraceLimits::default(),
            helper: None,
            max_steps_per_user: 32,
            run_wait_descendants: DEFAULT_RUN_WAIT_DESCENDANTS,
            step_records: false,
        }
    }
}

/// Who or what ended a step (`trace.endedBy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndedBy {
    /// `cilock step end`.
    StepEnd,
    /// `cilock run` (its command and descendants are done).
    Run,
    /// The step timeout ran out (its processes are killed).
    Timeout,
    /// The step's cgroup stayed empty for the idle timeout.
    Idle,
    /// The daemon is stopping.
    Shutdown,
}

impl EndedBy {
    /// The attested text.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            EndedBy::StepEnd => "step end",
            EndedBy::Run => "run",
            EndedBy::Timeout => "timeout",
            EndedBy::Idle => "idle",
            EndedBy::Shutdown => "daemon shutdown",
        }
    }

    /// Ended by the engine, not by a client (`trace.reaped`).
    fn reaped(self) -> bool {
        !matches!(self, EndedBy::StepEnd | EndedBy::Run)
    }
}

/// Why the engine ends a step on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reap {
    /// Steps older than the step timeout (killed) and steps idle for the
    /// idle timeout.
    Expired,
    /// Every step (the daemon is stopping; processes keep running).
    All,
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Bad input from the client.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such step.
    #[error("no active step named {0:?}")]
    NotFound(String),
    /// Step already active.
    #[error("a step named {0:?} is already active")]
    Conflict(String),
    /// A limit on active steps was reached.
    #[error("{0}")]
    TooMany(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
    /// The backend failed to load or to trace a step.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The lock on the steps' parent cgroup could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The attestor helper failed before the step.
    #[error(transparent)]
    Before(attest_helper::BeforeError),
    /// An attestor failed.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// The attestors after the step failed (other than by failing the
    /// step, which is its outcome).
    #[error("attestors after the step: {0}")]
    After(#[source] AttestError),
    /// Serializing the command-run or the statement failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] DsseError),
    /// A file of the daemon's state (step records) could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was done, on which path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The step was ended by this daemon at its start: the daemon that
    /// began it had died (the message says where its attestation is).
    #[error("{0}")]
    Interrupted(String),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let kind = match &e {
            EngineError::BadRequest(_) => ErrorKind::BadRequest,
            EngineError::Forbidden(_) => ErrorKind::Forbidden,
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::TooMany(_) => ErrorKind::TooMany,
            EngineError::Internal(_)
            | EngineError::Backend(_)
            | EngineError::Cgroup(_)
            | EngineError::Lock(_)
            | EngineError::Before(_)
            | EngineError::Attest(_)
            | EngineError::After(_)
            | EngineError::Json(_)
            | EngineError::Sign(_)
            | EngineError::Io { .. } => ErrorKind::Internal,
            EngineError::Interrupted(_) => ErrorKind::NotFound,
        };
        ApiError::new(kind, e.to_string())
    }
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

/// A step to begin.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// Step name.
    pub name: String,
    /// The process to trace with its descendants.
    pub pid: u32,
    /// The uid that owns the step (only it, or root, may end it).
    pub owner_uid: u32,
    /// Extra attestors.
    pub attestations: Vec<String>,
    /// Attestor options.
    pub options: AttestorOptions,
    /// Working directory (materials/products).
    pub workdir: PathBuf,
    /// The command, for `run`.
    pub cmd: Vec<String>,
    /// Environment of the step (for the environment attestor).
    pub env: Vec<(String, String)>,
    /// The owner's gid (the helper's gid when the uid has no passwd entry).
    pub owner_gid: u32,
    /// The workdir, opened by the daemon at begin (required when the
    /// attestors run in a helper; it is the helper's only way in).
    pub workdir_fd: Option<Arc<OwnedFd>>,
    /// Notes for the trace (e.g. the environment was truncated).
    pub notes: Vec<String>,
}

/// How a step ends.
#[derive(Clone, Debug, Default)]
pub struct EndSpec {
    /// Kill what is still running.
    pub kill: bool,
    /// Exit code of the wrapped command.
    pub exitcode: Option<i32>,
    /// Captured output.
    pub stdout: String,
    /// Captured output.
    pub stderr: String,
    /// Set only by an embedded engine (`cilock run` without a daemon: the
    /// process that traces is the one that signs): it spawned the command,
    /// captured its output and waited for it itself, so the step's `cmd`,
    /// `exitcode`, `stdout` and `stderr` are observed. Unset (the daemon):
    /// they are a client's claims and go under command-run `claimed`; the
    /// observed `cmd` and `exitcode` come from the trace of the root.
    pub observed: bool,
    /// `cilock run`: wait up to this long for the command's descendants
    /// (the step cgroup becoming empty) before ending. `None`: `step end`
    /// (no wait).
    pub wait_descendants: Option<Duration>,
    /// With `kill`: the process that asked (the daemon's peer, pinned).
    /// When it is inside the step, it and its ancestors are spared.
    pub caller: Option<Arc<PidFd>>,
    /// `cilock run` was interrupted by a signal: observed when `observed`
    /// (the embedded engine's own process got it), else a client's claim.
    pub interrupted: Option<command_run::Interrupted>,
    /// Bytes of `stdout`/`stderr` not captured (the capture bound), per
    /// stream: `trace.truncated` when `observed`, else `claimed.truncated`.
    pub output_truncated: BTreeMap<String, u64>,
}

/// The unsigned result of a step.
#[derive(Debug)]
pub struct StepOutcome {
    /// The statement to sign.
    pub statement: Statement<Collection>,
    /// Events lost in the kernel.
    pub lost_events: u64,
    /// Set when an attestor failed the step (secretscan fail-on-detection).
    pub failure: Option<String>,
    /// The step's owner (set by the engine that ended it; 0 otherwise).
    pub owner_uid: u32,
    /// Who ended the step (`trace.endedBy`).
    pub ended_by: String,
    /// The step's record in the state directory: removed once the signed
    /// attestation is kept, so a daemon dying in between leaves the step to
    /// the next one instead of losing it.
    pub record: Option<PathBuf>,
    /// The step asked for the SLSA provenance export
    /// (`--attestor-slsa-export`): whoever signs the statement also signs
    /// [`cilock_evidence::attestors::slsa::export_statement`] of it.
    pub slsa_export: bool,
}

/// The tracing engine: one per daemon (or per `cilock run` without one).
pub struct Engine {
    cfg: EngineConfig,
    /// The cgroup2 mount.
    mount: PathBuf,
    parent: PathBuf,
    backend: Box<dyn Backend>,
    cache: DigestCache,
    /// Active steps by (owner uid, name).
    steps: Mutex<HashMap<StepKey, Step>>,
    /// Steps being begun (counted against the caps; lock after `steps`).
    pending: Mutex<HashSet<StepKey>>,
    serial: AtomicU64,
    kernel: String,
    /// The lock on `parent`, held for the engine's life.
    _lock: crate::cgroup::ParentLock,
    /// Where step records are kept (`None`: not persisted).
    records: Option<PathBuf>,
    /// Steps a previous daemon left, found at start, waiting to be signed
    /// and kept (see [`Engine::take_interrupted`]).
    interrupted: Mutex<Vec<InterruptedStep>>,
    /// Steps ended at start because their daemon died, by (owner, name):
    /// where their attestation is (a later `step end` says so).
    ended_at_start: Mutex<HashMap<StepKey, String>>,
    /// The cgroup2 mount's root within the hierarchy.
    root: PathBuf,
    /// The steps' parent relative to the cgroup2 root, leading '/'.
    rel_parent: String,
    /// The level of step cgroups below the cgroup2 root.
    step_level: u32,
    /// The v1 hierarchies (hybrid hosts), where runc copies step paths.
    v1: V1Mounts,
    /// Cgroups of ended steps still populated (containers that outlived
    /// the step), or whose v1 copies are, removed once empty (bounded).
    leftovers: Mutex<Vec<PathBuf>>,
}

/// Ended steps' cgroups waiting to be swept, at most (beyond it they stay
/// on the host, with a warning).
pub const MAX_LEFTOVERS: usize = 4096;

/// Steps are keyed by owner uid and name: two users may both have `build`.
type StepKey = (u32, String);

/// A step being begun: counted against the caps until dropped.
struct Reservation<'a> {
    engine: &'a Engine,
    key: StepKey,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.engine
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Step names: what a CI system would use, nothing that could be a path.
pub fn valid_step_name(s: &str) -> bool {
    s.len() <= 128 && valid_leaf(s)
}

/// The characters of a step name (or a cgroup the daemon made from one),
/// never starting with '.': no hidden file in the daemon's stores, no `.`
/// or `..`.
fn valid_leaf(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'))
}

impl Engine {
    /// Starts the engine: finds cgroup2, prepares the steps' parent cgroup
    /// (removing leftovers of a previous run), and loads the backend.
    pub fn start(cfg: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        let hier = Hierarchy::find()?;
        if cfg.cgroup_parent.split('/').any(|c| !valid_step_name(c)) {
            return Err(EngineError::BadRequest(format!(
                "invalid cgroup parent name {:?}",
                cfg.cgroup_parent
            )));
        }
        let parent = hier.mount.join(&cfg.cgroup_parent);
        // One engine per parent: nothing is touched before the lock is held.
        let (lock, parent_cg) = crate::cgroup::ParentLock::acquire(&parent)?;
        let records = cfg.step_records.then(|| {
            cfg.state_dir
                .join("steps")
                .join(cfg.cgroup_parent.replace('/', "%2F"))
        });
        let interrupted = match &records {
            Some(dir) => recover(dir, &parent, &hier.mount)?,
            None => {
                warn_foreign(&parent, &HashSet::new());
                Vec::new()
            }
        };
        let level = hier
            .level_of(parent_cg.path())
            .ok_or_else(|| internal("step parent is outside the cgroup2 mount"))?
            + 1;
        let backend = crate::backend::choose(cfg.backend, level).map_err(EngineError::Backend)?;
        let rel_parent = format!(
            "/{}",
            hier.root
                .join(&cfg.cgroup_parent)
                .to_string_lossy()
                .trim_start_matches('/')
        );
        // Cgroups of interrupted steps still populated (their containers
        // run on) are swept once empty, like those of ended steps.
        let leftovers: Vec<PathBuf> = interrupted
            .iter()
            .filter_map(InterruptedStep::kept_cgroup)
            .take(MAX_LEFTOVERS)
            .collect();
        let engine = Arc::new(Engine {
            cfg,
            mount: hier.mount.clone(),
            parent,
            backend,
            cache: DigestCache::default(),
            steps: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
            serial: AtomicU64::new(0),
            kernel: kernel_release(),
            _lock: lock,
            records,
            interrupted: Mutex::new(interrupted),
            ended_at_start: Mutex::new(HashMap::new()),
            root: hier.root.clone(),
            rel_parent,
            step_level: level,
            v1: V1Mounts::find(),
            leftovers: Mutex::new(leftovers),
        });
        engine.heartbeat();
        Ok(engine)
    }

    /// `ebpf` or `ptrace`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.info().kind.name()
    }

    /// What the backend captures with.
    pub fn capture(&self) -> &CaptureInfo {
        self.backend.info()
    }

    /// Names of active steps (all owners).
    pub fn step_names(&self) -> Vec<String> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = steps.keys().map(|(_, n)| n.clone()).collect();
        v.sort();
        v
    }

    /// Active steps `viewer` may see: its own, or every step for root.
    pub fn active_steps(&self, viewer: u32) -> Vec<ActiveStep> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<ActiveStep> = steps
            .keys()
            .filter(|(uid, _)| viewer == 0 || *uid == viewer)
            .map(|(uid, n)| ActiveStep {
                step: n.clone(),
                owner_uid: *uid,
            })
            .collect();
        v.sort();
        v
    }

    /// Reserves `key` for a begin: refuses a name the owner already uses
    /// and applies the caps (per user, root exempt; in all, with a reserve
    /// only root may use).
    fn reserve(&self, key: &StepKey) -> Result<Reservation<'_>, EngineError> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if steps.contains_key(key) || pending.contains(key) {
            return Err(EngineError::Conflict(key.1.clone()));
        }
        let uid = key.0;
        let total = steps.len() + pending.len();
        if uid != 0 {
            let mine = steps.keys().filter(|k| k.0 == uid).count()
                + pending.iter().filter(|k| k.0 == uid).count();
            if mine >= self.cfg.max_steps_per_user {
                return Err(EngineError::TooMany(format!(
                    "uid {uid} already has {mine} active steps (max_steps_per_user = {})",
                    self.cfg.max_steps_per_user
                )));
            }
            if total >= MAX_STEPS - ROOT_STEP_RESERVE {
                return Err(EngineError::TooMany(format!(
                    "{total} steps are active, the most the daemon begins for users other than root"
                )));
            }
        } else if total >= MAX_STEPS {
            return Err(EngineError::TooMany(format!(
                "{total} steps are active, the most the daemon can trace"
            )));
        }
        pending.insert(key.clone());
        Ok(Reservation {
            engine: self,
            key: key.clone(),
        })
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Attestors every step runs by default.
    pub fn default_attestations(&self) -> &[String] {
        &self.cfg.default_attestations
    }

    /// Begins a step: creates its cgroup, registers it with the backend,
    /// records materials, and moves `spec.pid` in. Returns the cgroup path.
    pub fn begin(&self, spec: StepSpec) -> Result<PathBuf, EngineError> {
        self.begin_with(spec, None, &|| false)
    }

    /// [`Engine::begin`] with the target pinned by `pin` (a pidfd opened
    /// before its owner was checked; opened here when `None`), and
    /// `cancelled` asked right before the point of no return (moving the
    /// process in): when it says the client is gone, everything is undone.
    /// The target must belong to `spec.owner_uid` (any uid when that is 0):
    /// checked at the start and again right before the move; after the move
    /// the pidfd proves the process moved is still the one pinned. Every
    /// error leaves no cgroup, descriptor or map entry behind.
    pub fn begin_with(
        &self,
        spec: StepSpec,
        pin: Option<PidFd>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<PathBuf, EngineError> {
        let _span =
            tracing::info_span!("step", name = %spec.name, owner = spec.owner_uid).entered();
        if !valid_step_name(&spec.name) {
            return Err(EngineError::BadRequest(format!(
                "invalid step name {:?}: use letters, digits and - _ . @ + (at most 128, not starting with .)",
                spec.name
            )));
        }
        if spec.pid <= 1 || spec.pid == std::process::id() {
            return Err(EngineError::BadRequest(format!(
                "pid {} cannot be traced",
                spec.pid
            )));
        }
        let pin = match pin {
            Some(p) => p,
            None => PidFd::open(spec.pid)
                .map_err(|e| EngineError::BadRequest(format!("no process {}: {e}", spec.pid)))?,
        };
        if pin.pid() != spec.pid {
            return Err(internal("the pinned process is not the step's"));
        }
        check_target(spec.pid, spec.owner_uid)?;
        let key: StepKey = (spec.owner_uid, spec.name.clone());
        let reservation = self.reserve(&key)?;
        if cancelled() {
            return Err(gone());
        }
        let mut names = self.cfg.default_attestations.clone();
        for n in &spec.attestations {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let attest = match &self.cfg.helper {
            Some(hcfg) => {
                let fd = spec.workdir_fd.clone().ok_or_else(|| {
                    internal("the attestor helper needs the workdir opened at begin")
                })?;
                let step = attest_helper::before(attest_helper::BeforeSpec {
                    cfg: hcfg,
                    who: Identity::of(spec.owner_uid, spec.owner_gid),
                    workdir: &spec.workdir,
                    workdir_fd: fd,
                    names: &names,
                    options: spec.options.clone(),
                    env: spec.env.clone(),
                    notes: spec.notes.clone(),
                })
                .map_err(|e| match e {
                    attest_helper::BeforeError::Helper(_) => EngineError::Before(e),
                    _ => EngineError::BadRequest(e.to_string()),
                })?;
                let mut step = step;
                step.set_step(&spec.name);
                Attest::Helper(step)
            }
            None => in_process_before(&names, &spec)?,
        };

        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        // Unique per step: owner, name, daemon, serial.
        let parent_leaf = self
            .parent
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cg_path = self.parent.join(crate::cgroup::step_dir_name(
            &parent_leaf,
            &format!(
                "u{}.{}.{}.{}",
                spec.owner_uid,
                spec.name,
                std::process::id(),
                n
            ),
        ));
        let cgroup = Cgroup::create(&cg_path)?;
        // Bounded before anything can be put in it: the end and the sweep
        // walk the whole tree (see STEP_MAX_DEPTH).
        if let Err(e) = cgroup.bound_tree(
            crate::cgroup::STEP_MAX_DESCENDANTS,
            crate::cgroup::STEP_MAX_DEPTH,
        ) {
            let _ = cgroup.remove(&self.mount);
            return Err(e.into());
        }
        // The step's own processes live in its leaf; the step cgroup stays
        // empty of processes (containers go beside the leaf).
        let shell = match Cgroup::create(&cg_path.join(crate::cgroup::SHELL_LEAF)) {
            Ok(s) => s,
            Err(e) => {
                let _ = cgroup.remove(&self.mount);
                return Err(e.into());
            }
        };
        let mut recorder =
            Recorder::with_limits(Some(std::process::id()), self.cfg.trace_limits.clone());
        recorder.set_host_mnt_ns(crate::backend::ptrace::paths::host_mnt_ns());
        let sink = Sink::new(recorder);
        // Nothing of the step exists outside the daemon until the move: undo
        // is stopping the tap and removing the (empty) cgroup.
        let undo = |tap: Option<Box<dyn Tap>>, cgroup: &Cgroup, origin: &Path| {
            if let Some(t) = tap {
                let _ = t.stop();
            }
            if let Err(e) = cgroup.remove(origin) {
                tracing::warn!("undoing the begin of step {:?}: {e}", spec.name);
            }
        };
        // The point of no return is next: the client must still be there,
        // the pinned process alive and still the owner's.
        let last_check = if cancelled() {
            Err(gone())
        } else if pin.exited() {
            Err(EngineError::BadRequest(format!(
                "process {} exited before the step began",
                spec.pid
            )))
        } else {
            check_target(spec.pid, spec.owner_uid)
        };
        if let Err(e) = last_check {
            undo(None, &cgroup, &self.mount);
            return Err(e);
        }
        let origin = crate::cgroup::cgroup_of(spec.pid)
            .map(|rel| self.mount.join(rel.strip_prefix("/").unwrap_or(&rel)))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| self.mount.clone());
        // The backend traces the step from here: the eBPF filter knows the
        // cgroup before the process is in it; a ptrace follower holds the
        // process before it moves (what it does right after, an exec or its
        // exit, is then in the trace).
        let target = StepTarget {
            name: &spec.name,
            cgroup: &cgroup,
            pid: spec.pid,
        };
        let tap = match self.backend.start(target, sink.clone()) {
            Ok(t) => t,
            Err(e) => {
                // start rolls its own part back.
                undo(None, &cgroup, &origin);
                return Err(EngineError::Backend(e));
            }
        };
        // Persisted before the move: a step this daemon cannot end (it is
        // killed) is ended by the next one, never silently untraced.
        let record = match self.write_record(&spec, &names, &cgroup, &origin) {
            Ok(r) => r,
            Err(source) => {
                undo(Some(tap), &cgroup, &origin);
                return Err(EngineError::Io {
                    what: format!("cannot persist the record of step {:?}", spec.name),
                    source,
                });
            }
        };
        let unrecord = |r: &Option<PathBuf>| {
            if let Some(p) = r {
                let _ = std::fs::remove_file(p);
            }
        };
        if let Err(e) = shell.add_pid(spec.pid) {
            undo(Some(tap), &cgroup, &origin);
            unrecord(&record);
            return Err(EngineError::BadRequest(format!(
                "cannot move pid {} into the step: {e}",
                spec.pid
            )));
        }
        if pin.exited() {
            // The pid written may already name another process: whatever
            // it is goes back out, and the step is not begun.
            undo(Some(tap), &cgroup, &origin);
            unrecord(&record);
            return Err(EngineError::BadRequest(format!(
                "process {} exited while the step began",
                spec.pid
            )));
        }
        sink.with(|r| r.add_root(spec.pid, crate::trace::procfs::running(spec.pid)));
        let containers_cgroup = self.step_cgroup_rel(&cgroup);
        let step = Step {
            name: spec.name.clone(),
            owner_uid: spec.owner_uid,
            cgroup,
            sink,
            tap,
            started: Instant::now(),
            attest,
            cmd: spec.cmd,
            root: spec.pid,
            empty_since: None,
            origin,
            record,
            containers: Arc::new(containers::ContainerLog::for_step(containers_cgroup)),
        };
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if steps.contains_key(&key) {
            drop(steps);
            self.discard(step);
            return Err(EngineError::Conflict(spec.name));
        }
        steps.insert(key, step);
        drop(steps);
        drop(reservation);
        Ok(cg_path)
    }

    /// Where the processes still in a step go when it ends: the cgroup they
    /// came from, or the cgroup2 root when that one is gone (a process that
    /// was in another step, ended since).
    fn return_to(&self, origin: &Path) -> PathBuf {
        if origin.is_dir() {
            origin.to_path_buf()
        } else {
            self.mount.clone()
        }
    }

    fn discard(&self, step: Step) {
        let _ = step.tap.stop();
        let _ = step.cgroup.remove(&self.return_to(&step.origin));
        if let Some(p) = &step.record {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Ends the step `name` for `uid` (its owner, or root).
    pub fn end(&self, name: &str, uid: u32, end: EndSpec) -> Result<StepOutcome, EngineError> {
        self.end_as(name, uid, None, end)
    }

    /// Ends the step `name` of `owner` for `caller`. A non-root caller ends
    /// only its own steps. Root without an owner ends its own step of that
    /// name, else the only step of that name; when several users have one,
    /// it must name the owner.
    pub fn end_as(
        &self,
        name: &str,
        caller: u32,
        owner: Option<u32>,
        end: EndSpec,
    ) -> Result<StepOutcome, EngineError> {
        let step = {
            let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
            let key: StepKey = match (caller, owner) {
                (0, Some(o)) => (o, name.to_string()),
                (c, Some(o)) if o != c => {
                    return Err(EngineError::Forbidden(format!(
                        "uid {c} may only end its own steps, not those of uid {o}"
                    )))
                }
                (0, None) if !steps.contains_key(&(0, name.to_string())) => {
                    let mut owners: Vec<u32> = steps
                        .keys()
                        .filter(|(_, n)| n == name)
                        .map(|(u, _)| *u)
                        .collect();
                    owners.sort_unstable();
                    match owners[..] {
                        [] => return Err(self.not_found(name, None)),
                        [o] => (o, name.to_string()),
                        _ => {
                            return Err(EngineError::BadRequest(format!(
                                "several users have an active step named {name:?} (uids {}): name the owner (--owner UID)",
                                owners.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                            )))
                        }
                    }
                }
                (c, _) => (c, name.to_string()),
            };
            match steps.remove(&key) {
                Some(s) => s,
                None => return Err(self.not_found(name, Some(key.0))),
            }
        };
        let by = if end.wait_descendants.is_some() {
            EndedBy::Run
        } else {
            EndedBy::StepEnd
        };
        self.finish(step, end, by)
    }

    fn finish(
        &self,
        step: Step,
        end: EndSpec,
        ended_by: EndedBy,
    ) -> Result<StepOutcome, EngineError> {
        let _span =
            tracing::info_span!("step", name = %step.name, owner = step.owner_uid).entered();
        // `cilock run`: the command's descendants are waited for (bounded).
        let waited = end.wait_descendants.map(|bound| {
            let t0 = Instant::now();
            let empty = bound.is_zero() && !step.cgroup.populated()
                || !bound.is_zero() && step.cgroup.wait_empty(bound);
            (bound, t0.elapsed(), empty)
        });
        // Still running at the end: listed as such (and killed with --kill).
        let alive = step.cgroup.pids_recursive();
        let kill_at_end = if end.kill && !alive.is_empty() {
            Some(self.kill_step(&step, end.caller.as_deref(), ended_by, &alive))
        } else {
            None
        };
        let mut trace = TraceInfo {
            kernel: self.kernel.clone(),
            reaped: ended_by.reaped(),
            ended_by: ended_by.as_str().to_string(),
            wait_descendants: waited.map(|(bound, took, empty)| WaitDescendants {
                timeout_seconds: bound.as_secs_f64(),
                waited_seconds: took.as_secs_f64(),
                all_exited: empty && alive.is_empty(),
                survivors: alive.iter().map(|&p| p as i64).collect(),
                survivors_fate: if alive.is_empty() {
                    String::new()
                } else if end.kill {
                    "killed".to_string()
                } else {
                    "left running, no longer traced".to_string()
                },
            }),
            kill_at_end,
            ..Default::default()
        };
        attest::capture_fields(&mut trace, self.backend.info());
        trace.events = attest::event_counts(step.tap.stop().map_err(EngineError::Backend)?);
        // Leave the cgroup: the leaf's processes still alive go back where
        // they came from; populated container cgroups stay until swept.
        self.release(&step.name, &step.cgroup, &step.origin);
        let recorder = step.sink.take();
        tracing::info!(step = %step.name, seconds = step.started.elapsed().as_secs_f64(), "step stopped");
        let owner_uid = step.owner_uid;
        let out = PendingStep {
            name: step.name,
            attest: step.attest,
            cmd: step.cmd,
            root: Some(step.root),
            recorder,
            reader: Reader::of_uid(owner_uid),
            trace,
            counting: self.backend.info().counting,
            alive,
            containers: step.containers.clone(),
        }
        .finish(&self.cache, end);
        match out {
            // The record goes once the attestation is kept (the caller).
            Ok(mut o) => {
                o.owner_uid = owner_uid;
                o.record = step.record.clone();
                Ok(o)
            }
            // No attestation: why goes to the caller; the next daemon must
            // not end the step again.
            Err(e) => {
                if let Some(p) = &step.record {
                    let _ = std::fs::remove_file(p);
                }
                Err(e)
            }
        }
    }

    /// Ends the steps nobody ended: with `Reap::Expired`, steps older than
    /// the step timeout (their processes are killed) and steps whose cgroup
    /// has stayed empty for the idle timeout; with `Reap::All`, every step
    /// (its processes keep running, untraced). Returns each step's outcome.
    pub fn reap(&self, which: Reap) -> Vec<(String, Result<StepOutcome, EngineError>)> {
        self.sweep();
        let taken: Vec<(Step, EndedBy, bool)> = {
            let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
            let mut chosen = Vec::new();
            for (key, s) in steps.iter_mut() {
                let why = match which {
                    Reap::All => Some((EndedBy::Shutdown, false)),
                    Reap::Expired if s.started.elapsed() > self.cfg.step_timeout => {
                        Some((EndedBy::Timeout, true))
                    }
                    Reap::Expired => {
                        if s.cgroup.populated() {
                            s.empty_since = None;
                            None
                        } else {
                            let since = *s.empty_since.get_or_insert_with(Instant::now);
                            (since.elapsed() >= self.cfg.idle_timeout)
                                .then_some((EndedBy::Idle, false))
                        }
                    }
                };
                if let Some((why, kill)) = why {
                    chosen.push((key.clone(), why, kill));
                }
            }
            chosen
                .into_iter()
                .filter_map(|(n, why, kill)| steps.remove(&n).map(|s| (s, why, kill)))
                .collect()
        };
        let mut out = Vec::new();
        for (s, why, kill) in taken {
            let name = s.name.clone();
            tracing::warn!(step = %name, owner = s.owner_uid, reason = why.as_str(), "ending a step nobody ended");
            let end = EndSpec {
                kill,
                ..Default::default()
            };
            out.push((name, self.finish(s, end, why)));
        }
        out
    }

    /// Removes the (empty) parent cgroup of the steps (embedded engines use
    /// one of their own).
    pub fn remove_parent(&self) {
        self.sweep();
        let _ = std::fs::remove_dir(&self.parent);
        self.remove_parent_v1_copies();
    }

    /// Drops every active step without attesting it (embedded engines after
    /// an error).
    pub fn shutdown(&self) {
        let all: Vec<Step> = {
            let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
            steps.drain().map(|(_, s)| s).collect()
        };
        for s in all {
            self.discard(s);
        }
    }
}

/// The target of a begin must belong to `owner` (any uid when `owner` is 0).
fn check_target(pid: u32, owner: u32) -> Result<(), EngineError> {
    let uid = uid_of(pid).ok_or_else(|| EngineError::BadRequest(format!("no process {pid}")))?;
    if owner != 0 && uid != owner {
        return Err(EngineError::Forbidden(format!(
            "pid {pid} belongs to uid {uid}, not to uid {owner}"
        )));
    }
    Ok(())
}

/// The error of a begin whose client hung up.
fn gone() -> EngineError {
    EngineError::BadRequest(
        "the client hung up before the step began; nothing was done".to_string(),
    )
}

/// The environment of a process (`KEY=VALUE` pairs of /proc/PID/environ,
/// at most [`attest_helper::MAX_ENVIRON`] bytes of it).
pub fn environ_of(pid: u32) -> Vec<(String, String)> {
    attest_helper::environ_bounded(pid).0
}

/// The real uid owning `pid`.
pub fn uid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
