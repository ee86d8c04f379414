//! Privilege separation of the attestors: everything that reads what a job
//! controls (its environment, its git checkout, CI metadata files such as
//! `GITHUB_OUTPUT`, the workdir walks, secretscan) runs in a separate,
//! unprivileged helper process, never in the root daemon.
//!
//! The helper is the daemon's own binary executed anew
//! (`/proc/self/exe __attest-helper`, dispatched before the daemon reads its
//! configuration or key: the key is never in its memory). It runs as the
//! step owner (uid, primary gid, supplementary groups from the passwd and
//! group databases), with no capability (bounding and ambient sets
//! cleared too), `no_new_privs`, non-dumpable, a seccomp filter that forbids
//! `execve`, Landlock (where the kernel has it) forbidding every write,
//! creation, removal and execution in the file system, rlimits (CPU, address space, file size 0, open files, no core),
//! an empty environment but `PATH` from the daemon's configuration, `/` as
//! its directory, in the daemon's cgroup (not the step's: its work is not the
//! job's), and a wall-clock timeout after which it is killed. Its only
//! access to the workdir is fd 3, the directory the daemon opened once at
//! step begin. The job's environment (read by the daemon from
//! `/proc/PID/environ`) travels in the request.
//!
//! Two runs per step: "before" at begin (environment, git, github, gitlab,
//! lockfiles, system-packages, material) and "after" at end (github-action,
//! product, the post-product attestors requested or called for by the trace,
//! secretscan). What
//! "after" needs from "before" (the material snapshot, skipped attestors)
//! comes back through the daemon ([`LifecycleState`]).
//!
//! The reply is untrusted: its size is capped, it is parsed and validated
//! ([`validate`]): only the attestors expected for that stage and requested
//! (or, after the step, called for by the trace as the daemon's own
//! command-run shows it: [`after_plan`]),
//! no duplicate, never `command-run`, the type URI the daemon expects, a
//! bounded number of subjects. secretscan's redaction of the other
//! attestations is done by the daemon from the secret strings the helper
//! returns (it never returns a modified command-run).
//!
//! A helper that fails, times out, is killed or answers garbage: at step end
//! the affected attestors are listed in the command-run's
//! `trace.skippedAttestors` with the reason and the step is still signed;
//! at begin the begin fails with the reason.
//!
//! Known limits: the helper runs as the job's uid, so the job can signal it
//! (SIGKILL, SIGSTOP) or lower its rlimits (`prlimit`): the affected
//! attestors are then listed as skipped (killed, or timed out), never
//! silently missing. Between the helper's `execve` and its first
//! instruction (`PR_SET_DUMPABLE 0`) a process of the same uid could
//! `ptrace`-attach it where Yama does not restrict ptrace; such a job can
//! only falsify what it could already change (its own files' attestations),
//! never reach the daemon, its memory or the key.

pub mod child;
pub mod protocol;
pub mod spawn;

use std::collections::BTreeSet;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cilock_evidence::attestors::command_run::{self, CommandRun};
use cilock_evidence::attestors::github_action;
use cilock_evidence::attestors::lifecycle::{
    after_selection, auto_selected, AttestorOptions, Lifecycle, LifecycleState, SkippedAttestor,
    POST_PRODUCT, PRE_MATERIAL,
};
use cilock_evidence::attestors::product::StepWrites;
use cilock_evidence::attestors::secretscan::redact_json;
use cilock_evidence::attestors::selection::{self, SelectedAttestor};
use cilock_evidence::attestors::{run_one, AttestationContext, CompletedAttestation};
use cilock_evidence::collection::witness_type;
use cilock_evidence::digest::HashAlg;

pub use protocol::{ProbeReport, Reply, Request, StageKind, WireAttestation, PROTOCOL_VERSION};
pub use spawn::{HelperConfig, HelperError, Identity};

