//! Folds a step's [`TraceEvent`]s into its process table, then — when the
//! step ends — hashes what was opened and produces the command-run
//! processes.
//!
//! [`Recorder::push`] dispatches each event; the process table is
//! `process.rs`, file records and digests `files.rs`, payloads (DNS, TLS,
//! HTTP CONNECT) `network.rs`, what the fold asks of a hasher [`hash`].
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

mod files;
pub mod hash;
mod network;
mod process;

use self::files::{by_identity, digest_for, normalize_proc_self, proc_secret_read};
use self::hash::{Hashed, Hasher, Identity, Seen};
use self::process::{program_of, ProgramKind};
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
/// Reason given for a file opened (or exec'd) in another mount namespace
/// than the daemon's, `ns` (in the container `container` when known): the
/// daemon cannot prove that the file at this path in its own namespace is
/// that file, so it hashes neither.
pub fn reason_other_mnt_ns(ns: u64, container: &str) -> String {
    let inside = if container.is_empty() {
        String::new()
    } else {
        format!(", container {container}")
    };
    format!("opened in another mount namespace (mnt:[{ns}]{inside}): the path is as that namespace sees it; the daemon's file at this path may be another, so it is not hashed")
}

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
    /// Why the path is not hashed as it is (shared: one text per process
    /// for every open in its mount namespace).
    unresolved: Option<Arc<str>>,
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
    /// Exec'd in another mount namespace than the daemon's: why its files
    /// are not hashed.
    foreign: Option<Arc<str>>,
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
    /// The container it runs in (from the cgroup it joined, or its
    /// parent's).
    container: String,
    /// Inode of its mount namespace (at its last exec, or its parent's; 0:
    /// unknown).
    mnt_ns: u64,
    /// The reason of [`Recorder::foreign_ns`], made once for the mount
    /// namespace it names (forgotten when the container changes).
    ns_reason: Option<(u64, Arc<str>)>,
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
    /// Each container the trace saw → the cgroup its first process joined,
    /// relative to the step's cgroup (`<id>`, `docker-<id>.scope`,
    /// `buildkit/<name>`), at most [`MAX_CONTAINER_CGROUPS`] (more are
    /// counted in `truncated["containers"]`).
    pub container_cgroups: BTreeMap<String, String>,
}

