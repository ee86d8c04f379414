//! The wait loop and per-tracee state machine.
//!
//! All tracees are `PTRACE_SEIZE`d (directly, or auto-attached through the
//! fork/clone options, which inherit the seize mode). Stops are handled as:
//!
//! * `PTRACE_EVENT_SECCOMP` (run mode): decode with
//!   `PTRACE_GET_SYSCALL_INFO`; calls whose result matters (opens) are
//!   resumed with `PTRACE_SYSCALL` to get their exit stop, the rest with
//!   `PTRACE_CONT`.
//! * syscall stops (`SIGTRAP|0x80`; every syscall in follow mode, the exit
//!   of pending calls in run mode).
//! * `PTRACE_EVENT_{FORK,VFORK,CLONE}`: a new tid; `Fork` events for new
//!   processes (thread-group ids from `/proc/TID/status`). The child's first
//!   stop may come before the parent's event; both orders are handled.
//! * `PTRACE_EVENT_EXEC`: the event message is the former tid. When a
//!   non-leader thread execs, it takes over the leader's tid and the other
//!   threads are gone: their state is dropped.
//! * `PTRACE_EVENT_STOP`: with a stop signal it is a group-stop → parked with
//!   `PTRACE_LISTEN` (SIGCONT wakes it); otherwise (new child, interrupt,
//!   wake-up after listen) it is resumed.
//! * signal-delivery stops: the signal is re-injected.
//! * exits: a process `Exit` is emitted when its last known thread is gone.
//!
//! `waitpid` always uses `__WALL|__WNOTHREAD` so that only this thread's
//! tracees are seen. Raw libc calls are used for waitpid/ptrace so that any
//! signal number (including real-time ones) is handled.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::memory::{read_bytes, read_cstr, read_u64};
use super::paths;
use super::syscalls::{self, Sys};
use super::{PtraceConfig, PtraceError};
use cilock_trace::decode::sockaddr::{self, MAX_SOCKADDR};
use cilock_trace::proto::dns::{dns_tcp_start, parse_dns_queries, DnsStart};
use cilock_trace::proto::tls::{parse_client_hello, ClientHello};
use cilock_trace::syscall::SuspiciousCall;
use cilock_trace::{FileStamp, NetCall, SockAddr, TraceEvent};

const PTRACE_EVENT_STOP: i32 = 128;
const OP_ENTRY: u8 = 1;
const OP_EXIT: u8 = 2;
const OP_SECCOMP: u8 = 3;

/// How tracees are resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A seccomp filter selects the stops (run).
    Seccomp,
    /// Every syscall entry/exit stops (follow).
    Syscall,
}

/// ptrace options for tracees.
pub(crate) fn options(exitkill: bool) -> libc::c_int {
    let mut o = libc::PTRACE_O_TRACESYSGOOD
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEEXIT
        | libc::PTRACE_O_TRACESECCOMP;
    if exitkill {
        o |= libc::PTRACE_O_EXITKILL;
    }
    o
}

fn ptrace_raw(
    req: libc::c_uint,
    tid: u32,
    addr: usize,
    data: usize,
) -> Result<libc::c_long, nix::Error> {
    nix::errno::Errno::clear();
    // SAFETY: ptrace requests used here take plain integers or pointers to
    // locals; invalid tids yield ESRCH.
    let r = unsafe {
        libc::ptrace(
            req,
            tid as libc::pid_t,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 && nix::errno::Errno::last_raw() != 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(r)
    }
}

/// `PTRACE_SEIZE` with options.
pub(crate) fn seize(tid: u32, exitkill: bool) -> Result<(), nix::Error> {
    ptrace_raw(libc::PTRACE_SEIZE, tid, 0, options(exitkill) as usize).map(drop)
}

fn get_event_msg(tid: u32) -> Option<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace_raw(
        libc::PTRACE_GETEVENTMSG,
        tid,
        0,
        &mut msg as *mut libc::c_ulong as usize,
    )
    .ok()
    .map(|_| msg as u64)
}

/// Decoded `PTRACE_GET_SYSCALL_INFO`.
#[derive(Clone, Copy, Debug)]
struct SysInfo {
    op: u8,
    arch: u32,
    nr: u64,
    args: [u64; 6],
    rval: i64,
}