/// Attestors of the "before" run, in stage order.
pub const BEFORE_ATTESTORS: &[&str] = &[
    "environment",
    "git",
    "github",
    "gitlab",
    "lockfiles",
    "system-packages",
    "material",
];
/// Attestors of the "after" run, in stage order (the post-product ones of
/// `lifecycle::POST_PRODUCT` run between product and secretscan, see
/// [`after_plan`]).
pub const AFTER_ATTESTORS: &[&str] = &["github-action", "product", "secretscan"];

/// The attestors an "after" run may record, in stage order: the requested
/// ones and those the trace calls for (`auto`, from the daemon's own
/// command-run: the helper cannot add any). A prematerial attestor the
/// trace calls for (lockfiles) runs after product, as the lifecycle does.
pub fn after_plan(requested: &[String], auto: &[SelectedAttestor]) -> Vec<String> {
    let req = |n: &str| requested.iter().any(|r| r == n);
    let mut v: Vec<String> = ["github-action", "product"]
        .into_iter()
        .filter(|n| req(n))
        .map(String::from)
        .collect();
    v.extend(after_selection(requested, auto).into_iter().map(|s| s.name));
    if req("secretscan") {
        v.push("secretscan".to_string());
    }
    v
}

/// Subjects plus back-references one attestation may carry.
pub const MAX_SUBJECTS: usize = 1 << 20;
/// Files of the material snapshot passed from "before" to "after".
pub const MAX_MATERIALS: usize = 1 << 22;
/// Secret strings the daemon masks.
pub const MAX_REDACTIONS: usize = 4096;
/// Shorter secret strings are not masked (they would mask ordinary text).
pub const MIN_REDACTION_CHARS: usize = 8;
/// Longest accepted secret string.
const MAX_REDACTION_BYTES: usize = 64 << 10;
/// Longest name of a subject or material path.
const MAX_NAME_BYTES: usize = 4096;
/// Longest reason, error or failure message kept.
const MAX_MESSAGE_CHARS: usize = 2048;
/// Most bytes of the job's environment read from /proc/PID/environ.
pub const MAX_ENVIRON: usize = 1 << 20;

/// A stage of the helper, as the engine asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// At begin.
    Before,
    /// At end.
    After,
}

impl Stage {
    fn attestors(self) -> &'static [&'static str] {
        match self {
            Stage::Before => BEFORE_ATTESTORS,
            Stage::After => AFTER_ATTESTORS,
        }
    }
    fn kind(self) -> StageKind {
        match self {
            Stage::Before => StageKind::Before,
            Stage::After => StageKind::After,
        }
    }
}

/// A validated reply.
#[derive(Debug, Default)]
pub struct Validated {
    /// Attestations, in stage order.
    pub attestations: Vec<CompletedAttestation>,
    /// Expected attestors that were not recorded, and why.
    pub skipped: Vec<SkippedAttestor>,
    /// Prematerial and postproduct attestors recorded, and why (the
    /// daemon's reasons: `requested`, or the trace's).
    pub selected: Vec<SelectedAttestor>,
    /// Before: the material snapshot (skipped list replaced by `skipped`).
    pub state: LifecycleState,
    /// After: secret strings to mask, longest first.
    pub redactions: Vec<(String, String)>,
    /// After: secretscan's fail-on-detection message.
    pub failure: Option<String>,
    /// The stage failed with this message.
    pub error: Option<String>,
}

/// The type URI the daemon expects for an attestor (as its `Attestor`
/// implementation writes it).
pub fn expected_type(name: &str) -> String {
    use cilock_evidence::attestors::{link, scanners};
    match name {
        github_action::NAME => github_action::TYPE_URI.to_string(),
        "link" => link::TYPE.to_string(),
        "slsa" => cilock_evidence::attestors::slsa::TYPE_URI.to_string(),
        "falco" => scanners::falco::TYPE.to_string(),
        "kube-bench" => scanners::kube_bench::TYPE.to_string(),
        "prowler" => scanners::prowler::TYPE.to_string(),
        "testssl" => scanners::testssl::TYPE.to_string(),
        n => witness_type(n),
    }
}

