//! A step's state while it is traced ([`Step`]) and once its trace is
//! complete ([`PendingStep`]): hashing, the attestors after the command and
//! the statement are what is left.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cilock_evidence::attestors::command_run::{CommandRun, EventCount, TraceInfo, WaitDescendants};
use cilock_evidence::attestors::lifecycle::record_in_command_run;
use cilock_evidence::attestors::{into_collection, run_one, AttestError};
use cilock_evidence::collection::COLLECTION_TYPE;
use cilock_evidence::intoto::Statement;

use super::attest::{capture_fields, in_process_before, observe, Attest, CommandRunAttestor};
use super::containers::ContainerLog;
use super::{
    kernel_release, valid_step_name, EndSpec, EndedBy, EngineError, StepOutcome, StepSpec,
};
use crate::backend::{ptrace, Backend, Counting, Sink, Tap};
use crate::cgroup::Cgroup;
use crate::trace::digest_cache::{DigestCache, Reader};
use cilock_trace::fold::{Recorder, TraceLimits};

/// An active step: its cgroup, the backend's tap on it, and what its end
/// needs.
pub(super) struct Step {
    pub(super) name: String,
    pub(super) owner_uid: u32,
    pub(super) cgroup: Cgroup,
    /// Where the backend delivers the step's events.
    pub(super) sink: Sink,
    /// The backend's tap on the step (stopped when the step ends).
    pub(super) tap: Box<dyn Tap>,
    pub(super) started: Instant,
    pub(super) attest: Attest,
    pub(super) cmd: Vec<String>,
    /// The process the step began with (`run`'s command, `step begin`'s shell).
    pub(super) root: u32,
    /// Since when the step's cgroup has been seen empty.
    pub(super) empty_since: Option<Instant>,
    /// The cgroup the traced process came from: processes still running
    /// when the step ends go back there.
    pub(super) origin: PathBuf,
    /// The step's persisted record (removed when the step ends).
    pub(super) record: Option<PathBuf>,
    /// What the Docker API proxy recorded for the step.
    pub(super) containers: Arc<ContainerLog>,
}

/// A traced step whose trace is complete: hashing, attestors and the
/// statement are what is left.
pub struct PendingStep {
    pub(super) name: String,
    pub(super) attest: Attest,
    pub(super) cmd: Vec<String>,
    /// The step's root process, when known.
    pub(super) root: Option<u32>,
    pub(super) recorder: Recorder,
    /// Whose read permission a hashed file needs (the step's user).
    pub(super) reader: Reader,
    pub(super) trace: TraceInfo,
    /// How the backend counted events.
    pub(super) counting: Counting,
    pub(super) alive: Vec<u32>,
    /// What the Docker API proxy recorded for the step.
    pub(super) containers: Arc<ContainerLog>,
}

impl PendingStep {
    /// Hashes what was opened, runs the remaining attestors and builds the
    /// statement.
    pub fn finish(mut self, cache: &DigestCache, end: EndSpec) -> Result<StepOutcome, EngineError> {
        let slsa_export = self.attest.slsa_export();
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
        if self.counting == Counting::ProcessTable {
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
        super::attest::add_containers(
            &mut run,
            &mut self.trace,
            &self.containers,
            &st.container_cgroups,
        );
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
                let json = serde_json::to_value(&run)?;
                run_one(&mut ctx, &mut CommandRunAttestor(Some(json)))?;
                let failure = match lifecycle.after(&mut ctx) {
                    Ok(()) => None,
                    Err(AttestError::Failed(msg)) => Some(msg),
                    Err(e) => return Err(EngineError::After(e)),
                };
                record_in_command_run(&mut ctx, lifecycle.skipped(), lifecycle.selected());
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
            slsa_export,
        })
    }
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
    ptrace::probe().map_err(|e| EngineError::Backend(e.into()))?;
    let backend = ptrace::PtraceBackend::new(reason);
    let mut recorder = Recorder::with_limits(None, TraceLimits::default());
    recorder.set_host_mnt_ns(crate::backend::ptrace::paths::host_mnt_ns());
    let sink = Sink::new(recorder);
    let outcome = backend
        .run(cmd, wait_descendants, on_spawn, &sink)
        .map_err(EngineError::Backend)?;
    let root = outcome.root;
    if let Some(pid) = root {
        sink.with(|r| r.mark_root(pid));
    }
    let alive = outcome.survivors.clone();
    let mut trace = TraceInfo {
        kernel: kernel_release(),
        ended_by: EndedBy::Run.as_str().to_string(),
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
    capture_fields(&mut trace, backend.info());
    let recorder = sink.take();
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
            counting: backend.info().counting,
            alive,
            containers: Arc::default(),
        },
    ))
}
