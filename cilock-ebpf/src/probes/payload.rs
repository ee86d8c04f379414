//! The payload family: packet payloads of step sockets, for DNS and TLS
//! parsing in user space.
//!
//! | program | hook | captures |
//! |---|---|---|
//! | `skb_egress` | `cgroup_skb/egress` on each step cgroup | UDP datagrams that look like DNS queries (any port); the first `STREAM_CAPTURE` bytes of each TCP stream (ClientHello, DNS over TCP), by stream offset |
//! | `skb_ingress` | `cgroup_skb/ingress` on each step cgroup | UDP datagrams that look like DNS responses |
//!
//! Only sockets a step process connected or sent on with an address
//! (`SOCKS`, filled by the sock_addr hooks in `net.rs`) are captured; the
//! record carries that process and its fd. Egress runs before GSO
//! segmentation, so a ClientHello written at once is one skb whatever the
//! MSS; a hello written in pieces, or split by the stack, arrives as
//! several records placed by their TCP sequence offset, which user space
//! reassembles (retransmissions overlap, never duplicate).
//!
//! These programs may run in softirq context (TCP transmits on ACK) and can
//! interrupt a program of the same kind on this CPU, so they build records
//! in their own per-CPU buffers, one per nesting level.

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::PerCpuArray,
    programs::SkBuffContext,
};
use aya_log_ebpf::warn;
use cilock_abi::{PAYLOAD_MAX, PayloadEvent, STREAM_CAPTURE, kind, payload_flags};

use crate::common::maps::SCRATCH_SIZE;
use crate::common::record::emit;
use crate::probes::net::{SOCK_HAVE_ISN, SOCKS};

/// Size of one capture buffer (the size `emit` masks records to).
const SKB_BUF: usize = SCRATCH_SIZE;
const _: () = assert!(size_of::<PayloadEvent>() + PAYLOAD_MAX <= SKB_BUF);

#[repr(C)]
pub struct SkbBuf {
    pub buf: [u8; SKB_BUF],
}

/// Nesting levels of capture programs on one CPU (process context, then a
/// softirq interrupting it).
const LEVELS: u32 = 2;

#[map]
static SKB_SCRATCH: PerCpuArray<SkbBuf> = PerCpuArray::with_max_entries(LEVELS, 0);

#[map]
static SKB_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Largest DNS message captured.
const DNS_MAX: u32 = 2048;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    with_buf(&ctx, true);
    1
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    with_buf(&ctx, false);
    1
}

#[inline(always)]
fn with_buf(ctx: &SkBuffContext, egress: bool) {
    let Some(depth) = SKB_DEPTH.get_ptr_mut(0) else {
        return;
    };
    let d = unsafe { *depth };
    if d >= LEVELS {
        return;
    }
    let Some(buf) = SKB_SCRATCH.get_ptr_mut(d) else {
        return;
    };
    unsafe { *depth = d + 1 };
    let _ = capture(ctx, buf as *mut u8, egress);
    unsafe { *depth = d };
}

