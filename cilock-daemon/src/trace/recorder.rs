//! Folds a step's [`TraceEvent`]s into its process table, then — when the
//! step ends — hashes what was opened and produces the command-run
//! processes.
//!
//! Pushing an event is cheap (map updates only): it runs on the ring-buffer
//! consumer. All file hashing happens in [`Recorder::finish`], in parallel,
//! through the shared [`DigestCache`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cilock_evidence::attestors::command_run::{
    DnsLookup, Network, NetworkConnection, ProcessInfo, SyscallEvent, UnhashedOpen,
};
use cilock_evidence::digest::{DigestSet, HashAlg};
use cilock_evidence::timefmt;

use super::digest_cache::{DigestCache, Hashed};
use super::event::{FileStamp, NetCall, SockAddr, TraceEvent};
use super::net::{self, ClientHello};

/// Largest ClientHello prefix buffered per connection.
const MAX_HELLO: usize = 16 * 1024;

#[derive(Clone, Debug, Default)]
struct OpenRec {
    /// Opened for writing (or created/truncated) at least once.
    write: bool,
    /// Identity at the first read-only open (to detect later changes).
    stamp: Option<FileStamp>,
    /// Why the path is not a plain absolute path.
    unresolved: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    /// Programs this process exec'd, in order (absolute).
    programs: Vec<String>,
    /// The parent's program, for a child that has not exec'd.
    inherited: Option<String>,
    /// The binary the kernel ran for the last exec.
    exe: Option<String>,
    argv: Vec<String>,
    cwd: Option<String>,
    opens: BTreeMap<String, OpenRec>,
    net: Network,
    syscalls: Vec<SyscallEvent>,
    exit: Option<i32>,
    left_step: bool,
}

/// The processes of a finished step, and per-kind event counts.
#[derive(Debug, Default)]
pub struct StepTrace {
    /// Every process, in the order it appeared.
    pub processes: Vec<ProcessInfo>,
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
}

fn ts(t: SystemTime) -> String {
    timefmt::rfc3339(t.into())
}

