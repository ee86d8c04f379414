//! The helper's side: `cilock-daemon __attest-helper`. The daemon has already
//! switched it to the step owner's identity, dropped every capability, set
//! the limits and made fd 3 the workdir (see `spawn.rs`). It makes itself
//! non-dumpable, forbids itself to execute programs (seccomp) and to write
//! to the file system (Landlock, where the kernel has it), reads one request from
//! stdin, runs one lifecycle stage, and writes one reply to stdout.
//!
//! Nothing here parses the daemon's configuration or touches its key: the
//! binary's `main` dispatches here before anything else.

use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use cilock_evidence::attestors::lifecycle::Lifecycle;
use cilock_evidence::attestors::{AttestError, AttestationContext, CompletedAttestation};

use super::protocol::{ProbeReport, Reply, Request, StageKind, WireAttestation, PROTOCOL_VERSION};

/// The most the helper reads from the daemon (the request is the daemon's
/// own; the bound only keeps a broken pipe from growing without end).
const MAX_REQUEST: u64 = 1 << 30;

/// The fd the daemon passes the workdir on.
pub const WORKDIR_FD: i32 = 3;

/// The helper's `main`.
pub fn main() -> ExitCode {
    // First: no ptrace, no /proc/PID/mem, no core from the job's uid.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if let Err(e) = deny_exec() {
        eprintln!("attest helper: cannot forbid exec: {e}");
        return ExitCode::from(3);
    }
    let landlock = match deny_writes() {
        Ok(abi) => abi,
        Err(e) => {
            eprintln!("attest helper: cannot restrict file system writes: {e}");
            return ExitCode::from(3);
        }
    };
    let _ = LANDLOCK_ABI.set(landlock);
    let mut buf = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_REQUEST).read_to_end(&mut buf) {
        eprintln!("attest helper: reading the request: {e}");
        return ExitCode::from(2);
    }
    let reply = match serde_json::from_slice::<Request>(&buf) {
        Ok(req) if req.version != PROTOCOL_VERSION => error_reply(format!(
            "protocol version {} (this helper speaks {PROTOCOL_VERSION})",
            req.version
        )),
        Ok(req) => {
            drop(buf);
            run(req)
        }
        Err(e) => error_reply(format!("bad request: {e}")),
    };
    let hold = reply.probe.as_ref().map(|_| ());
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, &reply).is_err() || out.flush().is_err() {
        return ExitCode::from(2);
    }
    drop(out);
    if hold.is_some() {
        // Probe: stay alive for `hold_ms` (set by run_probe).
        if let Some(ms) = HOLD_MS.get() {
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
    ExitCode::SUCCESS
}

static HOLD_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
static LANDLOCK_ABI: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// Landlock (where the kernel has it): the helper may read what its uid
/// can read, but not write, create, remove, rename, truncate or execute
/// any file. Returns the Landlock ABI version in force (0: none, the
/// kernel lacks Landlock; the seccomp filter and RLIMIT_FSIZE=0 remain).
fn deny_writes() -> std::io::Result<i64> {
    const CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no attribute.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u64>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi <= 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(0),
            _ => Err(e),
        };
    }
    // EXECUTE, WRITE_FILE, REMOVE_DIR, REMOVE_FILE, MAKE_* (ABI 1); REFER
    // (2); TRUNCATE (3); IOCTL_DEV (5). READ_FILE and READ_DIR stay free.
    let mut handled: u64 = (1 << 0) | (1 << 1) | (0x1ff << 4);
    if abi >= 2 {
        handled |= 1 << 13;
    }
    if abi >= 3 {
        handled |= 1 << 14;
    }
    if abi >= 5 {
        handled |= 1 << 15;
    }
    // struct landlock_ruleset_attr's first field (the ABI 1 size).
    let attr: u64 = handled;
    // SAFETY: `attr` is valid for its 8-byte size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const u64,
            std::mem::size_of::<u64>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the ruleset just created; no_new_privs is set.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd as libc::c_int, 0u32) };
    let e = std::io::Error::last_os_error();
    // SAFETY: closing the ruleset fd we own.
    unsafe { libc::close(fd as libc::c_int) };
    if r != 0 {
        return Err(e);
    }
    Ok(abi)
}

/// Tries to create a file in /tmp (world-writable): what the probe says
/// about the write restriction.
fn try_create_in_tmp() -> String {
    let p = format!("/tmp/.cilock-helper-probe-{}", std::process::id());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&p);
            "created".into()
        }
        Err(e) => format!("denied: {e}"),
    }
}

fn error_reply(msg: String) -> Reply {
    Reply {
        version: PROTOCOL_VERSION,
        error: Some(msg),
        ..Default::default()
    }
}

