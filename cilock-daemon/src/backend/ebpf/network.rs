//! Loading and attaching the network and suspicious-syscall programs
//! (`cilock-ebpf/src/{net,skb,syscalls}.rs`), per-step cgroup attachment of
//! the socket hooks, and the
//! kernel-side log (aya-log) forwarded to `tracing`.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::Path;

use aya::programs::cgroup_skb::{CgroupSkbAttachType, CgroupSkbLink};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLink;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSockAddr, TracePoint};
use aya::Ebpf;
use cilock_abi::{SysConfig, STREAM_CAPTURE};

use super::{missing, prog_err, EbpfError};

/// Network syscalls read at entry (address as passed, and the fd).
const NET_SYSCALLS: [&str; 6] = [
    "sys_enter_connect",
    "sys_enter_bind",
    "sys_enter_sendto",
    "sys_enter_sendmsg",
    "sys_enter_sendmmsg",
    "sys_exit_sendmmsg",
];

/// Suspicious syscalls, one program each (program name = tracepoint name).
pub const SUSPICIOUS: [&str; 21] = [
    "sys_enter_ptrace",
    "sys_enter_memfd_create",
    "sys_enter_mount",
    "sys_enter_fsmount",
    "sys_enter_move_mount",
    "sys_enter_open_tree",
    "sys_enter_fsopen",
    "sys_enter_unshare",
    "sys_enter_setns",
    "sys_enter_clone",
    "sys_enter_clone3",
    "sys_enter_bpf",
    "sys_enter_init_module",
    "sys_enter_finit_module",
    "sys_enter_io_uring_setup",
    "sys_enter_process_vm_readv",
    "sys_enter_process_vm_writev",
    "sys_enter_kill",
    "sys_enter_tkill",
    "sys_enter_tgkill",
    "sys_enter_pidfd_send_signal",
];

/// sock_addr programs attached to each step cgroup.
const SOCK_ADDR: [&str; 6] = [
    "connect4", "connect6", "sendmsg4", "sendmsg6", "bind4", "bind6",
];

/// Environment variable that leaves the network and suspicious-syscall
/// probes out (`CILOCK_EBPF_NET=off`), for overhead comparisons.
pub const NET_ENV: &str = "CILOCK_EBPF_NET";

/// Whether the network and syscall probes are enabled.
pub fn enabled() -> bool {
    std::env::var(NET_ENV).map_or(true, |v| v != "off")
}

const PIDFS_MAGIC: i64 = 0x5049_4446;

/// The `.rodata` constants of the programs: the `sys_enter_*` record layout
/// (from tracefs), the daemon's pid and its pidfd inode (pidfs only).
pub fn sys_config(tracefs: &Path) -> Result<SysConfig, EbpfError> {
    let fmt = tracefs.join("events/syscalls/sys_enter_connect/format");
    let text = std::fs::read_to_string(&fmt).map_err(|e| {
        EbpfError::Offsets(super::offsets::OffsetsError::Format {
            path: fmt.clone(),
            what: e.to_string(),
        })
    })?;
    let args = first_arg_offset(&text).ok_or_else(|| {
        EbpfError::Offsets(super::offsets::OffsetsError::Format {
            path: fmt.clone(),
            what: "no argument field after __syscall_nr".into(),
        })
    })?;
    Ok(SysConfig {
        tp_enter_args: args,
        daemon_tgid: std::process::id(),
        // Without pidfs (< 6.9) every pidfd shares one anonymous inode, so
        // the inode cannot tell the daemon's pidfd from another: match none
        // rather than all (stated in the limitations).
        daemon_pidfd_ino: daemon_pidfd_inode().unwrap_or(u64::MAX),
    })
}

/// Offset of the first field after `__syscall_nr` in a format file.
fn first_arg_offset(text: &str) -> Option<u32> {
    let mut after_nr = false;
    for line in text.lines() {
        let Some(decl) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let name = decl.split(';').next()?.split_whitespace().last()?;
        if after_nr {
            return line
                .split(';')
                .find_map(|p| p.trim().strip_prefix("offset:"))
                .and_then(|v| v.trim().parse().ok());
        }
        after_nr = name == "__syscall_nr";
    }
    None
}

