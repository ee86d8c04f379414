//! The net family: network calls of step processes (connect,
//! sendto/sendmsg/sendmmsg with an address, bind).
//!
//! | program | hook | does |
//! |---|---|---|
//! | `sys_enter_{connect,bind,sendto,sendmsg,sendmmsg}`, `sys_exit_sendmmsg` | tracepoints `syscalls/sys_*` | read the sockaddr the caller passed (sendmmsg: the first message's; its fd is kept for every message until the exit); AF_INET/AF_INET6: remember the fd for the cgroup hook below (per thread, `PENDING`); other families (AF_UNIX, …): emit NET from the caller's bytes |
//! | `connect4/6`, `sendmsg4/6`, `bind4/6` | `cgroup/*` sock_addr hooks, attached to each step cgroup | emit NET with the kernel's copy of the address (what the kernel really connects to), the fd remembered above, and the socket cookie; remember cookie → (step, tgid, fd) in `SOCKS` for the packet capture in `payload.rs` |
//!
//! The sock_addr hooks run inside the syscall, in the caller's context,
//! after the address was copied into the kernel: a thread racing to change
//! the sockaddr after the entry tracepoint read it cannot fake the recorded
//! destination. They also see io_uring connects (fd unknown there).

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_probe_read_user},
    },
    macros::{cgroup_sock_addr, map, tracepoint},
    maps::LruHashMap,
    programs::{SockAddrContext, TracePointContext},
};
use aya_log_ebpf::warn;
use cilock_abi::{NetEvent, SOCKADDR_MAX, kind, net_call, net_source};

use crate::common::maps::current_step;
use crate::common::read::arg;
use crate::common::record::{self, fill_header, scratch};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// An INET socket call seen at syscall entry, waiting for its cgroup hook.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub ktime: u64,
    pub fd: i32,
    pub call: u32,
    /// `sin_port`/`sin6_port` as passed (network order bytes as a u16).
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// pid_tgid → the INET socket call it is making.
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

/// Per-socket state, keyed by socket cookie.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockState {
    /// Step of the process that connected/sent.
    pub step: u64,
    /// That process and its fd.
    pub tgid: u32,
    pub fd: i32,
    /// TCP: sequence number of the SYN (the stream starts at `isn + 1`).
    pub isn: u32,
    /// `SOCK_*` flags.
    pub flags: u32,
    /// Last destination a NET record was emitted for (sendmsg dedup).
    pub last_ip: [u32; 4],
    pub last_port: u32,
    pub last_call: u32,
}

/// `SockState::flags`: the SYN (or the first data byte) fixed `isn`.
pub const SOCK_HAVE_ISN: u32 = 1;
/// `SockState::flags`: `last_*` is valid.
pub const SOCK_HAVE_LAST: u32 = 2;

/// Socket cookie → who uses it (filled by the sock_addr hooks).
#[map]
pub static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(65536, 0);

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = sock_call(
        &ctx,
        net_call::CONNECT,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
    );
    0
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    let _ = sock_call(
        &ctx,
        net_call::BIND,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
    );
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let addr = arg(&ctx, 4);
    if addr != 0 {
        let _ = sock_call(&ctx, net_call::SENDTO, arg(&ctx, 0), addr, arg(&ctx, 5));
    }
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let _ = try_sendmsg(&ctx);
    0
}

#[inline(always)]
fn try_sendmsg(ctx: &TracePointContext) -> Option<()> {
    // sendmsg is frequent machine-wide: the step lookup before any user
    // memory read.
    current_step()?;
    let msg = arg(ctx, 1);
    // struct user_msghdr { void *msg_name; int msg_namelen; ... }
    let name = unsafe { aya_ebpf::helpers::bpf_probe_read_user(msg as *const u64) }.ok()?;
    if name == 0 {
        return None;
    }
    let len = unsafe { aya_ebpf::helpers::bpf_probe_read_user((msg + 8) as *const u32) }.ok()?;
    sock_call(ctx, net_call::SENDMSG, arg(ctx, 0), name, len as u64)
}

#[tracepoint]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    let _ = try_sendmmsg(&ctx);
    0
}

