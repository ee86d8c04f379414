//! The net family's probes, with the packet capture that feeds the payload
//! family: the syscall tracepoints of the network calls (fd and call), the
//! `cgroup/{connect,sendmsg,bind}{4,6}` socket hooks and the
//! `cgroup_skb/{egress,ingress}` packet capture (`cilock-ebpf/src/{net,skb}.rs`),
//! both attached to each step cgroup ([`attach_step`]) since the kernel
//! runs them per cgroup.

use std::path::Path;

use aya::programs::cgroup_skb::{CgroupSkbAttachType, CgroupSkbLink};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLink;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSockAddr};
use aya::Ebpf;
use cilock_abi::STREAM_CAPTURE;

use super::super::loader::{prog_err, program, syscall_tracepoint};
use super::super::EbpfError;
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

/// Largest DNS datagram captured (`DNS_MAX` in `cilock-ebpf/src/probes/payload.rs`).
const DNS_MAX: u32 = 2048;

/// Loads and attaches the global programs (syscall tracepoints) and loads
/// the per-step cgroup programs; sets their hooks in `info`.
pub(in crate::backend::ebpf) fn load(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    info: &mut CaptureInfo,
) -> Result<(), EbpfError> {
    let mut net = Vec::new();
    for name in NET_SYSCALLS {
        if syscall_tracepoint(ebpf, tracefs, name)? {
            if let Some(n) = name.strip_prefix("sys_enter_") {
                net.push(n);
            }
        }
    }
    let sus = super::syscall::attach(ebpf, tracefs)?;
    for name in SOCK_ADDR {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        p.load().map_err(prog_err(format!("load cgroup/{name}")))?;
    }
    for name in ["skb_egress", "skb_ingress"] {
        let p: &mut CgroupSkb = program(ebpf, name)?;
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
    info.set_hook(Concern::SuspiciousSyscalls, sus);
    Ok(())
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
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        let id = p
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(prog_err(format!("attach cgroup/{name}")))?;
        links._sock.push(p.take_link(id).map_err(prog_err(name))?);
    }
    for (name, at) in [
        ("skb_egress", CgroupSkbAttachType::Egress),
        ("skb_ingress", CgroupSkbAttachType::Ingress),
    ] {
        let p: &mut CgroupSkb = program(ebpf, name)?;
        let id = p
            .attach(&dir, at, CgroupAttachMode::Single)
            .map_err(prog_err(format!("attach {name}")))?;
        links._skb.push(p.take_link(id).map_err(prog_err(name))?);
    }
    Ok(links)
}
