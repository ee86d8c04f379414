//! The daemon's side of one helper run: start `<exe> __attest-helper` as
//! the step owner with no privileges, write the request, read a capped
//! reply, enforce the wall-clock timeout (SIGKILL), reap.
//!
//! Everything the child needs (groups, limits, paths) is computed before
//! the fork; the `pre_exec` hook only makes raw system calls, which are
//! async-signal-safe.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, BorrowedFd, RawFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::protocol::HELPER_ARG;

/// How the helper runs (the daemon's `[helper]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperConfig {
    /// PATH of the helper's (otherwise empty) environment.
    pub path: String,
    /// Wall-clock limit of one run; the helper is killed beyond it.
    pub timeout: Duration,
    /// RLIMIT_CPU (seconds).
    pub cpu_seconds: u64,
    /// RLIMIT_AS (bytes).
    pub memory: u64,
    /// Largest reply read (bytes); beyond it the helper is killed.
    pub max_reply: u64,
    /// The program to execute: the daemon's own binary, `/proc/self/exe`
    /// (works even after the file was replaced). Tests point it at the
    /// built `cilock-daemon`.
    pub exe: PathBuf,
}

/// Default PATH of the helper.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Default largest reply (bytes): the root daemon parses it.
pub const DEFAULT_MAX_REPLY: u64 = 64 << 20;

// The documents recorded whole (an SBOM, a SARIF report) fit in one reply
// with room for the rest of the after stage: a report at its bound must not
// get the helper killed and every after-stage attestation dropped.
const _: () = assert!(
    cilock_evidence::attestors::sbom::MAX_SBOM_BYTES
        + cilock_evidence::attestors::sarif::MAX_SARIF_BYTES
        + (16 << 20)
        <= DEFAULT_MAX_REPLY
);

impl Default for HelperConfig {
    fn default() -> Self {
        HelperConfig {
            path: DEFAULT_PATH.to_string(),
            timeout: Duration::from_secs(600),
            cpu_seconds: 600,
            memory: 4 << 30,
            max_reply: DEFAULT_MAX_REPLY,
            exe: PathBuf::from("/proc/self/exe"),
        }
    }
}

/// RLIMIT_NOFILE of the helper (the walk keeps one fd per directory level
/// at most; the tree depth the walkers accept is bounded well below this).
pub const HELPER_NOFILE: u64 = 1024;
/// stderr of the helper kept for messages.
const MAX_STDERR: usize = 16 << 10;

/// Who the helper runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// uid (the step owner).
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Identity {
    /// The identity of `uid` in the passwd/group databases: its primary gid
    /// and its groups (`getgrouplist`). A uid without a passwd entry gets
    /// `fallback_gid` (the peer's gid) and no supplementary group.
    pub fn of(uid: u32, fallback_gid: u32) -> Identity {
        use nix::unistd::{getgrouplist, Uid, User};
        match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(u)) => {
                let groups = CString::new(u.name.as_bytes())
                    .ok()
                    .and_then(|n| getgrouplist(&n, u.gid).ok())
                    .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                    .unwrap_or_else(|| vec![u.gid.as_raw()]);
                Identity {
                    uid,
                    gid: u.gid.as_raw(),
                    groups,
                }
            }
            _ => Identity {
                uid,
                gid: fallback_gid,
                groups: Vec::new(),
            },
        }
    }
}

/// Why a helper run gave no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The process could not be started.
    #[error("cannot start the attestor helper: {0}")]
    Spawn(std::io::Error),
    /// Talking to it failed.
    #[error("attestor helper I/O: {0}")]
    Io(std::io::Error),
    /// It ran past the timeout and was killed.
    #[error("the attestor helper ran longer than {0:?} and was killed")]
    Timeout(Duration),
    /// Its reply was larger than allowed; it was killed.
    #[error("the attestor helper's reply exceeds {0} bytes; it was killed")]
    TooLarge(u64),
    /// It was killed by a signal.
    #[error("the attestor helper was killed by signal {sig}{}", tail(.stderr))]
    Signal {
        /// The signal.
        sig: i32,
        /// The end of its stderr.
        stderr: String,
    },
    /// It exited with a failure status.
    #[error("the attestor helper exited with status {code}{}", tail(.stderr))]
    Exit {
        /// Exit status.
        code: i32,
        /// The end of its stderr.
        stderr: String,
    },
    /// Its reply is not a valid reply.
    #[error("the attestor helper's reply is invalid: {0}")]
    BadReply(String),
}