/// sendmmsg: every message may have its own destination, each passing the
/// sendmsg4/6 hook. The fd is remembered for all of them (`family` 0: any
/// destination) until the syscall exits.
#[inline(always)]
fn try_sendmmsg(ctx: &TracePointContext) -> Option<()> {
    current_step()?;
    let fd = arg(ctx, 0);
    let msgs = arg(ctx, 1);
    // The first message's address as the caller passed it (other families
    // than INET are reported from it, like sendmsg).
    let name = unsafe { aya_ebpf::helpers::bpf_probe_read_user(msgs as *const u64) }.unwrap_or(0);
    if name != 0 {
        let len = unsafe { aya_ebpf::helpers::bpf_probe_read_user((msgs + 8) as *const u32) }
            .unwrap_or(0);
        let _ = sock_call(ctx, net_call::SENDMMSG, fd, name, len as u64);
    }
    let p = Pending {
        ktime: unsafe { bpf_ktime_get_boot_ns() },
        fd: fd as i32,
        call: net_call::SENDMMSG,
        port: 0,
        family: 0,
        _pad: 0,
    };
    let _ = PENDING.insert(&bpf_get_current_pid_tgid(), &p, 0);
    Some(())
}

#[tracepoint]
pub fn sys_exit_sendmmsg(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if let Some(p) = unsafe { PENDING.get(&id) } {
        if p.call == net_call::SENDMMSG {
            let _ = PENDING.remove(&id);
        }
    }
    0
}

