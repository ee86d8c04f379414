//! The payload family: bytes of a step socket captured at the step
//! cgroup's `cgroup_skb` hooks ([`PayloadEvent`]): DNS datagrams and the
//! first [`STREAM_CAPTURE`] bytes of each TCP stream.

use crate::Header;

/// Flags of a [`PayloadEvent`].
pub mod payload_flags {
    /// Sent by the process (cgroup_skb egress); else received.
    pub const EGRESS: u32 = 1 << 0;
    /// TCP (a stream: `stream_off` is meaningful); else UDP.
    pub const TCP: u32 = 1 << 1;
    /// IPv6 addresses; else IPv4 in the first 4 bytes.
    pub const IPV6: u32 = 1 << 2;
}

/// Byte budget of one payload record.
pub const PAYLOAD_MAX: usize = 8192;
/// Bytes of a TCP stream captured from its start (per direction).
pub const STREAM_CAPTURE: u32 = 8192;

/// `kind::PAYLOAD`: bytes of a packet of a socket a step process
/// connected or sent on, captured at the step cgroup's `cgroup_skb` hook
/// (before segmentation). Followed by `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PayloadEvent {
    /// Common header (`tgid` is the process that last connected or sent
    /// with an address on the socket; `tid` and `comm` are zero).
    pub hdr: Header,
    /// Socket cookie.
    pub cookie: u64,
    /// That process's fd for the socket (-1 when unknown).
    pub fd: i32,
    /// [`payload_flags`].
    pub flags: u32,
    /// TCP: offset of the first byte in the stream (0 = the first payload
    /// byte after the handshake); UDP: zero.
    pub stream_off: u32,
    /// Bytes that follow.
    pub len: u32,
    /// Source address (network order).
    pub saddr: [u8; 16],
    /// Destination address (network order).
    pub daddr: [u8; 16],
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 48 + 24 + 40);

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(PayloadEvent);
crate::ring_record!(PayloadEvent => crate::kind::PAYLOAD);
