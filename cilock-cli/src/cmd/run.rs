//! `cilock run`: wraps one command in a traced step — through the daemon
//! when its socket answers, otherwise with the engine embedded in this
//! process (eBPF when privileged, else the ptrace fallback).

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use cilock_daemon::api::{BeginStep, EndStep, Reply, Request};
use cilock_daemon::backend::BackendChoice;
use cilock_daemon::client;
use cilock_daemon::engine::{self, EndSpec, Engine, EngineConfig, StepSpec};
use cilock_evidence::keys::Signer;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::cli::{BackendChoice as CliBackend, RunArgs};
use crate::cmd::output;

/// Captured output beyond this is dropped from the attestation (it still
/// passes through), with a marker saying so.
const MAX_CAPTURE: usize = 16 * 1024 * 1024;

/// Runs the command traced and writes its attestation.
pub fn run(a: RunArgs) -> anyhow::Result<u8> {
    if a.cmd.is_empty() {
        bail!("no command given (cilock run … -- CMD ARGS…)");
    }
    // Refuse a bad -o before the command runs.
    let out = output::Outfile::prepare(&a.outfile)?;
    if a.backend == CliBackend::Auto && !a.no_daemon {
        match client::request(&Request::Status) {
            Ok(Reply::Status(_)) => {
                if a.key.is_some() {
                    eprintln!("cilock: the daemon answered: it signs with its own key (-k is used only without the daemon)");
                }
                return via_daemon(&a, out);
            }
            Ok(other) => bail!("unexpected reply from the daemon: {other:?}"),
            Err(e) if e.is_unavailable() => {
                tracing::info!("no daemon ({e}); running the engine in-process");
            }
            Err(e) => return Err(anyhow!(e)).context("asking the daemon for its status"),
        }
    }
    embedded(&a, out)
}

fn workdir(a: &RunArgs) -> anyhow::Result<PathBuf> {
    let w = match &a.workdir {
        Some(w) => w.clone(),
        None => std::env::current_dir().context("current directory")?,
    };
    std::fs::canonicalize(&w).with_context(|| format!("workdir {}", w.display()))
}

fn load_key(a: &RunArgs) -> anyhow::Result<Signer> {
    let Some(k) = &a.key else {
        bail!(
            "no cilock daemon answered at {} and no signing key was given: pass -k KEY (see `cilock keygen`) or start cilock-daemon",
            cilock_daemon::api::socket_path().display()
        );
    };
    Signer::from_file(k).with_context(|| format!("signing key {}", k.display()))
}

fn exit_byte(code: i32) -> u8 {
    code.clamp(0, 255) as u8
}

fn finish_code(code: i32, failure: Option<&str>) -> u8 {
    if let Some(f) = failure {
        eprintln!("cilock: step failed: {f}");
        if code == 0 {
            return 1;
        }
    }
    exit_byte(code)
}

fn via_daemon(a: &RunArgs, out: output::Outfile) -> anyhow::Result<u8> {
    let wd = workdir(a)?;
    let mut child = GatedChild::spawn(&a.cmd)?;
    let req = Request::BeginStep(BeginStep {
        step: a.step.clone(),
        pid: child.pid.as_raw() as u32,
        attestations: a.attestations.clone(),
        workdir: Some(wd.display().to_string()),
        cmd: a.cmd.clone(),
        options: Some(a.attestor_flags.to_options()),
    });
    if let Err(e) = client::request(&req) {
        child.abort();
        return Err(anyhow!(e)).context("beginning the step");
    }
    let (code, stdout, stderr) = child.release_and_wait(output_bound(a))?;
    let req = EndStep {
        step: a.step.clone(),
        owner_uid: None,
        kill: false,
        exitcode: Some(code),
        stdout: Some(stdout),
        stderr: Some(stderr),
        run: true,
        wait_descendants_ms: a
            .wait_descendants
            .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        stream: true,
    };
    // The daemon keeps a copy until it is written and acknowledged.
    let got = client::end_step(req).context("ending the step")?;
    super::step::write_and_acknowledge(out, &got, "ended")?;
    output::warn_lost(got.header.lost_events);
    Ok(finish_code(code, got.header.failure.as_deref()))
}