/// A socket call at syscall entry.
#[inline(always)]
fn sock_call(ctx: &TracePointContext, call: u32, fd: u64, uaddr: u64, ulen: u64) -> Option<()> {
    if uaddr == 0 || ulen < 2 {
        return None;
    }
    let step = current_step()?;
    let buf = scratch()?;
    let ev = unsafe { &mut *(buf as *mut NetEvent) };
    let len = if ulen > SOCKADDR_MAX as u64 {
        SOCKADDR_MAX as u64
    } else {
        ulen
    };
    let n = (((len - 1) as u32) & (SOCKADDR_MAX as u32 - 1)) + 1;
    let r = unsafe {
        bpf_probe_read_user((&raw mut ev.addr) as *mut c_void, n, uaddr as *const c_void)
    };
    if r != 0 {
        // The caller's page is not resident (or the pointer is bad).
        warn!(
            ctx,
            "cilock: reading a sockaddr of {} bytes failed: {}", n, r
        );
        return None;
    }
    let family = u16::from_ne_bytes([ev.addr[0], ev.addr[1]]);
    match family {
        0 => None, // AF_UNSPEC: a UDP disconnect
        AF_INET | AF_INET6 => {
            // The cgroup hook reports it with the kernel's copy.
            let p = Pending {
                ktime: unsafe { bpf_ktime_get_boot_ns() },
                fd: fd as i32,
                call,
                port: u16::from_ne_bytes([ev.addr[2], ev.addr[3]]),
                family,
                _pad: 0,
            };
            let _ = PENDING.insert(&bpf_get_current_pid_tgid(), &p, 0);
            None
        }
        _ => {
            fill_header(&mut ev.hdr, kind::NET, step);
            ev.call = call;
            ev.fd = fd as i32;
            ev.cookie = 0;
            ev.source = net_source::USER;
            ev.addr_len = n;
            record::send::<NetEvent>(buf, size_of::<NetEvent>(), step);
            Some(())
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let _ = sock_hook(&ctx, net_call::CONNECT, AF_INET);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let _ = sock_hook(&ctx, net_call::CONNECT, AF_INET6);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let _ = sock_hook(&ctx, net_call::SENDTO, AF_INET);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let _ = sock_hook(&ctx, net_call::SENDTO, AF_INET6);
    1
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    let _ = sock_hook(&ctx, net_call::BIND, AF_INET);
    1
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    let _ = sock_hook(&ctx, net_call::BIND, AF_INET6);
    1
}

/// A sock_addr hook: the kernel's view of a connect/sendmsg/bind.
#[inline(always)]
fn sock_hook(ctx: &SockAddrContext, call: u32, family: u16) -> Option<()> {
    let step = current_step()?;
    let sa = ctx.sock_addr;
    let port = unsafe { (*sa).user_port } as u16;
    let mut ip = [0u32; 4];
    if family == AF_INET {
        ip[0] = unsafe { (*sa).user_ip4 };
    } else {
        ip[0] = unsafe { (*sa).user_ip6[0] };
        ip[1] = unsafe { (*sa).user_ip6[1] };
        ip[2] = unsafe { (*sa).user_ip6[2] };
        ip[3] = unsafe { (*sa).user_ip6[3] };
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // The fd, from the entry tracepoint of the same call, and which send
    // call it was.
    let mut fd: i32 = -1;
    let mut call = call;
    if let Some(p) = unsafe { PENDING.get(&pid_tgid) } {
        let sendish = p.call == net_call::SENDTO || p.call == net_call::SENDMSG;
        let fresh = now - p.ktime < 1_000_000_000;
        if p.call == net_call::SENDMMSG && p.family == 0 {
            // Every message of a sendmmsg: kept until its exit.
            if call == net_call::SENDTO && fresh {
                fd = p.fd;
                call = net_call::SENDMMSG;
            }
        } else {
            // sendto/sendmsg(MSG_FASTOPEN) connects: its entry was a send.
            let same_call = p.call == call
                || (call == net_call::SENDTO && sendish)
                || (call == net_call::CONNECT && sendish);
            if p.family == family && p.port == port && same_call && fresh {
                fd = p.fd;
                if call == net_call::SENDTO {
                    call = p.call;
                }
            }
            let _ = PENDING.remove(&pid_tgid);
        }
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };

    // Socket state for the packet capture; a sendmsg to the destination it
    // last reported is not reported again.
    if call != net_call::BIND {
        match SOCKS.get_ptr_mut(&cookie) {
            Some(s) if call != net_call::CONNECT => {
                let s = unsafe { &mut *s };
                let same = s.flags & SOCK_HAVE_LAST != 0
                    && s.tgid == tgid
                    && s.fd == fd
                    && s.last_call == call
                    && s.last_port == port as u32
                    && s.last_ip == ip;
                s.step = step;
                s.tgid = tgid;
                s.fd = fd;
                s.last_ip = ip;
                s.last_port = port as u32;
                s.last_call = call;
                s.flags |= SOCK_HAVE_LAST;
                if same {
                    return Some(());
                }
            }
            _ => {
                let s = SockState {
                    step,
                    tgid,
                    fd,
                    isn: 0,
                    flags: SOCK_HAVE_LAST,
                    last_ip: ip,
                    last_port: port as u32,
                    last_call: call,
                };
                let _ = SOCKS.insert(&cookie, &s, 0);
            }
        }
    }

    let (buf, ev) = record::start::<NetEvent>(step)?;
    ev.call = call;
    ev.fd = fd;
    ev.cookie = cookie;
    ev.source = net_source::KERNEL;
    // A sockaddr_in / sockaddr_in6 built from the kernel's copy.
    let a = &mut ev.addr;
    let fam = family.to_ne_bytes();
    let pb = port.to_ne_bytes();
    a[0] = fam[0];
    a[1] = fam[1];
    a[2] = pb[0];
    a[3] = pb[1];
    if family == AF_INET {
        let b = ip[0].to_ne_bytes();
        a[4] = b[0];
        a[5] = b[1];
        a[6] = b[2];
        a[7] = b[3];
        ev.addr_len = 16;
    } else {
        a[4] = 0;
        a[5] = 0;
        a[6] = 0;
        a[7] = 0;
        let mut i = 0;
        while i < 4 {
            let b = ip[i].to_ne_bytes();
            a[8 + i * 4] = b[0];
            a[9 + i * 4] = b[1];
            a[10 + i * 4] = b[2];
            a[11 + i * 4] = b[3];
            i += 1;
        }
        ev.addr_len = 24;
    }
    record::send::<NetEvent>(buf, size_of::<NetEvent>(), step);
    Some(())
}