const O_ACCMODE: u32 = 3;
const O_WRITE_LIKE: u32 = (libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;

impl Recorder {
    /// A recorder; `daemon_pid` is flagged as a target of signals/ptrace.
    pub fn new(daemon_pid: Option<u32>) -> Self {
        Recorder {
            daemon_pid,
            ..Default::default()
        }
    }

    /// Registers a process that is part of the step from the start (the
    /// target moved in by `step begin`, or the command `run` spawned).
    pub fn add_root(&mut self, pid: u32) {
        let idx = self.proc_mut(pid, None);
        let p = &mut self.procs[idx];
        if p.comm.is_empty() {
            p.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
        }
        if p.programs.is_empty() && p.inherited.is_none() {
            if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
                let exe = exe.display().to_string();
                p.exe = Some(exe.clone());
                p.inherited = Some(exe);
            }
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(pp) = s
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse().ok())
            {
                p.ppid = pp;
            }
        }
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
    /// if the old one exited: pids are reused).
    fn proc_mut(&mut self, pid: u32, ppid: Option<u32>) -> usize {
        if let Some(&i) = self.live.get(&pid) {
            if self.procs[i].exit.is_none() {
                return i;
            }
        }
        let i = self.procs.len();
        self.procs.push(Proc {
            pid,
            ppid: ppid.unwrap_or(0),
            ..Default::default()
        });
        self.live.insert(pid, i);
        i
    }

    /// Folds one event in.
    pub fn push(&mut self, ev: TraceEvent) {
        match ev {
            TraceEvent::Fork { parent, child, .. } => {
                let parent_state = self.live.get(&parent).map(|&i| self.procs[i].clone());
                // A fork whose child pid is still listed as alive means we
                // missed its exit; start a new incarnation anyway.
                if let Some(&i) = self.live.get(&child) {
                    if self.procs[i].exit.is_none() {
                        self.procs[i].exit = Some(-1);
                    }
                }
                let i = self.proc_mut(child, Some(parent));
                let p = &mut self.procs[i];
                p.ppid = parent;
                if let Some(ps) = parent_state {
                    // Same image as the parent until it execs.
                    p.comm = ps.comm;
                    p.inherited = ps.programs.last().cloned().or(ps.inherited);
                    p.exe = ps.exe;
                    p.cwd = ps.cwd;
                    p.argv = ps.argv;
                }
            }
            TraceEvent::Exec {
                pid,
                ppid,
                filename,
                exe,
                cwd,
                argv,
                comm,
                ..
            } => {
                let i = self.proc_mut(pid, ppid);
                let p = &mut self.procs[i];
                if p.ppid == 0 {
                    p.ppid = ppid.unwrap_or(0);
                }
                let program = program_path(&filename, cwd.as_deref(), exe.as_deref());
                if let Some(e) = &exe {
                    p.opens.entry(e.clone()).or_default();
                }
                p.opens.entry(program.clone()).or_default();
                p.programs.push(program);
                p.exe = exe;
                p.cwd = cwd;
                p.argv = argv;
                p.comm = comm;
            }
            TraceEvent::Open {
                pid,
                path,
                flags,
                stamp,
                unresolved,
                ..
            } => {
                let i = self.proc_mut(pid, None);
                let path = normalize_proc_self(&path, pid);
                let write = flags & O_ACCMODE != 0 || flags & O_WRITE_LIKE != 0;
                if let Some(what) = proc_secret_read(&path, pid) {
                    let p = &mut self.procs[i];
                    p.syscalls.push(SyscallEvent {
                        syscall: "open".into(),
                        detail: what,
                        path: path.clone(),
                        ..Default::default()
                    });
                }
                let rec = self.procs[i].opens.entry(path).or_default();
                rec.write |= write;
                if !write && rec.stamp.is_none() {
                    rec.stamp = stamp;
                }
                if rec.unresolved.is_none() {
                    rec.unresolved = unresolved;
                }
            }
            TraceEvent::Exit { pid, code, .. } => {
                if let Some(&i) = self.live.get(&pid) {
                    if self.procs[i].exit.is_none() {
                        self.procs[i].exit = Some(code);
                    }
                }
                self.hello.retain(|k, _| k.0 != pid);
                self.dns_tcp.retain(|k, _| k.0 != pid);
                self.dns_open.retain(|k, _| k.0 != pid);
            }
            TraceEvent::Comm { pid, comm } => {
                let i = self.proc_mut(pid, None);
                self.procs[i].comm = comm;
            }
            TraceEvent::Net {
                pid,
                call,
                fd,
                addr,
                time,
            } => {
                let i = self.proc_mut(pid, None);
                let (family, address, port) = match &addr {
                    SockAddr::Ip(sa) => (
                        if sa.is_ipv4() { "AF_INET" } else { "AF_INET6" }.to_string(),
                        sa.ip().to_string(),
                        Some(sa.port()),
                    ),
                    SockAddr::Unix(p) => ("AF_UNIX".to_string(), p.clone(), None),
                    SockAddr::Other(f, raw) => {
                        (format!("AF_{f}"), format!("raw:{}", hex::encode(raw)), None)
                    }
                };
                let syscall = match call {
                    NetCall::Connect => "connect",
                    NetCall::SendTo => "sendto",
                    NetCall::Bind => "bind",
                };
                let conn = NetworkConnection {
                    syscall: syscall.into(),
                    family,
                    address,
                    port,
                    fd: fd as i64,
                    timestamp: ts(time),
                    ..Default::default()
                };
                let conns = &mut self.procs[i].net.connections;
                // One record per distinct (call, fd, address): a UDP socket
                // sending many datagrams to one peer is one connection. Every
                // connect is a connection of its own (fds are reused).
                if call == NetCall::Connect
                    || !conns.iter().any(|c| {
                        c.syscall == conn.syscall
                            && c.fd == conn.fd
                            && c.address == conn.address
                            && c.port == conn.port
                    })
                {
                    conns.push(conn);
                }
                if call == NetCall::Connect {
                    self.hello.remove(&(pid, fd));
                    self.dns_tcp.remove(&(pid, fd));
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
            TraceEvent::Syscall {
                pid,
                name,
                mut detail,
                args,
                path,
                time,
            } => {
                let i = self.proc_mut(pid, None);
                if let Some(dp) = self.daemon_pid {
                    let aimed = matches!(
                        name.as_str(),
                        "kill" | "tgkill" | "tkill" | "ptrace" | "pidfd_send_signal"
                    ) && args.iter().any(|&a| a == dp as i64);
                    if aimed && !detail.contains("cilock daemon") {
                        detail = format!("{detail} (aimed at the cilock daemon)");
                    }
                }
                self.procs[i].syscalls.push(SyscallEvent {
                    syscall: name,
                    detail,
                    args,
                    timestamp: ts(time),
                    path: path.unwrap_or_default(),
                });
            }
            TraceEvent::LeftStep { pid, by, time } => {
                let i = self.proc_mut(pid, None);
                self.procs[i].left_step = true;
                let j = self.proc_mut(by, None);
                self.procs[j].syscalls.push(SyscallEvent {
                    syscall: "cgroup_leave".into(),
                    detail: format!("moved pid {pid} out of the step's cgroup"),
                    args: vec![pid as i64],
                    timestamp: ts(time),
                    path: String::new(),
                });
            }
        }
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
        let i = self.proc_mut(pid, None);
        let port = dst.map(|d| d.port());
        // DNS: UDP datagrams, or TCP to port 53 (length-prefixed).
        if !stream || port == Some(53) {
            let queries = if stream {
                // Complete length-prefixed messages; keep a partial one.
                let buf = self.dns_tcp.entry((pid, fd)).or_default();
                buf.extend_from_slice(&bytes);
                let mut qs: Option<Vec<net::DnsQuery>> = None;
                while buf.len() >= 2 {
                    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                    if buf.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                    if let Some(q) = net::parse_dns_queries(&msg, false) {
                        qs.get_or_insert_with(Vec::new).extend(q);
                    }
                }
                if buf.is_empty() {
                    self.dns_tcp.remove(&(pid, fd));
                }
                qs
            } else {
                net::parse_dns_queries(&bytes, false)
            };
            if let Some(qs) = queries {
                let (server_address, server_port) = dst
                    .map(|d| (d.ip().to_string(), d.port()))
                    .unwrap_or_default();
                for q in qs {
                    let n = self.procs[i].net.dns_lookups.len();
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
            if !stream {
                return;
            }
        }
        // TLS: buffer the start of the stream until the ClientHello is whole.
        let buf = self.hello.entry((pid, fd)).or_default();
        if buf.len() >= MAX_HELLO {
            return;
        }
        buf.extend_from_slice(&bytes[..bytes.len().min(MAX_HELLO - buf.len())]);
        // Through an HTTP proxy the stream starts with "CONNECT host:port
        // HTTP/1.1 …\r\n\r\n", then the ClientHello for that host.
        let (proxy, start) = match http_connect(buf) {
            Connect::Incomplete => return,
            Connect::No => (None, 0),
            Connect::Target(host, end) => (Some(host), end),
        };
        let found = match net::parse_client_hello(&buf[start..]) {
            ClientHello::Incomplete => {
                // The proxy target is known already; the hello may follow.
                proxy.map(|h| (h, Vec::new()))
            }
            ClientHello::NotTls => {
                // Keep a marker so later writes on this stream are ignored.
                buf.resize(MAX_HELLO, 0);
                proxy.map(|h| (h, Vec::new()))
            }
            ClientHello::Hello { sni, alpn } => {
                buf.resize(MAX_HELLO, 0);
                Some((sni.or(proxy).unwrap_or_default(), alpn))
            }
        };
        let Some((hostname, alpn)) = found else {
            return;
        };
        let conns = &mut self.procs[i].net.connections;
        let target = conns
            .iter_mut()
            .rev()
            .find(|c| c.syscall == "connect" && c.fd == fd as i64);
        match target {
            Some(c) => {
                c.hostname = hostname;
                c.alpn = alpn;
            }
            None => {
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
                });
            }
        }
    }

    /// A packet a step process received on a socket it used: DNS answers
    /// are added to the lookups they answer (same process, same
    /// transaction id, from the server the query went to).
    pub fn ingress(
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
        let Some(answers) = net::parse_dns_answers(bytes, false) else {
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

    /// Hashes what the step opened and builds its processes. `alive` are
    /// the pids still running when the step ended.
    pub fn finish(self, cache: &DigestCache, algs: &[HashAlg], alive: &[u32]) -> StepTrace {
        let mut paths: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in &self.procs {
            for (path, rec) in &p.opens {
                if rec.unresolved.is_none() && seen.insert(path.as_str()) {
                    paths.push(path.as_str());
                }
            }
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hashed = cache.hash_all(&paths, algs, threads);
        let results: HashMap<&str, &Hashed> = paths.iter().copied().zip(hashed.iter()).collect();

        let mut out = Vec::with_capacity(self.procs.len());
        for p in &self.procs {
            let mut info = ProcessInfo {
                program: p
                    .programs
                    .last()
                    .or(p.inherited.as_ref())
                    .cloned()
                    .unwrap_or_default(),
                processid: p.pid as i64,
                parentpid: p.ppid as i64,
                comm: p.comm.clone(),
                cmdline: p.argv.join(" "),
                exitcode: p.exit.filter(|&c| c >= 0),
                // Alive when the step ended (a --kill then shows in exitcode).
                alive_at_end: alive.contains(&p.pid) && p.exit.is_none_or(|c| c >= 128),
                left_step: p.left_step,
                syscall_events: p.syscalls.clone(),
                ..Default::default()
            };
            if !p.net.connections.is_empty() || !p.net.dns_lookups.is_empty() {
                info.network = Some(p.net.clone());
            }
            info.execs = p.programs.clone();
            for (path, rec) in &p.opens {
                let (digest, why) = digest_for(path, rec, &results);
                info.openedfiles.insert(path.clone(), digest);
                if let Some(reason) = why {
                    info.unhashed_opens.push(UnhashedOpen {
                        path: path.clone(),
                        reason,
                    });
                }
            }
            let digest_of = |path: &str| match results.get(path) {
                Some(Hashed::Digest(d, _)) => Some(d.clone()),
                _ => None,
            };
            info.programdigest = p
                .programs
                .last()
                .or(p.inherited.as_ref())
                .and_then(|x| digest_of(x));
            info.exedigest = p.exe.as_deref().and_then(digest_of);
            out.push(info);
        }
        StepTrace { processes: out }
    }
}

fn digest_for(
    path: &str,
    rec: &OpenRec,
    results: &HashMap<&str, &Hashed>,
) -> (DigestSet, Option<String>) {
    if let Some(why) = &rec.unresolved {
        return (DigestSet::default(), Some(why.clone()));
    }
    match results.get(path) {
        Some(Hashed::Digest(d, now)) => {
            if let (false, Some(then)) = (rec.write, rec.stamp) {
                // Same inode, same size and times → same content as when it
                // was opened. The device number is not compared: some
                // filesystems (btrfs subvolumes) report another in stat.
                let same = then.ino == now.ino
                    && then.size == now.size
                    && then.mtime_ns == now.mtime_ns
                    && then.ctime_ns == now.ctime_ns;
                if !same {
                    tracing::debug!(path, ?then, ?now, "file identity changed after open");
                    return (
                        DigestSet::default(),
                        Some(
                            "modified after it was opened; its content at open time is unknown"
                                .into(),
                        ),
                    );
                }
            }
            (d.clone(), None)
        }
        Some(Hashed::NotRegular(kind)) => (DigestSet::default(), Some((*kind).to_string())),
        Some(Hashed::ChangedWhileHashing) => (
            DigestSet::default(),
            Some("modified while it was being hashed".into()),
        ),
        Some(Hashed::Error(e)) => (DigestSet::default(), Some(format!("not hashed: {e}"))),
        None => (DigestSet::default(), Some("not hashed".into())),
    }
}

/// The program of an exec: the file named to execve, made absolute against
/// the cwd and canonical; the kernel's exe when the name cannot be resolved
/// (fexecve of /dev/fd/N, a file already gone).
fn program_path(filename: &str, cwd: Option<&str>, exe: Option<&str>) -> String {
    let p = Path::new(filename);
    let abs: Option<PathBuf> = if p.is_absolute() {
        Some(p.to_path_buf())
    } else {
        cwd.map(|c| Path::new(c).join(p))
    };
    if let Some(abs) = abs {
        if !abs.starts_with("/dev/fd") && !abs.starts_with("/proc") {
            if let Ok(c) = std::fs::canonicalize(&abs) {
                return c.display().to_string();
            }
        }
    }
    exe.map(str::to_string)
        .unwrap_or_else(|| filename.to_string())
}

/// Whether a TCP stream starts with an HTTP proxy `CONNECT` request.
#[derive(Debug, PartialEq, Eq)]
enum Connect {
    /// It does not.
    No,
    /// Maybe: the request line or headers are not complete yet.
    Incomplete,
    /// The target host, and where the tunnelled bytes start.
    Target(String, usize),
}

fn http_connect(buf: &[u8]) -> Connect {
    const VERB: &[u8] = b"CONNECT ";
    if buf.len() < VERB.len() {
        return if VERB.starts_with(buf) {
            Connect::Incomplete
        } else {
            Connect::No
        };
    }
    if !buf.starts_with(VERB) {
        return Connect::No;
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= 8192 {
            Connect::No
        } else {
            Connect::Incomplete
        };
    };
    let line = String::from_utf8_lossy(&buf[VERB.len()..end]);
    let target = line.split_whitespace().next().unwrap_or("");
    let host = match target.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => target.rsplit_once(':').map_or(target, |(h, _)| h),
    };
    if host.is_empty() {
        return Connect::No;
    }
    Connect::Target(host.to_string(), end + 4)
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
    use super::*;

    fn t() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn builds_a_process_tree_with_programs_and_opens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("in.txt");
        std::fs::write(&f, b"hello\n").unwrap();
        let f = f.display().to_string();
        let mut r = Recorder::new(None);
        r.push(TraceEvent::Fork {
            parent: 10,
            child: 11,
            time: t(),
        });
        r.push(TraceEvent::Exec {
            pid: 11,
            ppid: Some(10),
            filename: "/bin/cat".into(),
            exe: Some("/usr/bin/cat".into()),
            exe_stamp: None,
            cwd: Some("/".into()),
            argv: vec!["cat".into(), f.clone()],
            comm: "cat".into(),
            time: t(),
        });
        r.push(TraceEvent::Open {
            pid: 11,
            path: f.clone(),
            flags: 0,
            stamp: None,
            unresolved: None,
            time: t(),
        });
        r.push(TraceEvent::Open {
            pid: 11,
            path: "/proc/11/environ".into(),
            flags: 0,
            stamp: None,
            unresolved: None,
            time: t(),
        });
        r.push(TraceEvent::Exit {
            pid: 11,
            code: 3,
            time: t(),
        });
        let out = r.finish(&DigestCache::default(), &[HashAlg::Sha256], &[]);
        let cat = out.processes.iter().find(|p| p.processid == 11).unwrap();
        assert_eq!(cat.parentpid, 10);
        assert_eq!(
            cat.program,
            std::fs::canonicalize("/bin/cat")
                .unwrap()
                .display()
                .to_string()
        );
        assert_eq!(cat.cmdline, format!("cat {f}"));
        assert_eq!(cat.exitcode, Some(3));
        assert_eq!(
            cat.openedfiles[&f].get_sha256(),
            Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
        );
        assert!(cat.openedfiles.contains_key("/proc/self/environ"));
        assert!(cat
            .syscall_events
            .iter()
            .any(|s| s.detail.contains("own environment")));
        assert!(cat.programdigest.is_some() && cat.exedigest.is_some());
    }

    #[test]
    fn a_file_changed_after_a_read_only_open_gets_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"one").unwrap();
        let md = std::fs::metadata(&f).unwrap();
        let then = super::super::digest_cache::stamp_of(&md);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"two, longer").unwrap();
        let mut r = Recorder::new(None);
        let path = f.display().to_string();
        r.push(TraceEvent::Open {
            pid: 5,
            path: path.clone(),
            flags: 0,
            stamp: Some(then),
            unresolved: None,
            time: t(),
        });
        let out = r.finish(&DigestCache::default(), &[HashAlg::Sha256], &[5]);
        let p = &out.processes[0];
        assert!(p.openedfiles[&path].is_empty());
        assert!(p.unhashed_opens[0].reason.contains("modified after"));
        assert!(p.alive_at_end);
    }

    fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn network_connects_dns_over_tcp_and_answers() {
        let mut r = Recorder::new(None);
        let srv: std::net::SocketAddr = "10.0.0.53:53".parse().unwrap();
        let web = SockAddr::Ip("10.0.0.1:443".parse().unwrap());
        // Two connections on the same fd to the same peer are two records.
        for _ in 0..2 {
            r.push(TraceEvent::Net {
                pid: 9,
                call: NetCall::Connect,
                fd: 4,
                addr: web.clone(),
                time: t(),
            });
        }
        // Repeated datagrams to one peer are one record.
        for _ in 0..3 {
            r.push(TraceEvent::Net {
                pid: 9,
                call: NetCall::SendTo,
                fd: 5,
                addr: SockAddr::Ip(srv),
                time: t(),
            });
        }
        // UDP query and its answer (matched by id and server).
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 5,
            dst: Some(srv),
            stream: false,
            bytes: dns_query(7, "a.example", 1),
            time: t(),
        });
        let mut ans = dns_query(7, "a.example", 1);
        ans[2] = 0x81;
        ans[3] = 0x80;
        ans[7] = 1;
        ans.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 9]);
        r.ingress(9, "10.0.0.99:53".parse().unwrap(), false, &ans, t()); // another server: ignored
        r.ingress(9, srv, false, &ans, t());
        // Two TCP messages split across chunks at arbitrary points.
        let mut stream = Vec::new();
        for (id, name, qt) in [(8u16, "b.example", 16u16), (9, "c.example", 28)] {
            let q = dns_query(id, name, qt);
            stream.extend_from_slice(&(q.len() as u16).to_be_bytes());
            stream.extend(q);
        }
        for chunk in [&stream[..5], &stream[5..30], &stream[30..]] {
            r.push(TraceEvent::Egress {
                pid: 9,
                fd: 6,
                dst: Some(srv),
                stream: true,
                bytes: chunk.to_vec(),
                time: t(),
            });
        }
        let out = r.finish(&DigestCache::default(), &[HashAlg::Sha256], &[9]);
        let net = out.processes[0].network.clone().unwrap();
        assert_eq!(
            net.connections
                .iter()
                .filter(|c| c.syscall == "connect")
                .count(),
            2
        );
        assert_eq!(
            net.connections
                .iter()
                .filter(|c| c.syscall == "sendto")
                .count(),
            1
        );
        let l: Vec<(&str, &str, &str)> = net
            .dns_lookups
            .iter()
            .map(|l| (l.name.as_str(), l.qtype.as_str(), l.transport.as_str()))
            .collect();
        assert_eq!(
            l,
            vec![
                ("a.example", "A", "udp"),
                ("b.example", "TXT", "tcp"),
                ("c.example", "AAAA", "tcp")
            ]
        );
        assert_eq!(net.dns_lookups[0].answers, vec!["A 10.0.0.9".to_string()]);
    }

    #[test]
    fn tls_through_an_http_proxy() {
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
        let mut r = Recorder::new(None);
        let proxy = SockAddr::Ip("10.0.0.3:3128".parse().unwrap());
        for fd in [4, 5] {
            r.push(TraceEvent::Net {
                pid: 9,
                call: NetCall::Connect,
                fd,
                addr: proxy.clone(),
                time: t(),
            });
        }
        let dst = Some("10.0.0.3:3128".parse().unwrap());
        let req =
            b"CONNECT registry.example:443 HTTP/1.1\r\nHost: registry.example:443\r\n\r\n".to_vec();
        // fd 4: the CONNECT alone (hello not sent yet); fd 5: CONNECT then a
        // non-TLS tunnel.
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 4,
            dst,
            stream: true,
            bytes: req[..10].to_vec(),
            time: t(),
        });
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 4,
            dst,
            stream: true,
            bytes: req[10..].to_vec(),
            time: t(),
        });
        let mut plain = req.clone();
        plain.extend_from_slice(b"GET / HTTP/1.1\r\n");
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 5,
            dst,
            stream: true,
            bytes: plain,
            time: t(),
        });
        let out = r.finish(&DigestCache::default(), &[HashAlg::Sha256], &[9]);
        let c = &out.processes[0].network.as_ref().unwrap().connections;
        assert_eq!(c[0].hostname, "registry.example");
        assert_eq!(c[1].hostname, "registry.example");
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
}
