//! The ptrace fallback tracer, used where eBPF is unavailable (containers
//! without CAP_BPF, old kernels, unprivileged users).
//!
//! [`run`] spawns the step command with a seccomp filter that returns
//! `SECCOMP_RET_TRACE` only for the syscalls of interest (opens, network
//! calls, `write` for egress capture, and the suspicious calls), so the rest
//! of the workload runs at full speed. Every descendant is followed through
//! `PTRACE_O_TRACE{FORK,VFORK,CLONE,EXEC,EXIT,SECCOMP}` (all tracees are
//! `PTRACE_SEIZE`d, so group-stops are reported as `PTRACE_EVENT_STOP` and
//! parked with `PTRACE_LISTEN`). [`follow`] attaches to a running process
//! tree instead; it cannot install a filter there, so it stops on every
//! syscall (`PTRACE_SYSCALL`) and is much slower.
//!
//! Signals: every signal is re-injected unchanged, including SIGSTOP,
//! SIGTSTP, SIGTTIN and SIGTTOU; the resulting group-stop is kept with
//! `PTRACE_LISTEN`, so job control inside the step behaves as untraced (a
//! stopped job stays stopped until SIGCONT, and [`run`] keeps waiting for it,
//! as the step itself would).
//!
//! Modules: [`seccomp`] (filter), [`syscalls`] (numbers/decoding),
//! [`memory`] (tracee memory), [`paths`] (`/proc` lookups), `cilock_trace::decode::sockaddr`,
//! `spawn` (traced spawn handshake), `tracer` (the wait loop) and
//! `modes` ([`PtraceBackend`]: a follower thread per daemon step, or a
//! spawned command for `cilock run` without a daemon).

pub mod memory;
mod modes;
pub mod paths;
pub mod seccomp;
mod spawn;
pub mod syscalls;
mod tracer;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use modes::{PtraceBackend, SpawnedRun};

use crate::backend::{BackendKind, CaptureInfo, Concern, Counting, Hook, Limitation};
use cilock_trace::TraceEvent;

/// Configuration of the ptrace backend.
#[derive(Clone, Debug)]
pub struct PtraceConfig {
    /// The cilock daemon's pid: kill/tkill/tgkill/pidfd_send_signal and
    /// ptrace aimed at it are reported as `Syscall` events.
    pub daemon_pid: Option<u32>,
    /// Capture egress payloads (DNS queries, the first bytes of TCP streams
    /// until a TLS ClientHello is complete) and DNS answers. Needs a stop on
    /// every `write`, `writev`, `recvfrom` and `recvmsg` in [`run`]; turn
    /// off to trade that evidence for speed.
    pub capture_egress: bool,
    /// Most bytes of one `Egress` event.
    pub egress_event_cap: usize,
    /// Most bytes captured per TCP socket while waiting for a ClientHello.
    pub egress_stream_cap: usize,
    /// Most `Egress` events per datagram socket.
    pub egress_datagrams_per_socket: u32,
    /// Drop to this `(uid, gid)` in the child after installing the filter
    /// (so the filter can be installed without no_new_privs while the child
    /// still has CAP_SYS_ADMIN). Do not use `Command::uid` for that: std
    /// changes ids before our pre-exec hook runs, forcing no_new_privs.
    pub run_as: Option<(u32, u32)>,
    /// [`run`]: after the command's root process exited, how long to wait
    /// for its descendants; `None` waits until they are all gone. Those
    /// left when it runs out are killed (under the seccomp filter they
    /// cannot run untraced) and reported in [`RunOutcome::survivors`].
    pub wait_descendants: Option<std::time::Duration>,
}

/// How a traced [`run_outcome`] ended.
#[derive(Clone, Debug, Default)]
pub struct RunOutcome {
    /// The root's exit code (128+signal for a signal death).
    pub code: i32,
    /// Processes still running when the wait for descendants ran out
    /// (killed since).
    pub survivors: Vec<u32>,
    /// How long the descendants were waited for after the root's exit.
    pub waited: std::time::Duration,
}

impl Default for PtraceConfig {
    fn default() -> Self {
        PtraceConfig {
            daemon_pid: None,
            capture_egress: true,
            egress_event_cap: 4096,
            egress_stream_cap: 16 * 1024,
            egress_datagrams_per_socket: 16,
            run_as: None,
            wait_descendants: None,
        }
    }
}