/// Whether `uri` is a type the attestor `name` may write (sbom's depends on
/// the document it found).
pub fn type_accepted(name: &str, uri: &str) -> bool {
    use cilock_evidence::attestors::sbom;
    match name {
        "sbom" => uri == sbom::SPDX_TYPE || uri == sbom::CYCLONEDX_TYPE,
        n => uri == expected_type(n),
    }
}

fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Parses and checks a helper's reply for `stage`, given the attestors the
/// step requested (`requested`, as `Lifecycle::attestors` lists them).
pub fn validate(raw: &[u8], stage: Stage, requested: &[String]) -> Result<Validated, String> {
    validate_with(raw, stage, requested, &[])
}

/// [`validate`], with the attestors the trace calls for (`auto`, computed
/// by the daemon from its own command-run; "after" only).
pub fn validate_with(
    raw: &[u8],
    stage: Stage,
    requested: &[String],
    auto: &[SelectedAttestor],
) -> Result<Validated, String> {
    let reply: Reply = serde_json::from_slice(raw).map_err(|e| format!("not a reply: {e}"))?;
    if reply.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (expected {PROTOCOL_VERSION})",
            reply.version
        ));
    }
    let plan: Vec<String> = match stage {
        Stage::Before => stage
            .attestors()
            .iter()
            .filter(|n| requested.iter().any(|r| r == *n))
            .map(|n| n.to_string())
            .collect(),
        Stage::After => after_plan(requested, auto),
    };
    let expected: Vec<&str> = plan.iter().map(|s| s.as_str()).collect();
    let mut seen = BTreeSet::new();
    let mut attestations = Vec::new();
    for a in reply.attestations {
        if !expected.contains(&a.name.as_str()) {
            return Err(format!(
                "unexpected attestation {:?} for this stage",
                clip(&a.name, 64)
            ));
        }
        if !seen.insert(a.name.clone()) {
            return Err(format!("attestation {:?} given twice", a.name));
        }
        if !type_accepted(&a.name, &a.type_uri) {
            return Err(format!(
                "attestation {:?} has type {:?}",
                a.name,
                clip(&a.type_uri, 128)
            ));
        }
        if a.subjects.len() + a.backrefs.len() > MAX_SUBJECTS {
            return Err(format!(
                "attestation {:?} has more than {MAX_SUBJECTS} subjects",
                a.name
            ));
        }
        if a.subjects
            .keys()
            .chain(a.backrefs.keys())
            .any(|k| k.is_empty() || k.len() > MAX_NAME_BYTES)
        {
            return Err(format!(
                "attestation {:?} has an empty or overlong subject name",
                a.name
            ));
        }
        if a.starttime.len() > 64 || a.endtime.len() > 64 {
            return Err(format!("attestation {:?} has an invalid time", a.name));
        }
        attestations.push(CompletedAttestation::from(a));
    }
    attestations.sort_by_key(|a| expected.iter().position(|n| *n == a.name));
    let mut skipped = Vec::new();
    for s in reply.skipped {
        if expected.contains(&s.name.as_str()) && seen.insert(s.name.clone()) {
            skipped.push(SkippedAttestor {
                name: s.name,
                reason: clip(&s.reason, MAX_MESSAGE_CHARS),
            });
        }
    }
    // Why each prematerial/postproduct attestor ran: the daemon's own
    // reasons, for those recorded in this reply, in stage order.
    let mut selected = Vec::new();
    for n in &expected {
        if !(PRE_MATERIAL.contains(n) || POST_PRODUCT.contains(n))
            || !attestations.iter().any(|a| a.name == *n)
        {
            continue;
        }
        let reason = if requested.iter().any(|r| r == n) {
            selection::REQUESTED.to_string()
        } else if let Some(s) = auto.iter().find(|s| s.name == *n) {
            clip(&s.reason, MAX_MESSAGE_CHARS)
        } else {
            continue;
        };
        selected.push(SelectedAttestor {
            name: n.to_string(),
            reason,
        });
    }
    let error = reply.error.map(|e| clip(&e, MAX_MESSAGE_CHARS));
    for n in &expected {
        if !seen.contains(*n) {
            skipped.push(SkippedAttestor {
                name: n.to_string(),
                reason: match &error {
                    Some(e) => format!("not recorded: {e}"),
                    None => "the attestor helper returned no attestation".into(),
                },
            });
        }
    }
    let mut state = LifecycleState::default();
    if stage == Stage::Before {
        if let Some(st) = reply.state {
            if let Some(m) = &st.materials {
                if m.len() > MAX_MATERIALS || m.keys().any(|k| k.len() > MAX_NAME_BYTES) {
                    return Err(format!(
                        "the material snapshot has more than {MAX_MATERIALS} files or an overlong path"
                    ));
                }
            }
            state.materials = st.materials;
        }
        state.skipped = skipped.clone();
        state.selected = selected.clone();
    }
    let mut redactions = Vec::new();
    if stage == Stage::After {
        let mut set = BTreeSet::new();
        for (secret, rule) in reply.redactions {
            if secret.chars().count() < MIN_REDACTION_CHARS || secret.len() > MAX_REDACTION_BYTES {
                continue;
            }
            let rule: String = rule
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(128)
                .collect();
            set.insert((secret, rule));
            if set.len() >= MAX_REDACTIONS {
                break;
            }
        }
        redactions = set.into_iter().collect();
        redactions.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.cmp(b)));
    }
    let failure = if seen.contains("secretscan") && stage == Stage::After {
        reply.failure.map(|f| clip(&f, MAX_MESSAGE_CHARS))
    } else {
        None
    };
    Ok(Validated {
        attestations,
        skipped,
        selected,
        state,
        redactions,
        failure,
        error,
    })
}

