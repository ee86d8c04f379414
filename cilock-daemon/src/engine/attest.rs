//! From a finished trace to a statement: where the attestors run (in this
//! process or in the unprivileged helper), command-run's observed and
//! claimed fields, the capture facts and counts as the attestation's
//! strings, and signing.

use std::collections::BTreeMap;

use cilock_evidence::attestors::command_run::{
    self, Claimed, CommandRun, EventCount, TraceInfo, EXITCODE_UNKNOWN,
};
use cilock_evidence::attestors::lifecycle::Lifecycle;
use cilock_evidence::attestors::{AttestError, AttestationContext, Attestor, Stage};
use cilock_evidence::collection::Collection;
use cilock_evidence::dsse::{self, Envelope};
use cilock_evidence::intoto::{Statement, PAYLOAD_TYPE};
use cilock_evidence::keys::Signer;

use super::{EndSpec, EngineError, StepOutcome, StepSpec};
use crate::attest_helper::HelperStep;
use crate::backend::{CaptureInfo, EventCounts};

/// Where a step's attestors run (one per step: the size difference of the
/// variants does not matter).
#[expect(
    clippy::large_enum_variant,
    reason = "one per step: the size difference of the variants does not matter"
)]
pub(super) enum Attest {
    /// In this process (embedded engines, as the calling user).
    InProcess {
        lifecycle: Lifecycle,
        ctx: AttestationContext,
    },
    /// In an unprivileged helper process per stage (the daemon).
    Helper(HelperStep),
}

impl Attest {
    /// The step asked for the SLSA provenance export.
    pub(super) fn slsa_export(&self) -> bool {
        match self {
            Attest::InProcess { lifecycle, .. } => lifecycle.options().slsa_export,
            Attest::Helper(h) => h.options().slsa_export,
        }
    }
}

/// Puts what the Docker API proxy recorded for the step into command-run
/// (`containers`, `builds`, with the containers only the trace saw), and
/// what its bounds left out into `trace.truncated.containers`.
pub(super) fn add_containers(
    run: &mut CommandRun,
    trace: &mut TraceInfo,
    log: &super::containers::ContainerLog,
    cgroups: &std::collections::BTreeMap<String, String>,
) {
    let (containers, builds, dropped) = log.finish(&run.processes, cgroups);
    run.containers = containers;
    run.builds = builds;
    if dropped > 0 {
        *trace.truncated.entry("containers".into()).or_default() += dropped;
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
pub(super) fn observe(
    run: &mut CommandRun,
    trace: &mut TraceInfo,
    end: EndSpec,
    cmd: Vec<String>,
    root: Option<u32>,
    seen: cilock_trace::fold::RootSeen,
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

/// Runs the "before" attestors in this process (embedded engines).
pub(super) fn in_process_before(names: &[String], spec: &StepSpec) -> Result<Attest, EngineError> {
    let mut lifecycle = Lifecycle::new(names, spec.options.clone())
        .map_err(|e| EngineError::BadRequest(e.to_string()))?;
    let mut ctx = AttestationContext::new(spec.workdir.clone(), spec.env.clone());
    ctx.workdir_fd = spec.workdir_fd.clone();
    ctx.step = spec.name.clone();
    lifecycle
        .before(&mut ctx)
        .map_err(|e| EngineError::BadRequest(format!("attestors before the step: {e}")))?;
    Ok(Attest::InProcess { lifecycle, ctx })
}

/// Wraps the engine's command-run JSON as an attestor for the lifecycle.
pub struct CommandRunAttestor(pub(crate) Option<serde_json::Value>);

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
    let payload = serde_json::to_vec(statement)?;
    Ok(dsse::sign(PAYLOAD_TYPE, payload, signer)?)
}

/// The SLSA provenance export of a step that asked for it
/// (`--attestor-slsa-export`): the in-toto Statement v1 derived from its
/// collection statement, signed by `signer`. `None` when not asked for;
/// `Some(Err(why))` when it cannot be made (no product to be its subject,
/// the slsa attestor was skipped).
pub fn sign_slsa_export(out: &StepOutcome, signer: &Signer) -> Option<Result<Envelope, String>> {
    if !out.slsa_export {
        return None;
    }
    Some((|| {
        let st = cilock_evidence::attestors::slsa::export_statement(&out.statement)
            .map_err(|e| e.to_string())?;
        let payload = serde_json::to_vec(&st).map_err(|e| e.to_string())?;
        dsse::sign(PAYLOAD_TYPE, payload, signer).map_err(|e| e.to_string())
    })())
}

/// Fills the trace fields that say how the step was captured
/// (`trace.backend`, `reason`, `hooks`, `limitations`): the only place the
/// typed [`CaptureInfo`] becomes the attestation's strings.
pub(super) fn capture_fields(trace: &mut TraceInfo, info: &CaptureInfo) {
    trace.backend = info.kind.name().to_string();
    trace.reason = info.reason.clone();
    trace.hooks = info.hooks_map();
    trace.limitations = info.limitation_texts();
}

/// `trace.events`: the backend's counts as the attestation's.
pub(super) fn event_counts(counts: EventCounts) -> BTreeMap<String, EventCount> {
    counts
        .0
        .into_iter()
        .map(|(k, c)| {
            (
                k,
                EventCount {
                    captured: c.captured,
                    lost: c.lost,
                },
            )
        })
        .collect()
}