fn syscall_info(tid: u32) -> Option<SysInfo> {
    // SAFETY: zeroed POD struct filled by the kernel.
    let mut info: libc::ptrace_syscall_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::ptrace_syscall_info>();
    ptrace_raw(
        libc::PTRACE_GET_SYSCALL_INFO,
        tid,
        size,
        &mut info as *mut _ as usize,
    )
    .ok()?;
    // SAFETY: the union member matching `op` is the one the kernel wrote.
    unsafe {
        Some(match info.op {
            OP_ENTRY => SysInfo {
                op: info.op,
                arch: info.arch,
                nr: info.u.entry.nr,
                args: info.u.entry.args,
                rval: 0,
            },
            OP_SECCOMP => SysInfo {
                op: info.op,
                arch: info.arch,
                nr: info.u.seccomp.nr,
                args: info.u.seccomp.args,
                rval: 0,
            },
            OP_EXIT => SysInfo {
                op: info.op,
                arch: info.arch,
                nr: 0,
                args: [0; 6],
                rval: info.u.exit.sval,
            },
            _ => SysInfo {
                op: info.op,
                arch: info.arch,
                nr: 0,
                args: [0; 6],
                rval: 0,
            },
        })
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// Writes captured of a DNS-over-TCP stream (each write is one or more
/// length-prefixed queries; stated in the limitations).
pub(crate) const DNS_TCP_WRITES: u32 = 16;

/// Work left for the syscall-exit stop of a tid.
#[derive(Clone, Copy, Debug)]
enum Pending {
    Open {
        flags: u32,
    },
    /// recvfrom/recvmsg on a UDP socket that sent a DNS query: the reply
    /// is read at exit. `buf` is the buffer (recvfrom) or the msghdr
    /// (recvmsg); `addr` the sender address buffer of recvfrom.
    Recv {
        fd: i64,
        buf: u64,
        addr: u64,
        msg: bool,
    },
}

#[derive(Debug)]
struct TidState {
    tgid: u32,
    pending: Option<Pending>,
}

/// What is captured from a socket.
#[derive(Clone, Debug)]
struct SockTrack {
    inode: u64,
    stream: bool,
    dst: Option<SocketAddr>,
    /// Stream waiting for a ClientHello (or DNS over TCP).
    buf: Vec<u8>,
    events: u32,
    done: bool,
    /// A DNS query was sent on this datagram socket (replies are read).
    dns: bool,
}

#[derive(Debug, Default)]
struct ProcState {
    threads: usize,
    socks: HashMap<i64, SockTrack>,
    cgroup_fds: HashMap<i64, String>,
    /// fds this process opened for writing (regular files): stamped when
    /// it lets go of them (see [`Tracer::let_go`]).
    write_fds: HashSet<i64>,
}

pub(crate) struct Tracer<'c, F: FnMut(TraceEvent)> {
    mode: Mode,
    cfg: &'c PtraceConfig,
    on_event: F,
    tids: HashMap<u32, TidState>,
    procs: HashMap<u32, ProcState>,
    /// tgids whose Fork was emitted or that existed at attach.
    known_procs: HashSet<u32>,
    pub(crate) root: u32,
    pub(crate) root_code: Option<i32>,
    pub(crate) root_exec_seen: bool,
    /// Set at the root's first exec, cleared by [`Tracer::run_loop_bounded`].
    root_exec_now: bool,
    /// Tids whose creation was not yet reported by their parent's
    /// `PTRACE_EVENT_{FORK,VFORK,CLONE}` (their own stops came first).
    unannounced: HashSet<u32>,
    /// Tids that came and went before their parent's event was seen: the
    /// late event must not register them again (D11: a finished thread,
    /// no longer in /proc, would look like a new process).
    gone_early: HashSet<u32>,
}

/// Most entries of [`Tracer::unannounced`] / [`Tracer::gone_early`] (a
/// parent killed before its event stop never reports it).
const MAX_EARLY_TIDS: usize = 65536;
/// The (base, len) pairs of the first 16 entries of an iovec array.
fn read_iovecs(tid: u32, iov: u64, n: usize) -> Vec<(u64, usize)> {
    let iovs = read_bytes(tid, iov, n.min(16) * 16);
    iovs.chunks_exact(16)
        .map(|c| {
            let base = u64::from_ne_bytes(c[0..8].try_into().unwrap_or_default());
            let len = u64::from_ne_bytes(c[8..16].try_into().unwrap_or_default()) as usize;
            (base, len)
        })
        .collect()
}

/// Result of one waitpid.
enum Waited {
    Status(u32, i32),
    Nothing,
    NoChildren,
}

fn wait_any(nohang: bool) -> Result<Waited, PtraceError> {
    let mut status: libc::c_int = 0;
    let mut flags = libc::__WALL | libc::__WNOTHREAD;
    if nohang {
        flags |= libc::WNOHANG;
    }
    loop {
        // SAFETY: plain waitpid into a local.
        let r = unsafe { libc::waitpid(-1, &mut status, flags) };
        if r > 0 {
            return Ok(Waited::Status(r as u32, status));
        }
        if r == 0 {
            return Ok(Waited::Nothing);
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EINTR => continue,
            nix::errno::Errno::ECHILD => return Ok(Waited::NoChildren),
            e => return Err(PtraceError::Wait(e)),
        }
    }
}

impl<'c, F: FnMut(TraceEvent)> Tracer<'c, F> {
    pub(crate) fn new(mode: Mode, cfg: &'c PtraceConfig, root: u32, on_event: F) -> Self {
        Tracer {
            mode,
            cfg,
            on_event,
            tids: HashMap::new(),
            procs: HashMap::new(),
            known_procs: HashSet::new(),
            root,
            root_code: None,
            root_exec_seen: false,
            root_exec_now: false,
            unannounced: HashSet::new(),
            gone_early: HashSet::new(),
        }
    }

    /// The parent's `PTRACE_EVENT_{FORK,VFORK,CLONE}` for `new`: a tid
    /// already registered by its own first stop, one that already came and
    /// went, or a new one (registered here).
    fn announced(&mut self, new: u32, parent_tgid: u32) {
        if self.gone_early.remove(&new) {
            return;
        }
        if self.tids.contains_key(&new) {
            self.unannounced.remove(&new);
            return;
        }
        self.learn_tid(new, Some(parent_tgid));
    }

    fn emit(&mut self, ev: TraceEvent) {
        (self.on_event)(ev)
    }

    /// Registers a tid (attached or auto-attached).
    pub(crate) fn add_tid(&mut self, tid: u32, tgid: u32) {
        if self.tids.contains_key(&tid) {
            return;
        }
        self.tids.insert(
            tid,
            TidState {
                tgid,
                pending: None,
            },
        );
        self.procs.entry(tgid).or_default().threads += 1;
    }

    /// Marks a process as known without emitting Fork (initial processes).
    pub(crate) fn mark_known(&mut self, tgid: u32) {
        self.known_procs.insert(tgid);
    }

    pub(crate) fn tid_count(&self) -> usize {
        self.tids.len()
    }

    fn tgid_of(&self, tid: u32) -> u32 {
        self.tids.get(&tid).map(|t| t.tgid).unwrap_or(tid)
    }

    /// A tid we have not seen yet: learn its tgid and announce the process.
    fn learn_tid(&mut self, tid: u32, parent_tgid: Option<u32>) {
        if self.tids.contains_key(&tid) {
            return;
        }
        let (tgid, ppid) = paths::tgid_ppid(tid).unwrap_or((tid, parent_tgid.unwrap_or(0)));
        self.add_tid(tid, tgid);
        if tgid == tid && self.known_procs.insert(tgid) {
            let parent = parent_tgid.unwrap_or(ppid);
            self.emit(TraceEvent::Fork {
                parent,
                child: tgid,
                time: now(),
            });
        }
    }

    fn resume(&mut self, tid: u32, sig: i32) {
        let pending = self
            .tids
            .get(&tid)
            .map(|t| t.pending.is_some())
            .unwrap_or(false);
        let req = if self.mode == Mode::Syscall || pending {
            libc::PTRACE_SYSCALL
        } else {
            libc::PTRACE_CONT
        };
        // ESRCH: killed meanwhile (SIGKILL); its exit will be reported.
        let _ = ptrace_raw(req, tid, 0, sig as usize);
    }

    /// Handles one wait status. Returns the tid and whether it left.
    fn handle(&mut self, tid: u32, status: i32) {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            self.thread_gone(tid, code);
            return;
        }
        if !libc::WIFSTOPPED(status) {
            return;
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if !self.tids.contains_key(&tid) {
            // Its own stop before its parent's event (a tid seen before
            // and gone is a new task now: the tid was reused).
            self.gone_early.remove(&tid);
            if self.unannounced.len() < MAX_EARLY_TIDS {
                self.unannounced.insert(tid);
            }
            self.learn_tid(tid, None);
        }
        if sig == (libc::SIGTRAP | 0x80) {
            self.syscall_stop(tid);
            return;
        }
        match event {
            0 => {
                // Signal-delivery stop: re-inject.
                self.resume(tid, sig);
            }
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                if let Some(new) = get_event_msg(tid) {
                    let ptgid = self.tgid_of(tid);
                    self.announced(new as u32, ptgid);
                }
                self.resume(tid, 0);
            }
            libc::PTRACE_EVENT_EXEC => {
                let old = get_event_msg(tid).map(|m| m as u32).unwrap_or(tid);
                self.exec_event(tid, old);
                self.resume(tid, 0);
            }
            libc::PTRACE_EVENT_EXIT => {
                self.stamp_at_exit(tid);
                self.resume(tid, 0)
            }
            libc::PTRACE_EVENT_SECCOMP => {
                if let Some(info) = syscall_info(tid) {
                    if info.op == OP_SECCOMP {
                        self.entry(tid, &info);
                    }
                }
                self.resume(tid, 0);
            }
            PTRACE_EVENT_STOP => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    // Group-stop: stay stopped, but let SIGCONT wake it.
                    let _ = ptrace_raw(libc::PTRACE_LISTEN, tid, 0, 0);
                } else {
                    self.resume(tid, 0);
                }
            }
            _ => self.resume(tid, 0),
        }
    }

    fn syscall_stop(&mut self, tid: u32) {
        match syscall_info(tid) {
            Some(info) if info.op == OP_ENTRY => {
                if let Some(t) = self.tids.get_mut(&tid) {
                    t.pending = None;
                }
                self.entry(tid, &info);
            }
            Some(info) if info.op == OP_EXIT => self.exit_stop(tid, info.rval),
            _ => {}
        }
        self.resume(tid, 0);
    }

    fn thread_gone(&mut self, tid: u32, code: i32) {
        if self.unannounced.remove(&tid) && self.gone_early.len() < MAX_EARLY_TIDS {
            self.gone_early.insert(tid);
        }
        let Some(t) = self.tids.remove(&tid) else {
            return;
        };
        let tgid = t.tgid;
        let last = match self.procs.get_mut(&tgid) {
            Some(p) => {
                p.threads = p.threads.saturating_sub(1);
                p.threads == 0
            }
            None => true,
        };
        if last {
            self.procs.remove(&tgid);
            if tgid == self.root {
                self.root_code = Some(code);
            }
            self.emit(TraceEvent::Exit {
                pid: tgid,
                code,
                time: now(),
            });
        }
    }

    fn exec_event(&mut self, tid: u32, old: u32) {
        let tgid = self.tgid_of(tid);
        // Drop every other thread of the group: after exec only `tid`
        // (which is the tgid) remains. Late exit reports are ignored.
        let others: Vec<u32> = self
            .tids
            .iter()
            .filter(|(t, s)| s.tgid == tgid && **t != tid)
            .map(|(t, _)| *t)
            .collect();
        for t in others {
            self.tids.remove(&t);
        }
        let _ = old;
        self.tids.insert(
            tid,
            TidState {
                tgid,
                pending: None,
            },
        );
        let p = self.procs.entry(tgid).or_default();
        p.threads = 1;
        p.socks.clear();
        p.cgroup_fds.clear();
        let filename = paths::auxv_execfn(tgid)
            .map(|a| {
                let (b, _) = read_cstr(tgid, a, 4096);
                cilock_trace::pathname::escape(&b)
            })
            .unwrap_or_default();
        let (exe, exe_stamp) = paths::exe(tgid);
        let ppid = paths::tgid_ppid(tgid).map(|(_, p)| p);
        let ev = TraceEvent::Exec {
            pid: tgid,
            ppid,
            filename,
            exe,
            exe_stamp,
            cwd: paths::cwd(tgid),
            argv: paths::cmdline(tgid),
            comm: paths::comm(tgid),
            mnt_ns: paths::mnt_ns_of(Some(tgid)),
            time: now(),
        };
        self.emit(ev);
        if tgid == self.root && !self.root_exec_seen {
            self.root_exec_seen = true;
            self.root_exec_now = true;
        }
    }

    /// A suspicious call of `tgid` (described by the fold, the same text
    /// as the eBPF backend's).
    fn suspicious(&mut self, tgid: u32, call: SuspiciousCall) {
        self.emit(TraceEvent::Syscall {
            pid: tgid,
            call,
            time: now(),
        });
    }

    /// A syscall entry (seccomp stop or syscall-entry stop).
    fn entry(&mut self, tid: u32, info: &SysInfo) {
        let Some(sys) = syscalls::decode(info.arch, info.nr) else {
            return;
        };
        let a = info.args;
        let tgid = self.tgid_of(tid);
        let dpid = self.cfg.daemon_pid.map(|p| p as i64);
        match sys {
            Sys::Open => self.set_pending(tid, Pending::Open { flags: a[1] as u32 }),
            Sys::OpenAt | Sys::OpenByHandleAt => {
                self.set_pending(tid, Pending::Open { flags: a[2] as u32 })
            }
            Sys::Creat => self.set_pending(
                tid,
                Pending::Open {
                    flags: (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u32,
                },
            ),
            Sys::OpenAt2 => {
                let flags = read_u64(tid, a[2]).unwrap_or(0) as u32;
                self.set_pending(tid, Pending::Open { flags })
            }
            Sys::Connect | Sys::Bind => {
                let len = (a[2] as usize).min(MAX_SOCKADDR);
                let Some(addr) = sockaddr::decode(&read_bytes(tid, a[1], len)) else {
                    return;
                };
                let fd = a[0] as i64;
                let call = if sys == Sys::Connect {
                    NetCall::Connect
                } else {
                    NetCall::Bind
                };
                self.emit(TraceEvent::Net {
                    pid: tgid,
                    call,
                    fd: fd as i32,
                    addr: addr.clone(),
                    time: now(),
                });
                if sys == Sys::Connect && self.cfg.capture_egress {
                    if let SockAddr::Ip(dst) = addr {
                        self.track_socket(tid, tgid, fd, Some(dst));
                    }
                }
            }
            Sys::SendTo => {
                let fd = a[0] as i64;
                let dst = if a[4] != 0 {
                    let len = (a[5] as usize).min(MAX_SOCKADDR);
                    sockaddr::decode(&read_bytes(tid, a[4], len))
                } else {
                    None
                };
                self.send(
                    tid,
                    tgid,
                    fd,
                    dst,
                    &[(a[1], a[2] as usize)],
                    NetCall::SendTo,
                );
            }
            Sys::SendMsg => {
                let fd = a[0] as i64;
                self.sendmsg(tid, tgid, fd, a[1], NetCall::SendMsg);
            }
            Sys::SendMmsg => {
                let fd = a[0] as i64;
                let n = (a[2] as usize).min(8);
                for i in 0..n {
                    // struct mmsghdr { struct msghdr (56); unsigned msg_len; } = 64
                    self.sendmsg(
                        tid,
                        tgid,
                        fd,
                        a[1].wrapping_add(64 * i as u64),
                        NetCall::SendMmsg,
                    );
                }
            }
            Sys::Write => {
                let fd = a[0] as i64;
                let has = self
                    .procs
                    .get(&tgid)
                    .map(|p| p.socks.contains_key(&fd) || p.cgroup_fds.contains_key(&fd))
                    .unwrap_or(false);
                if has {
                    self.write_tracked(tid, tgid, fd, a[1], a[2] as usize);
                }
            }
            Sys::RecvFrom | Sys::RecvMsg => {
                let fd = a[0] as i64;
                let dns = self
                    .procs
                    .get(&tgid)
                    .and_then(|p| p.socks.get(&fd))
                    .is_some_and(|s| s.dns && !s.stream);
                if dns {
                    let msg = sys == Sys::RecvMsg;
                    let addr = if msg { 0 } else { a[4] };
                    self.set_pending(
                        tid,
                        Pending::Recv {
                            fd,
                            buf: a[1],
                            addr,
                            msg,
                        },
                    );
                }
            }
            Sys::Writev => {
                // writev(fd, iov, iovcnt) on a tracked socket: glibc's DNS
                // over TCP sends length and query in one writev.
                let fd = a[0] as i64;
                let tracked = self
                    .procs
                    .get(&tgid)
                    .is_some_and(|p| p.socks.contains_key(&fd));
                if tracked {
                    let parts = read_iovecs(tid, a[1], a[2] as usize);
                    self.send(tid, tgid, fd, None, &parts, NetCall::SendTo);
                }
            }
            Sys::Close | Sys::Dup2 | Sys::Dup3 | Sys::CloseRange => self.let_go(tid, sys, a),
            // The suspicious calls: built (and filtered) in syscalls.rs.
            _ => {
                if let Some(call) = syscalls::suspicious(sys, tid, &a, dpid) {
                    self.suspicious(tgid, call);
                }
            }
        }
    }

    fn set_pending(&mut self, tid: u32, p: Pending) {
        if let Some(t) = self.tids.get_mut(&tid) {
            t.pending = Some(p);
        }
    }

    fn exit_stop(&mut self, tid: u32, rval: i64) {
        let Some(pending) = self.tids.get_mut(&tid).and_then(|t| t.pending.take()) else {
            return;
        };
        let tgid = self.tgid_of(tid);
        match pending {
            Pending::Recv { fd, buf, addr, msg } => {
                if rval > 0 {
                    self.recv_exit(tid, tgid, fd, buf, addr, msg, rval as usize);
                }
            }
            Pending::Open { flags } => {
                if rval < 0 {
                    return;
                }
                let (path, unresolved) =
                    match paths::fd_path(tid, rval).or_else(|| paths::long_fd_path(tid, rval)) {
                        Some(r) => (r.path, r.unresolved),
                        None => (
                            String::new(),
                            Some("fd vanished before it could be resolved".to_string()),
                        ),
                    };
                let stamp = if unresolved.is_none() {
                    paths::fd_stamp(tid, rval)
                } else {
                    None
                };
                if unresolved.is_none()
                    && (path.ends_with("/cgroup.procs")
                        || path.ends_with("/cgroup.threads")
                        || path.ends_with("/tasks"))
                    && (flags & libc::O_ACCMODE as u32) != libc::O_RDONLY as u32
                {
                    self.procs
                        .entry(tgid)
                        .or_default()
                        .cgroup_fds
                        .insert(rval, path.clone());
                }
                self.track_write_fd(tgid, rval, flags, stamp);
                self.emit(TraceEvent::Open {
                    pid: tgid,
                    path,
                    flags,
                    stamp,
                    unresolved,
                    time: now(),
                });
            }
        }
    }

    /// A DNS reply received on a tracked datagram socket: its first bytes
    /// and sender go to the recorder.
    #[allow(
        clippy::too_many_arguments,
        reason = "the tracee's syscall arguments, passed as they come"
    )]
    fn recv_exit(
        &mut self,
        tid: u32,
        tgid: u32,
        fd: i64,
        buf: u64,
        addr: u64,
        msg: bool,
        n: usize,
    ) {
        let cap = self.cfg.egress_event_cap;
        let (data_ptr, name_ptr) = if msg {
            // struct msghdr { name; namelen; iov; iovlen; ... }: the
            // sender in `name`, the data in the first iovec.
            let h = read_bytes(tid, buf, 32);
            if h.len() < 32 {
                return;
            }
            let name = u64::from_ne_bytes(h[0..8].try_into().unwrap_or_default());
            let iov = u64::from_ne_bytes(h[16..24].try_into().unwrap_or_default());
            let Some(&(base, len)) = read_iovecs(tid, iov, 1).first() else {
                return;
            };
            ((base, len.min(n)), name)
        } else {
            ((buf, n), addr)
        };
        let bytes = read_bytes(tid, data_ptr.0, data_ptr.1.min(cap));
        let src = if name_ptr != 0 {
            match sockaddr::decode(&read_bytes(tid, name_ptr, 28)) {
                Some(SockAddr::Ip(a)) => Some(a),
                _ => None,
            }
        } else {
            None
        };
        // A connected socket's sender is its peer.
        let src = src.or_else(|| {
            self.procs
                .get(&tgid)
                .and_then(|p| p.socks.get(&fd))
                .and_then(|s| s.dst)
        });
        if let Some(src) = src {
            if !bytes.is_empty() {
                self.emit(TraceEvent::Ingress {
                    pid: tgid,
                    src,
                    stream: false,
                    bytes,
                    time: now(),
                });
            }
        }
    }

    /// Starts capturing a connected socket's first bytes.
    fn track_socket(&mut self, tid: u32, tgid: u32, fd: i64, dst: Option<SocketAddr>) -> bool {
        let Some(info) = paths::socket_info(tid, fd) else {
            return false;
        };
        let stream = info.sock_type == libc::SOCK_STREAM;
        let p = self.procs.entry(tgid).or_default();
        p.socks.insert(
            fd,
            SockTrack {
                inode: info.inode,
                stream,
                dst,
                buf: Vec::new(),
                events: 0,
                done: false,
                dns: false,
            },
        );
        true
    }

    fn sendmsg(&mut self, tid: u32, tgid: u32, fd: i64, msghdr: u64, call: NetCall) {
        // struct msghdr { void *name; socklen_t namelen; (pad) struct iovec *iov;
        //                 size_t iovlen; void *control; size_t controllen; int flags; }
        let h = read_bytes(tid, msghdr, 56);
        if h.len() < 32 {
            return;
        }
        let name = u64::from_ne_bytes(h[0..8].try_into().unwrap_or_default());
        let namelen = u32::from_ne_bytes(h[8..12].try_into().unwrap_or_default()) as usize;
        let iov = u64::from_ne_bytes(h[16..24].try_into().unwrap_or_default());
        let iovlen = u64::from_ne_bytes(h[24..32].try_into().unwrap_or_default()) as usize;
        let dst = if name != 0 && namelen > 0 {
            sockaddr::decode(&read_bytes(tid, name, namelen.min(MAX_SOCKADDR)))
        } else {
            None
        };
        let parts = read_iovecs(tid, iov, iovlen);
        self.send(tid, tgid, fd, dst, &parts, call);
    }

    /// sendto/sendmsg: a destination makes a Net event; the payload is
    /// captured for port 53, datagram sockets and tracked streams.
    fn send(
        &mut self,
        tid: u32,
        tgid: u32,
        fd: i64,
        dst: Option<SockAddr>,
        parts: &[(u64, usize)],
        call: NetCall,
    ) {
        if let Some(addr) = &dst {
            self.emit(TraceEvent::Net {
                pid: tgid,
                call,
                fd: fd as i32,
                addr: addr.clone(),
                time: now(),
            });
        }
        if !self.cfg.capture_egress {
            return;
        }
        if let Some(SockAddr::Ip(ip)) = dst {
            let known = self
                .procs
                .get(&tgid)
                .and_then(|p| p.socks.get(&fd))
                .map(|s| Some(s.inode) == paths::socket_inode(tid, fd))
                .unwrap_or(false);
            if !known && !self.track_socket(tid, tgid, fd, Some(ip)) {
                return;
            }
            if let Some(s) = self.procs.get_mut(&tgid).and_then(|p| p.socks.get_mut(&fd)) {
                s.dst = Some(ip);
            }
        }
        let tracked = self
            .procs
            .get(&tgid)
            .map(|p| p.socks.contains_key(&fd))
            .unwrap_or(false);
        if !tracked {
            return;
        }
        let cap = self.read_cap(tgid, fd);
        let mut data = Vec::new();
        for (base, len) in parts {
            if data.len() >= cap {
                break;
            }
            let want = (*len).min(cap - data.len());
            let b = read_bytes(tid, *base, want);
            let short = b.len() < want;
            data.extend(b);
            if short {
                break;
            }
        }
        self.capture(tid, tgid, fd, data);
    }

    fn write_tracked(&mut self, tid: u32, tgid: u32, fd: i64, buf: u64, count: usize) {
        let cg = self
            .procs
            .get(&tgid)
            .and_then(|p| p.cgroup_fds.get(&fd).cloned());
        if let Some(path) = cg {
            // Verify the fd still is that file, then read the pid written.
            if paths::fd_path(tid, fd).map(|r| r.path) == Some(path.clone()) {
                let b = read_bytes(tid, buf, count.min(32));
                let txt = String::from_utf8_lossy(&b);
                if let Ok(target) = txt.trim().parse::<i64>() {
                    let moved = if target == 0 { tgid as i64 } else { target };
                    let traced = self.tids.contains_key(&(moved as u32));
                    if traced {
                        let moved_tgid = self.tgid_of(moved as u32);
                        self.suspicious(
                            tgid,
                            SuspiciousCall::CgroupWrite {
                                written: target,
                                moved: moved_tgid,
                                file: path,
                            },
                        );
                        // Still traced (ptrace follows the tree), but no
                        // longer in the cgroup it was in: leftStep.
                        self.emit(TraceEvent::LeftStep {
                            pid: moved_tgid,
                            by: tgid,
                            time: now(),
                        });
                    }
                }
            } else if let Some(p) = self.procs.get_mut(&tgid) {
                p.cgroup_fds.remove(&fd);
            }
            return;
        }
        let cap = self.read_cap(tgid, fd);
        let data = read_bytes(tid, buf, count.min(cap));
        self.capture(tid, tgid, fd, data);
    }

    /// Bytes to read of one send on tracked socket `fd`: a datagram up to
    /// the per-event cap, a stream up to what its capture still takes (so
    /// a ClientHello written at once is read whole up to the stream cap).
    fn read_cap(&self, tgid: u32, fd: i64) -> usize {
        let ev = self.cfg.egress_event_cap;
        match self.procs.get(&tgid).and_then(|p| p.socks.get(&fd)) {
            Some(s) if s.stream => self
                .cfg
                .egress_stream_cap
                .saturating_sub(s.buf.len())
                .max(ev),
            _ => ev,
        }
    }

    /// Emits an Egress for `data` sent on tracked socket `fd`, and updates
    /// the capture state.
    fn capture(&mut self, tid: u32, tgid: u32, fd: i64, data: Vec<u8>) {
        let stream_cap = self.cfg.egress_stream_cap;
        let dgram_max = self.cfg.egress_datagrams_per_socket;
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        let Some(s) = p.socks.get(&fd) else {
            return;
        };
        if s.done || data.is_empty() {
            return;
        }
        // The fd may have been closed and reused.
        if paths::socket_inode(tid, fd) != Some(s.inode) {
            p.socks.remove(&fd);
            return;
        }
        let s = p.socks.get_mut(&fd).expect("checked above");
        let port53 = s.dst.map(|d| d.port() == 53).unwrap_or(false);
        let (stream, dst) = (s.stream, s.dst);
        if s.stream {
            let room = stream_cap.saturating_sub(s.buf.len());
            s.buf.extend_from_slice(&data[..data.len().min(room)]);
            s.events += 1;
            // DNS over TCP: port 53, or a stream that starts with a DNS
            // query on any port (the recorder validates it the same way).
            let dns = if port53 {
                DnsStart::Yes
            } else {
                dns_tcp_start(&s.buf)
            };
            match dns {
                DnsStart::Yes => {
                    // A few messages (pipelined queries).
                    if s.events >= DNS_TCP_WRITES || s.buf.len() >= stream_cap {
                        s.done = true;
                    }
                }
                DnsStart::Incomplete => {
                    if s.buf.len() >= stream_cap {
                        s.done = true;
                    }
                }
                // TLS: until the ClientHello is whole (its server name is
                // taken from the first bytes in any case).
                DnsStart::No => match parse_client_hello(&s.buf) {
                    ClientHello::Incomplete if s.buf.len() < stream_cap => {}
                    _ => s.done = true,
                },
            }
            if s.done {
                s.buf = Vec::new();
            }
        } else {
            s.events += 1;
            if s.events >= dgram_max {
                s.done = true;
            }
            if !s.dns && parse_dns_queries(&data, false).is_some() {
                s.dns = true;
            }
        }
        self.emit(TraceEvent::Egress {
            pid: tgid,
            fd: fd as i32,
            dst,
            stream,
            bytes: data,
            time: now(),
        });
    }
}

