//! `cilock step begin|end|fetch`: step boundaries through the daemon, and
//! the attestations it keeps.

use std::io::Write;

use anyhow::{bail, Context};
use cilock_api::client;
use cilock_api::timefmt::fmt_utc;
use cilock_api::{BeginStep, EndStep, EnvelopeHeader, FetchKept, ListKept, Reply, Request};

use crate::cli::{StepBeginArgs, StepEndArgs, StepFetchArgs};
use crate::cmd::{output, store};

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
///
/// The daemon keeps its own copy of the envelope until this command has
/// written it and said so (an acknowledgement): when writing fails, the step
/// is ended, the command fails (exit 2) and says how to fetch the copy.
pub fn end(a: StepEndArgs) -> anyhow::Result<u8> {
    // Refuse a bad -o before the step ends.
    let out = output::Outfile::prepare(&a.outfile)?;
    let req = EndStep {
        step: a.step.clone(),
        owner_uid: a.owner,
        kill: a.kill,
        exitcode: a.exitcode,
        stdout: None,
        stderr: None,
        run: false,
        wait_descendants_ms: None,
        stream: true,
        ..Default::default()
    };
    let got = client::end_step(req).with_context(|| format!("step end {:?}", a.step))?;
    let dest = out.describe();
    let written = out.regular_file();
    let (slsa_unwritten, slsa_stored) =
        write_and_acknowledge(out, &got, "ended", &a.outfile, &a.store)?;
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "cilock: step {:?} ended; attestation written to {dest}",
        a.step,
    );
    if let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(&got.bytes) {
        for note in crate::cmd::inspect::end_notes_of_envelope(&envelope) {
            let _ = writeln!(err, "cilock: {note}");
        }
    }
    output::warn_lost(got.header.lost_events);
    let stored = store::after_written(
        &a.store,
        &got.header.stored,
        &got.bytes,
        written.as_deref(),
        &a.step,
    );
    if let Some(f) = &got.header.failure {
        let _ = writeln!(err, "cilock: step failed: {f}");
    }
    // 0, 1 or 3: the status of the step's command is not cilock's here.
    let mut status = store::step_status(0, got.header.failure.is_some(), stored && slsa_stored);
    // The step's options (at begin) asked for the SLSA provenance export.
    if let Some(why) = slsa_unwritten {
        let _ = writeln!(
            err,
            "cilock: error: --attestor-slsa-export: no SLSA provenance written: {why}"
        );
        if status == 0 {
            status = 2;
        }
    }
    Ok(status as u8)
}