/// Runs one stage in a helper and validates its reply.
pub fn run_stage(
    cfg: &HelperConfig,
    who: &Identity,
    workdir: &OwnedFd,
    stage: Stage,
    mut request: Request,
    requested: &[String],
    auto: &[SelectedAttestor],
) -> Result<Validated, HelperError> {
    request.version = PROTOCOL_VERSION;
    request.stage = stage.kind();
    let body = serde_json::to_vec(&request).map_err(|e| HelperError::Io(e.into()))?;
    let raw = spawn::run(cfg, who, Some(workdir.as_fd()), &body, |_| {})?;
    validate_with(&raw, stage, requested, auto).map_err(HelperError::BadReply)
}

/// Runs a probe (no attestor: the helper reports its own identity, limits
/// and environment, then waits `hold_ms`). `on_spawn` gets its pid.
pub fn probe(
    cfg: &HelperConfig,
    who: &Identity,
    workdir: Option<&OwnedFd>,
    hold_ms: u64,
    on_spawn: impl FnOnce(u32),
) -> Result<ProbeReport, HelperError> {
    let req = Request {
        version: PROTOCOL_VERSION,
        stage: StageKind::Probe,
        attestations: Vec::new(),
        options: AttestorOptions::default(),
        workdir: PathBuf::from("/"),
        env: Vec::new(),
        state: None,
        completed: Vec::new(),
        hold_ms,
        step_writes: None,
        step: String::new(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| HelperError::Io(e.into()))?;
    let raw = spawn::run(cfg, who, workdir.map(|f| f.as_fd()), &body, on_spawn)?;
    let reply: Reply = serde_json::from_slice(&raw)
        .map_err(|e| HelperError::BadReply(format!("not a reply: {e}")))?;
    reply
        .probe
        .ok_or_else(|| HelperError::BadReply("no probe report".into()))
}

/// Why the "before" run failed.
#[derive(Debug, thiserror::Error)]
pub enum BeforeError {
    /// Unknown attestor name or invalid option (the client's fault).
    #[error("{0}")]
    Invalid(String),
    /// An attestor failed (e.g. the workdir could not be walked).
    #[error("attestors before the step: {0}")]
    Attestor(String),
    /// The helper failed.
    #[error("attestors before the step: {0}")]
    Helper(#[from] HelperError),
}

/// The attestor side of a step whose attestors run in helpers: what "before"
/// recorded, and what "after" needs.
pub struct HelperStep {
    cfg: HelperConfig,
    who: Identity,
    workdir: PathBuf,
    workdir_fd: Arc<OwnedFd>,
    names: Vec<String>,
    requested: Vec<String>,
    options: AttestorOptions,
    env: Vec<(String, String)>,
    hashes: Vec<HashAlg>,
    completed: Vec<CompletedAttestation>,
    state: LifecycleState,
    notes: Vec<String>,
    step: String,
}

impl std::fmt::Debug for HelperStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelperStep")
            .field("uid", &self.who.uid)
            .field("workdir", &self.workdir)
            .field("attestors", &self.requested)
            .finish()
    }
}

