//! Step records and recovery: each active step is persisted in
//! `<state_dir>/steps/<parent>/` so that a step a dead daemon left is ended
//! by the next one with an attestation that says its trace was interrupted.
//!
//! The records directory is root's (0700, files 0600, no symlinks followed,
//! reads bounded): a record is trusted only as far as its cgroup still is
//! the one recorded (same path under this daemon's parent, same id).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cilock_evidence::attestors::command_run::{
    Claimed, CommandRun, TraceInfo, WaitDescendants, EXITCODE_UNKNOWN,
};
use cilock_evidence::attestors::{into_collection, run_one, AttestationContext};
use cilock_evidence::collection::{Collection, COLLECTION_TYPE};
use cilock_evidence::intoto::Statement;

use super::attest::CommandRunAttestor;
use super::{valid_step_name as valid_record_name, Engine, EngineError, StepSpec, MAX_STEPS};
use crate::cgroup::Cgroup;

/// What is persisted of an active step (`<state_dir>/steps/<parent>/<cgroup
/// name>.json`, 0600): enough to attest, after the daemon died, that the
/// step was begun and its trace interrupted, and to return its processes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct StepRecord {
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
pub(super) const RECORD_MAX_CMD: usize = 64 * 1024;
/// Largest record read back.
pub(super) const RECORD_MAX_BYTES: u64 = 1024 * 1024;
/// Records read at start at most (more than the steps one daemon can have).
pub(super) const RECORD_MAX_COUNT: usize = 2 * MAX_STEPS;
/// The heartbeat file in the records directory: `pid\nRFC 3339 time\n`,
/// rewritten every few seconds while the daemon runs.
pub(super) const HEARTBEAT: &str = "daemon.alive";

/// A step a previous daemon left unended, found at start.
pub struct InterruptedStep {
    pub(super) record: StepRecord,
    /// The record file (removed once the attestation is kept).
    pub(super) record_path: PathBuf,
    /// Processes that were in the step's cgroup at start (returned to their
    /// origin cgroup).
    pub(super) survivors: Vec<u32>,
    /// What became of the step's cgroup.
    pub(super) cgroup_fate: String,
    /// The step's cgroup could not be removed (still populated): it is
    /// left for the sweep.
    pub(super) cgroup_kept: bool,
    /// The previous daemon's last heartbeat (pid, time), if any.
    pub(super) last_seen: Option<(u32, String)>,
    /// When this daemon started.
    pub(super) restarted: String,
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

pub(super) fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Reads at most [`RECORD_MAX_BYTES`] of a regular file (no symlink).
pub(super) fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
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
pub(super) fn warn_foreign(parent: &Path, ours: &HashSet<PathBuf>) {
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
pub(super) fn recover(
    dir: &Path,
    parent: &Path,
    mount: &Path,
) -> Result<Vec<InterruptedStep>, EngineError> {
    make_private_dir(dir).map_err(|source| EngineError::Io {
        what: format!("creating the step records directory {}", dir.display()),
        source,
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
        .map_err(|source| EngineError::Io {
            what: format!("reading {}", dir.display()),
            source,
        })?
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
        // The leaf is `u<uid>.<name>.<pid>.<n>` (longer than a step name),
        // or that as a child slice of a slice parent (`step_dir_name`).
        let parent_leaf = parent
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (survivors, cgroup_fate, cgroup_kept) = if cg_path.parent() != Some(parent)
            || leaf.starts_with('.')
            || !valid_record_name(&record.name)
            || !leaf.starts_with(&crate::cgroup::step_dir_prefix(
                &parent_leaf,
                record.owner_uid,
                &record.name,
            )) {
            (
                Vec::new(),
                format!(
                    "recorded cgroup {} is not under this daemon's parent; left alone",
                    record.cgroup
                ),
                false,
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
                                false,
                            )
                        }
                        Err(e) => {
                            tracing::error!(step = %record.name, cgroup = %record.cgroup, "cannot remove the cgroup of a step a previous daemon left: {e}");
                            (pids, format!("could not be removed: {e}"), true)
                        }
                    }
                }
                Ok(_) => (
                    Vec::new(),
                    "gone: a different cgroup has its path now (left alone)".to_string(),
                    false,
                ),
                Err(_) => (Vec::new(), "gone".to_string(), false),
            }
        };
        out.push(InterruptedStep {
            record,
            record_path: path,
            survivors,
            cgroup_fate,
            cgroup_kept,
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

    /// The step's cgroup when recovery left it in place because it is
    /// still populated (containers that outlived the daemon), for the
    /// engine to sweep once empty.
    pub(super) fn kept_cgroup(&self) -> Option<PathBuf> {
        let p = PathBuf::from(&self.record.cgroup);
        (self.cgroup_kept && p.is_dir()).then_some(p)
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
        let json = serde_json::to_value(&run)?;
        run_one(&mut ctx, &mut CommandRunAttestor(Some(json)))?;
        let (collection, subjects) = into_collection(&r.name, &ctx);
        Ok(Statement::new(COLLECTION_TYPE, subjects, collection))
    }
}

/// How often the daemon rewrites its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

impl Engine {
    pub(super) fn write_record(
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
    pub(super) fn not_found(&self, name: &str, owner: Option<u32>) -> EngineError {
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