/// [`own_pidfd_inode`], computed once.
pub fn daemon_pidfd_inode() -> Option<u64> {
    static INO: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *INO.get_or_init(own_pidfd_inode)
}

/// The inode of a pidfd of this process when pidfds live on pidfs (where
/// every pidfd of one process shares its inode).
fn own_pidfd_inode() -> Option<u64> {
    // SAFETY: plain syscalls on a fd we own and close.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
        if fd < 0 {
            return None;
        }
        let mut sfs: libc::statfs = std::mem::zeroed();
        let mut st: libc::stat = std::mem::zeroed();
        let ok = libc::fstatfs(fd, &mut sfs) == 0
            && sfs.f_type as i64 == PIDFS_MAGIC
            && libc::fstat(fd, &mut st) == 0;
        libc::close(fd);
        ok.then_some(st.st_ino)
    }
}

/// What the network and syscall probes cannot see (for `trace.limitations`).
pub fn limitations() -> Vec<String> {
    [
        "sockets created before the step began (in another cgroup) pass no step socket hook: their connects, sends and packets are not recorded",
        "DNS lookups a resolver outside the step makes on its behalf (systemd-resolved over varlink or D-Bus) are not packets of the step; queries to its 127.0.0.53 stub are",
        "TLS server names hidden by Encrypted Client Hello, and QUIC (HTTP/3) ClientHellos, are not recorded",
        "pidfd_send_signal aimed at the daemon is recognised on kernels with pidfs (6.9 and later) only",
        "io_uring opens, reads and writes do not pass the syscall tracepoints (io_uring_setup is recorded; its connects and packets pass the socket hooks)",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("the first {STREAM_CAPTURE} bytes of each TCP stream are captured: a ClientHello longer than that keeps its server name when the name lies in those bytes (it does in real hellos: the name precedes the key share and padding) and is marked helloTruncated (its ALPN may be missing); a name placed after byte {STREAM_CAPTURE} is not recorded"),
        format!("DNS over TCP is parsed on port 53 and on any port whose stream starts with a strictly valid length-prefixed DNS query, within the first {STREAM_CAPTURE} bytes of the stream; answers are recorded for DNS over UDP only"),
        format!("DNS over UDP: datagrams with one question and opcode QUERY, the first {DNS_MAX} bytes of each (queries and answers)"),
        "sendmmsg: every destination is recorded with the fd; for families other than AF_INET/AF_INET6 only the first message's address".to_string(),
    ])
    .collect()
}

/// Largest DNS datagram captured (`DNS_MAX` in `cilock-ebpf/src/skb.rs`).
const DNS_MAX: u32 = 2048;

/// Loads and attaches the global programs (syscall tracepoints) and loads
/// the per-step cgroup programs; fills `hooks`.
pub fn load(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    hooks: &mut BTreeMap<String, String>,
) -> Result<(), EbpfError> {
    let mut net = Vec::new();
    for name in NET_SYSCALLS {
        if attach_tp(ebpf, tracefs, name)? {
            if let Some(n) = name.strip_prefix("sys_enter_") {
                net.push(n);
            }
        }
    }
    let mut sus = Vec::new();
    for name in SUSPICIOUS {
        if attach_tp(ebpf, tracefs, name)? {
            sus.push(name.trim_start_matches("sys_enter_"));
        }
    }
    for name in SOCK_ADDR {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(prog_err(name))?;
        p.load().map_err(prog_err(format!("load cgroup/{name}")))?;
    }
    for name in ["skb_egress", "skb_ingress"] {
        let p: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(prog_err(name))?;
        p.load().map_err(prog_err(format!("load {name}")))?;
    }
    hooks.insert(
        "network".to_string(),
        format!(
            "cgroup/{{connect,sendmsg,bind}}{{4,6}} on the step cgroup (kernel's address, socket cookie) + \
             tracepoint:syscalls/sys_enter_{{{}}} and sys_exit_sendmmsg (fd and call; other families such as AF_UNIX from the caller's sockaddr)",
            net.join(",")
        ),
    );
    hooks.insert(
        "dns-tls".to_string(),
        format!(
            "cgroup_skb/egress on the step cgroup: DNS-query datagrams on any port and the first {STREAM_CAPTURE} \
             bytes of each TCP stream (reassembled by sequence offset; SNI/ALPN and DNS parsed in user space); \
             cgroup_skb/ingress: DNS responses"
        ),
    );
    hooks.insert(
        "suspicious-syscalls".to_string(),
        format!("tracepoint:syscalls/sys_enter_{{{}}}", sus.join(",")),
    );
    Ok(())
}

