//! Loading and attaching the network and suspicious-syscall programs
//! (`cilock-ebpf/src/{net,skb,syscalls}.rs`), per-step cgroup attachment of
//! the socket hooks, and reassembly of captured TCP stream starts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aya::programs::cgroup_skb::{CgroupSkbAttachType, CgroupSkbLink};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLink;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSockAddr, TracePoint};
use aya::Ebpf;
use cilock_abi::STREAM_CAPTURE;

use super::decode::Payload;
pub use super::sysconfig::daemon_pidfd_inode; // shim: removed at merge
use super::{missing, prog_err, EbpfError};
use crate::backend::{CaptureInfo, Concern, Limitation};

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

/// What the network and syscall probes cannot see (for `trace.limitations`).
pub fn limitations() -> Vec<Limitation> {
    [
        "sockets created before the step began (in another cgroup) pass no step socket hook: their connects, sends and packets are not recorded",
        "DNS lookups a resolver outside the step makes on its behalf (systemd-resolved over varlink or D-Bus) are not packets of the step; queries to its 127.0.0.53 stub are",
        "TLS server names hidden by Encrypted Client Hello, and QUIC (HTTP/3) ClientHellos, are not recorded",
        "pidfd_send_signal aimed at the daemon is recognised on kernels with pidfs (6.9 and later) only",
        "io_uring opens, reads and writes do not pass the syscall tracepoints (io_uring_setup is recorded; its connects and packets pass the socket hooks)",
    ]
    .into_iter()
    .map(Limitation::fixed)
    .chain([
        format!("the first {STREAM_CAPTURE} bytes of each TCP stream are captured: a ClientHello longer than that keeps its server name when the name lies in those bytes (it does in real hellos: the name precedes the key share and padding) and is marked helloTruncated (its ALPN may be missing); a name placed after byte {STREAM_CAPTURE} is not recorded"),
        format!("DNS over TCP is parsed on port 53 and on any port whose stream starts with a strictly valid length-prefixed DNS query, within the first {STREAM_CAPTURE} bytes of the stream; answers are recorded for DNS over UDP only"),
        format!("DNS over UDP: datagrams with one question and opcode QUERY, the first {DNS_MAX} bytes of each (queries and answers)"),
        "sendmmsg: every destination is recorded with the fd; for families other than AF_INET/AF_INET6 only the first message's address".to_string(),
    ].map(Limitation::text))
    .collect()
}

/// Largest DNS datagram captured (`DNS_MAX` in `cilock-ebpf/src/skb.rs`).
const DNS_MAX: u32 = 2048;

/// Loads and attaches the global programs (syscall tracepoints) and loads
/// the per-step cgroup programs; sets their hooks in `info`.
pub fn load(ebpf: &mut Ebpf, tracefs: &Path, info: &mut CaptureInfo) -> Result<(), EbpfError> {
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
    info.set_hook(
        Concern::Network,
        format!(
            "cgroup/{{connect,sendmsg,bind}}{{4,6}} on the step cgroup (kernel's address, socket cookie) + \
             tracepoint:syscalls/sys_enter_{{{}}} and sys_exit_sendmmsg (fd and call; other families such as AF_UNIX from the caller's sockaddr)",
            net.join(",")
        ),
    );
    info.set_hook(
        Concern::DnsTls,
        format!(
            "cgroup_skb/egress on the step cgroup: DNS-query datagrams on any port and the first {STREAM_CAPTURE} \
             bytes of each TCP stream (reassembled by sequence offset; SNI/ALPN and DNS parsed in user space); \
             cgroup_skb/ingress: DNS responses"
        ),
    );
    info.set_hook(
        Concern::SuspiciousSyscalls,
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

#[derive(Default)]
struct Stream {
    /// Bytes delivered so far.
    next: u32,
    /// Out-of-order pieces by offset.
    pending: BTreeMap<u32, Vec<u8>>,
}

/// Reassembles the captured starts of TCP streams per (step, socket):
/// retransmitted bytes are dropped, out-of-order pieces wait for the gap.
#[derive(Default)]
pub struct Streams {
    streams: HashMap<(u64, u64), Stream>,
}

/// Most streams remembered (older ones are forgotten at random).
const MAX_STREAMS: usize = 1 << 16;

impl Streams {
    /// Adds a TCP payload; returns the new contiguous bytes, if any.
    pub fn push(&mut self, p: &Payload) -> Option<Vec<u8>> {
        if self.streams.len() >= MAX_STREAMS {
            if let Some(k) = self.streams.keys().next().copied() {
                self.streams.remove(&k);
            }
        }
        let s = self.streams.entry((p.step_cgroup, p.cookie)).or_default();
        if s.next >= STREAM_CAPTURE {
            return None;
        }
        let end = p.stream_off.saturating_add(p.bytes.len() as u32);
        if end <= s.next {
            return None; // a retransmission
        }
        if p.stream_off > s.next {
            s.pending
                .entry(p.stream_off)
                .or_insert_with(|| p.bytes.clone());
            return None;
        }
        let mut out = p.bytes[(s.next - p.stream_off) as usize..].to_vec();
        s.next = end;
        // Pieces the new bytes made contiguous.
        while let Some((&off, _)) = s.pending.first_key_value() {
            if off > s.next {
                break;
            }
            let (off, b) = s.pending.pop_first().unwrap_or_default();
            let e = off.saturating_add(b.len() as u32);
            if e > s.next {
                out.extend_from_slice(&b[(s.next - off) as usize..]);
                s.next = e;
            }
        }
        Some(out)
    }

    /// Forgets the streams of a step.
    pub fn forget_step(&mut self, step: u64) {
        self.streams.retain(|k, _| k.0 != step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(off: u32, b: &[u8]) -> Payload {
        Payload {
            step_cgroup: 1,
            pid: 2,
            fd: 3,
            cookie: 4,
            egress: true,
            tcp: true,
            stream_off: off,
            src: "127.0.0.1:1".parse().unwrap(),
            dst: "127.0.0.1:2".parse().unwrap(),
            bytes: b.to_vec(),
            time: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn reassembles_by_offset() {
        let mut s = Streams::default();
        assert_eq!(s.push(&p(0, b"abc")), Some(b"abc".to_vec()));
        // retransmission
        assert_eq!(s.push(&p(0, b"abc")), None);
        // out of order, then the gap
        assert_eq!(s.push(&p(6, b"ghi")), None);
        assert_eq!(s.push(&p(2, b"cdef")), Some(b"defghi".to_vec()));
        // overlapping tail
        assert_eq!(s.push(&p(8, b"ijk")), Some(b"jk".to_vec()));
        s.forget_step(1);
        assert_eq!(s.push(&p(0, b"x")), Some(b"x".to_vec()));
    }
}
