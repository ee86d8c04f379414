//! Steps: begin, end, reap; turning a trace into a signed attestation.
//!
//! A step is a cgroup v2 directory plus a [`Recorder`]. With the eBPF
//! backend the kernel filters on the step cgroup and the ring-buffer
//! consumer feeds the recorder; with the ptrace backend a tracer thread
//! follows the step's processes. Ending a step stops the trace, hashes what
//! was opened, runs the attestors after the command, and signs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cilock_evidence::attestors::command_run::{
    self, Claimed, CommandRun, EventCount, KillAtEnd, TraceInfo, WaitDescendants, EXITCODE_UNKNOWN,
    MAX_KILLED_LISTED,
};
use cilock_evidence::attestors::lifecycle::{AttestorOptions, Lifecycle, SkippedAttestor};
use cilock_evidence::attestors::{
    into_collection, run_one, AttestError, AttestationContext, Attestor, Stage,
};
use cilock_evidence::collection::{Collection, COLLECTION_TYPE};
use cilock_evidence::dsse::{self, Envelope};
use cilock_evidence::intoto::{Statement, PAYLOAD_TYPE};
use cilock_evidence::keys::Signer;

use crate::api::{
    self, AckKept, ActiveStep, ApiError, BeginStep, EndStep, EnvelopeHeader, ErrorKind, FetchKept,
    KeptInfo, ListKept, Outgoing, Payload, Peer, Reply, RequestCtx, StatusReply,
};
use crate::attest_helper::{self, HelperConfig, HelperStep, Identity};
use crate::backend::ebpf::EbpfBackend;
use crate::backend::{ptrace, BackendChoice};
use crate::cgroup::{Cgroup, Hierarchy, PidFd};
use crate::kept::{KeptStore, ToKeep};
use crate::trace::digest_cache::DigestCache;
use crate::trace::digest_cache::Reader;
use crate::trace::recorder::{Recorder, TraceLimits};

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

/// Default of [`EngineConfig::run_wait_descendants`].
pub const DEFAULT_RUN_WAIT_DESCENDANTS: Duration = Duration::from_secs(30);

/// The first [`MAX_KILLED_LISTED`] pids of `pids`.
fn listed(pids: &[u32]) -> Vec<i64> {
    pids.iter()
        .take(MAX_KILLED_LISTED)
        .map(|&p| p as i64)
        .collect()
}

/// Ancestors of a `step end --kill` caller looked at, at most.
const MAX_ANCESTORS: usize = 256;

/// Active steps at most, all users together: below the size of the eBPF
/// `STEPS` map (1 024 entries, `cilock-ebpf/src/maps.rs`).
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
            EngineError::Internal(_) => ErrorKind::Internal,
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
}

enum Backend {
    Ebpf(EbpfBackend),
    Ptrace,
}

/// Where a step's attestors run (one per step: the size difference of the
/// variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Attest {
    /// In this process (embedded engines, as the calling user).
    InProcess {
        lifecycle: Lifecycle,
        ctx: AttestationContext,
    },
    /// In an unprivileged helper process per stage (the daemon).
    Helper(HelperStep),
}

struct Step {
    name: String,
    owner_uid: u32,
    cgroup: Cgroup,
    recorder: Arc<Mutex<Recorder>>,
    started: Instant,
    attest: Attest,
    cmd: Vec<String>,
    /// The process the step began with (`run`'s command, `step begin`'s shell).
    root: u32,
    follower: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Since when the step's cgroup has been seen empty.
    empty_since: Option<Instant>,
    /// The cgroup the traced process came from: processes still running
    /// when the step ends go back there.
    origin: PathBuf,
    /// The step's persisted record (removed when the step ends).
    record: Option<PathBuf>,
}