/// How [`Tracer::run_loop_bounded`] ended.
#[derive(Debug, Default)]
pub(crate) struct LoopEnd {
    /// Processes (tgids) still traced when the wait after the root's exit
    /// ran out: they were killed (a process under the seccomp filter cannot
    /// run untraced: its filtered calls would fail with ENOSYS).
    pub(crate) survivors: Vec<u32>,
    /// How long the loop ran after the root's exit.
    pub(crate) waited: Duration,
}

impl<F: FnMut(TraceEvent)> Tracer<'_, F> {
    /// [`Tracer::run_loop_bounded`], but after the root's exit the descendants are
    /// waited for at most `wait` (`None`: until they are all gone). When the
    /// bound runs out, the processes left are recorded as survivors and
    /// killed, and the loop reaps them (for at most 5 s more).
    pub(crate) fn run_loop_bounded(
        &mut self,
        wait: Option<Duration>,
        mut at_root_exec: impl FnMut(),
    ) -> Result<LoopEnd, PtraceError> {
        let mut end = LoopEnd::default();
        let mut root_gone: Option<Instant> = None;
        let mut killed: Option<Instant> = None;
        let mut idle = Duration::from_micros(50);
        loop {
            if root_gone.is_none() && self.root_code.is_some() {
                root_gone = Some(Instant::now());
            }
            // Blocking waits until the root is gone; then polling, so that
            // the bound is noticed (a stop resets the back-off).
            let bounded = root_gone.is_some() && wait.is_some();
            match wait_any(bounded)? {
                Waited::Status(tid, st) => {
                    self.handle(tid, st);
                    if self.root_exec_now {
                        self.root_exec_now = false;
                        at_root_exec();
                    }
                    idle = Duration::from_micros(50);
                }
                Waited::Nothing => {
                    let (Some(gone), Some(limit)) = (root_gone, wait) else {
                        continue;
                    };
                    match killed {
                        None if gone.elapsed() >= limit => {
                            end.waited = gone.elapsed();
                            let mut left: Vec<u32> = self.procs.keys().copied().collect();
                            left.sort_unstable();
                            for p in &left {
                                // SAFETY: plain kill of a traced process.
                                unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
                            }
                            end.survivors = left;
                            killed = Some(Instant::now());
                        }
                        Some(k) if k.elapsed() >= Duration::from_secs(5) => return Ok(end),
                        _ => {}
                    }
                    std::thread::sleep(idle);
                    idle = (idle * 2).min(Duration::from_millis(2));
                }
                Waited::NoChildren => {
                    if killed.is_none() {
                        end.waited = root_gone.map(|g| g.elapsed()).unwrap_or_default();
                    }
                    return Ok(end);
                }
            }
        }
    }
}

