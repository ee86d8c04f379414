//! `cilock run`: wraps one command in a traced step — through the daemon
//! when its socket answers, otherwise with the engine embedded in this
//! process (eBPF when privileged, else the ptrace fallback).
//!
//! Whatever happens once the command ran, cilock's exit is the command's
//! status (128+signal when cilock itself was interrupted), and a failure to
//! produce or write the attestation is said on stderr (exit 2 when the
//! command itself succeeded). An attestation that cannot go to `-o` is
//! written to a file in the temporary directory instead, and cilock says
//! where.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use cilock_api::client;
use cilock_api::{BeginStep, EndStep, Reply, Request};
use cilock_evidence::attestors::command_run::Interrupted;
use cilock_evidence::dsse;
use cilock_evidence::keys::Signer;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::cli::{BackendChoice as CliBackend, RunArgs};
use crate::cmd::{output, store};

#[cfg(feature = "embedded")]
mod embedded;

/// Captured output is bounded by what it costs *encoded*: the bytes of
/// the JSON string it becomes (a NUL costs 6, `"` 2, an invalid UTF-8
/// sequence 3), per stream. The envelope's base64 adds a third: each
/// stream costs at most 16 MiB there. Beyond it, output still passes
/// through but is not captured; the attestation says how many bytes were
/// left out (`trace.truncated.stdout`/`stderr`, or `claimed.truncated`
/// through the daemon) and the captured text ends with a marker.
const MAX_CAPTURE_ENCODED: usize = 12 * 1024 * 1024;
/// Room kept in [`MAX_CAPTURE_ENCODED`] for the markers.
const MARKER_ROOM: usize = 512;

