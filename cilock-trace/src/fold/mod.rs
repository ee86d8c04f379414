//! Folds a step's [`TraceEvent`]s into its process table, then — when the
//! step ends — hashes what was opened and produces the command-run
//! processes.
//!
//! Pushing an event is cheap (map updates only): it runs on the ring-buffer
//! consumer. All file hashing happens in [`Recorder::finish`], in parallel,
//! through the daemon's [`hash::Hasher`] (the fold does no I/O: what `/proc`
//! shows of a live process comes in as [`Running`] values).
//!
//! What a step can make the recorder hold is bounded ([`TraceLimits`] and
//! the per-process constants below): beyond a bound events are counted, not
//! stored, and the counts are attested (`trace.truncated`).
//!
//! A digest is given for a path only when the file hashed at the end is the
//! one the kernel recorded when the process opened or exec'd it, and the
//! step's user could read it (see [`hash`]); otherwise the
//! reason is given (`unhashedOpens`, `programUnhashedReason`,
//! `exeUnhashedReason`).
//!
//! A written file gets the digest of what its writer left: the backends
//! report a [`TraceEvent::Close`] stamp (device, inode, size, mtime, ctime)
//! when a process lets go of a regular file it has open for writing (close,
//! dup2/dup3 over the fd, close_range, exit). A write record is hashed only
//! against the last such stamp of the file of its last write open, and
//! never without one: another file at the path is [`REASON_WRITE_OTHER`],
//! the same file changed since is [`REASON_WRITE_MODIFIED`], no close seen
//! (still open at step end, closed by close-on-exec at an exec, not
//! observable) is [`REASON_WRITE_NOT_CLOSED`]. An open that creates or
//! truncates without write access, and a write open of something that is
//! not a regular file, count as left at the open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cilock_evidence::attestors::command_run::{
    DnsLookup, Network, NetworkConnection, ProcessInfo, SyscallEvent, UnhashedOpen,
};
use cilock_evidence::attestors::product::StepWrites;
use cilock_evidence::digest::{DigestSet, HashAlg};
use cilock_evidence::timefmt;

pub mod hash;

use self::hash::{Hashed, Hasher, Identity, Seen};
use crate::proto::http_connect::{http_connect, Connect};
use crate::proto::{dns, tls};
use crate::{FileStamp, NetCall, Running, SockAddr, TraceEvent};

/// Largest ClientHello prefix buffered per connection.
const MAX_HELLO: usize = 16 * 1024;

/// Largest argv kept per process (bytes, separators included).
pub const MAX_ARGV_BYTES: usize = 128 << 10;
/// Largest argv kept over all processes of a step.
pub const MAX_ARGV_BYTES_PER_STEP: usize = 64 << 20;
/// Programs listed per process (`execs`).
pub const MAX_EXECS_PER_PROCESS: usize = 1_000;
/// Suspicious-syscall events kept per process, and per step.
pub const MAX_SYSCALL_EVENTS_PER_PROCESS: usize = 10_000;
/// See [`MAX_SYSCALL_EVENTS_PER_PROCESS`].
pub const MAX_SYSCALL_EVENTS_PER_STEP: usize = 200_000;
/// Network connections kept per process, and per step.
pub const MAX_CONNECTIONS_PER_PROCESS: usize = 10_000;
/// See [`MAX_CONNECTIONS_PER_PROCESS`].
pub const MAX_CONNECTIONS_PER_STEP: usize = 200_000;
/// DNS lookups kept per process, and per step.
pub const MAX_DNS_LOOKUPS_PER_PROCESS: usize = 10_000;
/// See [`MAX_DNS_LOOKUPS_PER_PROCESS`].
pub const MAX_DNS_LOOKUPS_PER_STEP: usize = 200_000;

/// `O_PATH`: a handle without read access.
pub const O_PATH: u32 = 0o10000000;

/// Reason given for an open made with `O_PATH` only.
pub const REASON_O_PATH: &str = "opened with O_PATH: the job had no read access";
/// Reason given for a file the step's user could not read.
pub const REASON_UNREADABLE: &str = "not readable by the step's user";
/// Reason given when no identity was recorded at open/exec time.
pub const REASON_NO_STAMP: &str =
    "no identity was recorded when it was opened, so the file hashed could be another";
/// Reason given when the path now holds another file.
pub const REASON_REPLACED: &str = "the file now at this path is not the one the process opened or exec'd (replaced, or seen in another mount namespace)";
/// Reason given when the same file changed after a read-only open.
pub const REASON_MODIFIED: &str =
    "modified after it was opened; its content at open time is unknown";
/// Reason given for a fileless program (an exec of a `memfd_create` fd).
pub const REASON_FILELESS: &str = "a fileless program: executed from a memfd (memfd_create), not from a file; there is no file to hash";

/// Whether `exe` is the kernel's name of a memfd, `/memfd:NAME (deleted)`,
/// as both backends give it for an exec of a memfd (eBPF: a disconnected
/// shmem dentry; ptrace: /proc/PID/exe). A deleted file really named
/// `/memfd:…` is indistinguishable by name and is unhashable anyway.
pub fn is_fileless(exe: &str) -> bool {
    exe.starts_with("/memfd:") && exe.ends_with(" (deleted)")
}

/// `joinedFrom` of a process that was neither forked by a step process nor
/// registered as a root (its arrival was not observed, or a record was
/// lost): it is not attested as one of the step's own.
pub const REASON_ORIGIN_UNKNOWN: &str =
    "unknown: it was neither forked by a step process nor a root of the step";
/// Reason given for a written path that now holds another file.
pub const REASON_WRITE_OTHER: &str = "another file is at this path now, not the one the process wrote (renamed or moved over it, or written in another mount namespace)";
/// Reason given for a written file changed after the writer let go of it.
pub const REASON_WRITE_MODIFIED: &str =
    "modified after the process wrote and closed it; what it left is unknown";
/// Reason given for a written file the writer was not seen letting go of.
pub const REASON_WRITE_NOT_CLOSED: &str = "the process was not seen closing the file it wrote (still open when the step ended, closed by close-on-exec at an exec, or the close was not observable): what it left is unknown";

/// Bounds on one step's trace and on the hashing at its end (daemon
/// configuration: `max_hash_file_size`, `hash_time_budget`,
/// `max_processes_per_step`, `max_files_per_step`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLimits {
    /// Largest file hashed, in bytes.
    pub max_hash_file_size: u64,
    /// Time the hashing at the end of one step may take.
    pub hash_time_budget: Duration,
    /// Processes recorded per step.
    pub max_processes: usize,
    /// Distinct opened paths recorded per step (and twice as many
    /// (process, path) records).
    pub max_files: usize,
}