/// Lists the threads of `pid`.
fn threads_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Children of every thread of `pid` (`/proc/PID/task/TID/children`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in threads_of(pid) {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/children")) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    out
}

/// See [`super::follow`].
pub(crate) fn follow(
    pid: u32,
    cfg: &PtraceConfig,
    stop: Arc<AtomicBool>,
    on_event: impl FnMut(TraceEvent),
) -> Result<(), PtraceError> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(PtraceError::NoSuchProcess(pid));
    }
    let mut tr = Tracer::new(Mode::Syscall, cfg, pid, on_event);
    // Attach to the process, its threads and its existing descendants.
    // Re-list until no new thread shows up (threads may be created while
    // we attach; once seized, new ones are auto-attached).
    let mut todo = vec![pid];
    let mut seen = HashSet::new();
    let mut first = true;
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        loop {
            let mut new = 0;
            for t in threads_of(p) {
                if tr.tids.contains_key(&t) {
                    continue;
                }
                match seize(t, false) {
                    Ok(()) => {
                        let _ = ptrace_raw(libc::PTRACE_INTERRUPT, t, 0, 0);
                        tr.add_tid(t, p);
                        new += 1;
                    }
                    Err(e) if first && t == pid => {
                        return Err(PtraceError::Attach { pid, source: e })
                    }
                    Err(_) => {}
                }
                first = false;
            }
            if new == 0 {
                break;
            }
        }
        tr.mark_known(p);
        todo.extend(children_of(p));
    }
    if tr.tid_count() == 0 {
        return Err(PtraceError::NoSuchProcess(pid));
    }
    // Main loop: poll so that `stop` is noticed promptly.
    let mut idle = Duration::from_micros(50);
    while !stop.load(Ordering::Relaxed) {
        match wait_any(true)? {
            Waited::Status(tid, st) => {
                tr.handle(tid, st);
                idle = Duration::from_micros(50);
            }
            Waited::Nothing => {
                std::thread::sleep(idle);
                idle = (idle * 2).min(Duration::from_millis(5));
            }
            Waited::NoChildren => return Ok(()),
        }
    }
    detach_all(&mut tr);
    Ok(())
}