fn tail(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        return String::new();
    }
    let start = s.len().saturating_sub(512);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    format!(": {}", &s[start..])
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_VERSION_3: u32 = 0x2008_0522;

fn last_cap() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Runs the helper once: `request` on its stdin, the raw reply (at most
/// `cfg.max_reply` bytes) back. `workdir` becomes its fd 3. `on_spawn`
/// gets the helper's pid (tests look at it while it runs).
pub fn run(
    cfg: &HelperConfig,
    who: &Identity,
    workdir: Option<BorrowedFd<'_>>,
    request: &[u8],
    on_spawn: impl FnOnce(u32),
) -> Result<Vec<u8>, HelperError> {
    let mut cmd = Command::new(&cfg.exe);
    cmd.arg(HELPER_ARG)
        .env_clear()
        .env("PATH", &cfg.path)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    // Everything the hook uses, prepared before the fork.
    let (uid, gid) = (who.uid, who.gid);
    let groups: Vec<libc::gid_t> = who.groups.clone();
    let wd: Option<RawFd> = workdir.map(|f| f.as_raw_fd());
    let last_cap = last_cap();
    let daemon_pid = std::process::id() as libc::pid_t;
    let limits: [(libc::__rlimit_resource_t, u64); 5] = [
        (libc::RLIMIT_CPU, cfg.cpu_seconds),
        (libc::RLIMIT_AS, cfg.memory),
        (libc::RLIMIT_FSIZE, 0),
        (libc::RLIMIT_NOFILE, HELPER_NOFILE),
        (libc::RLIMIT_CORE, 0),
    ];
    let oom_path = CString::new("/proc/self/oom_score_adj").expect("no NUL");
    let hook = move || -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY (whole hook): raw system calls on prepared data only; no
        // allocation, no lock (async-signal-safe between fork and exec).
        unsafe {
            libc::setsid();
            // The helper is the first to go under memory pressure, never the
            // daemon (whose unit lowers its OOM score; children inherit it).
            let fd = libc::open(oom_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"1000".as_ptr().cast(), 4);
                libc::close(fd);
            }
            // fd 3 = the workdir; every other fd above 2 closes at exec.
            let first_closed = match wd {
                Some(3) => {
                    if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                        return Err(err());
                    }
                    4
                }
                Some(fd) => {
                    if libc::dup2(fd, 3) != 3 {
                        return Err(err());
                    }
                    4
                }
                None => 3,
            };
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            if libc::syscall(
                libc::SYS_close_range,
                first_closed as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                // Kernels before 5.11: one fcntl per possible fd.
                let mut l = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                    return Err(err());
                }
                let top = l.rlim_cur.min(1 << 20) as i32;
                for fd in first_closed..top {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            for (res, v) in limits {
                let l = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(res, &l) != 0 {
                    return Err(err());
                }
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                return Err(err());
            }
            if libc::setresgid(gid, gid, gid) != 0 {
                return Err(err());
            }
            // Capabilities: bounding set (needs CAP_SETPCAP, still held),
            // ambient, then the identity, then whatever is left.
            for cap in 0..=last_cap {
                if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                {
                    return Err(err());
                }
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(err());
            }
            if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 {
                return Err(err());
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                return Err(err());
            }
            let hdr = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let data = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            if libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) != 0 {
                return Err(err());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(err());
            }
            // After the uid change, which would clear it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(err());
            }
            if libc::getppid() != daemon_pid {
                // The daemon is gone already.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Cannot get root back.
            if uid != 0 && libc::setresuid(0, 0, 0) == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls.
    unsafe { cmd.pre_exec(hook) };

    let mut child = cmd.spawn().map_err(HelperError::Spawn)?;
    on_spawn(child.id());
    let started = Instant::now();
    let deadline = started + cfg.timeout;

    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|f| f.as_raw_fd()),
        stdout.as_ref().map(|f| f.as_raw_fd()),
        stderr.as_ref().map(|f| f.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd).map_err(HelperError::Io)?;
    }
    let keep_out = usize::try_from(cfg.max_reply.saturating_add(1)).unwrap_or(usize::MAX);
    let mut input = request;
    let mut out: Vec<u8> = Vec::new();
    let mut err: Vec<u8> = Vec::new();
    let kill = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let status = loop {
        if let Some(st) = child.try_wait().map_err(HelperError::Io)? {
            // Exited: take what is already in the pipes, never wait for EOF
            // (a descendant could hold them open).
            drain(&mut stdout, &mut out, keep_out);
            drain(&mut stderr, &mut err, MAX_STDERR);
            if out.len() as u64 > cfg.max_reply {
                return Err(HelperError::TooLarge(cfg.max_reply));
            }
            break st;
        }
        let now = Instant::now();
        if now >= deadline {
            kill(&mut child);
            return Err(HelperError::Timeout(cfg.timeout));
        }
        let wait_ms = (deadline - now).as_millis().min(50) as i32;
        let mut fds = Vec::with_capacity(3);
        if let Some(f) = &stdin {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        for fd in [
            stdout.as_ref().map(|f| f.as_raw_fd()),
            stderr.as_ref().map(|f| f.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(wait_ms.max(1) as u64));
            continue;
        }
        // SAFETY: `fds` is a valid array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                kill(&mut child);
                return Err(HelperError::Io(e));
            }
            continue;
        }
        if let Some(f) = &stdin {
            use std::io::Write as _;
            let mut w: &std::process::ChildStdin = f;
            match w.write(input) {
                Ok(k) => input = &input[k..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The helper stopped reading (it died: try_wait tells).
                Err(_) => input = &[],
            }
            if input.is_empty() {
                stdin = None; // EOF for the helper
            }
        }
        if read_some(&mut stdout, &mut out, keep_out) && out.len() as u64 > cfg.max_reply {
            kill(&mut child);
            return Err(HelperError::TooLarge(cfg.max_reply));
        }
        read_some(&mut stderr, &mut err, MAX_STDERR);
    };
    let stderr_text = String::from_utf8_lossy(&err).into_owned();
    if let Some(sig) = status.signal() {
        return Err(HelperError::Signal {
            sig,
            stderr: stderr_text,
        });
    }
    match status.code() {
        Some(0) => Ok(out),
        code => Err(HelperError::Exit {
            code: code.unwrap_or(-1),
            stderr: stderr_text,
        }),
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd this process owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads what is available without blocking; closes the pipe at EOF or on
/// an error. Keeps at most `keep` bytes in `buf` (the rest is discarded).
/// Returns whether anything was read.
fn read_some<R: std::io::Read>(pipe: &mut Option<R>, buf: &mut Vec<u8>, keep: usize) -> bool {
    let Some(p) = pipe.as_mut() else {
        return false;
    };
    let mut chunk = [0u8; 64 << 10];
    let mut any = false;
    // At most 16 chunks per call: a writer that never stops cannot keep
    // the caller here (it checks the deadline and the size between calls).
    for _ in 0..16 {
        match p.read(&mut chunk) {
            Ok(0) => {
                *pipe = None;
                return any;
            }
            Ok(k) => {
                any = true;
                let room = keep.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..k.min(room)]);
                if k < chunk.len() {
                    return any;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return any,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                *pipe = None;
                return any;
            }
        }
    }
    any
}

fn drain<R: std::io::Read>(pipe: &mut Option<R>, buf: &mut Vec<u8>, keep: usize) {
    // Bounded: 64 calls of at most 1 MiB past `keep` each.
    for _ in 0..64 {
        if !read_some(pipe, buf, keep) || buf.len() >= keep {
            return;
        }
    }
}