/// Errors of the ptrace backend.
#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    /// The command could not be started (the OS error from spawn/exec).
    #[error("cannot start the traced command: {0}")]
    Spawn(#[source] std::io::Error),
    /// Attaching to a process failed.
    #[error("cannot attach to pid {pid}: {source}")]
    Attach {
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The traced-spawn handshake with the child failed.
    #[error("traced spawn handshake failed: {0}")]
    Handshake(String),
    /// waitpid failed unexpectedly.
    #[error("waitpid failed: {0}")]
    Wait(#[source] nix::Error),
    /// The process to follow does not exist.
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
}

/// Why the ptrace backend cannot work here ([`probe`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// `/proc/self/status` could not be read.
    #[error("{0}")]
    Status(#[source] std::io::Error),
    /// The kernel has no seccomp.
    #[error("kernel without CONFIG_SECCOMP (no Seccomp: line in /proc/self/status)")]
    NoSeccomp,
    /// Yama forbids ptrace.
    #[error("Yama ptrace_scope=3: ptrace is disabled")]
    YamaDisabled,
    /// No program to probe with.
    #[error("no /bin/true to probe with")]
    NoTrue,
    /// The probe run did not behave as a traced `true`.
    #[error("probe run of {exe} returned {code} with {execs} exec events")]
    Unexpected {
        /// The program run.
        exe: &'static str,
        /// Its exit code.
        code: i32,
        /// Exec events seen.
        execs: u32,
    },
    /// The probe run failed.
    #[error("{0}")]
    Run(#[source] PtraceError),
}

/// Spawns `cmd` traced and follows it and every descendant until all traced
/// processes have exited (not just the root), calling `on_event` on this
/// thread for each event. `on_spawn` gets the `Child` as soon as the exec
/// succeeded (take its pipes there; do not `wait` on it: the root is reaped
/// here). Returns the root's exit code (128+signal for a signal death).
///
/// The spawn itself runs on a short-lived helper thread while this thread
/// `PTRACE_SEIZE`s the forked child before it installs the seccomp filter
/// and execs; this thread then becomes the tracer. Nothing else in the
/// process may call `waitpid(-1)`/`wait()` without `__WNOTHREAD`, or it can
/// steal ptrace stops.
pub fn run(
    cmd: std::process::Command,
    cfg: &PtraceConfig,
    on_spawn: impl FnOnce(&mut std::process::Child),
    on_event: impl FnMut(TraceEvent),
) -> Result<i32, PtraceError> {
    spawn::run(cmd, cfg, on_spawn, on_event).map(|o| o.code)
}

/// [`run`], bounded by [`PtraceConfig::wait_descendants`] after the root's
/// exit, returning what survived that wait.
pub fn run_outcome(
    cmd: std::process::Command,
    cfg: &PtraceConfig,
    on_spawn: impl FnOnce(&mut std::process::Child),
    on_event: impl FnMut(TraceEvent),
) -> Result<RunOutcome, PtraceError> {
    spawn::run(cmd, cfg, on_spawn, on_event)
}

/// Follows the running process `pid`, its threads and its existing
/// descendants, and everything they start (`PTRACE_SEIZE`, every syscall
/// stops since no filter can be installed), until `stop` becomes true or all
/// of them exited; then detaches cleanly (the processes keep running).
pub fn follow(
    pid: u32,
    cfg: &PtraceConfig,
    stop: Arc<AtomicBool>,
    on_event: impl FnMut(TraceEvent),
) -> Result<(), PtraceError> {
    tracer::follow(pid, cfg, stop, on_event)
}

/// What the ptrace backend captures with, chosen for `reason`.
pub fn capture_info(reason: String) -> CaptureInfo {
    CaptureInfo {
        kind: BackendKind::Ptrace,
        reason,
        hooks: hooks(),
        limitations: limitations(),
        counting: Counting::ProcessTable,
    }
}

/// How each kind of evidence is captured, for the attestation.
fn hooks() -> Vec<Hook> {
    [
        (
            Concern::ProcessTree,
            "ptrace:PTRACE_O_TRACEFORK,TRACEVFORK,TRACECLONE,TRACEEXIT (tids mapped to tgids via /proc/TID/status)",
        ),
        (
            Concern::Exec,
            "ptrace:PTRACE_EVENT_EXEC (exe /proc/PID/exe, cwd /proc/PID/cwd, argv /proc/PID/cmdline, filename from AT_EXECFN)",
        ),
        (
            Concern::FileOpen,
            "ptrace+seccomp:open,openat,openat2,creat,open_by_handle_at (syscall-exit; path readlink /proc/PID/fd/RET, stamp fstat)",
        ),
        (
            Concern::Network,
            "ptrace+seccomp:connect,bind,sendto,sendmsg,sendmmsg (sockaddr via process_vm_readv)",
        ),
        (
            Concern::WrittenFiles,
            "ptrace+seccomp:close,dup2,dup3,close_range (syscall entry) + PTRACE_EVENT_EXIT: stat /proc/TID/fd/N of the fds the process opened for writing",
        ),
        (
            Concern::Egress,
            "ptrace+seccomp:write,sendto,sendmsg,sendmmsg payload prefixes (DNS over UDP, DNS over TCP streams, TCP until a TLS ClientHello is complete) + recvfrom/recvmsg DNS answers",
        ),
        (
            Concern::SuspiciousSyscalls,
            syscalls::SUSPICIOUS_HOOK,
        ),
        (
            Concern::CgroupLeave,
            "ptrace+seccomp:write to an fd opened on cgroup.procs/tasks/cgroup.threads",
        ),
        (
            Concern::FollowMode,
            "ptrace:PTRACE_SEIZE+PTRACE_SYSCALL (no filter)",
        ),
    ]
    .into_iter()
    .map(|(concern, how)| Hook {
        concern,
        how: how.to_string(),
    })
    .collect()
}

/// What this backend cannot see; goes into the attestation.
pub fn limitations() -> Vec<Limitation> {
    let c = PtraceConfig::default();
    let mut v: Vec<Limitation> = [
        "io_uring: files opened and data sent through io_uring submissions are invisible (io_uring_setup is reported)",
        "anything a process did before it was traced (follow mode: before attach) is not recorded",
        "a process that is already traced by someone else cannot be followed; tracees cannot be traced by debuggers/strace inside the step (their PTRACE_ATTACH/TRACEME fails with EPERM)",
        "when the tracer lacks CAP_SYS_ADMIN the kernel requires no_new_privs for the seccomp filter: setuid/setcap programs (sudo) do not gain privileges inside the step",
        "file opens are recorded at syscall exit; the content may change between the open and hashing (the FileStamp tells)",
        "mmap/exec of already open fds, reads/writes through fds inherited from outside the step, and fds passed over Unix sockets are not opens and are not recorded",
        "32-bit (int 0x80) syscalls: only opens, connect/bind and the main suspicious calls are decoded; socketcall(2)-multiplexed network calls are not",
        "egress capture sees write/writev/sendto/sendmsg/sendmmsg on sockets connected or sent to in the same process; pwritev/splice/sendfile payloads and sockets inherited across fork are not captured",
        "cgroup.procs writes are detected only on the fd returned by the open (not after dup2, e.g. shell redirections)",
        "ptrace keeps tracing a process that moves to another cgroup (it follows the process tree, not the cgroup): leftStep marks a move seen as a write of its pid to cgroup.procs, and what it does afterwards is still recorded; a child created with clone3(CLONE_INTO_CGROUP) is traced like any child and not marked; processes that enter the step's cgroup from outside are not seen",
        "follow mode stops on every syscall (no seccomp filter can be added to a running process): large slowdown",
        "processes that leave the traced tree via a daemon (docker, systemd-run) are not followed",
        "paths longer than PATH_MAX (4096 bytes), which /proc cannot show, are rebuilt by walking up their directories (up to 16 KiB, else truncated behind /…/) and are not hashed; a file opened there by a multi-component name whose directory is no open fd of the process keeps only its inode (/…/?(inode N))",
        "a written file is closed by close-on-exec at an exec without an observable close: it gets no digest (unhashedOpens says so); only fds a process opened itself are followed (not dups made with fcntl F_DUPFD, nor fds inherited across fork)",
        "DNS answers are read from recvfrom/recvmsg on UDP sockets that sent a DNS query (the first 4096 bytes of a reply, the first iovec of a recvmsg); replies read with read/readv/recvmmsg and DNS over TCP replies are not recorded",
        "TLS server names hidden by Encrypted Client Hello, and QUIC (HTTP/3) ClientHellos, are not recorded",
        "cilock run: descendants still running when the wait for them (--wait-descendants, run_wait_descendants) runs out are killed, not left running: under the seccomp filter a process cannot run untraced; they are aliveAtEnd and listed in trace.waitDescendants",
    ]
    .into_iter()
    .map(Limitation::fixed)
    .collect();
    v.push(Limitation::text(format!(
        "egress capture reads the first {} bytes written on each TCP stream (a ClientHello longer than that keeps its server name when the name lies in those bytes, as it does in real hellos, and is marked helloTruncated: its ALPN may be missing), {} bytes of each datagram and {} datagrams per socket, the first 16 iovecs of a writev/sendmsg and the first 8 messages of a sendmmsg",
        c.egress_stream_cap, c.egress_event_cap, c.egress_datagrams_per_socket
    )));
    v.push(Limitation::text(format!(
        "DNS over TCP is parsed on port 53 and on any port whose stream starts with a strictly valid length-prefixed DNS query, in the first {} writes and {} bytes of the stream",
        tracer::DNS_TCP_WRITES, c.egress_stream_cap
    )));
    v
}

/// Whether the ptrace backend can work here; the reason when it cannot.
pub fn probe() -> Result<(), ProbeError> {
    spawn::probe()
}

/// A JSON rendering of an event (for debugging tools and the
/// `ptrace_run` example; not a stable format): `TraceEvent`'s `Serialize`.
pub fn event_to_json(ev: &TraceEvent) -> serde_json::Value {
    serde_json::to_value(ev).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_info_keeps_the_attested_hook_keys() {
        let info = capture_info("why".into());
        assert_eq!(info.kind.name(), "ptrace");
        assert_eq!(info.reason, "why");
        assert_eq!(info.counting, Counting::ProcessTable);
        let keys: Vec<String> = info.hooks_map().into_keys().collect();
        assert_eq!(
            keys,
            [
                "cgroup-leave",
                "egress",
                "exec",
                "file-open",
                "follow-mode",
                "network",
                "process-tree",
                "suspicious-syscalls",
                "written-files",
            ]
        );
        let lim = info.limitation_texts();
        assert_eq!(lim.len(), 19);
        assert!(lim[0].starts_with("io_uring: files opened"));
        assert!(lim[18].starts_with("DNS over TCP is parsed on port 53"));
    }
}
