//! `cilock run` without a daemon: the engine embedded in this process
//! (eBPF when privileged and loadable, else the ptrace fallback), which
//! signs with the `-k` key. Built with the `embedded` feature only: a CLI
//! without it links no tracing code.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use cilock_daemon::backend::BackendChoice;
use cilock_daemon::engine::{self, EndSpec, Engine, EngineConfig, StepSpec};
use cilock_evidence::attestors::command_run::Interrupted;
use cilock_evidence::keys::Signer;
use nix::unistd::Pid;

use super::{
    after_run, captured, output_bound, stdout_sink, tee, wait_on_interrupt, workdir,
    write_envelope, Captured, GatedChild, Interrupts, Ran, Sink, Tee,
};
use crate::cli::{BackendChoice as CliBackend, RunArgs};
use crate::cmd::{output, store};

/// Runs the command under the embedded engine and writes its attestation.
pub(super) fn embedded(
    a: &RunArgs,
    out: output::Outfile,
    signer: &Signer,
    sig: &Interrupts,
) -> anyhow::Result<u8> {
    let wd = workdir(a)?;
    let spec = StepSpec {
        name: a.step.clone(),
        pid: 0,
        owner_uid: nix::unistd::getuid().as_raw(),
        attestations: a.attestations.clone(),
        options: a.attestor_flags.to_options(),
        workdir: wd,
        cmd: a.cmd.clone(),
        env: std::env::vars().collect(),
        owner_gid: nix::unistd::getgid().as_raw(),
        workdir_fd: None,
        notes: Vec::new(),
    };
    let privileged = nix::unistd::geteuid().is_root();
    let choice = match a.backend {
        CliBackend::Ebpf => BackendChoice::Ebpf,
        CliBackend::Ptrace => BackendChoice::Ptrace,
        CliBackend::Auto if privileged => BackendChoice::Auto,
        CliBackend::Auto => BackendChoice::Ptrace,
    };
    if choice != BackendChoice::Ptrace {
        sweep_stale_run_cgroups();
        let cfg = EngineConfig {
            backend: choice,
            cgroup_parent: format!("cilock.run.{}", std::process::id()),
            ..Default::default()
        };
        let engine = Engine::start(cfg)
            .map_err(|e| anyhow!(e))
            .context("starting the trace engine")?;
        if engine.backend_name() == "ebpf" {
            let r = run_with_engine(&engine, spec, signer, a, out, sig);
            engine.shutdown();
            engine.remove_parent();
            return r;
        }
        engine.shutdown();
        engine.remove_parent();
    }
    let reason = if a.backend == CliBackend::Ptrace {
        "ptrace selected with --backend ptrace".to_string()
    } else if !privileged {
        "not privileged: eBPF needs root".to_string()
    } else {
        "eBPF unavailable".to_string()
    };
    run_with_ptrace(spec, signer, a, reason, out, sig)
}

/// Removes the `cilock.run.<pid>` cgroups (with their empty step cgroups)
/// that a `cilock run` killed with SIGKILL left behind: only those whose
/// pid is no longer alive, and only empty ones (rmdir fails on a cgroup
/// with processes). A dead run's pid reused since by another process keeps
/// its cgroup until that process is gone.
fn sweep_stale_run_cgroups() {
    let Ok(h) = cilock_daemon::cgroup::Hierarchy::find() else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(&h.mount) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cilock.run."))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() {
            continue;
        }
        let dead = matches!(
            nix::sys::signal::kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if dead && remove_empty_tree(&e.path(), 4) {
            tracing::info!(cgroup = %e.path().display(), "removed the cgroup of a dead cilock run");
        }
    }
}

/// Removes a cgroup and its child cgroups, deepest first (at most `depth`
/// levels); true when it is gone.
fn remove_empty_tree(p: &std::path::Path, depth: u32) -> bool {
    if depth > 0 {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_empty_tree(&e.path(), depth - 1);
                }
            }
        }
    }
    std::fs::remove_dir(p).is_ok()
}

fn run_with_engine(
    engine: &Engine,
    mut spec: StepSpec,
    signer: &Signer,
    a: &RunArgs,
    dest: output::Outfile,
    sig: &Interrupts,
) -> anyhow::Result<u8> {
    sig.check_not_yet()?;
    let mut child = GatedChild::spawn(&a.cmd, &sig.handled)?;
    spec.pid = child.pid.as_raw() as u32;
    if let Err(e) = engine.begin(spec) {
        child.abort();
        return Err(anyhow!(e)).context("beginning the step");
    }
    sig.set_root(child.pid.as_raw(), a.kill_after);
    let wait = wait_bound(a);
    let (code, cap) =
        child.release_and_wait(|| output_bound(Some(wait), a, sig), stdout_sink(&dest))?;
    sig.command_ended();
    let interrupted = sig.interrupted();
    let end = end_spec(
        code,
        cap,
        wait_on_interrupt(Some(wait), a, sig).unwrap_or(wait),
        interrupted,
    );
    let out = engine.end(&a.step, 0, end);
    let r = sign_and_write(out, code, signer, dest, a, "ebpf, in-process");
    after_run(r, code, sig)
}