/// What the engine knows at begin, for [`before`].
pub struct BeforeSpec<'a> {
    /// Helper settings.
    pub cfg: &'a HelperConfig,
    /// The step owner's identity.
    pub who: Identity,
    /// The workdir's path (messages, git).
    pub workdir: &'a Path,
    /// The workdir, opened at begin.
    pub workdir_fd: Arc<OwnedFd>,
    /// Attestors requested (defaults and the client's).
    pub names: &'a [String],
    /// Attestor options.
    pub options: AttestorOptions,
    /// The job's environment.
    pub env: Vec<(String, String)>,
    /// Notes for the trace's limitations (e.g. a truncated environment).
    pub notes: Vec<String>,
}

/// Runs the "before" stage in a helper. Names and options are checked
/// here first (a client error is [`BeforeError::Invalid`]).
pub fn before(spec: BeforeSpec<'_>) -> Result<HelperStep, BeforeError> {
    let lc = Lifecycle::new(spec.names, spec.options.clone())
        .map_err(|e| BeforeError::Invalid(e.to_string()))?;
    let requested = lc.attestors().to_vec();
    let hashes = lc.hashes().to_vec();
    drop(lc);
    let req = Request {
        version: PROTOCOL_VERSION,
        stage: StageKind::Before,
        attestations: spec.names.to_vec(),
        options: spec.options.clone(),
        workdir: spec.workdir.to_path_buf(),
        env: spec.env.clone(),
        state: None,
        completed: Vec::new(),
        hold_ms: 0,
        step_writes: None,
        step: String::new(),
    };
    let v = run_stage(
        spec.cfg,
        &spec.who,
        &spec.workdir_fd,
        Stage::Before,
        req,
        &requested,
        &[],
    )?;
    if let Some(e) = v.error {
        return Err(BeforeError::Attestor(e));
    }
    if !v.attestations.iter().any(|a| a.name == "material") {
        return Err(BeforeError::Helper(HelperError::BadReply(
            "no material attestation".into(),
        )));
    }
    Ok(HelperStep {
        cfg: spec.cfg.clone(),
        who: spec.who,
        workdir: spec.workdir.to_path_buf(),
        workdir_fd: spec.workdir_fd,
        names: spec.names.to_vec(),
        requested,
        options: spec.options,
        env: spec.env,
        hashes,
        completed: v.attestations,
        state: v.state,
        notes: spec.notes,
        step: String::new(),
    })
}

impl HelperStep {
    /// The settings the "after" run will use (tests shorten the timeout to
    /// see a killed helper reported).
    pub fn config_mut(&mut self) -> &mut HelperConfig {
        &mut self.cfg
    }

    /// The attestations "before" recorded.
    pub fn before_attestations(&self) -> &[CompletedAttestation] {
        &self.completed
    }

    /// What "after" will get from "before".
    pub fn state(&self) -> &LifecycleState {
        &self.state
    }

    /// The attestor options of the step.
    pub fn options(&self) -> &AttestorOptions {
        &self.options
    }

    /// Sets the step's name (given to the "after" run's attestors).
    pub fn set_step(&mut self, name: &str) {
        self.step = name.to_string();
    }

    /// The hash algorithms of the step.
    pub fn hashes(&self) -> &[HashAlg] {
        &self.hashes
    }