impl Default for TraceLimits {
    fn default() -> Self {
        TraceLimits {
            max_hash_file_size: 4 << 30,
            hash_time_budget: Duration::from_secs(300),
            max_processes: 100_000,
            max_files: 1_000_000,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct OpenRec {
    /// Identity at the first read-only open (or at the exec).
    read: Option<FileStamp>,
    /// (device, inode) at the last write open.
    write: Option<(u64, u64)>,
    /// Opened for writing (or created/truncated) at least once.
    wrote: bool,
    /// Opened with O_PATH at least once.
    opath: bool,
    /// Opened without O_PATH (or exec'd) at least once.
    opened: bool,
    /// Why the path is not a plain absolute path.
    unresolved: Option<String>,
    /// The file of the last write open as the process left it (its last
    /// close, dup over the fd, close_range or exit after that open).
    closed: Option<FileStamp>,
}

impl OpenRec {
    /// The identity the hashed file must have: for a written file, the
    /// stamp the process left it with (no close seen: none, see
    /// [`REASON_WRITE_NOT_CLOSED`]).
    fn identity(&self) -> Option<Identity> {
        if self.wrote {
            let (dev, ino) = self.write?;
            self.closed
                .filter(|s| s.dev == dev && s.ino == ino)
                .map(Identity::Closed)
        } else {
            self.read.map(Identity::Read)
        }
    }

    /// Whether the daemon may try to hash the path for this record.
    fn hashable(&self) -> bool {
        self.unresolved.is_none() && self.opened && self.identity().is_some()
    }
}

/// What a process runs.
#[derive(Clone, Debug, Default, PartialEq)]
enum ImageKind {
    /// `program` is the kernel's exe.
    #[default]
    Binary,
    /// `program` is a script run by the interpreter `exe`; its content is
    /// proven by the read-only open of `program` by process `opener`.
    Script { opener: usize },
    /// The kernel's exe path is unknown: `program` is the execve name,
    /// proven only if the file there has the exe's identity.
    Unnamed,
}

#[derive(Clone, Debug, Default)]
struct Image {
    program: String,
    exe: Option<String>,
    exe_stamp: Option<FileStamp>,
    kind: ImageKind,
}

#[derive(Clone, Debug, Default)]
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    /// Programs this process exec'd, in order.
    programs: Vec<String>,
    /// What it runs (its last exec, or its parent's image).
    image: Option<Image>,
    argv: Arc<Vec<String>>,
    cwd: Option<String>,
    opens: BTreeMap<Arc<str>, OpenRec>,
    net: Network,
    syscalls: Vec<SyscallEvent>,
    exit: Option<i32>,
    left_step: bool,
    /// Came into the step from outside (see `joinedStep`).
    joined: bool,
    /// Where it came from.
    joined_from: String,
    /// Forked by a step process or registered as a root: one of the
    /// step's own. A process never seen so is attested `joinedStep`.
    origin_known: bool,
    /// argv of the first exec seen (the command a root process ran).
    first_argv: Option<Arc<Vec<String>>>,
}

/// What the trace saw of a root process of the step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootSeen {
    /// Its exit code (128+signal), when the trace saw it exit.
    pub exit: Option<i32>,
    /// argv of its first exec during the step, as the kernel recorded it.
    pub argv: Option<Vec<String>>,
}

/// The processes of a finished step, and what had to be left out.
#[derive(Debug, Default)]
pub struct StepTrace {
    /// Every process recorded, in the order it appeared.
    pub processes: Vec<ProcessInfo>,
    /// Events counted but not stored because a bound was reached, by kind
    /// (`processes`, `files`, `argv`, `execs`, `syscallEvents`,
    /// `connections`, `dnsLookups`). Goes to `trace.truncated`.
    pub truncated: BTreeMap<String, u64>,
    /// Every path a step process opened for writing: per writer, the
    /// digest of what it left or why there is none (compared with the
    /// product attestation).
    pub written: BTreeMap<String, Vec<Result<DigestSet, String>>>,
}

/// The per-step process table.
#[derive(Debug, Default)]
pub struct Recorder {
    procs: Vec<Proc>,
    live: HashMap<u32, usize>,
    /// Pending ClientHello bytes per (pid, fd).
    hello: HashMap<(u32, i32), Vec<u8>>,
    /// Pending TCP DNS bytes per (pid, fd).
    dns_tcp: HashMap<(u32, i32), Vec<u8>>,
    /// DNS lookups awaiting answers: (pid, transaction id) → (process
    /// index, lookup indexes).
    dns_open: HashMap<(u32, u16), (usize, Vec<usize>)>,
    /// pid of the daemon (signals and ptrace aimed at it are flagged).
    daemon_pid: Option<u32>,
    limits: TraceLimits,
    /// Every distinct path recorded (shared by the processes' records).
    paths: HashSet<Arc<str>>,
    /// (process, path) records.
    records: usize,
    argv_bytes: usize,
    syscall_events: usize,
    connections: usize,
    dns_lookups: usize,
    /// Live pids left out because of `max_processes`.
    dropped: HashSet<u32>,
    truncated: BTreeMap<&'static str, u64>,
    /// (process index, device, inode) of each write open → its paths: where
    /// a close stamp goes.
    written: HashMap<(usize, u64, u64), Vec<Arc<str>>>,
    /// TCP streams on ports other than 53 that started with a DNS query.
    dns_streams: HashSet<(u32, i32)>,
}

fn ts(t: SystemTime) -> String {
    timefmt::rfc3339(t.into())
}

const O_ACCMODE: u32 = 3;
const O_WRITE_LIKE: u32 = (libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;

impl Recorder {
    /// A recorder with the default limits; `daemon_pid` is flagged as a
    /// target of signals/ptrace.
    pub fn new(daemon_pid: Option<u32>) -> Self {
        Self::with_limits(daemon_pid, TraceLimits::default())
    }

    /// A recorder bounded by `limits` (whose files the step's user may read
    /// is the hasher's business, see [`Recorder::finish`]).
    pub fn with_limits(daemon_pid: Option<u32>, limits: TraceLimits) -> Self {
        Recorder {
            daemon_pid,
            limits,
            ..Default::default()
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.truncated.entry(what).or_default() += 1;
    }

    /// Registers a process that is part of the step from the start (the
    /// target moved in by `step begin`, or the command `run` spawned), with
    /// what `/proc` showed of it (read by the caller).
    pub fn add_root(&mut self, pid: u32, running: Running) {
        let Some(idx) = self.proc_mut(pid, None) else {
            return;
        };
        let p = &mut self.procs[idx];
        p.origin_known = true;
        if p.comm.is_empty() {
            p.comm = running.comm.unwrap_or_default();
        }
        if p.image.is_none() {
            if let Some(exe) = running.exe {
                // The kernel's own link: its target is the running file
                // (stat through it), whatever is at the path now.
                let stamp = running.exe_stamp;
                let exe = crate::pathname::escape_os(exe);
                p.image = Some(Image {
                    program: exe.clone(),
                    exe: Some(exe),
                    exe_stamp: stamp,
                    kind: ImageKind::Binary,
                });
            }
        }
        if let Some(pp) = running.ppid {
            p.ppid = pp;
        }
    }

    /// What the trace saw of the root process `pid` (its first incarnation
    /// in the step): its exit and the argv of its first exec.
    pub fn root_seen(&self, pid: u32) -> RootSeen {
        let Some(p) = self.procs.iter().find(|p| p.pid == pid) else {
            return RootSeen::default();
        };
        RootSeen {
            // -1: a later process took the pid before its exit was seen.
            exit: p.exit.filter(|&c| c >= 0),
            argv: p.first_argv.as_ref().map(|a| a.to_vec()),
        }
    }

    /// What the step's processes opened for writing: the identity of each
    /// file at its last write open, or the path when that is unknown.
    pub fn written(&self) -> StepWrites {
        let mut w = StepWrites::default();
        for p in &self.procs {
            for (path, rec) in p.opens.iter().filter(|(_, r)| r.wrote && r.opened) {
                match rec.write {
                    Some(id) if id.1 != 0 => {
                        w.files.insert(id);
                    }
                    _ if rec.unresolved.is_none() => {
                        w.paths.insert(path.to_string());
                    }
                    _ => {}
                }
            }
        }
        w
    }

    /// The pids seen so far that have not exited.
    pub fn alive(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|p| p.exit.is_none())
            .map(|p| p.pid)
            .collect()
    }

    /// The current process entry for `pid`, creating it (a new incarnation
    /// if the old one exited: pids are reused). None when the step already
    /// has `max_processes` processes (the process is counted once).
    fn proc_mut(&mut self, pid: u32, ppid: Option<u32>) -> Option<usize> {
        if let Some(&i) = self.live.get(&pid) {
            if self.procs[i].exit.is_none() {
                return Some(i);
            }
        }
        if self.procs.len() >= self.limits.max_processes {
            if self.dropped.insert(pid) {
                self.count("processes");
            }
            return None;
        }
        let i = self.procs.len();
        self.procs.push(Proc {
            pid,
            ppid: ppid.unwrap_or(0),
            ..Default::default()
        });
        self.live.insert(pid, i);
        Some(i)
    }

    /// The record of `path` in process `i`, creating it within the bounds.
    fn open_rec(&mut self, i: usize, path: &str) -> Option<&mut OpenRec> {
        if !self.procs[i].opens.contains_key(path) {
            let key = match self.paths.get(path) {
                Some(k) => k.clone(),
                None if self.paths.len() >= self.limits.max_files => {
                    self.count("files");
                    return None;
                }
                None => {
                    let k: Arc<str> = Arc::from(path);
                    self.paths.insert(k.clone());
                    k
                }
            };
            if self.records >= self.limits.max_files.saturating_mul(2) {
                self.count("files");
                return None;
            }
            self.records += 1;
            self.procs[i].opens.insert(key, OpenRec::default());
        }
        self.procs[i].opens.get_mut(path)
    }

    /// argv cut to the per-process and per-step bounds.
    fn bound_argv(&mut self, argv: Vec<String>) -> Vec<String> {
        let cap = MAX_ARGV_BYTES.min(MAX_ARGV_BYTES_PER_STEP.saturating_sub(self.argv_bytes));
        let mut used = 0usize;
        let mut out = Vec::with_capacity(argv.len().min(1024));
        let mut cut = false;
        for mut a in argv {
            let room = cap.saturating_sub(used);
            if room == 0 {
                cut = true;
                break;
            }
            if a.len() + 1 > room {
                let mut end = room.saturating_sub(1);
                while !a.is_char_boundary(end) {
                    end -= 1;
                }
                a.truncate(end);
                used += a.len() + 1;
                out.push(a);
                cut = true;
                break;
            }
            used += a.len() + 1;
            out.push(a);
        }
        self.argv_bytes += used;
        if cut {
            self.count("argv");
        }
        out
    }

    fn push_syscall(&mut self, i: usize, ev: SyscallEvent) {
        if self.syscall_events >= MAX_SYSCALL_EVENTS_PER_STEP
            || self.procs[i].syscalls.len() >= MAX_SYSCALL_EVENTS_PER_PROCESS
        {
            self.count("syscallEvents");
            return;
        }
        self.syscall_events += 1;
        self.procs[i].syscalls.push(ev);
    }

    /// Folds one event in.
    pub fn push(&mut self, ev: TraceEvent) {
        match ev {
            TraceEvent::Fork { parent, child, .. } => {
                // A fork whose child pid is still listed as alive means we
                // missed its exit; start a new incarnation anyway.
                if let Some(&i) = self.live.get(&child) {
                    if self.procs[i].exit.is_none() {
                        self.procs[i].exit = Some(-1);
                    }
                }
                let parent_state = self.live.get(&parent).map(|&i| {
                    let ps = &self.procs[i];
                    (
                        ps.comm.clone(),
                        ps.image.clone(),
                        ps.cwd.clone(),
                        ps.argv.clone(),
                    )
                });
                let parent_joined = self.joined_origin(parent);
                let Some(i) = self.proc_mut(child, Some(parent)) else {
                    return;
                };
                let p = &mut self.procs[i];
                p.ppid = parent;
                p.origin_known = true;
                if let Some(from) = parent_joined {
                    // A child of a process that came from outside is not
                    // one of the step's own either.
                    p.joined = true;
                    p.joined_from = from;
                }
                if let Some((comm, image, cwd, argv)) = parent_state {
                    // Same image as the parent until it execs.
                    p.comm = comm;
                    p.image = image;
                    p.cwd = cwd;
                    p.argv = argv;
                }
            }
            TraceEvent::Exec {
                pid,
                ppid,
                filename,
                exe,
                exe_stamp,
                cwd,
                argv,
                comm,
                time,
                ..
            } => {
                let Some(i) = self.proc_mut(pid, ppid) else {
                    return;
                };
                if self.procs[i].ppid == 0 {
                    self.procs[i].ppid = ppid.unwrap_or(0);
                }
                let exe_stamp = exe_stamp.filter(|s| s.ino != 0);
                let (program, kind) = program_of(&filename, cwd.as_deref(), exe.as_deref(), &argv);
                let kind = match kind {
                    ProgramKind::Binary => ImageKind::Binary,
                    ProgramKind::Script => ImageKind::Script { opener: i },
                    ProgramKind::Unnamed => ImageKind::Unnamed,
                };
                // The exec'd files are among the files the process opened,
                // with the identity the kernel had at exec.
                if let Some(e) = &exe {
                    if let Some(rec) = self.open_rec(i, e) {
                        rec.opened = true;
                        if rec.read.is_none() {
                            rec.read = exe_stamp;
                        }
                    }
                }
                if let Some(e) = exe.as_deref().filter(|e| is_fileless(e)) {
                    if let Some(rec) = self.open_rec(i, e) {
                        rec.unresolved = Some(REASON_FILELESS.to_string());
                    }
                    let ev = SyscallEvent {
                        syscall: "fileless_exec".into(),
                        detail: format!("executed a memfd, not a file: {e}"),
                        path: e.to_string(),
                        timestamp: ts(time),
                        ..Default::default()
                    };
                    self.push_syscall(i, ev);
                }
                if exe.as_deref() != Some(program.as_str()) {
                    let unnamed = kind == ImageKind::Unnamed;
                    if let Some(rec) = self.open_rec(i, &program) {
                        rec.opened = true;
                        if unnamed && rec.read.is_none() {
                            rec.read = exe_stamp;
                        }
                    }
                }
                let argv = self.bound_argv(argv);
                if self.procs[i].programs.len() >= MAX_EXECS_PER_PROCESS {
                    self.count("execs");
                } else {
                    self.procs[i].programs.push(program.clone());
                }
                let p = &mut self.procs[i];
                p.image = Some(Image {
                    program,
                    exe,
                    exe_stamp,
                    kind,
                });
                p.cwd = cwd;
                p.argv = Arc::new(argv);
                p.comm = comm;
                if p.first_argv.is_none() {
                    p.first_argv = Some(p.argv.clone());
                }
            }
            TraceEvent::Open {
                pid,
                path,
                flags,
                stamp,
                unresolved,
                ..
            } => {
                let Some(i) = self.proc_mut(pid, None) else {
                    return;
                };
                let path = normalize_proc_self(&path, pid);
                let opath = flags & O_PATH != 0;
                let write = !opath && (flags & O_ACCMODE != 0 || flags & O_WRITE_LIKE != 0);
                if !opath {
                    if let Some(what) = proc_secret_read(&path, pid) {
                        self.push_syscall(
                            i,
                            SyscallEvent {
                                syscall: "open".into(),
                                detail: what,
                                path: path.clone(),
                                ..Default::default()
                            },
                        );
                    }
                }
                let stamp = stamp.filter(|s| s.ino != 0);
                let Some(rec) = self.open_rec(i, &path) else {
                    return;
                };
                if opath {
                    rec.opath = true;
                } else {
                    rec.opened = true;
                    if write {
                        rec.wrote = true;
                        // What the process left is in the last file it
                        // opened for writing.
                        rec.write = stamp.map(|s| (s.dev, s.ino));
                        // Created or truncated without write access: it
                        // cannot change the file after the open, so what it
                        // left is the file as the open left it. Not a
                        // regular file (a device, a fifo): there is no
                        // content to leave, and no close is recorded.
                        let regular = stamp.is_some_and(|s| s.mode & libc::S_IFMT == libc::S_IFREG);
                        rec.closed = (flags & O_ACCMODE == 0 || !regular)
                            .then_some(stamp)
                            .flatten();
                    } else if rec.read.is_none() {
                        rec.read = stamp;
                    }
                }
                if rec.unresolved.is_none() {
                    rec.unresolved = unresolved;
                }
                if let (true, Some(s)) = (write, stamp) {
                    self.index_write(i, s.dev, s.ino, &path);
                }
            }
            TraceEvent::Exit { pid, code, .. } => {
                self.dropped.remove(&pid);
                if let Some(&i) = self.live.get(&pid) {
                    if self.procs[i].exit.is_none() {
                        self.procs[i].exit = Some(code);
                    }
                }
                self.hello.retain(|k, _| k.0 != pid);
                self.dns_tcp.retain(|k, _| k.0 != pid);
                self.dns_open.retain(|k, _| k.0 != pid);
                self.dns_streams.retain(|k| k.0 != pid);
            }
            TraceEvent::Comm { pid, comm } => {
                if let Some(i) = self.proc_mut(pid, None) {
                    self.procs[i].comm = comm;
                }
            }
            TraceEvent::Net {
                pid,
                call,
                fd,
                addr,
                time,
            } => {
                let Some(i) = self.proc_mut(pid, None) else {
                    return;
                };
                let (family, address) = (addr.family(), addr.address());
                let port = matches!(addr, SockAddr::Ip(_)).then(|| addr.port());
                let syscall = call.name();
                let conn = NetworkConnection {
                    syscall: syscall.into(),
                    family,
                    address,
                    port,
                    fd: fd as i64,
                    timestamp: ts(time),
                    ..Default::default()
                };
                let conns = &self.procs[i].net.connections;
                // One record per distinct (call, fd, address): a UDP socket
                // sending many datagrams to one peer is one connection. Every
                // connect is a connection of its own (fds are reused).
                let new = call == NetCall::Connect
                    || !conns.iter().any(|c| {
                        c.syscall == conn.syscall
                            && c.fd == conn.fd
                            && c.address == conn.address
                            && c.port == conn.port
                    });
                if new {
                    if conns.len() >= MAX_CONNECTIONS_PER_PROCESS
                        || self.connections >= MAX_CONNECTIONS_PER_STEP
                    {
                        self.count("connections");
                    } else {
                        self.connections += 1;
                        self.procs[i].net.connections.push(conn);
                    }
                }
                if call == NetCall::Connect {
                    self.hello.remove(&(pid, fd));
                    self.dns_tcp.remove(&(pid, fd));
                    self.dns_streams.remove(&(pid, fd));
                }
            }
            TraceEvent::Egress {
                pid,
                fd,
                dst,
                stream,
                bytes,
                time,
            } => self.egress(pid, fd, dst, stream, bytes, time),
            TraceEvent::Syscall { pid, call, time } => {
                let Some(i) = self.proc_mut(pid, None) else {
                    return;
                };
                // The evidence strings: one description for both backends.
                self.push_syscall(
                    i,
                    SyscallEvent {
                        syscall: call.name().into(),
                        detail: call.describe(self.daemon_pid),
                        args: call.args(),
                        timestamp: ts(time),
                        path: call.path().unwrap_or_default().into(),
                    },
                );
            }
            TraceEvent::Close { pid, stamp, .. } => self.closed(pid, stamp),
            TraceEvent::LeftStep { pid, by, time } => {
                if let Some(i) = self.proc_mut(pid, None) {
                    self.procs[i].left_step = true;
                }
                // The event goes to the mover when it is a step process
                // (never invent a process for an outsider or the daemon).
                let mover = self
                    .live
                    .get(&by)
                    .copied()
                    .filter(|&j| self.procs[j].exit.is_none());
                let (target, detail) = match mover {
                    Some(j) if by == pid => (Some(j), format!("moved itself (pid {pid}) out of the step's cgroup")),
                    Some(j) => (Some(j), format!("moved pid {pid} out of the step's cgroup")),
                    None => (
                        self.live.get(&pid).copied(),
                        format!("moved out of the step's cgroup by pid {by}, not a process of this step"),
                    ),
                };
                if let Some(j) = target {
                    // ptrace already reported the write itself.
                    let dup = self.procs[j].syscalls.last().is_some_and(|e| {
                        e.syscall == "cgroup_leave" && e.args.first() == Some(&(pid as i64))
                    });
                    if !dup {
                        self.push_syscall(
                            j,
                            SyscallEvent {
                                syscall: "cgroup_leave".into(),
                                detail,
                                args: vec![pid as i64],
                                timestamp: ts(time),
                                path: String::new(),
                            },
                        );
                    }
                }
            }
            TraceEvent::BornOutside { pid, parent, time } => self.born_outside(pid, parent, time),
            TraceEvent::JoinedStep {
                pid,
                by,
                from,
                at_birth,
                running,
                time,
            } => self.joined(pid, by, from, at_birth, running, time),
            TraceEvent::Ingress {
                pid,
                src,
                stream,
                bytes,
                time,
            } => self.ingress(pid, src, stream, &bytes, time),
        }
    }

    /// Where the live process `pid` came from, if it joined the step.
    fn joined_origin(&self, pid: u32) -> Option<String> {
        let &i = self.live.get(&pid)?;
        let p = &self.procs[i];
        (p.exit.is_none() && p.joined).then(|| {
            format!(
                "forked in the step by pid {pid}, which came from {}",
                p.joined_from
            )
        })
    }

    /// Marks `pid` as a root of the step when its process table entry
    /// exists (embedded ptrace runs, whose root is known only by pid).
    pub fn mark_root(&mut self, pid: u32) {
        if let Some(&i) = self.live.get(&pid) {
            self.procs[i].origin_known = true;
        }
    }

    /// A step process `parent` created `pid` outside the step's cgroup.
    fn born_outside(&mut self, pid: u32, parent: u32, time: SystemTime) {
        if let Some(i) = self.proc_mut(pid, Some(parent)) {
            let p = &mut self.procs[i];
            p.left_step = true;
            if p.ppid == 0 {
                p.ppid = parent;
            }
        }
        if let Some(j) = self.live.get(&parent).copied() {
            self.push_syscall(
                j,
                SyscallEvent {
                    syscall: "cgroup_leave".into(),
                    detail: format!(
                        "created pid {pid} directly in a cgroup outside the step (clone3 CLONE_INTO_CGROUP)"
                    ),
                    args: vec![pid as i64],
                    timestamp: ts(time),
                    path: String::new(),
                },
            );
        }
    }

    /// `pid` came into the step from `from`, moved (or created) by `by`.
    fn joined(
        &mut self,
        pid: u32,
        by: u32,
        from: String,
        at_birth: bool,
        running: Option<Running>,
        time: SystemTime,
    ) {
        let Some(i) = self.proc_mut(pid, at_birth.then_some(by)) else {
            return;
        };
        let p = &mut self.procs[i];
        p.joined = true;
        p.joined_from = from.clone();
        if p.image.is_none() && !at_birth {
            // What it runs, from the kernel's own link (as for a root).
            let running = running.unwrap_or_default();
            if let Some(exe) = running.exe {
                let stamp = running.exe_stamp;
                let exe = exe.display().to_string();
                p.image = Some(Image {
                    program: exe.clone(),
                    exe: Some(exe),
                    exe_stamp: stamp,
                    kind: ImageKind::Binary,
                });
            }
            if p.comm.is_empty() {
                p.comm = running.comm.unwrap_or_default();
            }
        }
        let detail = if at_birth {
            format!(
                "created in the step's cgroup by pid {by} from {from} (clone3 CLONE_INTO_CGROUP)"
            )
        } else if by == pid {
            format!("moved itself into the step's cgroup from {from}")
        } else {
            format!("moved into the step's cgroup by pid {by} from {from}")
        };
        self.push_syscall(
            i,
            SyscallEvent {
                syscall: "cgroup_join".into(),
                detail,
                args: vec![pid as i64, by as i64],
                timestamp: ts(time),
                path: String::new(),
            },
        );
    }

    fn egress(
        &mut self,
        pid: u32,
        fd: i32,
        dst: Option<std::net::SocketAddr>,
        stream: bool,
        bytes: Vec<u8>,
        time: SystemTime,
    ) {
        let Some(i) = self.proc_mut(pid, None) else {
            return;
        };
        let port = dst.map(|d| d.port());
        // DNS: UDP datagrams, or TCP to port 53 or starting with a DNS
        // query (length-prefixed).
        if !stream || port == Some(53) || self.dns_streams.contains(&(pid, fd)) {
            let queries = if stream {
                // Complete length-prefixed messages; keep a partial one.
                let buf = self.dns_tcp.entry((pid, fd)).or_default();
                buf.extend_from_slice(&bytes);
                let mut qs: Option<Vec<dns::DnsQuery>> = None;
                while buf.len() >= 2 {
                    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                    if buf.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                    if let Some(q) = dns::parse_dns_queries(&msg, false) {
                        qs.get_or_insert_with(Vec::new).extend(q);
                    }
                }
                if buf.is_empty() {
                    self.dns_tcp.remove(&(pid, fd));
                }
                qs
            } else {
                dns::parse_dns_queries(&bytes, false)
            };
            if let Some(qs) = queries {
                let (server_address, server_port) = dst
                    .map(|d| (d.ip().to_string(), d.port()))
                    .unwrap_or_default();
                for q in qs {
                    let n = self.procs[i].net.dns_lookups.len();
                    if n >= MAX_DNS_LOOKUPS_PER_PROCESS
                        || self.dns_lookups >= MAX_DNS_LOOKUPS_PER_STEP
                    {
                        self.count("dnsLookups");
                        continue;
                    }
                    self.dns_lookups += 1;
                    let open = self
                        .dns_open
                        .entry((pid, q.id))
                        .or_insert_with(|| (i, Vec::new()));
                    if open.0 != i {
                        *open = (i, Vec::new());
                    }
                    open.1.push(n);
                    self.procs[i].net.dns_lookups.push(DnsLookup {
                        server_address: server_address.clone(),
                        server_port,
                        name: q.name,
                        qtype: q.qtype,
                        transport: if stream { "tcp" } else { "udp" }.into(),
                        answers: Vec::new(),
                        timestamp: ts(time),
                    });
                }
                return;
            }
            if !stream || self.dns_streams.contains(&(pid, fd)) {
                return;
            }
        }
        // TLS: buffer the start of the stream until the ClientHello is whole.
        let buf = self.hello.entry((pid, fd)).or_default();
        if buf.len() >= MAX_HELLO {
            return;
        }
        buf.extend_from_slice(&bytes[..bytes.len().min(MAX_HELLO - buf.len())]);
        // DNS over TCP on another port than 53: a strictly valid query at
        // the start of the stream.
        if port != Some(53) {
            match dns::dns_tcp_start(buf) {
                dns::DnsStart::Incomplete => return,
                dns::DnsStart::Yes => {
                    let start = self.hello.remove(&(pid, fd)).unwrap_or_default();
                    self.dns_streams.insert((pid, fd));
                    return self.egress(pid, fd, dst, stream, start, time);
                }
                dns::DnsStart::No => {}
            }
        }
        let Some(buf) = self.hello.get_mut(&(pid, fd)) else {
            return;
        };
        // Through an HTTP proxy the stream starts with "CONNECT host:port
        // HTTP/1.1 …\r\n\r\n", then the ClientHello for that host.
        let (proxy, start) = match http_connect(buf) {
            Connect::Incomplete => return,
            Connect::No => (None, 0),
            Connect::Target(host, end) => (Some(host), end),
        };
        // The server name is taken from the first bytes as soon as they
        // hold it: a hello larger than what the backend captures keeps its
        // name, and says it was cut (`helloTruncated`).
        let found = match tls::client_hello_prefix(&buf[start..]) {
            None => {
                // Keep a marker so later writes on this stream are ignored.
                buf.resize(MAX_HELLO, 0);
                proxy.map(|h| (h, Vec::new(), false))
            }
            Some(h) if h.complete => {
                buf.resize(MAX_HELLO, 0);
                Some((
                    h.sni.or(proxy).unwrap_or_default(),
                    h.alpn.unwrap_or_default(),
                    false,
                ))
            }
            Some(h) => {
                // Cut so far; the rest may follow (the buffer is kept). The
                // proxy target, if any, is known already.
                let started = buf.len() > start;
                match (h.sni, proxy) {
                    (Some(n), _) | (None, Some(n)) => {
                        Some((n, h.alpn.unwrap_or_default(), started))
                    }
                    (None, None) => None,
                }
            }
        };
        let Some((hostname, alpn, hello_truncated)) = found else {
            return;
        };
        let full = self.procs[i].net.connections.len() >= MAX_CONNECTIONS_PER_PROCESS
            || self.connections >= MAX_CONNECTIONS_PER_STEP;
        let conns = &mut self.procs[i].net.connections;
        let target = conns
            .iter_mut()
            .rev()
            .find(|c| c.syscall == "connect" && c.fd == fd as i64);
        match target {
            Some(c) => {
                c.hostname = hostname;
                c.alpn = alpn;
                c.hello_truncated = hello_truncated;
            }
            None if full => {
                *self.truncated.entry("connections").or_default() += 1;
            }
            None => {
                self.connections += 1;
                // The connect was not seen (e.g. made before the step
                // began): record the TLS peer anyway.
                let (family, address) = match dst {
                    Some(d) if d.is_ipv4() => ("AF_INET".to_string(), d.ip().to_string()),
                    Some(d) => ("AF_INET6".to_string(), d.ip().to_string()),
                    None => ("AF_UNSPEC".to_string(), String::new()),
                };
                conns.push(NetworkConnection {
                    syscall: "connect".into(),
                    family,
                    address,
                    port,
                    fd: fd as i64,
                    timestamp: ts(time),
                    hostname,
                    alpn,
                    hello_truncated,
                });
            }
        }
    }

    /// A packet a step process received on a socket it used: DNS answers
    /// are added to the lookups they answer (same process, same
    /// transaction id, from the server the query went to).
    fn ingress(
        &mut self,
        pid: u32,
        src: std::net::SocketAddr,
        stream: bool,
        bytes: &[u8],
        _time: SystemTime,
    ) {
        if stream || bytes.len() < 2 {
            return;
        }
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let Some((i, idx)) = self.dns_open.get(&(pid, id)).cloned() else {
            return;
        };
        let Some(answers) = dns::parse_dns_answers(bytes, false) else {
            return;
        };
        let Some(p) = self.procs.get_mut(i) else {
            return;
        };
        // Only from the server the query went to; the first answer wins.
        let mut answered = false;
        for j in idx {
            if let Some(l) = p.net.dns_lookups.get_mut(j) {
                if l.server_address == src.ip().to_string() && l.server_port == src.port() {
                    l.answers
                        .extend(answers.iter().map(|a| format!("{} {}", a.rtype, a.data)));
                    answered = true;
                }
            }
        }
        if answered {
            self.dns_open.remove(&(pid, id));
        }
    }

    /// Remembers that process `i` opened (dev, ino) for writing at `path`.
    fn index_write(&mut self, i: usize, dev: u64, ino: u64, path: &str) {
        let Some(key) = self.paths.get(path).cloned() else {
            return;
        };
        let v = self.written.entry((i, dev, ino)).or_default();
        if !v.contains(&key) {
            v.push(key);
        }
    }

    /// Process `pid` let go of a file it had open for writing: the stamp
    /// of every path where that file is its last write open.
    fn closed(&mut self, pid: u32, stamp: FileStamp) {
        let Some(&i) = self.live.get(&pid) else {
            return;
        };
        let Some(paths) = self.written.get(&(i, stamp.dev, stamp.ino)) else {
            return;
        };
        for path in paths {
            if let Some(rec) = self.procs[i].opens.get_mut(path) {
                if rec.write == Some((stamp.dev, stamp.ino)) {
                    rec.closed = Some(stamp);
                }
            }
        }
    }

    /// Hashes what the step opened and builds its processes. `alive` are
    /// the pids still running when the step ended. Hashing follows the
    /// recorder's [`TraceLimits`]; `hasher` reads the files (with the step
    /// user's permission: only files it could read get a digest).
    pub fn finish(self, hasher: &dyn Hasher, algs: &[HashAlg], alive: &[u32]) -> StepTrace {
        // Each path once, with every identity recorded for it.
        let mut wanted: Vec<(&str, Identity)> = Vec::new();
        for p in &self.procs {
            for (path, rec) in &p.opens {
                if rec.hashable() {
                    if let Some(id) = rec.identity() {
                        wanted.push((path, id));
                    }
                }
            }
            if let Some(img) = &p.image {
                if let (Some(e), Some(s)) = (&img.exe, img.exe_stamp) {
                    if !is_fileless(e) {
                        wanted.push((e, Identity::Read(s)));
                    }
                }
            }
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut jobs: Vec<(&str, Vec<Identity>)> = Vec::new();
        for (path, id) in wanted {
            let j = *index.entry(path).or_insert_with(|| {
                jobs.push((path, Vec::new()));
                jobs.len() - 1
            });
            let ids = &mut jobs[j].1;
            if !ids.contains(&id) && ids.len() < 64 {
                ids.push(id);
            }
        }
        let hashed = hasher.hash_all(
            &jobs,
            algs,
            self.limits.max_hash_file_size,
            self.limits.hash_time_budget,
        );
        let results: HashMap<&str, &Hashed> = jobs.iter().map(|j| j.0).zip(hashed.iter()).collect();

        let mut out = Vec::with_capacity(self.procs.len());
        let mut written: BTreeMap<String, Vec<Result<DigestSet, String>>> = BTreeMap::new();
        for p in &self.procs {
            let mut info = ProcessInfo {
                program: p
                    .image
                    .as_ref()
                    .map(|i| i.program.clone())
                    .unwrap_or_default(),
                processid: p.pid as i64,
                parentpid: p.ppid as i64,
                comm: p.comm.clone(),
                cmdline: p.argv.join(" "),
                exitcode: p.exit.filter(|&c| c >= 0),
                // Alive when the step ended (a --kill then shows in exitcode).
                alive_at_end: alive.contains(&p.pid) && p.exit.is_none_or(|c| c >= 128),
                left_step: p.left_step,
                joined_step: p.joined || !p.origin_known,
                joined_from: if p.joined {
                    p.joined_from.clone()
                } else if !p.origin_known {
                    REASON_ORIGIN_UNKNOWN.to_string()
                } else {
                    String::new()
                },
                syscall_events: p.syscalls.clone(),
                ..Default::default()
            };
            if !p.net.connections.is_empty() || !p.net.dns_lookups.is_empty() {
                info.network = Some(p.net.clone());
            }
            info.execs = p.programs.clone();
            for (path, rec) in &p.opens {
                let (digest, why) = digest_for(path, rec, &results);
                if rec.wrote && rec.opened && written.len() < self.limits.max_files {
                    written
                        .entry(path.to_string())
                        .or_default()
                        .push(match &why {
                            None => Ok(digest.clone()),
                            Some(w) => Err(w.clone()),
                        });
                }
                info.openedfiles.insert(path.to_string(), digest);
                if let Some(reason) = why {
                    info.unhashed_opens.push(UnhashedOpen {
                        path: path.to_string(),
                        reason,
                    });
                }
            }
            if let Some(img) = &p.image {
                let exe = match (&img.exe, img.exe_stamp) {
                    (Some(e), _) if is_fileless(e) => Err(REASON_FILELESS.to_string()),
                    (Some(e), Some(s)) => by_identity(e, Identity::Read(s), &results),
                    (Some(_), None) => Err(REASON_NO_STAMP.to_string()),
                    (None, _) => Err("the kernel's path of the executed file is unknown".into()),
                };
                let program = match img.kind {
                    ImageKind::Binary => exe.clone(),
                    ImageKind::Unnamed => match img.exe_stamp {
                        Some(s) => by_identity(&img.program, Identity::Read(s), &results),
                        None => Err(REASON_NO_STAMP.to_string()),
                    },
                    ImageKind::Script { opener } => {
                        let rec = self
                            .procs
                            .get(opener)
                            .and_then(|o| o.opens.get(img.program.as_str()));
                        match rec {
                            Some(r) if r.identity().is_some() => {
                                let (d, why) = digest_for(&img.program, r, &results);
                                why.map_or(Ok(d), Err)
                            }
                            _ => Err("a script, and its interpreter did not open it by this path: its content is unproven".into()),
                        }
                    }
                };
                match exe {
                    Ok(d) => info.exedigest = Some(d),
                    Err(why) => info.exe_unhashed_reason = why,
                }
                match program {
                    Ok(d) => info.programdigest = Some(d),
                    Err(why) => info.program_unhashed_reason = why,
                }
            }
            out.push(info);
        }
        StepTrace {
            processes: out,
            truncated: self
                .truncated
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            written,
        }
    }
}

/// The digest of `path` if the file hashed there has identity `id`.
fn by_identity(
    path: &str,
    id: Identity,
    results: &HashMap<&str, &Hashed>,
) -> Result<DigestSet, String> {
    let rec = OpenRec {
        read: match id {
            Identity::Read(s) => Some(s),
            Identity::Write { .. } | Identity::Closed(_) => None,
        },
        opened: true,
        ..Default::default()
    };
    let (d, why) = digest_for(path, &rec, results);
    why.map_or(Ok(d), Err)
}

fn digest_for(
    path: &str,
    rec: &OpenRec,
    results: &HashMap<&str, &Hashed>,
) -> (DigestSet, Option<String>) {
    let no = |why: String| (DigestSet::default(), Some(why));
    if let Some(why) = &rec.unresolved {
        return no(why.clone());
    }
    if rec.opath && !rec.opened {
        return no(REASON_O_PATH.into());
    }
    let Some(id) = rec.identity() else {
        if rec.wrote && rec.write.is_some() {
            return no(REASON_WRITE_NOT_CLOSED.into());
        }
        return no(REASON_NO_STAMP.into());
    };
    // "Modified" only for the same inode whose change time moved on: an
    // inode number reused by another file (its ctime older than at the
    // open), another mount's or namespace's file, another spelling of a
    // name — all are another file, never a modification.
    let mismatch = |seen: &Seen| {
        if let Identity::Closed(_) = id {
            return if id.same_file(seen) {
                REASON_WRITE_MODIFIED
            } else {
                REASON_WRITE_OTHER
            }
            .to_string();
        }
        let moved_on = match id {
            Identity::Read(then) => seen.stamp.ctime_ns >= then.ctime_ns,
            _ => true,
        };
        if id.same_file(seen) && moved_on {
            REASON_MODIFIED.to_string()
        } else {
            REASON_REPLACED.to_string()
        }
    };
    match results.get(path) {
        Some(Hashed::Digest(d, seen)) => {
            if id.matches(seen) {
                (d.clone(), None)
            } else {
                tracing::debug!(path, ?id, ?seen, "file identity changed after open");
                no(mismatch(seen))
            }
        }
        Some(Hashed::Mismatch(seen)) => no(mismatch(seen)),
        Some(Hashed::NotRegular(kind)) => no((*kind).to_string()),
        Some(Hashed::Unreadable) => no(REASON_UNREADABLE.into()),
        Some(Hashed::TooLarge(n, m)) => {
            no(format!("not hashed: {n} bytes exceeds the limit of {m}"))
        }
        Some(Hashed::OutOfTime(b)) => no(format!(
            "not hashed: the step's hashing time budget ({b:?}) ran out"
        )),
        Some(Hashed::ChangedWhileHashing) => no("modified while it was being hashed".into()),
        Some(Hashed::Error(e)) => no(format!("not hashed: {e}")),
        None => no("not hashed".into()),
    }
}

/// How the program of an exec is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProgramKind {
    /// The kernel's exe.
    Binary,
    /// A script (the exe is its interpreter).
    Script,
    /// The kernel's exe path is unknown.
    Unnamed,
}

/// The program of an exec, decided without touching the filesystem (the
/// job's symlinks are never followed as root):
/// - the kernel's absolute exe path when the execve name is that path
///   (made absolute against the cwd and normalised lexically), or when it
///   reached the same file through a symlink;
/// - for a script (the kernel rewrote argv to `interpreter [arg] NAME …`,
///   so NAME is argv[1] or argv[2]), the script's name made absolute
///   lexically: its content is proven only by its interpreter's open;
/// - the execve name, made absolute, when the kernel gave no exe path.
fn program_of(
    filename: &str,
    cwd: Option<&str>,
    exe: Option<&str>,
    argv: &[String],
) -> (String, ProgramKind) {
    let fd_like = filename.starts_with("/dev/fd/") || filename.starts_with("/proc/");
    let lexical = if fd_like {
        None
    } else if filename.starts_with('/') {
        Some(lexically_normal(filename))
    } else {
        cwd.map(|c| lexically_normal(&format!("{c}/{filename}")))
    };
    let Some(exe) = exe else {
        return (
            lexical.unwrap_or_else(|| filename.to_string()),
            ProgramKind::Unnamed,
        );
    };
    if lexical.as_deref() == Some(exe) {
        return (exe.to_string(), ProgramKind::Binary);
    }
    let script =
        !fd_like && !filename.is_empty() && argv.iter().skip(1).take(2).any(|a| a == filename);
    match lexical {
        Some(l) if script => (l, ProgramKind::Script),
        _ => (exe.to_string(), ProgramKind::Binary),
    }
}

/// `path` (absolute) with `.`, `..` and repeated `/` resolved as text.
fn lexically_normal(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `/proc/<own pid>/…` → `/proc/self/…`, the spelling policies match on.
fn normalize_proc_self(path: &str, pid: u32) -> String {
    if let Some(rest) = path.strip_prefix("/proc/") {
        let (num, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if num == pid.to_string() {
            return if tail.is_empty() {
                "/proc/self".to_string()
            } else {
                format!("/proc/self/{tail}")
            };
        }
    }
    path.to_string()
}

/// Opens of process environments and memory: a credential-harvesting
/// indicator worth a syscall event.
fn proc_secret_read(path: &str, _pid: u32) -> Option<String> {
    let rest = path.strip_prefix("/proc/")?;
    let (who, tail) = rest.split_once('/')?;
    let what = match tail {
        "environ" => "environment",
        "mem" => "memory",
        _ => return None,
    };
    if who == "self" {
        Some(format!("read of its own {what} ({path})"))
    } else if who.chars().all(|c| c.is_ascii_digit()) {
        Some(format!("read of another process's {what} ({path})"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    //! Pure helpers; the fold with real files and the daemon's hasher is
    //! tested in the daemon (`cilock-daemon/src/trace/fold_tests.rs`).
    use super::*;

    #[test]
    fn program_names_without_the_filesystem() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(lexically_normal("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(lexically_normal("/../x"), "/x");
        assert_eq!(
            program_of("./t", Some("/w"), Some("/w/t"), &argv(&["./t"])),
            ("/w/t".into(), ProgramKind::Binary)
        );
        // Through a symlink (/bin/cat → /usr/bin/cat): the kernel's exe.
        assert_eq!(
            program_of(
                "/bin/cat",
                Some("/"),
                Some("/usr/bin/cat"),
                &argv(&["cat", "x"])
            ),
            ("/usr/bin/cat".into(), ProgramKind::Binary)
        );
        assert_eq!(
            program_of(
                "s.sh",
                Some("/w"),
                Some("/usr/bin/bash"),
                &argv(&["/bin/bash", "s.sh"])
            ),
            ("/w/s.sh".into(), ProgramKind::Script)
        );
        assert_eq!(
            program_of(
                "/w/s.py",
                None,
                Some("/usr/bin/python3.11"),
                &argv(&["/usr/bin/env", "-S", "/w/s.py"])
            ),
            ("/w/s.py".into(), ProgramKind::Script)
        );
        assert_eq!(
            program_of(
                "/dev/fd/3",
                Some("/w"),
                Some("/w/x"),
                &argv(&["x", "/dev/fd/3"])
            ),
            ("/w/x".into(), ProgramKind::Binary)
        );
        assert_eq!(
            program_of("x", Some("/w"), None, &argv(&["x"])),
            ("/w/x".into(), ProgramKind::Unnamed)
        );
    }

    #[test]
    fn proc_self_normalization() {
        assert_eq!(
            normalize_proc_self("/proc/42/environ", 42),
            "/proc/self/environ"
        );
        assert_eq!(normalize_proc_self("/proc/42", 42), "/proc/self");
        assert_eq!(
            normalize_proc_self("/proc/43/environ", 42),
            "/proc/43/environ"
        );
        assert_eq!(normalize_proc_self("/proc/420/x", 42), "/proc/420/x");
    }

    #[test]
    fn http_connect_requests() {
        assert_eq!(http_connect(b"CONN"), Connect::Incomplete);
        assert_eq!(http_connect(b"\x16\x03\x01"), Connect::No);
        assert_eq!(
            http_connect(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a"),
            Connect::Incomplete
        );
        assert_eq!(
            http_connect(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\nX"),
            Connect::Target("2001:db8::1".into(), 38)
        );
    }
}
