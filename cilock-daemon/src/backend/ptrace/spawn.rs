//! Traced spawn: a helper thread runs `Command::spawn` (which blocks until
//! exec), while the calling thread — the tracer — `PTRACE_SEIZE`s the forked
//! child during a pipe handshake in its pre-exec hook:
//!
//! 1. child (pre-exec): writes its pid to pipe A, blocks reading pipe B;
//! 2. tracer: reads the pid, `PTRACE_SEIZE`s it with all options
//!    (`TRACESECCOMP` included, so `SECCOMP_RET_TRACE` never turns into
//!    ENOSYS), writes one byte to B;
//! 3. child: installs the seccomp filter (no_new_privs only if the kernel
//!    requires it), optionally drops to `run_as`, execs.
//!
//! `std::process::Command` is kept (so the caller's stdio, env, cwd and
//! pre-exec hooks apply) and the tracer reaps everything itself.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::mpsc;
use std::time::Duration;

use super::seccomp::{self, FilterSpec};
use super::tracer::{seize, Mode, Tracer};
use super::{ProbeError, PtraceConfig, PtraceError, RunOutcome};
use cilock_trace::TraceEvent;

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by us.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Waits up to `timeout` for `fd` to be readable.
fn poll_in(fd: i32, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd on the stack.
        let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return r > 0;
    }
}

pub(crate) fn run(
    mut cmd: std::process::Command,
    cfg: &PtraceConfig,
    on_spawn: impl FnOnce(&mut std::process::Child),
    on_event: impl FnMut(TraceEvent),
) -> Result<RunOutcome, PtraceError> {
    let prog = seccomp::build(&FilterSpec {
        trace_write: cfg.capture_egress,
        daemon_pid: cfg.daemon_pid,
    });
    let (a_r, a_w) = pipe_cloexec().map_err(PtraceError::Spawn)?;
    let (b_r, b_w) = pipe_cloexec().map_err(PtraceError::Spawn)?;
    let (ar, aw, br, bw) = (
        a_r.as_raw_fd(),
        a_w.as_raw_fd(),
        b_r.as_raw_fd(),
        b_w.as_raw_fd(),
    );
    let run_as = cfg.run_as;
    // SAFETY: the hook only makes async-signal-safe raw syscalls and uses
    // memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::close(ar);
            libc::close(bw);
            let pid: i32 = libc::getpid();
            let b = pid.to_ne_bytes();
            if libc::write(aw, b.as_ptr() as *const libc::c_void, 4) != 4 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(aw);
            let mut go = 0u8;
            let n = loop {
                let n = libc::read(br, &mut go as *mut u8 as *mut libc::c_void, 1);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break n;
            };
            libc::close(br);
            if n != 1 {
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
            seccomp::install(&prog)?;
            if let Some((uid, gid)) = run_as {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<std::process::Child>>();
    let helper = std::thread::Builder::new()
        .name("cilock-ptrace-spawn".into())
        .spawn(move || {
            let r = cmd.spawn();
            // The parent's copies of the child's pipe ends.
            drop(a_w);
            drop(b_r);
            let _ = tx.send(r);
        })
        .map_err(PtraceError::Spawn)?;

    // Handshake: read the child's pid (EOF means spawn failed before fork).
    let mut a_file = std::fs::File::from(a_r);
    let mut pidb = [0u8; 4];
    let got = poll_in(a_file.as_raw_fd(), Duration::from_secs(60))
        && a_file.read_exact(&mut pidb).is_ok();
    if !got {
        drop(b_w);
        let _ = helper.join();
        return Err(match rx.recv() {
            Ok(Err(e)) => PtraceError::Spawn(e),
            Ok(Ok(mut c)) => {
                let _ = c.kill();
                let _ = c.wait();
                PtraceError::Handshake("child did not report its pid".into())
            }
            Err(_) => PtraceError::Handshake("spawn thread died".into()),
        });
    }
    let pid = i32::from_ne_bytes(pidb) as u32;
    if let Err(e) = seize(pid, true) {
        drop(b_w);
        let _ = helper.join();
        if let Ok(Ok(mut c)) = rx.recv() {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(PtraceError::Attach { pid, source: e });
    }
    {
        let mut bfile = std::fs::File::from(b_w);
        use std::io::Write;
        if let Err(e) = bfile.write_all(&[1]) {
            return Err(PtraceError::Handshake(format!(
                "cannot release the child: {e}"
            )));
        }
    }

    let mut tracer = Tracer::new(Mode::Seccomp, cfg, pid, on_event);
    tracer.add_tid(pid, pid);
    tracer.mark_known(pid);
    let mut on_spawn = Some(on_spawn);
    let mut child_slot: Option<std::process::Child> = None;
    let mut spawn_err: Option<std::io::Error> = None;
    let ended = tracer.run_loop_bounded(cfg.wait_descendants, || {
        // Exec succeeded, so spawn() is returning (its CLOEXEC error pipe
        // closed at exec).
        match rx.recv() {
            Ok(Ok(mut c)) => {
                if let Some(f) = on_spawn.take() {
                    f(&mut c);
                }
                child_slot = Some(c);
            }
            Ok(Err(e)) => spawn_err = Some(e),
            Err(_) => {}
        }
    })?;
    let root_exec_seen = tracer.root_exec_seen;
    let code = tracer.root_code;
    drop(tracer);
    let _ = helper.join();
    if !root_exec_seen {
        // The exec failed: spawn() reports why.
        return Err(match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Err(e)) => PtraceError::Spawn(e),
            _ => PtraceError::Handshake("the child exited before exec".into()),
        });
    }
    if let Some(e) = spawn_err {
        return Err(PtraceError::Spawn(e));
    }
    // The root was reaped by the tracer (same thread group as its parent).
    drop(child_slot);
    let code =
        code.ok_or_else(|| PtraceError::Handshake("root exit status not observed".into()))?;
    Ok(RunOutcome {
        code,
        survivors: ended.survivors,
        waited: ended.waited,
    })
}

/// Checks that a child can be traced here: forks a child that stops
/// itself, seizes it and installs the filter path's prerequisites.
pub(crate) fn probe() -> Result<(), ProbeError> {
    // seccomp available?
    let st = std::fs::read_to_string("/proc/self/status").map_err(ProbeError::Status)?;
    if !st.lines().any(|l| l.starts_with("Seccomp:")) {
        return Err(ProbeError::NoSeccomp);
    }
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        if s.trim() == "3" {
            return Err(ProbeError::YamaDisabled);
        }
    }
    // Try a real traced run of /bin/true (covers ptrace denied by a
    // container seccomp profile, seccomp(2) refused, GET_SYSCALL_INFO).
    let exe = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or(ProbeError::NoTrue)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut execs = 0;
    let cfg = PtraceConfig::default();
    match run(
        cmd,
        &cfg,
        |_| {},
        |e| {
            if matches!(e, TraceEvent::Exec { .. }) {
                execs += 1;
            }
        },
    ) {
        Ok(o) if o.code == 0 && execs == 1 => Ok(()),
        Ok(RunOutcome { code, .. }) => Err(ProbeError::Unexpected { exe, code, execs }),
        Err(e) => Err(ProbeError::Run(e)),
    }
}
