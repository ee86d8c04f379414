//! The backend-neutral trace model: what every backend (eBPF, ptrace) turns
//! its raw observations into. The [`super::recorder`] folds these events into
//! a per-step process table; nothing downstream knows which backend ran.
//!
//! Paths are data from the traced job: they are recorded, never trusted
//! (never used to decide where the daemon writes).

use std::time::SystemTime;

/// Identity of an inode when it was opened, used to tell whether a file
/// changed before it was hashed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Device (user-space `st_dev` encoding).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: i64,
    /// mtime, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// ctime, nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// `st_mode`.
    pub mode: u32,
}

/// What kind of network call a [`TraceEvent::Net`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetCall {
    /// connect(2)
    Connect,
    /// sendto(2) with a destination (also sendmsg/sendmmsg where the
    /// backend cannot tell them apart)
    SendTo,
    /// bind(2)
    Bind,
    /// sendmsg(2) with a destination
    SendMsg,
    /// sendmmsg(2) with a destination
    SendMmsg,
}

/// A socket address, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SockAddr {
    /// AF_INET / AF_INET6.
    Ip(std::net::SocketAddr),
    /// AF_UNIX path (or `@name` for the abstract namespace).
    Unix(String),
    /// Another family: number and raw bytes.
    Other(u16, Vec<u8>),
}

/// One observation of a traced process. `pid` is always the thread-group id.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceEvent {
    /// A new process (not thread) `child` forked by `parent`.
    Fork {
        /// Parent tgid.
        parent: u32,
        /// Child tgid.
        child: u32,
        /// When.
        time: SystemTime,
    },
    /// A successful exec.
    Exec {
        /// tgid after exec.
        pid: u32,
        /// Parent tgid, if the backend knows it.
        ppid: Option<u32>,
        /// The filename as passed to execve (may be relative).
        filename: String,
        /// Absolute path of the file the kernel executed (the interpreter
        /// for a script), if resolved.
        exe: Option<String>,
        /// Identity of that file.
        exe_stamp: Option<FileStamp>,
        /// The process's cwd at exec, absolute.
        cwd: Option<String>,
        /// argv.
        argv: Vec<String>,
        /// comm after exec.
        comm: String,
        /// When.
        time: SystemTime,
    },
    /// A successful open of `path` (absolute, canonical as the kernel sees it).
    Open {
        /// tgid.
        pid: u32,
        /// The path.
        path: String,
        /// Open flags (O_ACCMODE etc.).
        flags: u32,
        /// Identity at open time, if the backend captured it.
        stamp: Option<FileStamp>,
        /// Set when the path could not be fully resolved (truncated, pseudo
        /// file); the reason goes to `unhashedOpens`.
        unresolved: Option<String>,
        /// When.
        time: SystemTime,
    },
    /// The process's thread group exited.
    Exit {
        /// tgid.
        pid: u32,
        /// Exit code as the shell reports it (128+signal for a signal).
        code: i32,
        /// When.
        time: SystemTime,
    },
    /// comm changed (prctl PR_SET_NAME) or became known.
    Comm {
        /// tgid.
        pid: u32,
        /// New comm.
        comm: String,
    },
    /// A connect/sendto/bind.
    Net {
        /// tgid.
        pid: u32,
        /// Which call.
        call: NetCall,
        /// The socket fd.
        fd: i32,
        /// The address.
        addr: SockAddr,
        /// When.
        time: SystemTime,
    },
    /// Bytes a process sent that may be a DNS query or TLS ClientHello
    /// (parsed in user space by the recorder).
    Egress {
        /// tgid.
        pid: u32,
        /// Socket fd if known (-1 otherwise).
        fd: i32,
        /// Destination, if known.
        dst: Option<std::net::SocketAddr>,
        /// True for TCP (stream) payloads.
        stream: bool,
        /// The payload (a prefix of what was sent).
        bytes: Vec<u8>,
        /// When.
        time: SystemTime,
    },
    /// A suspicious syscall.
    Syscall {
        /// tgid.
        pid: u32,
        /// Syscall name.
        name: String,
        /// Free-text detail.
        detail: String,
        /// Numeric arguments.
        args: Vec<i64>,
        /// Path argument, if any.
        path: Option<String>,
        /// When.
        time: SystemTime,
    },
    /// A step process was moved out of the step's cgroup.
    LeftStep {
        /// tgid of the moved process.
        pid: u32,
        /// tgid of the process that moved it.
        by: u32,
        /// When.
        time: SystemTime,
    },
    /// A step process created `pid` directly in a cgroup outside the step
    /// (`clone3(CLONE_INTO_CGROUP)`): it left the step at birth.
    BornOutside {
        /// tgid of the new process.
        pid: u32,
        /// tgid of its parent (a step process).
        parent: u32,
        /// When.
        time: SystemTime,
    },
    /// A process came into the step from outside it (moved into the step's
    /// cgroup, or created there by a process outside the step).
    JoinedStep {
        /// tgid of the process.
        pid: u32,
        /// tgid of the process that moved (or created) it.
        by: u32,
        /// Where it came from, as observed.
        from: String,
        /// Created in the step by `by` (`clone3(CLONE_INTO_CGROUP)`).
        at_birth: bool,
        /// When.
        time: SystemTime,
    },
    /// A process let go of a regular file it had open for writing (close,
    /// dup2/dup3 over the fd, close_range, exit): the file as it left it.
    Close {
        /// tgid.
        pid: u32,
        /// The file's identity at that moment.
        stamp: FileStamp,
        /// When.
        time: SystemTime,
    },
    /// Bytes a process received on a socket that sent a DNS query (the
    /// answers are matched to the query by the recorder).
    Ingress {
        /// tgid.
        pid: u32,
        /// Sender.
        src: std::net::SocketAddr,
        /// True for TCP (stream) payloads.
        stream: bool,
        /// The payload (a prefix of what was received).
        bytes: Vec<u8>,
        /// When.
        time: SystemTime,
    },
}

impl TraceEvent {
    /// The process an event belongs to.
    pub fn pid(&self) -> u32 {
        match self {
            TraceEvent::Fork { parent, .. } => *parent,
            TraceEvent::Exec { pid, .. }
            | TraceEvent::Open { pid, .. }
            | TraceEvent::Exit { pid, .. }
            | TraceEvent::Comm { pid, .. }
            | TraceEvent::Net { pid, .. }
            | TraceEvent::Egress { pid, .. }
            | TraceEvent::Syscall { pid, .. }
            | TraceEvent::LeftStep { pid, .. }
            | TraceEvent::BornOutside { pid, .. }
            | TraceEvent::JoinedStep { pid, .. }
            | TraceEvent::Close { pid, .. }
            | TraceEvent::Ingress { pid, .. } => *pid,
        }
    }
}
