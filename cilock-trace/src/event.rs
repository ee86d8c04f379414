//! The backend-neutral trace model: what every backend (eBPF, ptrace) turns
//! its raw observations into. The [`crate::fold`] folds these events into
//! a per-step process table; nothing downstream knows which backend ran.
//!
//! Events are `Serialize` (for debugging tools and examples; not a stable
//! format): `{"type": "exec", "pid": …, "time": <ns since the epoch>, …}`.
//!
//! Paths are data from the traced job: they are recorded, never trusted
//! (never used to decide where the daemon writes).

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::syscall::SuspiciousCall;

/// A time as nanoseconds since the epoch (0 before it).
fn ns<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let n = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    s.serialize_u64(n)
}

/// Identity of an inode when it was opened, used to tell whether a file
/// changed before it was hashed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
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

impl FileStamp {
    /// The identity in `md` (of an open file, or of a path the caller
    /// stat'ed: the caller did the I/O).
    pub fn from_metadata(md: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size() as i64,
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
            mode: md.mode(),
        }
    }
}

/// What kind of network call a [`TraceEvent::Net`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
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

impl NetCall {
    /// The syscall's name, as the evidence's `syscall` field has it.
    pub fn name(self) -> &'static str {
        match self {
            NetCall::Connect => "connect",
            NetCall::SendTo => "sendto",
            NetCall::Bind => "bind",
            NetCall::SendMsg => "sendmsg",
            NetCall::SendMmsg => "sendmmsg",
        }
    }
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

impl SockAddr {
    /// The address family as evidence names it: `AF_INET`, `AF_INET6`,
    /// `AF_UNIX`, or [`family_name`] of another family's number.
    pub fn family(&self) -> String {
        match self {
            SockAddr::Ip(s) if s.is_ipv4() => "AF_INET".into(),
            SockAddr::Ip(_) => "AF_INET6".into(),
            SockAddr::Unix(_) => "AF_UNIX".into(),
            SockAddr::Other(f, _) => family_name(*f),
        }
    }

    /// The address as evidence names it: the IP (without the port), the
    /// socket path, or `raw:<hex>` of another family's bytes.
    pub fn address(&self) -> String {
        match self {
            SockAddr::Ip(s) => s.ip().to_string(),
            SockAddr::Unix(p) => p.clone(),
            SockAddr::Other(_, b) => {
                let mut out = String::with_capacity(4 + 2 * b.len());
                out.push_str("raw:");
                for x in b {
                    out.push_str(&format!("{x:02x}"));
                }
                out
            }
        }
    }

    /// The port (0 for families without one).
    pub fn port(&self) -> u16 {
        match self {
            SockAddr::Ip(s) => s.port(),
            _ => 0,
        }
    }
}

impl Serialize for SockAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("family", &self.family())?;
        m.serialize_entry("address", &self.address())?;
        if let SockAddr::Ip(a) = self {
            m.serialize_entry("port", &a.port())?;
        }
        m.end()
    }
}

/// The name of an address family (`AF_NETLINK`, …), `AF_<n>` for others.
pub fn family_name(f: u16) -> String {
    let s = match f {
        0 => "AF_UNSPEC",
        1 => "AF_UNIX",
        2 => "AF_INET",
        3 => "AF_AX25",
        4 => "AF_IPX",
        5 => "AF_APPLETALK",
        9 => "AF_X25",
        10 => "AF_INET6",
        15 => "AF_KEY",
        16 => "AF_NETLINK",
        17 => "AF_PACKET",
        21 => "AF_RDS",
        26 => "AF_LLC",
        29 => "AF_CAN",
        30 => "AF_TIPC",
        31 => "AF_BLUETOOTH",
        36 => "AF_IEEE802154",
        38 => "AF_ALG",
        40 => "AF_VSOCK",
        41 => "AF_KCM",
        42 => "AF_QIPCRTR",
        43 => "AF_SMC",
        44 => "AF_XDP",
        45 => "AF_MCTP",
        _ => return format!("AF_{f}"),
    };
    s.to_string()
}

/// What `/proc` showed of a live process, read by the caller (the fold
/// does no I/O): its comm, the file it runs, and its parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Running {
    /// `/proc/PID/comm`, trimmed.
    pub comm: Option<String>,
    /// The target of `/proc/PID/exe` (the kernel's own link).
    pub exe: Option<PathBuf>,
    /// `stat` through that link: the running file's identity.
    pub exe_stamp: Option<FileStamp>,
    /// `PPid:` of `/proc/PID/status`.
    pub ppid: Option<u32>,
    /// The inode of `/proc/PID/ns/mnt` (its mount namespace).
    pub mnt_ns: Option<u64>,
}

/// One observation of a traced process. `pid` is always the thread-group id.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TraceEvent {
    /// A new process (not thread) `child` forked by `parent`.
    Fork {
        /// Parent tgid.
        parent: u32,
        /// Child tgid.
        child: u32,
        /// When.
        #[serde(serialize_with = "ns")]
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
        /// Inode of the process's mount namespace at the exec, if the
        /// backend read it (its paths are as that namespace sees them).
        mnt_ns: Option<u64>,
        /// When.
        #[serde(serialize_with = "ns")]
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
        #[serde(serialize_with = "ns")]
        time: SystemTime,
    },
    /// The process's thread group exited.
    Exit {
        /// tgid.
        pid: u32,
        /// Exit code as the shell reports it (128+signal for a signal).
        code: i32,
        /// When.
        #[serde(serialize_with = "ns")]
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
        #[serde(serialize_with = "ns")]
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
        #[serde(serialize_with = "ns")]
        time: SystemTime,
    },
    /// A suspicious syscall.
    Syscall {
        /// tgid.
        pid: u32,
        /// The call, typed (its evidence strings are made by the fold).
        call: SuspiciousCall,
        /// When.
        #[serde(serialize_with = "ns")]
        time: SystemTime,
    },
    /// A step process was moved out of the step's cgroup.
    LeftStep {
        /// tgid of the moved process.
        pid: u32,
        /// tgid of the process that moved it.
        by: u32,
        /// When.
        #[serde(serialize_with = "ns")]
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
        #[serde(serialize_with = "ns")]
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
        /// The cgroup it came into, relative to the step's cgroup
        /// (`<container id>`, `<container id>/…`; for a cgroup the step is
        /// attributed, its last component first: `buildkit/<name>`), when
        /// the backend could resolve it.
        cgroup: Option<String>,
        /// What `/proc` showed of it when it joined (moved in, not created
        /// there), read by the backend; the fold uses it when it has not
        /// seen the process's exec.
        #[serde(skip)]
        running: Option<Running>,
        /// When.
        #[serde(serialize_with = "ns")]
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
        #[serde(serialize_with = "ns")]
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
        #[serde(serialize_with = "ns")]
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