    /// Runs the "after" stage in a helper, around the daemon's command-run.
    /// Never fails: a helper failure lists the after-stage attestors as
    /// skipped (in `trace.skippedAttestors`). Returns the context with every
    /// attestation (before, command-run, after) and secretscan's
    /// fail-on-detection message. `writes` (what the step's processes
    /// wrote) goes to the product attestor, which marks each product
    /// `writtenByStep` from the file it hashed.
    pub fn after(
        self,
        mut run: CommandRun,
        writes: StepWrites,
    ) -> (AttestationContext, Option<String>) {
        if let Some(t) = run.trace.as_mut() {
            t.limitations.extend(self.notes.iter().cloned());
        }
        let mut ctx = AttestationContext::new(self.workdir.clone(), Vec::new());
        ctx.hashes = self.hashes.clone();
        ctx.completed = self.completed;
        // The daemon's own handle on the workdir (opened and owner-checked
        // at begin): what it later says about the workdir goes by it.
        ctx.workdir_fd = Some(self.workdir_fd.clone());
        let cr_json = serde_json::to_value(&run).unwrap_or_default();
        // What the trace calls for, from the daemon's own command-run: the
        // helper may record these besides the requested ones, nothing else.
        let auto = auto_selected(&self.options, Some(&cr_json));
        let _ = run_one(
            &mut ctx,
            &mut crate::engine::CommandRunAttestor(Some(cr_json)),
        );
        let req = Request {
            version: PROTOCOL_VERSION,
            stage: StageKind::After,
            attestations: self.names.clone(),
            options: self.options.clone(),
            workdir: self.workdir.clone(),
            env: self.env,
            state: Some(self.state.clone()),
            completed: ctx.completed.iter().map(WireAttestation::from).collect(),
            hold_ms: 0,
            step_writes: Some(writes),
            step: self.step,
        };
        let mut skipped = self.state.skipped.clone();
        let mut selected = self.state.selected.clone();
        let mut failure = None;
        let mut redactions = Vec::new();
        match run_stage(
            &self.cfg,
            &self.who,
            &self.workdir_fd,
            Stage::After,
            req,
            &self.requested,
            &auto,
        ) {
            Ok(v) => {
                if let Some(e) = &v.error {
                    tracing::warn!(uid = self.who.uid, "attestors after the step: {e}");
                }
                ctx.completed.extend(v.attestations);
                skipped.extend(v.skipped);
                selected.extend(v.selected);
                failure = v.failure;
                redactions = v.redactions;
            }
            Err(e) => {
                tracing::warn!(uid = self.who.uid, "attestors after the step: {e}");
                for n in after_plan(&self.requested, &auto) {
                    skipped.push(SkippedAttestor {
                        name: n,
                        reason: e.to_string(),
                    });
                }
            }
        }
        // The daemon's own command-run: record what was skipped, then mask.
        if let Some(t) = run.trace.as_mut() {
            t.skipped_attestors = skipped;
            t.selected_attestors = selected;
        }
        if let Some(c) = ctx
            .completed
            .iter_mut()
            .find(|c| c.name == command_run::NAME)
        {
            if let Ok(v) = serde_json::to_value(&run) {
                c.json = v;
            }
        }
        if !redactions.is_empty() {
            for c in ctx.completed.iter_mut().filter(|c| c.name != "secretscan") {
                redact_json(&mut c.json, &redactions);
            }
        }
        (ctx, failure)
    }
}