/// Containers whose cgroup the fold keeps (a job can create any number of
/// container-named cgroups under its step).
pub const MAX_CONTAINER_CGROUPS: usize = 4096;

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
    /// The mount namespace whose paths the daemon hashes: paths seen in
    /// another one are not hashed (see [`Recorder::set_host_mnt_ns`]).
    host_mnt_ns: Option<u64>,
    /// Container → the cgroup it was first seen in (see
    /// [`StepTrace::container_cgroups`]).
    container_cgroups: BTreeMap<String, String>,
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

    /// The mount namespace whose paths the daemon hashes (the inode of its
    /// `/proc/PID/ns/mnt`: the daemon's own, or PID 1's when the daemon
    /// runs in a copy of it, as under systemd's `ProtectSystem=`): a
    /// process whose exec the backend saw in another one is attested with
    /// `mountNamespace`, and the files it opens (as that namespace names
    /// them) are not hashed. Unknown (never set): nothing is foreign.
    pub fn set_host_mnt_ns(&mut self, ns: Option<u64>) {
        self.host_mnt_ns = ns;
    }

    /// Whether `ns` is known and another than the one whose paths are hashed.
    fn is_foreign(&self, ns: u64) -> bool {
        ns != 0 && self.host_mnt_ns.is_some_and(|h| h != ns)
    }

    /// Why process `i`'s paths are not hashed, when it is in another mount
    /// namespace than the daemon's.
    fn foreign_ns(&mut self, i: usize) -> Option<Arc<str>> {
        let ns = self.procs[i].mnt_ns;
        if !self.is_foreign(ns) {
            return None;
        }
        let p = &mut self.procs[i];
        match &p.ns_reason {
            Some((n, why)) if *n == ns => Some(why.clone()),
            _ => {
                let why: Arc<str> = reason_other_mnt_ns(ns, &p.container).into();
                p.ns_reason = Some((ns, why.clone()));
                Some(why)
            }
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.truncated.entry(what).or_default() += 1;
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
                        ps.container.clone(),
                        ps.mnt_ns,
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
                if let Some((comm, image, cwd, argv, container, mnt_ns)) = parent_state {
                    // Same image as the parent until it execs; same
                    // container and mount namespace.
                    p.comm = comm;
                    p.image = image;
                    p.cwd = cwd;
                    p.argv = argv;
                    p.container = container;
                    p.mnt_ns = mnt_ns;
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
                mnt_ns,
                time,
                ..
            } => {
                let Some(i) = self.proc_mut(pid, ppid) else {
                    return;
                };
                if self.procs[i].ppid == 0 {
                    self.procs[i].ppid = ppid.unwrap_or(0);
                }
                if let Some(ns) = mnt_ns {
                    self.procs[i].mnt_ns = ns;
                }
                let foreign = self.foreign_ns(i);
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
                        if rec.unresolved.is_none() {
                            rec.unresolved = foreign.clone();
                        }
                    }
                }
                if let Some(e) = exe.as_deref().filter(|e| is_fileless(e)) {
                    if let Some(rec) = self.open_rec(i, e) {
                        rec.unresolved = Some(REASON_FILELESS.into());
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
                        if rec.unresolved.is_none() {
                            rec.unresolved = foreign.clone();
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
                    foreign,
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
                // In another mount namespace the path names a file of
                // that namespace: never hashed at the daemon's path.
                let unresolved = unresolved.map(Arc::from).or_else(|| self.foreign_ns(i));
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
                cgroup,
                running,
                time,
            } => {
                self.joined(pid, by, from, at_birth, running, time);
                let Some(rel) = cgroup.as_deref() else {
                    return;
                };
                let Some(c) = crate::container::container_of_cgroup(rel) else {
                    return;
                };
                if !self.container_cgroups.contains_key(&c) {
                    if self.container_cgroups.len() < MAX_CONTAINER_CGROUPS {
                        let depth = if c.starts_with("buildkit:") { 2 } else { 1 };
                        let dir: Vec<&str> =
                            rel.trim_start_matches('/').split('/').take(depth).collect();
                        self.container_cgroups.insert(c.clone(), dir.join("/"));
                    } else {
                        self.count("containers");
                    }
                }
                if let Some(&i) = self.live.get(&pid) {
                    self.procs[i].container = c;
                    self.procs[i].ns_reason = None;
                }
            }
            TraceEvent::Ingress {
                pid,
                src,
                stream,
                bytes,
                time,
            } => self.ingress(pid, src, stream, &bytes, time),
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
                    if !is_fileless(e) && img.foreign.is_none() {
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
                container: p.container.clone(),
                mount_namespace: if self.is_foreign(p.mnt_ns) {
                    p.mnt_ns
                } else {
                    0
                },
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
                    (Some(_), _) if img.foreign.is_some() => {
                        Err(img.foreign.as_deref().unwrap_or_default().to_string())
                    }
                    (Some(e), Some(s)) => by_identity(e, Identity::Read(s), &results),
                    (Some(_), None) => Err(REASON_NO_STAMP.to_string()),
                    (None, _) => Err("the kernel's path of the executed file is unknown".into()),
                };
                let program = match img.kind {
                    _ if img.foreign.is_some() => {
                        Err(img.foreign.as_deref().unwrap_or_default().to_string())
                    }
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
            container_cgroups: self.container_cgroups,
        }
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
        assert_eq!(
            crate::pathname::lexically_normal("/a//b/./c/../d/"),
            "/a/b/d"
        );
        assert_eq!(crate::pathname::lexically_normal("/../x"), "/x");
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

    /// A hasher that hashes nothing and remembers what it was asked.
    #[derive(Default)]
    struct Asked(std::sync::Mutex<Vec<String>>);

    impl Hasher for Asked {
        fn hash_all(
            &self,
            jobs: &[(&str, Vec<Identity>)],
            _: &[HashAlg],
            _: u64,
            _: Duration,
        ) -> Vec<Hashed> {
            let mut a = self.0.lock().unwrap();
            a.extend(jobs.iter().map(|j| j.0.to_string()));
            jobs.iter().map(|_| Hashed::Unreadable).collect()
        }
    }

    fn stamp(ino: u64) -> FileStamp {
        FileStamp {
            dev: 1,
            ino,
            mode: libc::S_IFREG,
            ..Default::default()
        }
    }

    fn exec(pid: u32, exe: &str, mnt_ns: Option<u64>) -> TraceEvent {
        TraceEvent::Exec {
            pid,
            ppid: None,
            filename: exe.into(),
            exe: Some(exe.into()),
            exe_stamp: Some(stamp(7)),
            cwd: Some("/".into()),
            argv: vec![exe.into()],
            comm: "x".into(),
            mnt_ns,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    fn open(pid: u32, path: &str) -> TraceEvent {
        TraceEvent::Open {
            pid,
            path: path.into(),
            flags: 0,
            stamp: Some(stamp(9)),
            unresolved: None,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    /// `pid` came into the step's cgroup `cgroup` from outside the
    /// daemon's steps (moved by pid 40).
    fn joined(pid: u32, at_birth: bool, cgroup: &str) -> TraceEvent {
        TraceEvent::JoinedStep {
            pid,
            by: 40,
            from: "outside the daemon's steps".into(),
            at_birth,
            cgroup: Some(cgroup.to_string()),
            running: None,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    fn fork(parent: u32, child: u32) -> TraceEvent {
        TraceEvent::Fork {
            parent,
            child,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn joined_containers_are_inherited_and_their_namespace_is_not_hashed() {
        const HOST: u64 = 4026531841;
        const CTR: u64 = 4026532999;
        let id = "c".repeat(64);
        let mut r = Recorder::new(None);
        r.set_host_mnt_ns(Some(HOST));
        r.add_root(10, Running::default());
        r.push(exec(10, "/usr/bin/sh", Some(HOST)));
        r.push(open(10, "/w/host.txt"));
        // runc init comes into <step>/<id> from outside, forks the
        // container's process, which execs in the container's namespace.
        r.push(joined(50, false, &id));
        r.push(fork(50, 51));
        r.push(exec(51, "/bin/cat", Some(CTR)));
        r.push(open(51, "/in/f"));
        r.push(fork(51, 52));
        r.push(open(52, "/in/g"));
        // A BuildKit RUN in the engine's window; a join into the shell leaf.
        r.push(joined(60, true, "buildkit/u5mr"));
        r.push(joined(70, true, "shell"));
        // The step's own unshare -m child: another namespace, no container.
        r.push(fork(10, 11));
        r.push(exec(11, "/usr/bin/cat", Some(CTR + 1)));
        r.push(open(11, "/etc/hostname"));
        let asked = Asked::default();
        let out = r.finish(&asked, &[HashAlg::Sha256], &[]);
        let get = |pid: i64| out.processes.iter().find(|p| p.processid == pid).unwrap();
        let asked = asked.0.lock().unwrap().clone();
        // The host's files are hashed; nothing a foreign namespace named is.
        assert!(asked.contains(&"/w/host.txt".to_string()), "{asked:?}");
        assert!(asked.contains(&"/usr/bin/sh".to_string()), "{asked:?}");
        for p in [
            "/in/f",
            "/in/g",
            "/bin/cat",
            "/etc/hostname",
            "/usr/bin/cat",
        ] {
            assert!(!asked.contains(&p.to_string()), "{p} hashed: {asked:?}");
        }
        let root = get(10);
        assert_eq!((root.container.as_str(), root.mount_namespace), ("", 0));
        assert_eq!(get(50).container, id);
        assert_eq!(get(50).mount_namespace, 0);
        let cat = get(51);
        assert_eq!(cat.container, id);
        assert_eq!(cat.mount_namespace, CTR);
        let why = reason_other_mnt_ns(CTR, &id);
        assert!(
            why.contains(&format!("mnt:[{CTR}], container {id}")),
            "{why}"
        );
        assert_eq!(
            cat.unhashed_opens,
            vec![
                UnhashedOpen {
                    path: "/bin/cat".into(),
                    reason: why.clone()
                },
                UnhashedOpen {
                    path: "/in/f".into(),
                    reason: why.clone()
                }
            ]
        );
        assert_eq!(cat.exe_unhashed_reason, why);
        assert_eq!(cat.program_unhashed_reason, why);
        assert!(cat.exedigest.is_none() && cat.openedfiles["/in/f"].is_empty());
        // The child inherits container and namespace.
        let child = get(52);
        assert_eq!(
            (child.container.as_str(), child.mount_namespace),
            (id.as_str(), CTR)
        );
        assert_eq!(child.unhashed_opens[0].path, "/in/g");
        assert_eq!(child.unhashed_opens[0].reason, why);
        assert_eq!(get(60).container, "buildkit:u5mr");
        assert_eq!(get(70).container, "");
        // Each container's cgroup as the trace saw it (the leaf is none).
        assert_eq!(
            out.container_cgroups,
            BTreeMap::from([
                (id.clone(), id.clone()),
                ("buildkit:u5mr".to_string(), "buildkit/u5mr".to_string())
            ])
        );
        let own = get(11);
        assert_eq!((own.container.as_str(), own.mount_namespace), ("", CTR + 1));
        assert_eq!(
            own.unhashed_opens
                .iter()
                .find(|u| u.path == "/etc/hostname")
                .map(|u| u.reason.clone()),
            Some(reason_other_mnt_ns(CTR + 1, ""))
        );
        // A process moved in while running in another namespace (no exec
        // seen): its namespace from /proc at the join.
        let mut r = Recorder::new(None);
        r.set_host_mnt_ns(Some(HOST));
        r.push(TraceEvent::JoinedStep {
            pid: 80,
            by: 40,
            from: "outside the daemon's steps".into(),
            at_birth: false,
            cgroup: Some(format!("docker-{id}.scope")),
            running: Some(Running {
                mnt_ns: Some(CTR),
                ..Default::default()
            }),
            time: SystemTime::UNIX_EPOCH,
        });
        r.push(open(80, "/in/h"));
        let out = r.finish(&Asked::default(), &[HashAlg::Sha256], &[]);
        let p = &out.processes[0];
        assert_eq!(
            (p.container.as_str(), p.mount_namespace),
            (id.as_str(), CTR)
        );
        assert_eq!(p.unhashed_opens[0].reason, why);
        assert_eq!(
            out.container_cgroups,
            BTreeMap::from([(id.clone(), format!("docker-{id}.scope"))])
        );
        // The reason is made once per namespace and container: a process
        // moved into a container's cgroup after some opens names it from
        // then on.
        let mut r = Recorder::new(None);
        r.set_host_mnt_ns(Some(HOST));
        r.add_root(10, Running::default());
        r.push(exec(10, "/usr/bin/cat", Some(CTR)));
        r.push(open(10, "/in/a"));
        r.push(open(10, "/in/b"));
        r.push(joined(10, false, &id));
        r.push(open(10, "/in/c"));
        let out = r.finish(&Asked::default(), &[HashAlg::Sha256], &[]);
        let reasons: Vec<(&str, &str)> = out.processes[0]
            .unhashed_opens
            .iter()
            .map(|u| (u.path.as_str(), u.reason.as_str()))
            .collect();
        let bare = reason_other_mnt_ns(CTR, "");
        assert_eq!(
            reasons,
            vec![
                ("/in/a", bare.as_str()),
                ("/in/b", bare.as_str()),
                ("/in/c", why.as_str()),
                ("/usr/bin/cat", bare.as_str()),
            ]
        );
        // Without the daemon's namespace known, nothing is foreign.
        let mut r = Recorder::new(None);
        r.add_root(10, Running::default());
        r.push(exec(10, "/usr/bin/cat", Some(CTR)));
        r.push(open(10, "/w/x"));
        let out = r.finish(&Asked::default(), &[HashAlg::Sha256], &[]);
        assert_eq!(out.processes[0].mount_namespace, 0);
        assert!(out.processes[0]
            .unhashed_opens
            .iter()
            .all(|u| !u.reason.contains("mount namespace")));
    }
}