fn attach_tp(ebpf: &mut Ebpf, tracefs: &Path, name: &str) -> Result<bool, EbpfError> {
    if !tracefs.join("events/syscalls").join(name).is_dir() {
        return Ok(false);
    }
    let tp: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| missing(name))?
        .try_into()
        .map_err(prog_err(name))?;
    tp.load().map_err(prog_err(format!("load {name}")))?;
    tp.attach("syscalls", name)
        .map_err(prog_err(format!("attach syscalls/{name}")))?;
    Ok(true)
}

/// The cgroup programs attached to one step cgroup (detached at drop).
#[derive(Default)]
pub struct StepLinks {
    _skb: Vec<CgroupSkbLink>,
    _sock: Vec<CgroupSockAddrLink>,
}

/// Attaches the socket hooks and packet capture to the step cgroup at
/// `path` (inherited by its descendants). Attached as BPF links (kernel
/// 5.7+), which always coexist with other programs on the cgroup; link
/// creation takes no attach flags.
pub fn attach_step(ebpf: &mut Ebpf, path: &Path) -> Result<StepLinks, EbpfError> {
    let dir = std::fs::File::open(path).map_err(|e| EbpfError::Program {
        what: format!("opening cgroup {}", path.display()),
        source: aya::programs::ProgramError::IOError(e),
    })?;
    let mut links = StepLinks::default();
    for name in SOCK_ADDR {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(prog_err(name))?;
        let id = p
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(prog_err(format!("attach cgroup/{name}")))?;
        links._sock.push(p.take_link(id).map_err(prog_err(name))?);
    }
    for (name, at) in [
        ("skb_egress", CgroupSkbAttachType::Egress),
        ("skb_ingress", CgroupSkbAttachType::Ingress),
    ] {
        let p: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(prog_err(name))?;
        let id = p
            .attach(&dir, at, CgroupAttachMode::Single)
            .map_err(prog_err(format!("attach {name}")))?;
        links._skb.push(p.take_link(id).map_err(prog_err(name))?);
    }
    Ok(links)
}

/// Forwards aya-log records of the kernel programs to `tracing`.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let msg = r.args().to_string();
        match r.level() {
            log::Level::Error => tracing::error!(target: "cilock_ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "cilock_ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "cilock_ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "cilock_ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "cilock_ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// The kernel-side log reader.
pub type Logger = aya_log::EbpfLogger<TracingLog>;

/// Starts reading the programs' aya-log records (None if the object has
/// no log map, which happens when no program logs).
pub fn logger(ebpf: &mut Ebpf) -> Option<Logger> {
    match aya_log::EbpfLogger::init_with_logger(ebpf, TracingLog) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!("no kernel-side log: {e}");
            None
        }
    }
}

/// The fd to poll for log records.
pub fn logger_fd(l: &Logger) -> i32 {
    l.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_first_arg() {
        let f = "name: sys_enter_connect\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\n\
                 \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
                 \tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n";
        assert_eq!(first_arg_offset(f), Some(16));
        assert_eq!(first_arg_offset("format:\n"), None);
    }
}
