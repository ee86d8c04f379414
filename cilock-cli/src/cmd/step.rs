//! `cilock step begin|end`: step boundaries through the daemon.

use std::io::Write;

use anyhow::{bail, Context};
use cilock_daemon::api::{BeginStep, EndStep, Reply, Request};
use cilock_daemon::client;

use crate::cli::{StepBeginArgs, StepEndArgs};
use crate::cmd::output;

/// Moves the calling shell (or `--pid`) into a new traced step.
pub fn begin(a: StepBeginArgs) -> anyhow::Result<u8> {
    // By default the process that ran us: the CI job's shell.
    let pid = a
        .pid
        .unwrap_or_else(|| nix::unistd::getppid().as_raw() as u32);
    let workdir = match a.workdir {
        Some(w) => w,
        None => std::env::current_dir().context("current directory")?,
    };
    let workdir = std::fs::canonicalize(&workdir)
        .with_context(|| format!("workdir {}", workdir.display()))?;
    let req = Request::BeginStep(BeginStep {
        step: a.step.clone(),
        pid,
        attestations: a.attestations,
        workdir: Some(workdir.display().to_string()),
        cmd: Vec::new(),
        options: Some(a.attestor_flags.to_options()),
    });
    match client::request(&req).with_context(|| format!("step begin {:?}", a.step))? {
        Reply::Begun { cgroup } => {
            eprintln!(
                "cilock: step {:?} begun: pid {pid} and what it starts are traced ({cgroup})",
                a.step
            );
            Ok(0)
        }
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Ends a step and writes its signed attestation.
pub fn end(a: StepEndArgs) -> anyhow::Result<u8> {
    // Refuse a bad -o before the step ends.
    let out = output::Outfile::prepare(&a.outfile)?;
    let req = Request::EndStep(EndStep {
        step: a.step.clone(),
        owner_uid: a.owner,
        kill: a.kill,
        exitcode: a.exitcode,
        stdout: None,
        stderr: None,
        run: false,
        wait_descendants_ms: None,
        ..Default::default()
    });
    match client::request(&req).with_context(|| format!("step end {:?}", a.step))? {
        Reply::Ended {
            envelope,
            lost_events,
            failure,
        } => {
            let dest = out.describe();
            out.commit_json(&envelope)?;
            let mut err = std::io::stderr();
            let _ = writeln!(
                err,
                "cilock: step {:?} ended; attestation written to {dest}",
                a.step,
            );
            for note in crate::cmd::inspect::end_notes_of_envelope(&envelope) {
                let _ = writeln!(err, "cilock: {note}");
            }
            output::warn_lost(lost_events);
            if let Some(f) = failure {
                let _ = writeln!(err, "cilock: step failed: {f}");
                return Ok(1);
            }
            Ok(0)
        }
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}