/// The signals `cilock run` forwards to the command.
const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Runs the command traced and writes its attestation.
pub fn run(a: RunArgs) -> anyhow::Result<u8> {
    if a.cmd.is_empty() {
        bail!("no command given (cilock run … -- CMD ARGS…)");
    }
    if !cfg!(feature = "embedded") && (a.backend != CliBackend::Auto || a.no_daemon) {
        bail!("--backend and --no-daemon need the in-process engine, and this cilock is built without it (feature `embedded`)");
    }
    // Refuse a bad -o, unknown attestors or hashes before anything runs
    // (and before the 1–2 s of an eBPF probe load).
    output::check_slsa_export(a.attestor_flags.slsa_export, &a.outfile)?;
    let out = output::Outfile::prepare(&a.outfile)?;
    cilock_evidence::attestors::lifecycle::Lifecycle::new(
        &a.attestations,
        a.attestor_flags.to_options(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let signer = match &a.key {
        Some(k) => {
            Some(Signer::from_file(k).with_context(|| format!("signing key {}", k.display()))?)
        }
        None => None,
    };
    // From here a SIGINT/SIGTERM/SIGHUP does not kill cilock: it is
    // forwarded to the command once it runs.
    let sig = Interrupts::install()?;
    if a.backend == CliBackend::Auto && !a.no_daemon {
        match client::request(&Request::Status) {
            Ok(Reply::Status(st)) => {
                let r = via_daemon(&a, out, signer.as_ref(), &st.backend, &sig);
                return sig.exit(r);
            }
            Ok(other) => bail!("unexpected reply from the daemon: {other:?}"),
            Err(e) if e.is_unavailable() => {
                tracing::info!("no daemon ({e}); running the engine in-process");
            }
            Err(e) => return Err(anyhow!(e)).context("asking the daemon for its status"),
        }
    }
    #[cfg(not(feature = "embedded"))]
    bail!(
        "no cilock daemon answered at {}, and this cilock is built without the in-process engine (feature `embedded`): start cilock-daemon",
        cilock_api::socket_path().display()
    );
    #[cfg(feature = "embedded")]
    {
        let Some(signer) = signer else {
            bail!(
                "no cilock daemon answered at {} and no signing key was given: pass -k KEY (see `cilock keygen`) or start cilock-daemon",
                cilock_api::socket_path().display()
            );
        };
        let r = embedded::embedded(&a, out, &signer, &sig);
        sig.exit(r)
    }
}

fn workdir(a: &RunArgs) -> anyhow::Result<PathBuf> {
    let w = match &a.workdir {
        Some(w) => w.clone(),
        None => std::env::current_dir().context("current directory")?,
    };
    std::fs::canonicalize(&w).with_context(|| format!("workdir {}", w.display()))
}

fn exit_byte(code: i32) -> u8 {
    code.clamp(0, 255) as u8
}

/// How a run ended once the command had run.
struct Ran {
    /// The command's exit status.
    code: i32,
    /// An attestor failed the step.
    failure: Option<String>,
    /// Every push to a store (`--store`, the daemon's) succeeded.
    stored: bool,
    /// `--attestor-slsa-export` was asked for and its file not written:
    /// why.
    slsa_unwritten: Option<String>,
}

/// The exit of a run: 128+signal when cilock was interrupted, else the
/// command's status (1 when it succeeded but an attestor failed the step,
/// 3 when it succeeded but the attestation could not be stored).
/// A failure after the command ran never hides its status.
fn after_run(r: anyhow::Result<Ran>, code_if_err: i32, sig: &Interrupts) -> anyhow::Result<u8> {
    let interrupted = sig.interrupted().map(|i| 128 + i.number);
    match r {
        Ok(ran) => {
            if let Some(f) = &ran.failure {
                eprintln!("cilock: step failed: {f}");
            }
            let mut status = store::step_status(ran.code, ran.failure.is_some(), ran.stored);
            if let Some(why) = &ran.slsa_unwritten {
                eprintln!(
                    "cilock: error: --attestor-slsa-export: no SLSA provenance written: {why}"
                );
                if status == 0 {
                    status = 2;
                }
            }
            Ok(exit_byte(interrupted.unwrap_or(status)))
        }
        Err(e) => {
            eprintln!(
                "cilock: error: the command exited {code_if_err}, but its attestation was not written: {e:#}"
            );
            Ok(exit_byte(interrupted.unwrap_or(if code_if_err == 0 {
                2
            } else {
                code_if_err
            })))
        }
    }
}

/// Output captured from the command.
struct Captured {
    stdout: String,
    stderr: String,
    /// Bytes not captured, per stream (only streams that lost some).
    truncated: BTreeMap<String, u64>,
    /// Bytes the command wrote, per stream.
    total: BTreeMap<String, u64>,
}

fn via_daemon(
    a: &RunArgs,
    out: output::Outfile,
    signer: Option<&Signer>,
    backend: &str,
    sig: &Interrupts,
) -> anyhow::Result<u8> {
    let wd = workdir(a)?;
    sig.check_not_yet()?;
    let mut child = GatedChild::spawn(&a.cmd, &sig.handled)?;
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
    sig.set_root(child.pid.as_raw(), a.kill_after);
    let (code, cap) = child.release_and_wait(
        || output_bound(a.wait_descendants, a, sig),
        stdout_sink(&out),
    )?;
    sig.command_ended();
    let interrupted = sig.interrupted();
    let r = (|| {
        let end = |stdout: Option<String>, stderr: Option<String>, truncated| EndStep {
            step: a.step.clone(),
            owner_uid: None,
            kill: interrupted.is_some(),
            exitcode: Some(code),
            stdout,
            stderr,
            run: true,
            wait_descendants_ms: wait_on_interrupt(a.wait_descendants, a, sig)
                .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
            interrupted: interrupted.clone(),
            truncated,
            stream: true,
        };
        // The daemon keeps a copy until it is written and acknowledged.
        let got = match client::end_step(end(Some(cap.stdout), Some(cap.stderr), cap.truncated)) {
            // Refused for its size (the daemon's max_request) before the
            // daemon read it: the step is still open; end it without the
            // output, counted as not captured.
            Err(client::ClientError::Daemon(e))
                if e.kind == cilock_api::ErrorKind::BadRequest
                    && e.message.contains("exceeds the limit") =>
            {
                eprintln!(
                    "cilock: the daemon refused the captured output ({}): ending the step without it",
                    e.message
                );
                client::end_step(end(None, None, cap.total))
            }
            r => r,
        }
        .context("ending the step")?;
        let envelope = got
            .envelope()
            .context("the daemon's envelope is not a DSSE envelope")?;
        let (bytes, keyids) = cosign(envelope, signer)?;
        let written = out.regular_file();
        write_envelope(out, &bytes, &a.step, &format!("daemon, {backend}"), &keyids).map_err(
            |e| match &got.header.id {
                Some(id) => e.context(format!(
                    "the daemon also keeps its copy: cilock step fetch --id {id} -o FILE"
                )),
                None => e,
            },
        )?;
        let (slsa_unwritten, slsa_stored) = if a.attestor_flags.slsa_export {
            match write_daemon_slsa(&got, signer, &a.outfile, &a.store) {
                Ok(stored) => (None, stored),
                Err(e) => (Some(e), true),
            }
        } else {
            (None, true)
        };
        // An export the daemon sent and that is not written stays kept.
        let keep = slsa_unwritten.is_some() && got.slsa.is_some();
        if keep {
            if let Some(id) = &got.header.id {
                eprintln!("cilock: the daemon keeps the attestation and its SLSA export: cilock step fetch --id {id} -o FILE");
            }
        } else if let Err(e) = client::acknowledge(&got.header) {
            eprintln!(
                "cilock: warning: the attestation is written, but the daemon could not be told ({e}); it keeps its copy (cilock step fetch --list)"
            );
        }
        output::warn_lost(got.header.lost_events);
        let stored = store::after_written(
            &a.store,
            &got.header.stored,
            &bytes,
            written.as_deref(),
            &a.step,
        );
        Ok(Ran {
            code,
            failure: got.header.failure.clone(),
            stored: stored && slsa_stored,
            slsa_unwritten,
        })
    })();
    after_run(r, code, sig)
}

/// Writes the SLSA provenance export the daemon sent (co-signed with
/// `-k` like the main envelope) next to `-o`, then pushes it to every
/// `--store` and reports the daemon's pushes of it (`Ok(false)`: a push
/// failed). `Err`: why it is not written.
pub(crate) fn write_daemon_slsa(
    got: &client::Received,
    signer: Option<&Signer>,
    outfile: &std::path::Path,
    stores: &[cilock_store::StoreUrl],
) -> Result<bool, String> {
    let Some(b) = &got.slsa else {
        return Err(got.header.slsa_error.clone().unwrap_or_else(|| {
            "the daemon sent none (a cilock-daemon older than this cilock?)".to_string()
        }));
    };
    if outfile.as_os_str() == "-" {
        return Err("-o - (standard output) has no file to write it next to".into());
    }
    let env = dsse::Envelope::from_json(b)
        .map_err(|e| format!("the daemon's SLSA export is not a DSSE envelope: {e}"))?;
    let (bytes, keyids) = cosign(env, signer).map_err(|e| format!("{e:#}"))?;
    let p = output::write_slsa(outfile, &bytes).map_err(|e| format!("{e:#}"))?;
    eprintln!(
        "cilock: SLSA provenance (in-toto Statement v1) written to {} (signed by {})",
        p.display(),
        keyids.join(", ")
    );
    Ok(store::after_written(
        stores,
        &got.header.slsa_stored,
        &bytes,
        Some(&p),
        &got.header.step,
    ))
}

/// The daemon's envelope, with the `-k` key's signature added beside the
/// daemon's over the same payload (the daemon observed and signed it; the
/// user's key vouches for it, as `witness run -k` does). Returns the
/// envelope and its signers' key ids.
fn cosign(
    mut env: dsse::Envelope,
    signer: Option<&Signer>,
) -> anyhow::Result<(Vec<u8>, Vec<String>)> {
    if let Some(s) = signer {
        let sig = s
            .sign(&env.pae())
            .map_err(|e| anyhow!(e))
            .context("signing with -k")?;
        env.signatures.push(dsse::Signature {
            keyid: s.key_id().to_string(),
            sig,
            certificate: None,
            intermediates: Vec::new(),
            timestamps: Vec::new(),
        });
    }
    let ids = env.signatures.iter().map(|s| s.keyid.clone()).collect();
    Ok((env.to_json(), ids))
}

/// Writes the envelope to its destination and says so on stderr; when the
/// destination fails, keeps it in the temporary directory instead.
fn write_envelope(
    out: output::Outfile,
    bytes: &[u8],
    step: &str,
    backend: &str,
    keyids: &[String],
) -> anyhow::Result<()> {
    let dest = out.describe();
    let signed = keyids.join(", ");
    match out.commit(bytes) {
        Ok(()) => {
            eprintln!("cilock: step {step:?}: attestation written to {dest} (backend: {backend}; signed by {signed})");
            Ok(())
        }
        Err(e) => {
            let kept = output::keep_fallback(step, bytes).with_context(|| {
                format!("{e:#}; keeping it in the temporary directory failed too")
            })?;
            bail!(
                "{e:#}; the attestation (backend: {backend}; signed by {signed}) was written to {} instead",
                kept.display()
            )
        }
    }
}

/// Where the command's stdout passes through: cilock's stdout, or its
/// stderr when the envelope goes to stdout (`-o -`), so that stdout
/// carries the envelope alone.
fn stdout_sink(out: &output::Outfile) -> Sink {
    if matches!(out, output::Outfile::Stdout) {
        Sink::Stderr
    } else {
        Sink::Stdout
    }
}

/// The wait for descendants once interrupted: at most `--kill-after`
/// (none once the command was killed: its step is killed next).
fn wait_on_interrupt(wait: Option<Duration>, a: &RunArgs, sig: &Interrupts) -> Option<Duration> {
    match sig.interrupted() {
        Some(i) if i.killed => Some(Duration::ZERO),
        Some(_) => Some(wait.map_or(a.kill_after, |w| w.min(a.kill_after))),
        None => wait,
    }
}

/// How long the command's output is read after its root exited (a
/// process it left running may hold the pipes open): the wait for
/// descendants, at most `--kill-after` once interrupted, 1 s once killed.
fn output_bound(wait: Option<Duration>, a: &RunArgs, sig: &Interrupts) -> Duration {
    let w = wait.unwrap_or(cilock_api::DEFAULT_RUN_WAIT_DESCENDANTS);
    let w = match sig.interrupted() {
        Some(i) if i.killed => Duration::ZERO,
        Some(_) => w.min(a.kill_after),
        None => w,
    };
    w.max(Duration::from_secs(1))
}

fn captured(o: (String, u64, u64), e: (String, u64, u64)) -> Captured {
    let mut truncated = BTreeMap::new();
    if o.1 > 0 {
        truncated.insert("stdout".to_string(), o.1);
    }
    if e.1 > 0 {
        truncated.insert("stderr".to_string(), e.1);
    }
    let total = [("stdout".to_string(), o.2), ("stderr".to_string(), e.2)]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    Captured {
        stdout: o.0,
        stderr: e.0,
        truncated,
        total,
    }
}

/// Where passed-through output goes.
#[derive(Clone, Copy)]
enum Sink {
    Stdout,
    Stderr,
}

/// An output being passed through and captured.
struct Tee {
    /// The kept prefix (raw bytes, at most [`MAX_CAPTURE_ENCODED`]), and
    /// the total of bytes read.
    kept: Arc<Mutex<(Vec<u8>, u64)>>,
    /// Closed when the output reached its end.
    done: mpsc::Receiver<()>,
    _thread: JoinHandle<()>,
}

impl Tee {
    /// The captured output, the count of bytes not captured and the total
    /// read, once the
    /// pipe is closed or at `deadline` (a process the command left running
    /// may keep it open: what it writes later still passes through while
    /// cilock runs, but is not captured).
    fn finish(self, deadline: Instant) -> (String, u64, u64) {
        let open = matches!(
            self.done
                .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let g = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let (mut s, used) = encode_bounded(&g.0, MAX_CAPTURE_ENCODED - MARKER_ROOM);
        let dropped = g.1.saturating_sub(used as u64);
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
        (s, dropped, g.1)
    }
}

/// What a character costs in a JSON string as serde_json writes it.
fn json_cost(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `raw` (decoded lossily: an invalid sequence
/// becomes U+FFFD) whose JSON string encoding costs at most `budget`
/// bytes, and how many raw bytes it covers.
fn encode_bounded(raw: &[u8], budget: usize) -> (String, usize) {
    let mut s = String::new();
    let (mut cost, mut used) = (0usize, 0usize);
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            let k = json_cost(c);
            if cost + k > budget {
                return (s, used);
            }
            cost += k;
            used += c.len_utf8();
            s.push(c);
        }
        if !chunk.invalid().is_empty() {
            if cost + 3 > budget {
                return (s, used);
            }
            cost += 3;
            used += chunk.invalid().len();
            s.push('\u{FFFD}');
        }
    }
    (s, used)
}

/// Copies a child's output to ours while keeping (a bounded prefix of) it.
/// The encoded size is never below the raw size, so the raw bytes kept
/// are bounded by the encoded bound.
fn tee<R: Read + Send + 'static>(mut from: R, to: Sink) -> Tee {
    let kept = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let (tx, done) = mpsc::channel();
    let k = kept.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut to: Box<dyn Write> = match to {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
        };
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
            let room = MAX_CAPTURE_ENCODED.saturating_sub(g.0.len());
            g.0.extend_from_slice(&buf[..n.min(room)]);
            g.1 += n as u64;
        }
        drop(tx);
    });
    Tee {
        kept,
        done,
        _thread: thread,
    }
}