/// `bpf_skb_load_bytes` of `len` bytes (1..=cap, a power of two) at `off`.
#[inline(always)]
fn load(ctx: &SkBuffContext, off: u32, dst: *mut u8, len: u32, cap: u32) -> bool {
    // The verifier needs a size it can prove is in [1, cap].
    let n = ((len.wrapping_sub(1)) & (cap - 1)) + 1;
    let r =
        unsafe { bpf_skb_load_bytes(ctx.as_ptr() as *const c_void, off, dst as *mut c_void, n) };
    r == 0
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, buf: *mut u8, egress: bool) -> Option<()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        return None;
    }
    let sock = SOCKS.get_ptr_mut(&cookie)?;
    let skb_len = ctx.len();
    let ev = unsafe { &mut *(buf as *mut PayloadEvent) };

    // Network header (cgroup_skb data starts there).
    let mut ip = [0u8; 40];
    if !load(ctx, 0, ip.as_mut_ptr(), 20, 64) {
        return None;
    }
    let (l3, proto, v6) = match ip[0] >> 4 {
        4 => {
            // Fragments other than the first carry no L4 header.
            if (u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) != 0 {
                return None;
            }
            ((ip[0] & 0x0f) as u32 * 4, ip[9], false)
        }
        6 => {
            if !load(ctx, 0, ip.as_mut_ptr(), 40, 64) {
                return None;
            }
            (40u32, ip[6], true)
        }
        _ => return None,
    };
    if l3 < 20 {
        return None;
    }
    ev.saddr = [0; 16];
    ev.daddr = [0; 16];
    if v6 {
        ev.saddr.copy_from_slice(&ip[8..24]);
        ev.daddr.copy_from_slice(&ip[24..40]);
    } else {
        let (s, d) = (&mut ev.saddr, &mut ev.daddr);
        s[..4].copy_from_slice(&ip[12..16]);
        d[..4].copy_from_slice(&ip[16..20]);
    }

    let mut l4 = [0u8; 20];
    let flags;
    let payload_off;
    let mut stream_off = 0u32;
    let mut max = DNS_MAX;
    match proto {
        IPPROTO_TCP => {
            if !egress {
                return None;
            }
            if !load(ctx, l3, l4.as_mut_ptr(), 20, 32) {
                return None;
            }
            let doff = (l4[12] >> 4) as u32 * 4;
            let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            let tcp_flags = l4[13];
            flags = payload_flags::TCP;
            let s = unsafe { &mut *sock };
            if tcp_flags & 0x02 != 0 {
                // SYN: the stream starts after it (TCP Fast Open data in
                // the SYN is the stream's first bytes).
                s.isn = seq;
                s.flags |= SOCK_HAVE_ISN;
            }
            payload_off = l3 + doff;
            if payload_off >= skb_len {
                return None;
            }
            let seq = if tcp_flags & 0x02 != 0 {
                seq.wrapping_add(1)
            } else {
                seq
            };
            if s.flags & SOCK_HAVE_ISN == 0 {
                // Connected before we saw the SYN: count from here.
                s.isn = seq.wrapping_sub(1);
                s.flags |= SOCK_HAVE_ISN;
            }
            stream_off = seq.wrapping_sub(s.isn).wrapping_sub(1);
            if stream_off >= STREAM_CAPTURE {
                return None;
            }
            max = STREAM_CAPTURE - stream_off;
        }
        IPPROTO_UDP => {
            if !load(ctx, l3, l4.as_mut_ptr(), 8, 32) {
                return None;
            }
            flags = 0;
            payload_off = l3 + 8;
            if payload_off + 12 > skb_len {
                return None;
            }
            // A DNS header: one question, no answers; QR clear on a query
            // sent, set on a response received.
            let mut h = [0u8; 12];
            if !load(ctx, payload_off, h.as_mut_ptr(), 12, 16) {
                return None;
            }
            let qr = h[2] & 0x80 != 0;
            let opcode = (h[2] >> 3) & 0x0f;
            let qd = u16::from_be_bytes([h[4], h[5]]);
            let an = u16::from_be_bytes([h[6], h[7]]);
            let ns = u16::from_be_bytes([h[8], h[9]]);
            if qr == egress || opcode != 0 || qd != 1 {
                return None;
            }
            if egress && (an != 0 || ns != 0) {
                return None;
            }
        }
        _ => return None,
    }
    let plen = skb_len - payload_off;
    let mut n = plen;
    if n > max {
        n = max;
    }
    if n > PAYLOAD_MAX as u32 {
        n = PAYLOAD_MAX as u32;
    }
    if n == 0 {
        return None;
    }
    // Bounds the verifier can see (LLVM would drop a plain mask as redundant).
    let n =
        (unsafe { core::ptr::read_volatile(&n) }.wrapping_sub(1) & (PAYLOAD_MAX as u32 - 1)) + 1;
    let base = size_of::<PayloadEvent>();
    let data = unsafe { buf.add(base) };
    if !load(ctx, payload_off, data, n, PAYLOAD_MAX as u32) {
        warn!(
            ctx,
            "cilock: capturing {} payload bytes of a step socket failed", n
        );
        return None;
    }
    let s = unsafe { &*sock };
    ev.hdr.kind = kind::PAYLOAD;
    ev.hdr.size = 0;
    ev.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.hdr.step_cgroup = s.step;
    ev.hdr.tgid = s.tgid;
    ev.hdr.tid = 0;
    ev.hdr.comm = [0; 16];
    ev.cookie = cookie;
    ev.fd = s.fd;
    ev.flags = flags
        | if egress { payload_flags::EGRESS } else { 0 }
        | if v6 { payload_flags::IPV6 } else { 0 };
    ev.stream_off = stream_off;
    ev.len = n;
    ev.sport = u16::from_be_bytes([l4[0], l4[1]]);
    ev.dport = u16::from_be_bytes([l4[2], l4[3]]);
    ev._pad = 0;
    let size = base + n as usize;
    ev.hdr.size = size as u32;
    emit(buf, size, kind::PAYLOAD, s.step);
    Some(())
}