/// Stops every tracee with PTRACE_INTERRUPT and detaches it, passing on a
/// pending signal. Bounded: gives up after 2 s (tracees that never stop are
/// left to the kernel, which detaches them when this thread exits).
fn detach_all<F: FnMut(TraceEvent)>(tr: &mut Tracer<'_, F>) {
    let mut left: HashSet<u32> = tr.tids.keys().copied().collect();
    for t in &left {
        let _ = ptrace_raw(libc::PTRACE_INTERRUPT, *t, 0, 0);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !left.is_empty() && Instant::now() < deadline {
        match wait_any(true) {
            Ok(Waited::Status(tid, st)) => {
                if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                    tr.handle(tid, st);
                    left.remove(&tid);
                    continue;
                }
                if !libc::WIFSTOPPED(st) {
                    continue;
                }
                let sig = libc::WSTOPSIG(st);
                let event = (st >> 16) & 0xff;
                // New auto-attached children: detach them too.
                if let Some(new) = matches!(
                    event,
                    libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE
                )
                .then(|| get_event_msg(tid))
                .flatten()
                {
                    left.insert(new as u32);
                }
                let inject = if event == 0 && sig != (libc::SIGTRAP | 0x80) {
                    sig
                } else {
                    0
                };
                let _ = ptrace_raw(libc::PTRACE_DETACH, tid, 0, inject as usize);
                left.remove(&tid);
                tr.tids.remove(&tid);
            }
            Ok(Waited::Nothing) => std::thread::sleep(Duration::from_micros(200)),
            _ => break,
        }
    }
}