/// The tracing engine: one per daemon (or per `cilock run` without one).
pub struct Engine {
    cfg: EngineConfig,
    /// The cgroup2 mount.
    mount: PathBuf,
    parent: PathBuf,
    backend: Backend,
    reason: String,
    hooks: BTreeMap<String, String>,
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
}

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
        let hier = Hierarchy::find().map_err(internal)?;
        if cfg.cgroup_parent.split('/').any(|c| !valid_step_name(c)) {
            return Err(EngineError::BadRequest(format!(
                "invalid cgroup parent name {:?}",
                cfg.cgroup_parent
            )));
        }
        let parent = hier.mount.join(&cfg.cgroup_parent);
        // One engine per parent: nothing is touched before the lock is held.
        let (lock, parent_cg) = crate::cgroup::ParentLock::acquire(&parent).map_err(internal)?;
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
        let (backend, reason, hooks) = match cfg.backend {
            BackendChoice::Ptrace => (
                Backend::Ptrace,
                "ptrace selected by configuration".to_string(),
                ptrace::hooks(),
            ),
            BackendChoice::Ebpf | BackendChoice::Auto => match EbpfBackend::load(level) {
                Ok(b) => {
                    let hooks = b.hooks().clone();
                    (Backend::Ebpf(b), String::new(), hooks)
                }
                Err(e) if cfg.backend == BackendChoice::Auto => {
                    tracing::warn!("eBPF unavailable, using ptrace: {e}");
                    (
                        Backend::Ptrace,
                        format!("eBPF unavailable: {e}"),
                        ptrace::hooks(),
                    )
                }
                Err(e) => return Err(internal(format!("eBPF backend: {e}"))),
            },
        };
        if let Backend::Ptrace = backend {
            ptrace::probe().map_err(|e| internal(format!("ptrace unavailable: {e}")))?;
        }
        let engine = Arc::new(Engine {
            cfg,
            mount: hier.mount.clone(),
            parent,
            backend,
            reason,
            hooks,
            cache: DigestCache::default(),
            steps: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
            serial: AtomicU64::new(0),
            kernel: kernel_release(),
            _lock: lock,
            records,
            interrupted: Mutex::new(interrupted),
            ended_at_start: Mutex::new(HashMap::new()),
        });
        engine.heartbeat();
        Ok(engine)
    }

    /// `ebpf` or `ptrace`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Ebpf(_) => "ebpf",
            Backend::Ptrace => "ptrace",
        }
    }

    /// Hook choices.
    pub fn hooks(&self) -> &BTreeMap<String, String> {
        &self.hooks
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
                    attest_helper::BeforeError::Helper(_) => internal(e),
                    _ => EngineError::BadRequest(e.to_string()),
                })?;
                Attest::Helper(step)
            }
            None => in_process_before(&names, &spec)?,
        };

        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        // Unique per step: owner, name, daemon, serial.
        let cg_path = self.parent.join(format!(
            "u{}.{}.{}.{}",
            spec.owner_uid,
            spec.name,
            std::process::id(),
            n
        ));
        let cgroup = Cgroup::create(&cg_path).map_err(internal)?;
        let recorder = Arc::new(Mutex::new(Recorder::with_limits(
            Some(std::process::id()),
            self.cfg.trace_limits.clone(),
        )));
        // Nothing of the step exists outside the daemon until the move: undo
        // is unregistering and removing the (empty) cgroup.
        let undo = |cgroup: &Cgroup, origin: &Path| {
            if let Backend::Ebpf(b) = &self.backend {
                let _ = b.unregister(cgroup.id());
            }
            if let Err(e) = cgroup.remove(origin) {
                tracing::warn!("undoing the begin of step {:?}: {e}", spec.name);
            }
        };
        if let Backend::Ebpf(b) = &self.backend {
            if let Err(e) = b.register(&cgroup, recorder.clone()) {
                // register rolls its own part back.
                let _ = cgroup.remove(&self.mount);
                return Err(internal(e));
            }
        }
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
            undo(&cgroup, &self.mount);
            return Err(e);
        }
        let origin = crate::cgroup::cgroup_of(spec.pid)
            .map(|rel| self.mount.join(rel.strip_prefix("/").unwrap_or(&rel)))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| self.mount.clone());
        let mut follower = None;
        match &self.backend {
            Backend::Ebpf(_) => {}
            Backend::Ptrace => {
                let stop = Arc::new(AtomicBool::new(false));
                let rec = recorder.clone();
                let (pid, stop2) = (spec.pid, stop.clone());
                let h = std::thread::Builder::new()
                    .name(format!("cilock-ptrace-{}", spec.name))
                    .spawn(move || {
                        let cfg = ptrace::PtraceConfig {
                            daemon_pid: Some(std::process::id()),
                            ..Default::default()
                        };
                        let r = ptrace::follow(pid, &cfg, stop2, |ev| {
                            if let Ok(mut r) = rec.lock() {
                                r.push(ev);
                            }
                        });
                        if let Err(e) = r {
                            tracing::warn!("ptrace follower for pid {pid}: {e}");
                        }
                    })
                    .map_err(|e| {
                        undo(&cgroup, &origin);
                        internal(e)
                    })?;
                // Begin returns once the tracer holds the process: what it
                // does right after (an exec, its exit) is then in the trace.
                wait_traced(spec.pid, &h, Duration::from_secs(5));
                follower = Some((stop, h));
            }
        }
        let stop_follower = |follower: Option<(Arc<AtomicBool>, JoinHandle<()>)>| {
            if let Some((stop, h)) = follower {
                stop.store(true, Ordering::SeqCst);
                let _ = h.join();
            }
        };
        // Persisted before the move: a step this daemon cannot end (it is
        // killed) is ended by the next one, never silently untraced.
        let record = match self.write_record(&spec, &names, &cgroup, &origin) {
            Ok(r) => r,
            Err(e) => {
                stop_follower(follower);
                undo(&cgroup, &origin);
                return Err(internal(format!(
                    "cannot persist the record of step {:?}: {e}",
                    spec.name
                )));
            }
        };
        let unrecord = |r: &Option<PathBuf>| {
            if let Some(p) = r {
                let _ = std::fs::remove_file(p);
            }
        };
        if let Err(e) = cgroup.add_pid(spec.pid) {
            stop_follower(follower);
            undo(&cgroup, &origin);
            unrecord(&record);
            return Err(EngineError::BadRequest(format!(
                "cannot move pid {} into the step: {e}",
                spec.pid
            )));
        }
        if pin.exited() {
            // The pid written may already name another process: whatever
            // it is goes back out, and the step is not begun.
            stop_follower(follower);
            undo(&cgroup, &origin);
            unrecord(&record);
            return Err(EngineError::BadRequest(format!(
                "process {} exited while the step began",
                spec.pid
            )));
        }
        if let Ok(mut r) = recorder.lock() {
            r.add_root(spec.pid, crate::trace::procfs::running(spec.pid));
        }
        let step = Step {
            name: spec.name.clone(),
            owner_uid: spec.owner_uid,
            cgroup,
            recorder,
            started: Instant::now(),
            attest,
            cmd: spec.cmd,
            root: spec.pid,
            follower,
            empty_since: None,
            origin,
            record,
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
        if let Backend::Ebpf(b) = &self.backend {
            let _ = b.unregister(step.cgroup.id());
        }
        if let Some((stop, h)) = step.follower {
            stop.store(true, Ordering::SeqCst);
            let _ = h.join();
        }
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
            "run"
        } else {
            "step end"
        };
        self.finish(step, end, by)
    }

    fn finish(
        &self,
        mut step: Step,
        end: EndSpec,
        ended_by: &str,
    ) -> Result<StepOutcome, EngineError> {
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
            backend: self.backend_name().to_string(),
            reason: self.reason.clone(),
            hooks: self.hooks.clone(),
            kernel: self.kernel.clone(),
            reaped: !matches!(ended_by, "step end" | "run"),
            ended_by: ended_by.to_string(),
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
        match &self.backend {
            Backend::Ebpf(b) => {
                trace.events = b.unregister(step.cgroup.id()).map_err(internal)?;
                trace.limitations = b.limitations();
            }
            Backend::Ptrace => {
                if let Some((stop, h)) = step.follower.take() {
                    stop.store(true, Ordering::SeqCst);
                    let _ = h.join();
                }
                trace.limitations = ptrace::limitations();
            }
        }
        // Leave the cgroup (processes still alive go back to the parent).
        if let Err(e) = step.cgroup.remove(&self.return_to(&step.origin)) {
            tracing::warn!("step {}: {e}", step.name);
        }
        let recorder =
            std::mem::take(&mut *step.recorder.lock().unwrap_or_else(|e| e.into_inner()));
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
            alive,
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

    /// Kills what runs in `step` (`alive`: its processes now). From outside
    /// the step (a runner hook, the reaper) everything goes, by
    /// `cgroup.kill`. When `caller` (the process asking) is inside the
    /// step, it and its ancestors are spared and the rest is killed with
    /// [`Cgroup::kill_except`] (frozen, pidfd by pidfd, until only they are
    /// left).
    fn kill_step(
        &self,
        step: &Step,
        caller: Option<&PidFd>,
        ended_by: &str,
        alive: &[u32],
    ) -> KillAtEnd {
        let requested_by = if ended_by == "step end" {
            "step end --kill"
        } else {
            ended_by
        };
        let inside = caller.filter(|c| !c.exited() && step.cgroup.holds(&self.mount, c.pid()));
        let Some(caller) = inside else {
            let complete = match step.cgroup.kill_all(Duration::from_secs(10)) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("step {}: {e}", step.name);
                    false
                }
            };
            return KillAtEnd {
                requested_by: requested_by.to_string(),
                caller: None,
                method: "cgroup.kill".to_string(),
                killed: listed(alive),
                killed_not_listed: alive.len().saturating_sub(MAX_KILLED_LISTED) as u64,
                spared: Vec::new(),
                complete,
            };
        };
        // The caller and its ancestors that are in the step (bounded walk).
        let mut spare = Vec::new();
        if let Ok(me) = PidFd::open(caller.pid()) {
            let mut cur = Some(me);
            for _ in 0..MAX_ANCESTORS {
                let Some(p) = cur.take() else { break };
                if p.pid() <= 1 {
                    break;
                }
                cur = p.parent();
                if step.cgroup.holds(&self.mount, p.pid()) {
                    spare.push(p);
                }
            }
        }
        // The pidfd opened again above must still name the pinned caller.
        if caller.exited() {
            spare.clear();
        }
        let report = step
            .cgroup
            .kill_except(&self.mount, &spare, Duration::from_secs(10));
        if !report.complete {
            tracing::warn!(step = %step.name, rounds = report.rounds, "--kill: processes other than the caller's are still in the step");
        }
        let mut spared: Vec<i64> = spare
            .iter()
            .filter(|p| !p.exited())
            .map(|p| p.pid() as i64)
            .collect();
        spared.sort_unstable();
        KillAtEnd {
            requested_by: requested_by.to_string(),
            caller: Some(caller.pid() as i64),
            method: if report.frozen {
                "frozen, pidfd SIGKILL"
            } else {
                "pidfd SIGKILL"
            }
            .to_string(),
            killed: listed(&report.killed),
            killed_not_listed: report.killed.len().saturating_sub(MAX_KILLED_LISTED) as u64,
            spared,
            complete: report.complete,
        }
    }

    /// Ends the steps nobody ended: with `Reap::Expired`, steps older than
    /// the step timeout (their processes are killed) and steps whose cgroup
    /// has stayed empty for the idle timeout; with `Reap::All`, every step
    /// (its processes keep running, untraced). Returns each step's outcome.
    pub fn reap(&self, which: Reap) -> Vec<(String, Result<StepOutcome, EngineError>)> {
        let taken: Vec<(Step, &'static str, bool)> = {
            let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
            let mut chosen = Vec::new();
            for (key, s) in steps.iter_mut() {
                let why = match which {
                    Reap::All => Some(("daemon shutdown", false)),
                    Reap::Expired if s.started.elapsed() > self.cfg.step_timeout => {
                        Some(("timeout", true))
                    }
                    Reap::Expired => {
                        if s.cgroup.populated() {
                            s.empty_since = None;
                            None
                        } else {
                            let since = *s.empty_since.get_or_insert_with(Instant::now);
                            (since.elapsed() >= self.cfg.idle_timeout).then_some(("idle", false))
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
            tracing::warn!(step = %name, owner = s.owner_uid, reason = why, "ending a step nobody ended");
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
        let _ = std::fs::remove_dir(&self.parent);
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

/// What is persisted of an active step (`<state_dir>/steps/<parent>/<cgroup
/// name>.json`, 0600): enough to attest, after the daemon died, that the
/// step was begun and its trace interrupted, and to return its processes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StepRecord {
    name: String,
    owner_uid: u32,
    owner_gid: u32,
    /// The step cgroup (absolute path) and its id (inode).
    cgroup: String,
    cgroup_id: u64,
    /// RFC 3339.
    began: String,
    daemon_pid: u32,
    root_pid: u32,
    backend: String,
    /// The client's `cmd` (at most [`RECORD_MAX_CMD`] bytes of it).
    cmd: Vec<String>,
    #[serde(default)]
    cmd_truncated: bool,
    attestations: Vec<String>,
    workdir: String,
    /// Where the step's processes came from.
    origin: String,
}

/// Bytes of a step's claimed `cmd` kept in its record.
const RECORD_MAX_CMD: usize = 64 * 1024;
/// Largest record read back.
const RECORD_MAX_BYTES: u64 = 1024 * 1024;
/// Records read at start at most (more than the steps one daemon can have).
const RECORD_MAX_COUNT: usize = 2 * MAX_STEPS;
/// The heartbeat file in the records directory: `pid\nRFC 3339 time\n`,
/// rewritten every few seconds while the daemon runs.
const HEARTBEAT: &str = "daemon.alive";

/// A step a previous daemon left unended, found at start.
pub struct InterruptedStep {
    record: StepRecord,
    /// The record file (removed once the attestation is kept).
    record_path: PathBuf,
    /// Processes that were in the step's cgroup at start (returned to their
    /// origin cgroup).
    survivors: Vec<u32>,
    /// What became of the step's cgroup.
    cgroup_fate: String,
    /// The previous daemon's last heartbeat (pid, time), if any.
    last_seen: Option<(u32, String)>,
    /// When this daemon started.
    restarted: String,
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Reads at most [`RECORD_MAX_BYTES`] of a regular file (no symlink).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(RECORD_MAX_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > RECORD_MAX_BYTES {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(buf)
}

/// Children of `parent` not in `ours` are left alone, with a warning.
fn warn_foreign(parent: &Path, ours: &HashSet<PathBuf>) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) && !ours.contains(&e.path()) {
            tracing::warn!(cgroup = %e.path().display(), "leaving a cgroup under the steps' parent alone: no step record proves it is this daemon's");
        }
    }
}

/// At start, with the parent locked: every record in `dir` is a step a
/// previous daemon on this parent began and never ended. Its cgroup (when
/// it is still the one recorded: same path and id) is this daemon's to
/// clean: processes go back to their origin, the cgroup is removed. Other
/// cgroups under the parent are left alone. Returns the steps to attest.
fn recover(dir: &Path, parent: &Path, mount: &Path) -> Result<Vec<InterruptedStep>, EngineError> {
    make_private_dir(dir).map_err(|e| {
        internal(format!(
            "creating the step records directory {}: {e}",
            dir.display()
        ))
    })?;
    let restarted = cilock_evidence::timefmt::now();
    let last_seen = read_bounded(&dir.join(HEARTBEAT)).ok().and_then(|b| {
        let t = String::from_utf8_lossy(&b).into_owned();
        let mut l = t.lines();
        let pid = l.next()?.trim().parse().ok()?;
        let at = l.next()?.trim().to_string();
        Some((pid, at))
    });
    let mut ours = HashSet::new();
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| internal(format!("reading {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    if entries.len() > RECORD_MAX_COUNT {
        tracing::error!(dir = %dir.display(), records = entries.len(), "more step records than a daemon can have; reading the first {RECORD_MAX_COUNT}");
        entries.truncate(RECORD_MAX_COUNT);
    }
    for path in entries {
        let record: StepRecord = match read_bounded(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(record = %path.display(), "unreadable step record left in place: {e}");
                continue;
            }
        };
        let cg_path = PathBuf::from(&record.cgroup);
        let leaf = cg_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The leaf is `u<uid>.<name>.<pid>.<n>` (longer than a step name).
        let (survivors, cgroup_fate) = if cg_path.parent() != Some(parent)
            || !valid_leaf(&leaf)
            || !leaf.starts_with(&format!("u{}.{}.", record.owner_uid, record.name))
        {
            (
                Vec::new(),
                format!(
                    "recorded cgroup {} is not under this daemon's parent; left alone",
                    record.cgroup
                ),
            )
        } else {
            match Cgroup::open(&cg_path) {
                Ok(cg) if cg.id() == record.cgroup_id => {
                    ours.insert(cg_path.clone());
                    let pids = cg.pids_recursive();
                    let origin = PathBuf::from(&record.origin);
                    let to = if origin.starts_with(mount)
                        && origin.is_dir()
                        && !origin.starts_with(parent)
                    {
                        origin
                    } else {
                        mount.to_path_buf()
                    };
                    match cg.remove(&to) {
                        Ok(()) => {
                            tracing::warn!(step = %record.name, cgroup = %record.cgroup, processes = pids.len(), "removed the cgroup of a step a previous daemon left; its processes went back to {}", to.display());
                            (
                                pids,
                                format!("removed; its processes were returned to {}", to.display()),
                            )
                        }
                        Err(e) => {
                            tracing::error!(step = %record.name, cgroup = %record.cgroup, "cannot remove the cgroup of a step a previous daemon left: {e}");
                            (pids, format!("could not be removed: {e}"))
                        }
                    }
                }
                Ok(_) => (
                    Vec::new(),
                    "gone: a different cgroup has its path now (left alone)".to_string(),
                ),
                Err(_) => (Vec::new(), "gone".to_string()),
            }
        };
        out.push(InterruptedStep {
            record,
            record_path: path,
            survivors,
            cgroup_fate,
            last_seen: last_seen.clone(),
            restarted: restarted.clone(),
        });
    }
    warn_foreign(parent, &ours);
    Ok(out)
}

impl InterruptedStep {
    /// Step name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The uid that began the step.
    pub fn owner_uid(&self) -> u32 {
        self.record.owner_uid
    }

    /// The unsigned statement: a command-run whose trace says it was
    /// interrupted by the death of the daemon that began the step.
    pub fn statement(&self, kernel: &str) -> Result<Statement<Collection>, EngineError> {
        let r = &self.record;
        let seen = match &self.last_seen {
            Some((pid, at)) if *pid == r.daemon_pid => {
                format!(
                    "last seen alive at {at} (it writes a heartbeat every {} s)",
                    HEARTBEAT_EVERY.as_secs()
                )
            }
            _ => "its time of death is unknown".to_string(),
        };
        let ended_by = format!(
            "daemon restart: the trace was interrupted by the death of the daemon (pid {}) that began this step at {}; {seen}; events after that were not traced. \
             The daemon (pid {}) started at {} ended the step",
            r.daemon_pid,
            r.began,
            std::process::id(),
            self.restarted
        );
        let why = "the daemon that traced the step died: what it recorded was lost".to_string();
        let mut unobserved = BTreeMap::new();
        for k in ["cmd", "exitcode", "stdout", "stderr", "processes"] {
            unobserved.insert(k.to_string(), why.clone());
        }
        let trace = TraceInfo {
            backend: r.backend.clone(),
            kernel: kernel.to_string(),
            reaped: true,
            ended_by,
            unobserved,
            limitations: vec![
                format!("the step's cgroup {}: {}", r.cgroup, self.cgroup_fate),
                "no material or product attestation: the state the dead daemon took at begin was in its memory".to_string(),
            ],
            wait_descendants: (!self.survivors.is_empty()).then(|| WaitDescendants {
                timeout_seconds: 0.0,
                waited_seconds: 0.0,
                all_exited: false,
                survivors: self.survivors.iter().map(|&p| p as i64).collect(),
                survivors_fate: "left running, no longer traced".to_string(),
            }),
            ..Default::default()
        };
        let mut cmd = r.cmd.clone();
        if r.cmd_truncated {
            cmd.push("[cilock: truncated]".to_string());
        }
        let run = CommandRun {
            exitcode: EXITCODE_UNKNOWN,
            trace: Some(trace),
            claimed: Claimed {
                cmd,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut ctx = AttestationContext::new(PathBuf::from(&r.workdir), Vec::new());
        let json = serde_json::to_value(&run).map_err(internal)?;
        run_one(&mut ctx, &mut CommandRunAttestor(Some(json))).map_err(internal)?;
        let (collection, subjects) = into_collection(&r.name, &ctx);
        Ok(Statement::new(COLLECTION_TYPE, subjects, collection))
    }
}

/// How often the daemon rewrites its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

impl Engine {
    fn write_record(
        &self,
        spec: &StepSpec,
        names: &[String],
        cgroup: &Cgroup,
        origin: &Path,
    ) -> std::io::Result<Option<PathBuf>> {
        let Some(dir) = &self.records else {
            return Ok(None);
        };
        make_private_dir(dir)?;
        let mut cmd = Vec::new();
        let mut used = 0;
        let mut cmd_truncated = false;
        for a in &spec.cmd {
            used += a.len();
            if used > RECORD_MAX_CMD {
                cmd_truncated = true;
                break;
            }
            cmd.push(a.clone());
        }
        let record = StepRecord {
            name: spec.name.clone(),
            owner_uid: spec.owner_uid,
            owner_gid: spec.owner_gid,
            cgroup: cgroup.path().to_string_lossy().into_owned(),
            cgroup_id: cgroup.id(),
            began: cilock_evidence::timefmt::now(),
            daemon_pid: std::process::id(),
            root_pid: spec.pid,
            backend: self.backend_name().to_string(),
            cmd,
            cmd_truncated,
            attestations: names.to_vec(),
            workdir: spec.workdir.to_string_lossy().into_owned(),
            origin: origin.to_string_lossy().into_owned(),
        };
        let file = cgroup
            .path()
            .file_name()
            .map(|n| format!("{}.json", n.to_string_lossy()))
            .ok_or_else(|| std::io::Error::other("cgroup without a name"))?;
        let path = dir.join(file);
        let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        write_private(&path, &bytes)?;
        Ok(Some(path))
    }

    /// Rewrites the heartbeat (pid and time) the next daemon reads to say
    /// when this one was last alive. No-op without step records.
    pub fn heartbeat(&self) {
        if let Some(dir) = &self.records {
            let body = format!(
                "{}\n{}\n",
                std::process::id(),
                cilock_evidence::timefmt::now()
            );
            if let Err(e) = write_private(&dir.join(HEARTBEAT), body.as_bytes()) {
                tracing::warn!("cannot write the heartbeat in {}: {e}", dir.display());
            }
        }
    }

    /// The steps a previous daemon left unended (found at start), once.
    pub fn take_interrupted(&self) -> Vec<InterruptedStep> {
        std::mem::take(&mut *self.interrupted.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The error for a step `name` (of `owner`; any owner when `None`) that
    /// is not active: says so when this daemon ended it at start.
    fn not_found(&self, name: &str, owner: Option<u32>) -> EngineError {
        let ended = self
            .ended_at_start
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let msg = match owner {
            Some(o) => ended.get(&(o, name.to_string())),
            None => ended.iter().find(|((_, n), _)| n == name).map(|(_, m)| m),
        };
        match msg {
            Some(m) => EngineError::Interrupted(m.clone()),
            None => EngineError::NotFound(name.to_string()),
        }
    }

    /// Steps with a record (active, or being ended): `name (owner uid N)`.
    pub fn recorded_steps(&self) -> Vec<String> {
        let Some(dir) = &self.records else {
            return Vec::new();
        };
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .take(RECORD_MAX_COUNT)
            .filter_map(|e| {
                let r: StepRecord = serde_json::from_slice(&read_bounded(&e.path()).ok()?).ok()?;
                Some(format!("{} (owner uid {})", r.name, r.owner_uid))
            })
            .collect();
        v.sort();
        v
    }

    /// Kernel release.
    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// Records that the interrupted step `s` was attested (`msg` says where
    /// its attestation is, for a later `step end`) and drops its record.
    pub fn interrupted_done(&self, s: &InterruptedStep, msg: String) {
        let _ = std::fs::remove_file(&s.record_path);
        let mut m = self
            .ended_at_start
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if m.len() < RECORD_MAX_COUNT {
            m.insert((s.record.owner_uid, s.record.name.clone()), msg);
        }
    }
}

/// A traced step whose trace is complete: hashing, attestors and the
/// statement are what is left.
pub struct PendingStep {
    name: String,
    attest: Attest,
    cmd: Vec<String>,
    /// The step's root process, when known.
    root: Option<u32>,
    recorder: Recorder,
    /// Whose read permission a hashed file needs (the step's user).
    reader: Reader,
    trace: TraceInfo,
    alive: Vec<u32>,
}

impl PendingStep {
    /// Hashes what was opened, runs the remaining attestors and builds the
    /// statement.
    pub fn finish(mut self, cache: &DigestCache, end: EndSpec) -> Result<StepOutcome, EngineError> {
        let algs = match &self.attest {
            Attest::InProcess { ctx, .. } => ctx.hashes.clone(),
            Attest::Helper(h) => h.hashes().to_vec(),
        };
        let seen = self
            .root
            .map(|pid| self.recorder.root_seen(pid))
            .unwrap_or_default();
        let writes = self.recorder.written();
        let st = self
            .recorder
            .finish(&cache.for_reader(self.reader.clone()), &algs, &self.alive);
        self.trace.truncated = st.truncated;
        let written = st.written;
        if self.trace.backend == "ptrace" {
            self.trace.events.insert(
                "process".into(),
                EventCount {
                    captured: st.processes.len() as u64,
                    lost: 0,
                },
            );
        }
        let lost_events = self.trace.total_lost();
        let mut run = CommandRun {
            processes: st.processes,
            ..Default::default()
        };
        observe(
            &mut run,
            &mut self.trace,
            end,
            self.cmd.clone(),
            self.root,
            seen,
            &self.alive,
        );
        let ended_by = self.trace.ended_by.clone();
        run.trace = Some(self.trace);
        let (ctx, failure) = match self.attest {
            Attest::Helper(h) => h.after(run, writes),
            Attest::InProcess {
                mut lifecycle,
                mut ctx,
            } => {
                ctx.step_writes = Some(writes);
                let json = serde_json::to_value(&run).map_err(internal)?;
                run_one(&mut ctx, &mut CommandRunAttestor(Some(json))).map_err(internal)?;
                let failure = match lifecycle.after(&mut ctx) {
                    Ok(()) => None,
                    Err(AttestError::Failed(msg)) => Some(msg),
                    Err(e) => return Err(internal(format!("attestors after the step: {e}"))),
                };
                record_skipped(&mut ctx, lifecycle.skipped());
                (ctx, failure)
            }
        };
        let mut ctx = ctx;
        crate::trace::products::flag(&mut ctx, &written);
        let (collection, subjects) = into_collection(&self.name, &ctx);
        Ok(StepOutcome {
            statement: Statement::new(COLLECTION_TYPE, subjects, collection),
            lost_events,
            failure,
            owner_uid: 0,
            ended_by,
            record: None,
        })
    }
}

/// Fills command-run's `cmd`, `exitcode`, `stdout` and `stderr` with what
/// was observed, and `claimed` with what a client reported.
///
/// - Embedded engine (`end.observed`): this process spawned the command,
///   captured its output and waited for it: all four are observed.
/// - Daemon: `exitcode` is the root process's exit as the trace saw it
///   (128+signal for a signal), `cmd` the argv the kernel recorded at the
///   root's first exec during the step; when the trace did not see them,
///   `exitcode` is [`EXITCODE_UNKNOWN`], `cmd` empty, and
///   `trace.unobserved` says why. The daemon captures no output.
///   Everything the client sent (begin's `cmd`, end's `exitcode`,
///   `stdout`, `stderr`) goes to `claimed`, never to the fields above.
///
/// `trace.observed` lists the fields that hold observed values.
fn observe(
    run: &mut CommandRun,
    trace: &mut TraceInfo,
    end: EndSpec,
    cmd: Vec<String>,
    root: Option<u32>,
    seen: crate::trace::recorder::RootSeen,
    alive: &[u32],
) {
    if end.observed {
        run.cmd = cmd;
        trace.observed.push("cmd".into());
        match end.exitcode {
            Some(c) => {
                run.exitcode = c;
                trace.observed.push("exitcode".into());
            }
            None => {
                run.exitcode = EXITCODE_UNKNOWN;
                trace
                    .unobserved
                    .insert("exitcode".into(), "the command was not waited for".into());
            }
        }
        run.stdout = end.stdout;
        run.stderr = end.stderr;
        trace.observed.push("stdout".into());
        trace.observed.push("stderr".into());
        trace.truncated.extend(end.output_truncated);
        trace.interrupted = end.interrupted;
        return;
    }
    run.claimed = Claimed {
        cmd,
        stdout: end.stdout,
        stderr: end.stderr,
        exitcode: end.exitcode,
        interrupted: end.interrupted,
        truncated: end.output_truncated,
    };
    let who = match root {
        Some(pid) => format!("the step's root process (pid {pid})"),
        None => "the step's root process".to_string(),
    };
    match seen.argv {
        Some(argv) => {
            run.cmd = argv;
            trace.observed.push("cmd".into());
        }
        None => {
            trace.unobserved.insert(
                "cmd".into(),
                format!("{who} did not exec during the step: its command line was set before the step began"),
            );
        }
    }
    match seen.exit {
        Some(c) => {
            run.exitcode = c;
            trace.observed.push("exitcode".into());
        }
        None => {
            run.exitcode = EXITCODE_UNKNOWN;
            let why = if root.is_some_and(|p| alive.contains(&p)) {
                format!("{who} was still running when the step ended")
            } else {
                format!("the trace did not see {who} exit")
            };
            trace.unobserved.insert("exitcode".into(), why);
        }
    }
    let out = "the daemon does not capture output: what the client sent is in claimed";
    trace.unobserved.insert("stdout".into(), out.into());
    trace.unobserved.insert("stderr".into(), out.into());
}

/// Waits (at most `limit`) until `pid` is ptrace-attached (`TracerPid` of
/// its status, the follower thread's tid), or its follower thread `h`
/// ended (attach failed, the process is gone).
fn wait_traced(pid: u32, h: &JoinHandle<()>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !h.is_finished() {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        if s.lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|v| v.trim() != "0")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
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

/// Runs `cmd` under the ptrace backend without cgroups or a daemon (works
/// unprivileged). `on_spawn` receives the child (to take its pipes). Returns
/// the command's exit code and the step to finish once its output is in.
/// After the root exited, its descendants are waited for at most
/// `wait_descendants`; those left are killed and listed `aliveAtEnd`.
pub fn run_ptrace(
    spec: StepSpec,
    cmd: std::process::Command,
    reason: String,
    wait_descendants: Duration,
    on_spawn: impl FnOnce(&mut std::process::Child),
) -> Result<(i32, PendingStep), EngineError> {
    if !valid_step_name(&spec.name) {
        return Err(EngineError::BadRequest(format!(
            "invalid step name {:?}",
            spec.name
        )));
    }
    let attest = in_process_before(&spec.attestations, &spec)?;
    ptrace::probe().map_err(|e| internal(format!("ptrace unavailable: {e}")))?;
    let mut recorder = Recorder::with_limits(None, TraceLimits::default());
    let cfg = ptrace::PtraceConfig {
        wait_descendants: Some(wait_descendants),
        ..Default::default()
    };
    let mut root = None;
    let outcome = ptrace::run_outcome(
        cmd,
        &cfg,
        |child| {
            root = Some(child.id());
            on_spawn(child)
        },
        |ev| recorder.push(ev),
    )
    .map_err(|e| internal(format!("ptrace: {e}")))?;
    if let Some(pid) = root {
        recorder.mark_root(pid);
    }
    let alive = outcome.survivors.clone();
    let trace = TraceInfo {
        backend: "ptrace".into(),
        reason,
        hooks: ptrace::hooks(),
        limitations: ptrace::limitations(),
        kernel: kernel_release(),
        ended_by: "run".to_string(),
        wait_descendants: Some(WaitDescendants {
            timeout_seconds: wait_descendants.as_secs_f64(),
            waited_seconds: outcome.waited.as_secs_f64(),
            all_exited: alive.is_empty(),
            survivors: alive.iter().map(|&p| p as i64).collect(),
            survivors_fate: if alive.is_empty() {
                String::new()
            } else {
                "killed (a process under the ptrace backend's seccomp filter cannot run untraced)"
                    .to_string()
            },
        }),
        ..Default::default()
    };
    Ok((
        outcome.code,
        PendingStep {
            name: spec.name,
            attest,
            cmd: spec.cmd,
            root,
            recorder,
            reader: Reader::current(),
            trace,
            alive,
        },
    ))
}

/// Runs the "before" attestors in this process (embedded engines).
fn in_process_before(names: &[String], spec: &StepSpec) -> Result<Attest, EngineError> {
    let mut lifecycle = Lifecycle::new(names, spec.options.clone())
        .map_err(|e| EngineError::BadRequest(e.to_string()))?;
    let mut ctx = AttestationContext::new(spec.workdir.clone(), spec.env.clone());
    ctx.workdir_fd = spec.workdir_fd.clone();
    lifecycle
        .before(&mut ctx)
        .map_err(|e| EngineError::BadRequest(format!("attestors before the step: {e}")))?;
    Ok(Attest::InProcess { lifecycle, ctx })
}

/// Lists `skipped` in the command-run's `trace.skippedAttestors`.
fn record_skipped(ctx: &mut AttestationContext, skipped: &[SkippedAttestor]) {
    if skipped.is_empty() {
        return;
    }
    let Some(c) = ctx
        .completed
        .iter_mut()
        .find(|c| c.name == command_run::NAME)
    else {
        return;
    };
    if let (Some(t), Ok(v)) = (c.json.get_mut("trace"), serde_json::to_value(skipped)) {
        if let Some(t) = t.as_object_mut() {
            t.insert("skippedAttestors".into(), v);
        }
    }
}

/// Wraps the engine's command-run JSON as an attestor for the lifecycle.
pub(crate) struct CommandRunAttestor(pub(crate) Option<serde_json::Value>);

impl Attestor for CommandRunAttestor {
    fn name(&self) -> &'static str {
        command_run::NAME
    }
    fn stage(&self) -> Stage {
        Stage::Execute
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        self.0
            .take()
            .ok_or_else(|| AttestError::Invalid("command-run attested twice".into()))
    }
}

/// Signs a statement into a DSSE envelope.
pub fn sign_statement(
    statement: &Statement<Collection>,
    signer: &Signer,
) -> Result<Envelope, EngineError> {
    let payload = serde_json::to_vec(statement).map_err(internal)?;
    dsse::sign(PAYLOAD_TYPE, payload, signer).map_err(internal)
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

/// The daemon's service: the engine, the signing key and the store of
/// envelopes not yet in their client's hands ([`crate::kept`]).
pub struct DaemonService {
    engine: Arc<Engine>,
    signer: Signer,
    store: KeptStore,
}

/// Largest signed envelope returned inline in a [`Reply::Ended`] (older
/// clients; room left for the rest of the reply). Larger ones stay kept and
/// the reply says how to fetch them; `stream` clients get any size.
const MAX_REPLY_ENVELOPE: usize = api::MAX_MESSAGE - 64 * 1024;

/// How often the reaper applies the kept store's retention time.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// `cilock step fetch` arguments naming a kept envelope, for messages.
fn fetch_hint(k: &KeptInfo, peer: Peer) -> String {
    let owner = if peer.uid == 0 && k.owner_uid != 0 {
        format!(" --owner {}", k.owner_uid)
    } else {
        String::new()
    };
    format!("cilock step fetch --id {}{owner} -o FILE", k.id)
}

impl DaemonService {
    /// Starts the engine, holds the key, and starts the reaper (steps nobody
    /// ends are ended after the step or idle timeout; their signed
    /// attestations are kept in `<state_dir>/kept/<uid>/`).
    pub fn new(cfg: EngineConfig, signer: Signer) -> anyhow::Result<Arc<DaemonService>> {
        let store = KeptStore::new(&cfg.state_dir);
        let legacy = cfg.state_dir.join("reaped");
        let old = std::fs::read_dir(&legacy)
            .into_iter()
            .flatten()
            .flatten()
            .count();
        if old > 0 {
            tracing::warn!(
                dir = %legacy.display(),
                "{old} attestations kept by an earlier cilock-daemon are in this directory (root can copy them; `cilock step fetch` serves only {})",
                store.root().display()
            );
        }
        let engine = Engine::start(cfg)?;
        let svc = Arc::new(DaemonService {
            engine,
            signer,
            store,
        });
        svc.end_interrupted();
        svc.store.prune();
        let weak = Arc::downgrade(&svc);
        std::thread::Builder::new()
            .name("cilock-reaper".into())
            .spawn(move || {
                let mut pruned = Instant::now();
                loop {
                    std::thread::sleep(HEARTBEAT_EVERY);
                    match weak.upgrade() {
                        Some(s) => {
                            s.engine.heartbeat();
                            s.reap(Reap::Expired);
                            if pruned.elapsed() >= PRUNE_EVERY {
                                s.store.prune();
                                pruned = Instant::now();
                            }
                        }
                        None => return,
                    }
                }
            })?;
        Ok(svc)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Attests the steps a previous daemon left unended (their trace was
    /// interrupted by its death) and keeps the envelopes; a step whose
    /// envelope cannot be kept keeps its record (tried again next start).
    fn end_interrupted(&self) {
        for s in self.engine.take_interrupted() {
            let name = s.name().to_string();
            let env = s
                .statement(self.engine.kernel())
                .and_then(|st| sign_statement(&st, &self.signer));
            let owner = s.owner_uid();
            match env.map(|env| self.keep_bytes(owner, &name, "daemon restart", &env.to_json())) {
                Ok(Ok(p)) => {
                    tracing::warn!(step = %name, file = %p.display(), "a step the previous daemon left unended was ended; its attestation says the trace was interrupted and is kept");
                    self.engine.interrupted_done(
                        &s,
                        format!(
                            "step {name:?} was ended when the daemon restarted: the daemon that began it died, so its trace was interrupted; the attestation that says so is kept in {}",
                            p.display()
                        ),
                    );
                }
                Ok(Err(e)) => {
                    tracing::error!(step = %name, "cannot keep the attestation of an interrupted step (its record stays): {e}")
                }
                Err(e) => {
                    tracing::error!(step = %name, "cannot attest an interrupted step (its record stays): {e}")
                }
            }
        }
    }

    /// The store of kept envelopes.
    pub fn store(&self) -> &KeptStore {
        &self.store
    }

    /// Ends steps nobody ended and keeps their signed attestations.
    pub fn reap(&self, which: Reap) {
        for (name, outcome) in self.engine.reap(which) {
            match outcome.and_then(|o| {
                sign_statement(&o.statement, &self.signer).map(|env| (o, env.to_json()))
            }) {
                Ok((o, bytes)) => match self.keep_outcome(&name, &o, &bytes) {
                    Ok((k, p)) => {
                        tracing::warn!(step = %name, uid = o.owner_uid, id = %k.id, file = %p.display(), "attestation of an unended step kept")
                    }
                    Err(e) => {
                        tracing::error!(step = %name, "cannot keep the attestation of an unended step: {e}")
                    }
                },
                Err(e) => tracing::error!(step = %name, "cannot attest an unended step: {e}"),
            }
        }
    }

    fn keep_outcome(
        &self,
        name: &str,
        o: &StepOutcome,
        bytes: &[u8],
    ) -> std::io::Result<(KeptInfo, PathBuf)> {
        let kept = self.store.put(
            &ToKeep {
                owner_uid: o.owner_uid,
                step: name,
                ended_by: &o.ended_by,
                lost_events: o.lost_events,
                failure: o.failure.as_deref(),
            },
            bytes,
        )?;
        // Kept: the step needs no record any more (until now a daemon that
        // died would have left it to the next one to end).
        if let Some(p) = &o.record {
            let _ = std::fs::remove_file(p);
        }
        Ok(kept)
    }

    /// Keeps a signed envelope of `owner_uid`'s step `name` that `ended_by`
    /// ended (`<state_dir>/kept/<uid>/`, 0600, never overwriting) until its
    /// owner fetches it; returns its path. (Recovered steps use this.)
    pub fn keep_bytes(
        &self,
        owner_uid: u32,
        name: &str,
        ended_by: &str,
        bytes: &[u8],
    ) -> std::io::Result<PathBuf> {
        self.store
            .put(
                &ToKeep {
                    owner_uid,
                    step: name,
                    ended_by,
                    lost_events: 0,
                    failure: None,
                },
                bytes,
            )
            .map(|(_, p)| p)
    }

    /// The uid whose kept envelopes `peer` means (`None`: root, anyone's).
    fn kept_scope(peer: Peer, owner: Option<u32>) -> Result<Option<u32>, ApiError> {
        match (peer.uid, owner) {
            (0, o) => Ok(o),
            (c, Some(o)) if o != c => Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("uid {c} may only fetch its own attestations, not those of uid {o}"),
            )),
            (c, _) => Ok(Some(c)),
        }
    }

    /// Kept envelopes of step `step` that `peer` may fetch, oldest first;
    /// for root without an owner, its own when it has some, else everyone's.
    fn kept_of_step(&self, peer: Peer, owner: Option<u32>, step: &str) -> Vec<KeptInfo> {
        let Ok(scope) = Self::kept_scope(peer, owner) else {
            return Vec::new();
        };
        let mut all: Vec<KeptInfo> = self
            .store
            .list(scope)
            .into_iter()
            .filter(|k| k.step == step)
            .collect();
        if scope.is_none() && all.iter().any(|k| k.owner_uid == 0) {
            all.retain(|k| k.owner_uid == 0);
        }
        all
    }

    /// Ends a step: the engine's end, with a "not active" error that says
    /// when an envelope of that step is kept.
    fn end_outcome(&self, peer: Peer, req: &EndStep) -> Result<StepOutcome, ApiError> {
        let r = self.engine.end_as(
            &req.step,
            peer.uid,
            req.owner_uid,
            EndSpec {
                kill: req.kill,
                exitcode: req.exitcode,
                stdout: req.stdout.clone().unwrap_or_default(),
                stderr: req.stderr.clone().unwrap_or_default(),
                // A client's word: recorded under `claimed`.
                observed: false,
                interrupted: req.interrupted.clone().map(|mut i| {
                    // A claim, but bounded: a signal's name is short.
                    if i.signal.len() > 16 || !i.signal.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        i.signal = format!("signal {}", i.number);
                    }
                    i
                }),
                output_truncated: req
                    .truncated
                    .iter()
                    .filter(|(k, _)| *k == "stdout" || *k == "stderr")
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                wait_descendants: req.run.then(|| {
                    req.wait_descendants_ms
                        .map(Duration::from_millis)
                        .unwrap_or(self.engine.cfg.run_wait_descendants)
                        .min(self.engine.cfg.step_timeout)
                }),
                // Pinned now: the pid cannot name another process later.
                caller: if req.kill && peer.pid > 1 {
                    PidFd::open(peer.pid).ok().map(Arc::new)
                } else {
                    None
                },
            },
        );
        match r {
            Err(EngineError::NotFound(_)) => {
                let kept = self.kept_of_step(peer, req.owner_uid, &req.step);
                Err(match kept.last() {
                    None => EngineError::NotFound(req.step.clone()).into(),
                    Some(k) => {
                        let how = if matches!(k.ended_by.as_str(), "step end" | "run") {
                            format!(
                                "it was ended by `{}` at {} and its attestation was never acknowledged as written",
                                k.ended_by,
                                crate::kept::fmt_utc(k.kept_at)
                            )
                        } else {
                            format!(
                                "the daemon ended it itself ({}) at {}",
                                if k.ended_by.is_empty() {
                                    "reason not recorded"
                                } else {
                                    &k.ended_by
                                },
                                crate::kept::fmt_utc(k.kept_at)
                            )
                        };
                        ApiError::new(
                            ErrorKind::NotFound,
                            format!(
                                "no active step named {:?}: {how}; its signed attestation is kept by the daemon: {}{}",
                                req.step,
                                fetch_hint(k, peer),
                                if kept.len() > 1 {
                                    format!(" ({} kept for this step: cilock step fetch --list --step {})", kept.len(), req.step)
                                } else {
                                    String::new()
                                }
                            ),
                        )
                    }
                })
            }
            r => r.map_err(ApiError::from),
        }
    }

    /// Ends, signs and keeps: the envelope is on disk before any reply.
    /// `None` when keeping failed (logged; the reply is then the only copy).
    fn end_and_keep(
        &self,
        peer: Peer,
        req: &EndStep,
    ) -> Result<(StepOutcome, Vec<u8>, Option<KeptInfo>), ApiError> {
        let out = self.end_outcome(peer, req)?;
        let bytes = sign_statement(&out.statement, &self.signer)?.to_json();
        let kept = match self.keep_outcome(&req.step, &out, &bytes) {
            Ok((k, _)) => Some(k),
            Err(e) => {
                tracing::error!(step = %req.step, uid = out.owner_uid, "cannot keep the signed attestation until its client has it (the reply is its only copy): {e}");
                None
            }
        };
        Ok((out, bytes, kept))
    }

    fn header(
        out: &StepOutcome,
        step: &str,
        len: usize,
        kept: Option<&KeptInfo>,
    ) -> EnvelopeHeader {
        EnvelopeHeader {
            step: step.to_string(),
            owner_uid: out.owner_uid,
            id: kept.map(|k| k.id.clone()),
            bytes: len as u64,
            ended_by: out.ended_by.clone(),
            kept_at: kept.map_or(0, |k| k.kept_at),
            lost_events: out.lost_events,
            failure: out.failure.clone(),
        }
    }
}

impl Drop for DaemonService {
    fn drop(&mut self) {
        self.reap(Reap::All);
        self.engine.remove_parent();
    }
}

impl api::StepService for DaemonService {
    fn status(&self, peer: Peer) -> StatusReply {
        let active = self.engine.active_steps(peer.uid);
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: self.engine.backend_name().to_string(),
            hooks: self.engine.hooks().clone(),
            steps: active.iter().map(|a| a.step.clone()).collect(),
            active,
            keyid: self.signer.key_id().to_string(),
        }
    }

    fn begin(&self, peer: Peer, req: BeginStep, cx: &RequestCtx) -> Result<Reply, ApiError> {
        // Pin the target before checking whose it is: its pid cannot then
        // name another process unnoticed (the engine checks again).
        let pin = PidFd::open(req.pid).map_err(|e| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("no process {}: {e}", req.pid),
            )
        })?;
        // The target must be the peer's own process (or the peer is root).
        let owner = uid_of(req.pid).ok_or_else(|| {
            ApiError::new(ErrorKind::BadRequest, format!("no process {}", req.pid))
        })?;
        if peer.uid != 0 && owner != peer.uid {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "pid {} belongs to uid {owner}, not to uid {}",
                    req.pid, peer.uid
                ),
            ));
        }
        let workdir = match &req.workdir {
            Some(w) => PathBuf::from(w),
            None => std::fs::read_link(format!("/proc/{}/cwd", req.pid)).map_err(|e| {
                ApiError::new(ErrorKind::BadRequest, format!("cwd of {}: {e}", req.pid))
            })?,
        };
        let workdir_fd = open_workdir(&workdir, peer.uid)?;
        let (env, truncated) = attest_helper::environ_bounded(req.pid);
        let mut notes = Vec::new();
        if truncated {
            notes.push(format!(
                "the environment of pid {} is larger than {} bytes: only the variables in the first {} bytes were recorded",
                req.pid,
                attest_helper::MAX_ENVIRON,
                attest_helper::MAX_ENVIRON
            ));
        }
        let spec = StepSpec {
            name: req.step,
            pid: req.pid,
            owner_uid: peer.uid,
            attestations: req.attestations,
            options: req.options.unwrap_or_default(),
            workdir,
            cmd: req.cmd,
            env,
            owner_gid: peer.gid,
            workdir_fd: Some(Arc::new(workdir_fd)),
            notes,
        };
        let cg = self
            .engine
            .begin_with(spec, Some(pin), &|| cx.client_gone())?;
        Ok(Reply::Begun {
            cgroup: cg.display().to_string(),
        })
    }

    fn keep_undelivered(
        &self,
        peer: Peer,
        step: &str,
        reply: &Reply,
    ) -> Result<Option<PathBuf>, String> {
        match reply {
            // Kept before it was sent.
            Reply::Ended {
                kept: Some(id),
                envelope,
                ..
            } => {
                let owner = self
                    .store
                    .list(if peer.uid == 0 { None } else { Some(peer.uid) })
                    .into_iter()
                    .find(|k| &k.id == id)
                    .map_or(peer.uid, |k| k.owner_uid);
                let p = self.store.path(owner, id);
                if p.exists() {
                    return Ok(Some(p));
                }
                let bytes = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
                self.keep_bytes(owner, step, "step end", &bytes)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            Reply::Ended { envelope, .. } => {
                if !valid_step_name(step) {
                    return Err(format!("invalid step name {step:?}"));
                }
                let bytes = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
                self.keep_bytes(peer.uid, step, "step end", &bytes)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            _ => Ok(None),
        }
    }

    fn end(&self, peer: Peer, req: EndStep, cx: &RequestCtx) -> Result<Reply, ApiError> {
        let (out, bytes, kept) = self.end_and_keep(peer, &req)?;
        // Evidence is never dropped: it stays kept when it cannot be returned.
        let why = if cx.client_gone() {
            Some("the client hung up".to_string())
        } else if bytes.len() > MAX_REPLY_ENVELOPE {
            Some(format!(
                "the signed attestation ({} bytes) exceeds the reply limit ({MAX_REPLY_ENVELOPE} bytes) of this client (a newer cilock receives any size)",
                bytes.len()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(match &kept {
                Some(k) => {
                    tracing::warn!(step = %req.step, uid = out.owner_uid, id = %k.id, "{why}: attestation kept");
                    ApiError::new(
                        ErrorKind::Internal,
                        format!(
                            "{why}; the step has ended and its attestation is kept: {}",
                            fetch_hint(k, peer)
                        ),
                    )
                }
                None => {
                    tracing::error!(step = %req.step, "{why}, and keeping the attestation failed");
                    ApiError::new(
                        ErrorKind::Internal,
                        format!("{why}, and keeping the attestation failed (see the daemon's log)"),
                    )
                }
            });
        }
        let envelope = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        Ok(Reply::Ended {
            envelope,
            lost_events: out.lost_events,
            failure: out.failure,
            kept: kept.map(|k| k.id),
        })
    }

    fn end_stream(&self, peer: Peer, req: EndStep, cx: &RequestCtx) -> Result<Outgoing, ApiError> {
        let (out, bytes, kept) = self.end_and_keep(peer, &req)?;
        if cx.client_gone() {
            if let Some(k) = &kept {
                tracing::warn!(step = %req.step, uid = out.owner_uid, id = %k.id, "the client hung up: attestation kept");
            }
        }
        let header = Self::header(&out, &req.step, bytes.len(), kept.as_ref());
        // Sent from the kept file: what the client gets is what is kept.
        let payload = kept
            .as_ref()
            .and_then(|k| self.store.open(out.owner_uid, &k.id).ok())
            .map_or(Payload::Bytes(bytes), Payload::File);
        Ok(Outgoing {
            reply: Reply::Envelope(header),
            payload: Some(payload),
        })
    }

    fn list_kept(&self, peer: Peer, req: ListKept) -> Result<Reply, ApiError> {
        let scope = Self::kept_scope(peer, req.owner_uid)?;
        let entries = self
            .store
            .list(scope)
            .into_iter()
            .filter(|k| req.step.as_ref().is_none_or(|s| &k.step == s))
            .collect();
        Ok(Reply::Kept { entries })
    }

    fn fetch_kept(&self, peer: Peer, req: FetchKept) -> Result<Outgoing, ApiError> {
        let scope = Self::kept_scope(peer, req.owner_uid)?;
        let k = match (&req.id, &req.step) {
            (Some(id), _) => {
                let found: Vec<KeptInfo> = match scope {
                    Some(u) => self.store.find(u, id).into_iter().collect(),
                    None => self
                        .store
                        .list(None)
                        .into_iter()
                        .filter(|k| &k.id == id)
                        .collect(),
                };
                match &found[..] {
                    [k] => k.clone(),
                    [] => {
                        return Err(ApiError::new(
                            ErrorKind::NotFound,
                            format!("no kept attestation with id {id:?} (cilock step fetch --list)"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::new(
                            ErrorKind::BadRequest,
                            format!("several users have a kept attestation with id {id:?}: name the owner (--owner UID)"),
                        ))
                    }
                }
            }
            (None, Some(step)) => {
                let all = self.kept_of_step(peer, req.owner_uid, step);
                let mut owners: Vec<u32> = all.iter().map(|k| k.owner_uid).collect();
                owners.sort_unstable();
                owners.dedup();
                if owners.len() > 1 {
                    return Err(ApiError::new(
                        ErrorKind::BadRequest,
                        format!(
                            "several users have kept attestations of step {step:?} (uids {}): name the owner (--owner UID)",
                            owners.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                match all.into_iter().next_back() {
                    Some(k) => k,
                    None => {
                        let active = self
                            .engine
                            .active_steps(peer.uid)
                            .iter()
                            .any(|a| &a.step == step);
                        return Err(ApiError::new(
                            ErrorKind::NotFound,
                            if active {
                                format!("step {step:?} is still active: end it with `cilock step end --step {step} -o FILE`")
                            } else {
                                format!("no kept attestation of step {step:?}")
                            },
                        ));
                    }
                }
            }
            (None, None) => {
                return Err(ApiError::new(ErrorKind::BadRequest, "name a step or an id"))
            }
        };
        let file = self.store.open(k.owner_uid, &k.id).map_err(|e| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("kept attestation {}: {e}", k.id),
            )
        })?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(k.bytes);
        info_fetch(peer, &k);
        Ok(Outgoing {
            reply: Reply::Envelope(EnvelopeHeader {
                step: k.step.clone(),
                owner_uid: k.owner_uid,
                id: Some(k.id.clone()),
                bytes,
                ended_by: k.ended_by.clone(),
                kept_at: k.kept_at,
                lost_events: k.lost_events,
                failure: k.failure.clone(),
            }),
            payload: Some(Payload::File(file)),
        })
    }

    fn ack_kept(&self, peer: Peer, req: AckKept) -> Result<Reply, ApiError> {
        let owner = match Self::kept_scope(peer, req.owner_uid)? {
            Some(u) => u,
            None => peer.uid,
        };
        match self.store.remove(owner, &req.id) {
            Ok(true) => {
                tracing::info!(uid = owner, id = %req.id, "the client has the attestation: kept copy deleted");
                Ok(Reply::Acked { id: req.id })
            }
            Ok(false) => Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no kept attestation with id {:?}", req.id),
            )),
            Err(e) => Err(ApiError::new(
                ErrorKind::Internal,
                format!("cannot delete the kept attestation {}: {e}", req.id),
            )),
        }
    }
}

fn info_fetch(peer: Peer, k: &KeptInfo) {
    tracing::info!(uid = peer.uid, owner = k.owner_uid, step = %k.step, id = %k.id, "sending a kept attestation");
}

/// Opens the working directory once, as the daemon (`O_PATH|O_DIRECTORY`):
/// it must be absolute, a directory, and (unless the peer is root) belong
/// to the peer. The attestors read the workdir only through this
/// descriptor (the helper gets it as fd 3), so swapping the path later
/// changes nothing.
fn open_workdir(dir: &Path, uid: u32) -> Result<OwnedFd, ApiError> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    if !dir.is_absolute() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("workdir {} is not absolute", dir.display()),
        ));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| {
            let what = if e.raw_os_error() == Some(libc::ENOTDIR) {
                "is not a directory".to_string()
            } else {
                e.to_string()
            };
            ApiError::new(
                ErrorKind::BadRequest,
                format!("workdir {}: {what}", dir.display()),
            )
        })?;
    let md = f.metadata().map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("workdir {}: {e}", dir.display()),
        )
    })?;
    if !md.is_dir() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("workdir {} is not a directory", dir.display()),
        ));
    }
    if uid != 0 && md.uid() != uid {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("workdir {} is not owned by uid {uid}", dir.display()),
        ));
    }
    Ok(OwnedFd::from(f))
}