/// How long an embedded engine waits for the command's descendants.
fn wait_bound(a: &RunArgs) -> Duration {
    a.wait_descendants
        .unwrap_or(cilock_api::DEFAULT_RUN_WAIT_DESCENDANTS)
}

/// The end of an embedded step: this process spawned the command, captured
/// its output, waited for it and received the signal itself, so these are
/// observed, not claimed. An interrupted run kills what is left of it.
fn end_spec(code: i32, cap: Captured, wait: Duration, interrupted: Option<Interrupted>) -> EndSpec {
    EndSpec {
        kill: interrupted.is_some(),
        exitcode: Some(code),
        stdout: cap.stdout,
        stderr: cap.stderr,
        observed: true,
        wait_descendants: Some(wait),
        interrupted,
        output_truncated: cap.truncated,
        caller: None,
    }
}

/// Signs an in-process step's statement and writes it.
fn sign_and_write(
    out: Result<engine::StepOutcome, engine::EngineError>,
    code: i32,
    signer: &Signer,
    dest: output::Outfile,
    a: &RunArgs,
    backend: &str,
) -> anyhow::Result<Ran> {
    let out = out.map_err(|e| anyhow!(e))?;
    let env = engine::sign_statement(&out.statement, signer).map_err(|e| anyhow!(e))?;
    let bytes = env.to_json();
    let written = dest.regular_file();
    write_envelope(
        dest,
        &bytes,
        &a.step,
        backend,
        &[signer.key_id().to_string()],
    )?;
    output::warn_lost(out.lost_events);
    let stored = store::after_written(&a.store, &[], &bytes, written.as_deref(), &a.step);
    // The export is signed with the same key, from the statement just
    // signed (the same derivation as the daemon's).
    let mut slsa_stored = true;
    let slsa_unwritten = match engine::sign_slsa_export(&out, signer) {
        None => None,
        Some(Err(e)) => Some(e),
        Some(Ok(env)) => {
            let slsa = env.to_json();
            match output::write_slsa(&a.outfile, &slsa) {
                Ok(p) => {
                    eprintln!(
                        "cilock: SLSA provenance (in-toto Statement v1) written to {} (signed by {})",
                        p.display(),
                        signer.key_id()
                    );
                    slsa_stored = store::after_written(&a.store, &[], &slsa, Some(&p), &a.step);
                    None
                }
                Err(e) => Some(format!("{e:#}")),
            }
        }
    };
    Ok(Ran {
        code,
        failure: out.failure,
        stored: stored && slsa_stored,
        slsa_unwritten,
    })
}

fn run_with_ptrace(
    spec: StepSpec,
    signer: &Signer,
    a: &RunArgs,
    reason: String,
    dest: output::Outfile,
    sig: &Interrupts,
) -> anyhow::Result<u8> {
    sig.check_not_yet()?;
    let mut cmd = std::process::Command::new(&a.cmd[0]);
    cmd.args(&a.cmd[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // Between fork and exec the child has cilock's handlers: back to the
    // default so that a signal then acts on the command, not on cilock.
    let reset = sig.handled.clone();
    // SAFETY: sigaction-based signal() is async-signal-safe; `reset` was
    // allocated before the fork.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(move || {
            for &s in &reset {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let sink = stdout_sink(&dest);
    let mut tees: Option<(Tee, Tee)> = None;
    let wait = wait_bound(a);
    let (code, pending) = engine::run_ptrace(spec, cmd, reason, wait, |child| {
        sig.set_root(child.id() as i32, a.kill_after);
        if let (Some(o), Some(e)) = (child.stdout.take(), child.stderr.take()) {
            tees = Some((tee(o, sink), tee(e, Sink::Stderr)));
        }
    })
    .map_err(|e| anyhow!(e))?;
    sig.command_ended();
    let deadline = Instant::now() + Duration::from_secs(1);
    let cap = match tees {
        Some((o, e)) => captured(o.finish(deadline), e.finish(deadline)),
        None => captured((String::new(), 0, 0), (String::new(), 0, 0)),
    };
    let cache = cilock_daemon::trace::digest_cache::DigestCache::default();
    let interrupted = sig.interrupted();
    let out = pending.finish(&cache, end_spec(code, cap, wait, interrupted));
    let r = sign_and_write(out, code, signer, dest, a, "ptrace, in-process");
    after_run(r, code, sig)
}