fn embedded(a: &RunArgs, out: output::Outfile) -> anyhow::Result<u8> {
    let signer = load_key(a)?;
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
        let cfg = EngineConfig {
            backend: choice,
            cgroup_parent: format!("cilock.run.{}", std::process::id()),
            ..Default::default()
        };
        let engine = Engine::start(cfg)
            .map_err(|e| anyhow!(e))
            .context("starting the trace engine")?;
        if engine.backend_name() == "ebpf" {
            let r = run_with_engine(&engine, spec, &signer, a, out);
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
    run_with_ptrace(spec, &signer, a, reason, out)
}

fn run_with_engine(
    engine: &Engine,
    mut spec: StepSpec,
    signer: &Signer,
    a: &RunArgs,
    dest: output::Outfile,
) -> anyhow::Result<u8> {
    let mut child = GatedChild::spawn(&a.cmd)?;
    spec.pid = child.pid.as_raw() as u32;
    if let Err(e) = engine.begin(spec) {
        child.abort();
        return Err(anyhow!(e)).context("beginning the step");
    }
    let (code, stdout, stderr) = child.release_and_wait(output_bound(a))?;
    let out = engine.end(&a.step, 0, end_spec(code, stdout, stderr, wait_bound(a)));
    sign_and_write(out, code, signer, dest)
}

/// How long an embedded engine waits for the command's descendants.
fn wait_bound(a: &RunArgs) -> Duration {
    a.wait_descendants
        .unwrap_or(engine::DEFAULT_RUN_WAIT_DESCENDANTS)
}

/// How long the command's output is read after its root exited (a
/// process it left running may hold the pipes open).
fn output_bound(a: &RunArgs) -> Duration {
    wait_bound(a).max(Duration::from_secs(1))
}

/// The end of an embedded step: this process spawned the command, captured
/// its output and waited for it, so these are observed, not claimed.
fn end_spec(code: i32, stdout: String, stderr: String, wait: Duration) -> EndSpec {
    EndSpec {
        kill: false,
        exitcode: Some(code),
        stdout,
        stderr,
        observed: true,
        wait_descendants: Some(wait),
    }
}

/// Signs an in-process step's statement, writes it, and returns the exit code.
fn sign_and_write(
    out: Result<engine::StepOutcome, engine::EngineError>,
    code: i32,
    signer: &Signer,
    dest: output::Outfile,
) -> anyhow::Result<u8> {
    let out = out.map_err(|e| anyhow!(e))?;
    let env = engine::sign_statement(&out.statement, signer).map_err(|e| anyhow!(e))?;
    dest.commit(&env.to_json())?;
    output::warn_lost(out.lost_events);
    Ok(finish_code(code, out.failure.as_deref()))
}

fn run_with_ptrace(
    spec: StepSpec,
    signer: &Signer,
    a: &RunArgs,
    reason: String,
    dest: output::Outfile,
) -> anyhow::Result<u8> {
    let mut cmd = std::process::Command::new(&a.cmd[0]);
    cmd.args(&a.cmd[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut tees: Option<(Tee, Tee)> = None;
    let (code, pending) = engine::run_ptrace(spec, cmd, reason, wait_bound(a), |child| {
        if let (Some(o), Some(e)) = (child.stdout.take(), child.stderr.take()) {
            tees = Some((tee(o, std::io::stdout()), tee(e, std::io::stderr())));
        }
    })
    .map_err(|e| anyhow!(e))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let (stdout, stderr) = match tees {
        Some((o, e)) => (o.finish(deadline), e.finish(deadline)),
        None => (String::new(), String::new()),
    };
    let cache = cilock_daemon::trace::digest_cache::DigestCache::default();
    let out = pending.finish(&cache, end_spec(code, stdout, stderr, wait_bound(a)));
    sign_and_write(out, code, signer, dest)
}

/// An output being passed through and captured.
struct Tee {
    /// What was kept, and how many bytes were dropped beyond the cap.
    kept: Arc<Mutex<(Vec<u8>, usize)>>,
    /// Closed when the output reached its end.
    done: mpsc::Receiver<()>,
    _thread: JoinHandle<()>,
}

impl Tee {
    /// The captured output, once the pipe is closed or at `deadline`
    /// (a process the command left running may keep it open: what it
    /// writes later still passes through while cilock runs, but is not
    /// captured).
    fn finish(self, deadline: Instant) -> String {
        let open = matches!(
            self.done
                .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let (kept, dropped) = {
            let g = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            (g.0.clone(), g.1)
        };
        let mut s = String::from_utf8_lossy(&kept).into_owned();
        if dropped > 0 {
            s.push_str(&format!(
                "\n[cilock: {dropped} more bytes of output not captured]\n"
            ));
        }
        if open {
            s.push_str(
                "\n[cilock: the output was still open when the command's wait ended (a process it left running holds it); later output is not captured]\n",
            );
        }
        s
    }
}

/// Copies a child's output to ours while keeping (a bounded prefix of) it.
fn tee<R: Read + Send + 'static, W: Write + Send + 'static>(mut from: R, mut to: W) -> Tee {
    let kept = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let (tx, done) = mpsc::channel();
    let k = kept.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let _ = to.write_all(&buf[..n]);
            let _ = to.flush();
            let mut g = k.lock().unwrap_or_else(|e| e.into_inner());
            let room = MAX_CAPTURE.saturating_sub(g.0.len());
            g.0.extend_from_slice(&buf[..n.min(room)]);
            g.1 += n.saturating_sub(room);
        }
        drop(tx);
    });
    Tee {
        kept,
        done,
        _thread: thread,
    }
}

/// A forked child held before exec until its step has begun, so that
/// nothing it does escapes the trace.
struct GatedChild {
    pid: Pid,
    gate: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
    out_r: Option<OwnedFd>,
    errout_r: Option<OwnedFd>,
    reaped: bool,
}

impl GatedChild {
    fn spawn(cmd: &[String]) -> anyhow::Result<GatedChild> {
        let argv: Vec<CString> = cmd
            .iter()
            .map(|s| CString::new(s.as_bytes()))
            .collect::<Result<_, _>>()
            .context("the command contains a NUL byte")?;
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (gate_r, gate_w) = nix::unistd::pipe2(flags).context("pipe")?;
        let (err_r, err_w) = nix::unistd::pipe2(flags).context("pipe")?;
        let (out_r, out_w) = nix::unistd::pipe2(flags).context("pipe")?;
        let (eo_r, eo_w) = nix::unistd::pipe2(flags).context("pipe")?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        // SAFETY: the CLI is single-threaded here; the child only makes
        // async-signal-safe calls before exec.
        match unsafe { nix::unistd::fork() }.context("fork")? {
            ForkResult::Child => unsafe {
                let (g, e) = (gate_r.as_raw_fd(), err_w.as_raw_fd());
                // Keep only our ends: the gate must see EOF if cilock dies.
                for fd in [
                    gate_w.as_raw_fd(),
                    err_r.as_raw_fd(),
                    out_r.as_raw_fd(),
                    eo_r.as_raw_fd(),
                ] {
                    libc::close(fd);
                }
                libc::dup2(out_w.as_raw_fd(), 1);
                libc::dup2(eo_w.as_raw_fd(), 2);
                let mut b = 0u8;
                loop {
                    let n = libc::read(g, (&raw mut b).cast(), 1);
                    if n == 1 {
                        break;
                    }
                    if n == 0 || *libc::__errno_location() != libc::EINTR {
                        libc::_exit(127);
                    }
                }
                libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
                let errno = *libc::__errno_location();
                let bytes = errno.to_ne_bytes();
                libc::write(e, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127);
            },
            ForkResult::Parent { child } => Ok(GatedChild {
                pid: child,
                gate: Some(gate_w),
                err_r: Some(err_r),
                out_r: Some(out_r),
                errout_r: Some(eo_r),
                reaped: false,
            }),
        }
    }

    /// Kills the held child (its step could not begin).
    fn abort(&mut self) {
        self.gate.take();
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        self.reaped = true;
    }

    /// Lets the child exec, passes its output through, waits for it (and
    /// for the end of its output, at most `output_bound` after its exit).
    fn release_and_wait(
        &mut self,
        output_bound: Duration,
    ) -> anyhow::Result<(i32, String, String)> {
        let out = tee(
            std::fs::File::from(self.out_r.take().context("stdout taken")?),
            std::io::stdout(),
        );
        let err = tee(
            std::fs::File::from(self.errout_r.take().context("stderr taken")?),
            std::io::stderr(),
        );
        if let Some(g) = self.gate.take() {
            nix::unistd::write(&g, b"1").context("releasing the command")?;
        }
        // exec succeeded when the error pipe closes without data.
        let mut errno = [0u8; 4];
        let mut ef = std::fs::File::from(self.err_r.take().context("error pipe taken")?);
        let exec_err = match ef.read(&mut errno) {
            Ok(4) => Some(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno))),
            _ => None,
        };
        let status = waitpid(self.pid, None).context("waiting for the command")?;
        self.reaped = true;
        let code = match status {
            WaitStatus::Exited(_, c) => c,
            WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => 1,
        };
        let deadline = Instant::now() + output_bound;
        let stdout = out.finish(deadline);
        let mut stderr = err.finish(deadline);
        if let Some(e) = exec_err {
            let msg = format!("cilock: cannot execute the command: {e}\n");
            eprint!("{msg}");
            stderr.push_str(&msg);
        }
        Ok((code, stdout, stderr))
    }
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        if !self.reaped {
            self.abort();
        }
    }
}