/// The environment of a process (`/proc/PID/environ`), reading at most
/// [`MAX_ENVIRON`] bytes. The second value is set when the rest was dropped.
pub fn environ_bounded(pid: u32) -> (Vec<(String, String)>, bool) {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let read = std::fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|f| f.take(MAX_ENVIRON as u64 + 1).read_to_end(&mut buf));
    if read.is_err() {
        return (Vec::new(), false);
    }
    let truncated = buf.len() > MAX_ENVIRON;
    if truncated {
        // Keep whole variables only.
        let cut = buf[..MAX_ENVIRON]
            .iter()
            .rposition(|&c| c == 0)
            .unwrap_or(0);
        buf.truncate(cut);
    }
    let vars = buf
        .split(|&c| c == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    (vars, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn att(name: &str) -> serde_json::Value {
        json!({"name": name, "type_uri": expected_type(name), "json": {},
               "starttime": "2026-01-01T00:00:00Z", "endtime": "2026-01-01T00:00:00Z"})
    }

    fn reply(v: serde_json::Value) -> Vec<u8> {
        let mut r = json!({"version": PROTOCOL_VERSION});
        for (k, x) in v.as_object().unwrap() {
            r[k] = x.clone();
        }
        serde_json::to_vec(&r).unwrap()
    }

    fn req(names: &[&str]) -> Vec<String> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Lifecycle::new(&names, AttestorOptions::default())
            .unwrap()
            .attestors()
            .to_vec()
    }

    #[test]
    fn replies_are_checked_against_the_stage_and_the_request() {
        let r = req(&["git"]);
        let ok = validate(
            &reply(json!({"attestations": [att("material"), att("git")],
                          "state": {"materials": {"a": {"sha256": "00"}}}})),
            Stage::Before,
            &r,
        )
        .unwrap();
        // Stage order, whatever the helper's order.
        let names: Vec<&str> = ok.attestations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["git", "material"]);
        assert!(ok.skipped.is_empty());
        assert_eq!(ok.state.materials.unwrap().len(), 1);

        for (bad, why) in [
            (
                reply(json!({"attestations": [att("command-run")]})),
                "unexpected",
            ),
            (
                reply(json!({"attestations": [att("product")]})),
                "unexpected",
            ),
            (
                reply(json!({"attestations": [att("environment")]})),
                "unexpected",
            ),
            (
                reply(json!({"attestations": [att("material"), att("material")]})),
                "twice",
            ),
            (
                reply(
                    json!({"attestations": [{"name": "material", "type_uri": "https://evil/x",
                    "json": {}, "starttime": "", "endtime": ""}]}),
                ),
                "type",
            ),
            (b"{\"version\": 99}".to_vec(), "version"),
            (b"garbage".to_vec(), "not a reply"),
            (
                reply(json!({"attestations": [], "surprise": 1})),
                "not a reply",
            ),
        ] {
            let e = validate(&bad, Stage::Before, &r).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn missing_attestors_are_listed_as_skipped_and_unrequested_skips_ignored() {
        let r = req(&["secretscan", "github-action"]);
        let mut wrong = att("github-action");
        wrong["type_uri"] = json!(witness_type("github-action"));
        let e = validate(&reply(json!({"attestations": [wrong]})), Stage::After, &r).unwrap_err();
        assert!(e.contains("type"), "{e}");
        let v = validate(
            &reply(
                json!({"attestations": [att("product"), att("github-action")],
                          "skipped": [{"name": "git", "reason": "x"}],
                          "error": "boom",
                          "failure": "ignored without secretscan"}),
            ),
            Stage::After,
            &r,
        )
        .unwrap();
        assert_eq!(v.skipped.len(), 1);
        assert_eq!(v.skipped[0].name, "secretscan");
        assert!(v.skipped[0].reason.contains("boom"));
        assert!(v.failure.is_none());
    }

    #[test]
    fn redactions_are_bounded_and_short_strings_ignored() {
        let r = req(&["secretscan"]);
        let mut many: Vec<(String, String)> = (0..MAX_REDACTIONS + 50)
            .map(|i| (format!("secret-value-{i:06}"), "rule id!".to_string()))
            .collect();
        many.push(("short".into(), "r".into()));
        let v = validate(
            &reply(json!({"attestations": [att("product"), att("secretscan")],
                          "redactions": many, "failure": "found"})),
            Stage::After,
            &r,
        )
        .unwrap();
        assert_eq!(v.redactions.len(), MAX_REDACTIONS);
        assert!(v
            .redactions
            .iter()
            .all(|(s, _)| s.len() >= MIN_REDACTION_CHARS));
        assert!(v.redactions.iter().all(|(_, r)| r == "ruleid"));
        assert_eq!(v.failure.as_deref(), Some("found"));
    }

    #[test]
    fn attestors_the_trace_selected_are_accepted_only_when_the_daemon_selected_them() {
        let r = req(&["secretscan", "sarif"]);
        let auto = vec![
            SelectedAttestor {
                name: "sbom".into(),
                reason: "the trace ran `/v/bin/cyclonedx-py` (catalogue: cyclonedx-py → sbom)"
                    .into(),
            },
            SelectedAttestor {
                name: "lockfiles".into(),
                reason: "the trace ran `/usr/bin/npm` (catalogue: npm → lockfiles)".into(),
            },
        ];
        assert_eq!(
            after_plan(&r, &auto),
            ["product", "lockfiles", "sbom", "sarif", "secretscan"]
        );
        let mut sbom = att("sbom");
        sbom["type_uri"] = json!("https://cyclonedx.org/bom");
        let body = reply(json!({
            "attestations": [att("secretscan"), sbom, att("product"), att("sarif")],
            "skipped": [{"name": "lockfiles", "reason": "no lockfile"},
                        {"name": "oci", "reason": "not expected: dropped"}],
            "selected": [{"name": "sbom", "reason": "the helper's own words"},
                         {"name": "oci", "reason": "x"}]}));
        let v = validate_with(&body, Stage::After, &r, &auto).unwrap();
        let names: Vec<&str> = v.attestations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["product", "sbom", "sarif", "secretscan"]);
        assert_eq!(
            v.selected,
            vec![
                auto[0].clone(),
                SelectedAttestor {
                    name: "sarif".into(),
                    reason: "requested".into()
                }
            ]
        );
        assert_eq!(
            v.skipped,
            vec![SkippedAttestor {
                name: "lockfiles".into(),
                reason: "no lockfile".into()
            }]
        );
        // Without the daemon's selection, the same reply is refused.
        let e = validate(&body, Stage::After, &r).unwrap_err();
        assert!(e.contains("unexpected attestation \"sbom\""), "{e}");
        // sbom with a type no SBOM has, or one the trace did not select.
        let mut bad = att("sbom");
        bad["type_uri"] = json!("https://witness.dev/attestations/sbom/v0.1");
        let e = validate_with(
            &reply(json!({"attestations": [bad]})),
            Stage::After,
            &r,
            &auto,
        )
        .unwrap_err();
        assert!(e.contains("type"), "{e}");
        let e = validate_with(
            &reply(json!({"attestations": [att("oci")]})),
            Stage::After,
            &r,
            &auto,
        )
        .unwrap_err();
        assert!(e.contains("unexpected"), "{e}");
        // One the trace selected that the helper did not return is listed.
        let v = validate_with(
            &reply(json!({"attestations": [att("product")]})),
            Stage::After,
            &r,
            &auto,
        )
        .unwrap();
        let skipped: Vec<&str> = v.skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(skipped, ["lockfiles", "sbom", "sarif", "secretscan"]);
        assert!(v.selected.is_empty());
    }

    #[test]
    fn the_daemon_expects_the_types_the_attestors_write() {
        let opts = AttestorOptions::default();
        // sbom's type depends on the document (both accepted).
        for n in PRE_MATERIAL
            .iter()
            .chain(POST_PRODUCT)
            .filter(|n| **n != "sbom")
        {
            let a = cilock_evidence::attestors::lifecycle::build(n, &opts).unwrap();
            assert_eq!(a.type_uri(), expected_type(n), "{n}");
            assert!(type_accepted(n, &a.type_uri()));
        }
        assert!(type_accepted("sbom", "https://cyclonedx.org/bom"));
        assert!(type_accepted("sbom", "https://spdx.dev/Document"));
        assert!(!type_accepted("sbom", &witness_type("sbom")));
    }

    #[test]
    fn subjects_are_bounded() {
        let r = req(&[]);
        let mut a = att("product");
        a["subjects"] = json!({"": {"sha256": "00"}});
        let e = validate(&reply(json!({"attestations": [a]})), Stage::After, &r).unwrap_err();
        assert!(e.contains("subject"), "{e}");
    }
}