/// Written files: the stamp of a file a process opened for writing when it
/// lets go of it (close, dup2/dup3 over the fd, close_range, exit), taken
/// at syscall entry or at the exit stop through `/proc/TID/fd/N`. Only fds
/// the process itself opened for writing are followed; a close-on-exec
/// close at exec is not observed.
impl<F: FnMut(TraceEvent)> Tracer<'_, F> {
    /// Most write fds followed per process.
    const MAX_WRITE_FDS: usize = 4096;

    fn track_write_fd(&mut self, tgid: u32, fd: i64, flags: u32, stamp: Option<FileStamp>) {
        let write = flags & libc::O_PATH as u32 == 0 && flags & libc::O_ACCMODE as u32 != 0;
        let regular = stamp.is_some_and(|s| s.mode & libc::S_IFMT == libc::S_IFREG);
        let p = self.procs.entry(tgid).or_default();
        if write && regular && p.write_fds.len() < Self::MAX_WRITE_FDS {
            p.write_fds.insert(fd);
        } else {
            // The fd number now names another file.
            p.write_fds.remove(&fd);
        }
    }

    /// Emits the stamp of `fd` of `tid` and stops following it.
    fn stamp_fd(&mut self, tid: u32, tgid: u32, fd: i64) {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        if !p.write_fds.remove(&fd) {
            return;
        }
        if let Some(stamp) = paths::fd_stamp(tid, fd) {
            if stamp.mode & libc::S_IFMT == libc::S_IFREG {
                self.emit(TraceEvent::Close {
                    pid: tgid,
                    stamp,
                    time: now(),
                });
            }
        }
    }

    fn let_go(&mut self, tid: u32, sys: Sys, a: [u64; 6]) {
        let tgid = self.tgid_of(tid);
        let fd = |v: u64| v as i32 as i64;
        match sys {
            Sys::Close => self.stamp_fd(tid, tgid, fd(a[0])),
            Sys::Dup2 | Sys::Dup3 if a[0] != a[1] => {
                let (old, new) = (fd(a[0]), fd(a[1]));
                self.stamp_fd(tid, tgid, new);
                // The new fd is the same open file: follow it too.
                if let Some(p) = self.procs.get_mut(&tgid) {
                    if p.write_fds.contains(&old) && p.write_fds.len() < Self::MAX_WRITE_FDS {
                        p.write_fds.insert(new);
                    }
                }
            }
            Sys::CloseRange if a[2] & 4 == 0 => {
                // Not CLOSE_RANGE_CLOEXEC: the range is closed.
                let (first, last) = (a[0] as u32 as i64, a[1] as u32 as i64);
                let fds: Vec<i64> = self
                    .procs
                    .get(&tgid)
                    .map(|p| {
                        p.write_fds
                            .iter()
                            .copied()
                            .filter(|f| (first..=last).contains(f))
                            .collect()
                    })
                    .unwrap_or_default();
                for f in fds {
                    self.stamp_fd(tid, tgid, f);
                }
            }
            _ => {}
        }
    }

    /// At a thread's exit stop (its files are still open): the stamps of
    /// every write fd of its process. A later thread's exit stamps again.
    fn stamp_at_exit(&mut self, tid: u32) {
        let tgid = self.tgid_of(tid);
        let fds: Vec<i64> = self
            .procs
            .get(&tgid)
            .map(|p| p.write_fds.iter().copied().collect())
            .unwrap_or_default();
        for f in fds {
            self.stamp_fd(tid, tgid, f);
            // Other threads may go on writing through it.
            if let Some(p) = self.procs.get_mut(&tgid) {
                p.write_fds.insert(f);
            }
        }
    }
}