/// `cilock step fetch`: writes a kept attestation (then acknowledges it),
/// or lists them.
pub fn fetch(a: StepFetchArgs) -> anyhow::Result<u8> {
    if a.list {
        let entries = client::Client::default()
            .list_kept(ListKept {
                step: a.step.clone(),
                owner_uid: a.owner,
            })
            .context("step fetch --list")?;
        let mut o = std::io::stdout().lock();
        if entries.is_empty() {
            eprintln!("cilock: no kept attestations");
            return Ok(0);
        }
        writeln!(
            o,
            "{:<48} {:<24} {:>6} {:<16} {:<23} {:>10}",
            "ID", "STEP", "OWNER", "ENDED BY", "KEPT AT", "BYTES"
        )?;
        for k in entries {
            writeln!(
                o,
                "{:<48} {:<24} {:>6} {:<16} {:<23} {:>10}",
                k.id,
                k.step,
                k.owner_uid,
                if k.ended_by.is_empty() {
                    "-"
                } else {
                    &k.ended_by
                },
                fmt_utc(k.kept_at),
                k.bytes
            )?;
        }
        return Ok(0);
    }
    let Some(outfile) = a.outfile else {
        bail!("-o FILE is required");
    };
    let out = output::Outfile::prepare(&outfile)?;
    let what = match (&a.id, &a.step) {
        (Some(id), _) => format!("id {id:?}"),
        (None, Some(s)) => format!("step {s:?}"),
        (None, None) => bail!("name a step (--step) or an id (--id)"),
    };
    let got = client::Client::default()
        .fetch(FetchKept {
            step: a.step.clone(),
            id: a.id.clone(),
            owner_uid: a.owner,
        })
        .with_context(|| format!("step fetch {what}"))?;
    let dest = out.describe();
    // The daemon's pushes of a kept export are reported with it.
    let (slsa_unwritten, _) = write_and_acknowledge(out, &got, "fetched", &outfile, &[])?;
    let h = &got.header;
    let mut err = std::io::stderr();
    if let Some(why) = slsa_unwritten {
        let _ = writeln!(
            err,
            "cilock: error: the SLSA provenance export kept with it was not written: {why}"
        );
        return Ok(2);
    }
    let _ = writeln!(
        err,
        "cilock: attestation of step {:?} (uid {}, ended by {} at {}, kept as {}) written to {dest}",
        h.step,
        h.owner_uid,
        if h.ended_by.is_empty() { "?" } else { &h.ended_by },
        fmt_utc(h.kept_at),
        h.id.as_deref().unwrap_or("?"),
    );
    if !matches!(h.ended_by.as_str(), "step end" | "run") {
        let _ = writeln!(
            err,
            "cilock: note: the daemon ended this step itself ({}), not `cilock step end`: what the job did afterwards is not in it",
            if h.ended_by.is_empty() { "reason not recorded" } else { &h.ended_by },
        );
    }
    if let Some(f) = &h.failure {
        let _ = writeln!(err, "cilock: step failed: {f}");
        return Ok(1);
    }
    Ok(0)
}

/// Commits `got` to `out` (and the SLSA provenance export that came with
/// it next to `outfile`), then tells the daemon it may delete its copy.
/// When writing fails, the error says how to fetch the kept copy. The
/// export is pushed to `stores` (`--store`), as the envelope is after this.
/// `Ok((Some(why), _))`: the envelope is written, the step asked for the
/// SLSA export and it is not (when the daemon sent one, its copy is kept:
/// not acknowledged). The flag is false when a push of the export (the
/// daemon's or to `stores`) failed.
pub(crate) fn write_and_acknowledge(
    out: output::Outfile,
    got: &client::Received,
    what: &str,
    outfile: &std::path::Path,
    stores: &[cilock_store::StoreUrl],
) -> anyhow::Result<(Option<String>, bool)> {
    let h = &got.header;
    if let Err(e) = out.commit(&got.bytes) {
        return Err(match &h.id {
            Some(id) => e.context(format!(
                "the step {:?} is {what} but its attestation could not be written; the daemon keeps it: cilock step fetch --id {id}{} -o FILE",
                h.step,
                owner_arg(h)
            )),
            None => e.context(format!(
                "the step {:?} is {what} but its attestation could not be written, and the daemon could not keep a copy",
                h.step
            )),
        });
    }
    let (slsa_unwritten, slsa_stored) = if got.slsa.is_some() || h.slsa_error.is_some() {
        match crate::cmd::run::write_daemon_slsa(got, None, outfile, stores) {
            Ok(stored) => (None, stored),
            Err(why) => (Some(why), true),
        }
    } else {
        (None, true)
    };
    if let (Some(why), true) = (&slsa_unwritten, got.slsa.is_some()) {
        // The daemon keeps both until they are written.
        return Ok((
            Some(match &h.id {
                Some(id) => format!(
                    "{why}; the daemon keeps it with the attestation: cilock step fetch --id {id}{} -o FILE",
                    owner_arg(h)
                ),
                None => why.clone(),
            }),
            slsa_stored,
        ));
    }
    if let Err(e) = client::acknowledge(h) {
        eprintln!(
            "cilock: warning: the attestation is written, but the daemon could not be told ({e}); it keeps its copy (cilock step fetch --list)"
        );
    }
    Ok((slsa_unwritten, slsa_stored))
}

fn owner_arg(h: &EnvelopeHeader) -> String {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if me == 0 && h.owner_uid != 0 {
        format!(" --owner {}", h.owner_uid)
    } else {
        String::new()
    }
}