/// SIGINT/SIGTERM/SIGHUP while `cilock run` runs.
///
/// The command stays in cilock's process group, so a terminal's Ctrl-C or
/// hangup (generated by the kernel for the whole foreground group) and a
/// runner that signals the process group reach it directly, and a runner
/// that kills the group (SIGKILL) kills it too. A signal *sent* to cilock
/// (`kill PID`, a CI runner cancelling the job) is forwarded to the
/// command's root process, as a shell running the step would receive it.
/// cilock then waits for the command at most `--kill-after`; a second
/// signal, or the end of that wait, kills it (SIGKILL to the root, then
/// every process left in the step). The attestation is written, marked
/// `interrupted`, and cilock exits 128+signal.
///
/// The handlers only write two bytes to a pipe (async-signal-safe); a
/// thread does the rest. Signals ignored when cilock started stay ignored
/// (and the command inherits that).
struct Interrupts {
    handled: Vec<libc::c_int>,
    state: Arc<(Mutex<IntState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct IntState {
    /// A pidfd on the command's root process.
    root: Option<OwnedFd>,
    /// The root's pid (for messages).
    root_pid: i32,
    kill_after: Duration,
    /// The first signal, and whether it must be forwarded.
    first: Option<(libc::c_int, bool)>,
    forwarded: bool,
    killed: bool,
    /// When the command is killed if still running.
    deadline: Option<Instant>,
    /// The command's root was reaped: nothing is sent to it any more.
    ended: bool,
}

impl Interrupts {
    fn install() -> anyhow::Result<Interrupts> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        // The handler must never block.
        nix::fcntl::fcntl(
            &w,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .context("fcntl")?;
        let state = Arc::new((Mutex::new(IntState::default()), std::sync::Condvar::new()));
        let wfd = w.as_raw_fd();
        let mut handled = Vec::new();
        for s in FORWARDED {
            // SAFETY: plain sigaction queries.
            let ignored = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(s, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
            };
            if ignored {
                continue;
            }
            // SAFETY: the action only calls write(2) on a pipe that lives
            // as long as the process (`w` is leaked below).
            unsafe {
                signal_hook_registry::register_sigaction(s, move |info: &libc::siginfo_t| {
                    // si_code <= 0: sent by a process (kill, sigqueue,
                    // tkill); > 0: generated by the kernel (a terminal).
                    let b = [s as u8, u8::from(info.si_code <= 0)];
                    libc::write(wfd, b.as_ptr().cast(), 2);
                })
            }
            .with_context(|| format!("installing a handler for signal {s}"))?;
            handled.push(s);
        }
        std::mem::forget(w);
        let st = state.clone();
        std::thread::Builder::new()
            .name("cilock-signals".into())
            .spawn(move || Self::serve(std::fs::File::from(r), st))
            .context("signal thread")?;
        let ticker = state.clone();
        std::thread::Builder::new()
            .name("cilock-kill-after".into())
            .spawn(move || Self::deadline_watch(ticker))
            .context("signal thread")?;
        Ok(Interrupts { handled, state })
    }

    fn serve(mut r: std::fs::File, state: Arc<(Mutex<IntState>, std::sync::Condvar)>) {
        let mut b = [0u8; 2];
        while r.read_exact(&mut b).is_ok() {
            let (sig, from_process) = (b[0] as libc::c_int, b[1] != 0);
            let mut g = state.0.lock().unwrap_or_else(|e| e.into_inner());
            if g.ended {
                eprintln!(
                    "cilock: {} received after the command ended: finishing the attestation",
                    sig_name(sig)
                );
                continue;
            }
            match g.first {
                None => {
                    g.first = Some((sig, from_process));
                    eprintln!(
                        "cilock: {} received: {}; the attestation will be written (a second signal kills the command)",
                        sig_name(sig),
                        if from_process {
                            "forwarding it to the command"
                        } else {
                            "the command got it from the terminal too"
                        }
                    );
                    if g.root_pid > 0 {
                        g.start(sig, from_process);
                    }
                }
                Some(_) => {
                    eprintln!(
                        "cilock: {} received again: killing the command",
                        sig_name(sig)
                    );
                    g.kill();
                }
            }
            state.1.notify_all();
        }
    }

    /// Kills the command when it outlives `--kill-after` after a signal.
    fn deadline_watch(state: Arc<(Mutex<IntState>, std::sync::Condvar)>) {
        let mut g = state.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.ended {
                return;
            }
            match g.deadline {
                Some(d) if Instant::now() >= d => {
                    if !g.killed {
                        eprintln!(
                            "cilock: the command did not exit within {:?} of the signal: killing it",
                            g.kill_after
                        );
                        g.kill();
                    }
                    g.deadline = None;
                }
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    g = state
                        .1
                        .wait_timeout(g, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => {
                    g = state.1.wait(g).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// The command's root process is `pid` (not yet reaped): signals from
    /// now on go to it, and one that came before is delivered now.
    fn set_root(&self, pid: i32, kill_after: Duration) {
        // SAFETY: pidfd_open on our own, unreaped child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let mut g = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        if fd >= 0 {
            // SAFETY: a new fd we own.
            g.root = Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
        }
        g.root_pid = pid;
        g.kill_after = kill_after;
        if let Some((sig, _)) = g.first {
            // It came before the command ran: the command did not get it.
            g.start(sig, true);
        }
        self.state.1.notify_all();
    }

    /// The command's root was reaped.
    fn command_ended(&self) {
        let mut g = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        g.ended = true;
        g.root = None;
        self.state.1.notify_all();
    }

    /// Refuses to start the command once interrupted.
    fn check_not_yet(&self) -> anyhow::Result<()> {
        let g = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sig, _)) = g.first {
            bail!(
                "interrupted by {} before the command started: nothing ran, no attestation",
                sig_name(sig)
            );
        }
        Ok(())
    }

    fn interrupted(&self) -> Option<Interrupted> {
        let g = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        g.first.map(|(sig, _)| Interrupted {
            signal: sig_name(sig),
            number: sig,
            forwarded: g.forwarded,
            killed: g.killed,
        })
    }

    /// The exit of `run`: 128+signal for a run interrupted before the
    /// command started (an error then), else `r`.
    fn exit(&self, r: anyhow::Result<u8>) -> anyhow::Result<u8> {
        match (r, self.interrupted()) {
            (Err(e), Some(i)) => {
                eprintln!("cilock: {e:#}");
                Ok(exit_byte(128 + i.number))
            }
            (r, _) => r,
        }
    }
}

impl IntState {
    /// Forwards the first signal (when it must be) and arms the deadline.
    fn start(&mut self, sig: libc::c_int, forward: bool) {
        if forward && !self.forwarded {
            self.forwarded = self.send(sig);
        }
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.kill_after);
        }
    }

    /// SIGKILL to the root and to its descendants found now (those that
    /// escape, e.g. forked meanwhile or already orphaned, are killed with
    /// the step's cgroup when it ends, or by the ptrace backend after its
    /// wait).
    fn kill(&mut self) {
        let running = self.root_pid > 0 && !self.ended;
        if running {
            for _ in 0..3 {
                let d = descendants(self.root_pid);
                if d.is_empty() {
                    break;
                }
                for p in d {
                    let _ =
                        nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        // Not running yet: check_not_yet refuses to start it.
        if self.send(libc::SIGKILL) || !running {
            self.killed = true;
        }
    }

    /// Sends `sig` to the root: through its pidfd, or by pid on a kernel
    /// without pidfds (the root is our unreaped child until `ended`).
    fn send(&self, sig: libc::c_int) -> bool {
        if self.ended || self.root_pid <= 0 {
            return false;
        }
        // SAFETY: pidfd_send_signal on our pidfd; kill(2) on our child.
        let r = unsafe {
            match &self.root {
                Some(fd) => libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ),
                None => libc::kill(self.root_pid, sig) as libc::c_long,
            }
        };
        if r != 0 {
            tracing::debug!(
                pid = self.root_pid,
                "sending signal {sig}: {}",
                std::io::Error::last_os_error()
            );
        }
        r == 0
    }
}

/// The live descendants of `root` (from the parent pids in /proc).
fn descendants(root: i32) -> Vec<i32> {
    let mut kids: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // After the last ')': state, then the parent pid.
            let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            kids.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &k in kids.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if !out.contains(&k) && out.len() < 100_000 {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

fn sig_name(sig: libc::c_int) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
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
    /// The command's name, for messages.
    argv0: String,
}

impl GatedChild {
    /// `reset`: signals whose handlers the child puts back to the default
    /// right after the fork.
    fn spawn(cmd: &[String], reset: &[libc::c_int]) -> anyhow::Result<GatedChild> {
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
        let reset: Vec<libc::c_int> = reset.to_vec();
        // The handled signals are blocked in this thread across the fork,
        // so that cilock's handler never runs in the child: the child puts
        // them back to the default first, then unblocks them.
        let mut block = nix::sys::signal::SigSet::empty();
        for &s in &reset {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(s) {
                block.add(sig);
            }
        }
        let mut old = nix::sys::signal::SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_BLOCK,
            Some(&block),
            Some(&mut old),
        )
        .context("blocking signals")?;
        let old_raw: libc::sigset_t = *old.as_ref();
        // SAFETY: other threads may run (signals, engine): the child only
        // makes async-signal-safe calls on memory allocated before the
        // fork until it execs.
        let forked = unsafe { nix::unistd::fork() };
        if !matches!(forked, Ok(ForkResult::Child)) {
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&old),
                None,
            );
        }
        match forked.context("fork")? {
            ForkResult::Child => unsafe {
                // cilock's handlers would act for cilock: a signal now is
                // the command's (it dies at the gate).
                for &s in &reset {
                    libc::signal(s, libc::SIG_DFL);
                }
                libc::sigprocmask(libc::SIG_SETMASK, &old_raw, std::ptr::null_mut());
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
                argv0: cmd[0].clone(),
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
        output_bound: impl Fn() -> Duration,
        sink: Sink,
    ) -> anyhow::Result<(i32, Captured)> {
        let out = tee(
            std::fs::File::from(self.out_r.take().context("stdout taken")?),
            sink,
        );
        let err = tee(
            std::fs::File::from(self.errout_r.take().context("stderr taken")?),
            Sink::Stderr,
        );
        if let Some(g) = self.gate.take() {
            match nix::unistd::write(&g, b"1") {
                // The held child died before its release (a signal): no
                // reader is left. Carry on to its wait status, so the step
                // still ends and is attested.
                Ok(_) | Err(nix::errno::Errno::EPIPE) => {}
                Err(e) => return Err(e).context("releasing the command"),
            }
        }
        // exec succeeded when the error pipe closes without data.
        let mut errno = [0u8; 4];
        let mut ef = std::fs::File::from(self.err_r.take().context("error pipe taken")?);
        let exec_err = match ef.read(&mut errno) {
            Ok(4) => Some(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno))),
            _ => None,
        };
        let status = loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.context("waiting for the command")?,
            }
        };
        self.reaped = true;
        let code = match status {
            WaitStatus::Exited(_, c) => c,
            WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => 1,
        };
        let deadline = Instant::now() + output_bound();
        let mut cap = captured(out.finish(deadline), err.finish(deadline));
        if let Some(e) = exec_err {
            let msg = format!("cilock: cannot execute the command {:?}: {e}\n", self.argv0);
            eprint!("{msg}");
            cap.stderr.push_str(&msg);
        }
        Ok((code, cap))
    }
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        if !self.reaped {
            self.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_cost_is_what_serde_json_writes() {
        let all: String = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain(['é', '€', '😀', '\u{FFFD}'])
            .collect();
        for c in all.chars() {
            let enc = serde_json::to_string(&c.to_string()).unwrap();
            assert_eq!(json_cost(c), enc.len() - 2, "{c:?}");
        }
    }

    #[test]
    fn the_prefix_fits_the_budget_and_counts_raw_bytes() {
        // NUL costs 6: 10 of them in 60 bytes.
        let (s, used) = encode_bounded(&[0u8; 100], 64);
        assert_eq!((s.len(), used), (10, 10));
        assert_eq!(serde_json::to_string(&s).unwrap().len() - 2, 60);
        // Invalid UTF-8: one U+FFFD (3 bytes) per invalid sequence.
        let (s, used) = encode_bounded(b"ab\xff\xfecd", 100);
        assert_eq!(s, "ab\u{FFFD}\u{FFFD}cd");
        assert_eq!(used, 6);
        let (s, used) = encode_bounded(b"ab\xffcd", 4);
        assert_eq!((s.as_str(), used), ("ab", 2));
        // A character is never split.
        let (s, used) = encode_bounded("€€".as_bytes(), 5);
        assert_eq!((s.as_str(), used), ("€", 3));
        // Everything fits.
        let (s, used) = encode_bounded(b"plain\n", 100);
        assert_eq!((s.as_str(), used), ("plain\n", 6));
    }
}