/// Installs a seccomp filter that makes `execve` and `execveat` fail with
/// EPERM: nothing the job controls (a `git` on its PATH, a repository's
/// fsmonitor) can ever run as a program inside the helper. Needs
/// no_new_privs, which the daemon set before exec.
fn deny_exec() -> std::io::Result<()> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let rules = [(libc::SYS_execve, vec![]), (libc::SYS_execveat, vec![])]
        .into_iter()
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| std::io::Error::other(e.to_string()))?;
    seccompiler::apply_filter(&prog).map_err(|e| std::io::Error::other(e.to_string()))
}

fn workdir_fd() -> Option<Arc<OwnedFd>> {
    // SAFETY: fstat on an fd number; a closed fd gives EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(WORKDIR_FD, &mut st) } != 0 {
        return None;
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return None;
    }
    // SAFETY: fd 3 is open (fstat succeeded), was given to this process by
    // the daemon for this purpose, and nothing else owns it.
    Some(Arc::new(unsafe { OwnedFd::from_raw_fd(WORKDIR_FD) }))
}

fn wire(c: &[CompletedAttestation]) -> Vec<WireAttestation> {
    c.iter().map(WireAttestation::from).collect()
}

fn run(req: Request) -> Reply {
    if req.stage == StageKind::Probe {
        let _ = HOLD_MS.set(req.hold_ms);
        return Reply {
            version: PROTOCOL_VERSION,
            probe: Some(probe()),
            ..Default::default()
        };
    }
    let mut lc = match Lifecycle::new(&req.attestations, req.options) {
        Ok(lc) => lc,
        Err(e) => return error_reply(e.to_string()),
    };
    let Some(fd) = workdir_fd() else {
        return error_reply("the workdir descriptor (fd 3) is missing".into());
    };
    let mut ctx = AttestationContext::new(req.workdir, req.env);
    ctx.workdir_fd = Some(fd);
    ctx.step_writes = req.step_writes;
    ctx.step = req.step;
    match req.stage {
        StageKind::Before => {
            let r = lc.before(&mut ctx);
            let mut reply = Reply {
                version: PROTOCOL_VERSION,
                attestations: wire(&ctx.completed),
                skipped: lc.skipped().to_vec(),
                selected: lc.selected().to_vec(),
                ..Default::default()
            };
            match r {
                Ok(()) => reply.state = Some(lc.state()),
                Err(e) => reply.error = Some(e.to_string()),
            }
            reply
        }
        StageKind::After => {
            let state = req.state.unwrap_or_default();
            let earlier = state.skipped.len();
            let earlier_selected = state.selected.len();
            lc.resume(state);
            ctx.completed = req
                .completed
                .into_iter()
                .map(CompletedAttestation::from)
                .collect();
            let n0 = ctx.completed.len();
            let r = lc.after(&mut ctx);
            let mut reply = Reply {
                version: PROTOCOL_VERSION,
                attestations: wire(&ctx.completed[n0.min(ctx.completed.len())..]),
                skipped: lc.skipped().iter().skip(earlier).cloned().collect(),
                selected: lc
                    .selected()
                    .iter()
                    .skip(earlier_selected)
                    .cloned()
                    .collect(),
                redactions: lc.redactions().to_vec(),
                ..Default::default()
            };
            match r {
                Ok(()) => {}
                Err(AttestError::Failed(m)) => reply.failure = Some(m),
                Err(e) => reply.error = Some(e.to_string()),
            }
            reply
        }
        StageKind::Probe => unreachable!("handled above"),
    }
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn probe() -> ProbeReport {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ids = |k: &str| -> Vec<u32> {
        status_field(&status, k)
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let mut caps = std::collections::BTreeMap::new();
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        caps.insert(k.to_string(), status_field(&status, &format!("{k}:")));
    }
    let mut rlimits = std::collections::BTreeMap::new();
    for (name, r) in [
        ("cpu", libc::RLIMIT_CPU),
        ("as", libc::RLIMIT_AS),
        ("fsize", libc::RLIMIT_FSIZE),
        ("nofile", libc::RLIMIT_NOFILE),
        ("core", libc::RLIMIT_CORE),
    ] {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills `l`.
        if unsafe { libc::getrlimit(r, &mut l) } == 0 {
            rlimits.insert(name.to_string(), l.rlim_cur);
        }
    }
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    ProbeReport {
        pid: std::process::id(),
        uids: ids("Uid:"),
        gids: ids("Gid:"),
        groups: nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
        caps,
        no_new_privs: status_field(&status, "NoNewPrivs:"),
        // SAFETY: prctl with integer arguments.
        dumpable: unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) },
        env: std::env::vars().collect(),
        rlimits,
        fds,
        fd3: std::fs::read_link(format!("/proc/self/fd/{WORKDIR_FD}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cwd: std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        landlock_abi: LANDLOCK_ABI.get().copied().unwrap_or(0),
        create_in_tmp: try_create_in_tmp(),
        cgroup: std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}
