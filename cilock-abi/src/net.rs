//! The net family: a connect, sendto/sendmsg/sendmmsg with an address, or
//! bind of a step process ([`NetEvent`]), with the socket address as the
//! kernel or the caller had it.

use crate::Header;

/// What a [`NetEvent`] is.
pub mod net_call {
    /// connect(2) (also io_uring connects, seen by the cgroup hooks).
    pub const CONNECT: u32 = 1;
    /// sendto(2) with a destination address (also a send whose syscall is
    /// not known, e.g. from io_uring).
    pub const SENDTO: u32 = 2;
    /// bind(2).
    pub const BIND: u32 = 3;
    /// sendmsg(2) with a destination address.
    pub const SENDMSG: u32 = 4;
    /// sendmmsg(2) with a destination address.
    pub const SENDMMSG: u32 = 5;
}

/// Where a [`NetEvent`]'s address comes from.
pub mod net_source {
    /// The kernel's copy (cgroup `connect4|6`, `sendmsg4|6`, `bind4|6`
    /// hooks): `addr` holds a `sockaddr_in`/`sockaddr_in6` built from it.
    pub const KERNEL: u32 = 1;
    /// The caller's memory at syscall entry (families without cgroup hooks,
    /// such as AF_UNIX): `addr` holds the first `addr_len` bytes as passed.
    pub const USER: u32 = 2;
}

/// Byte budget of a socket address (`sizeof(struct sockaddr_storage)`).
pub const SOCKADDR_MAX: usize = 128;

/// `kind::NET`: a connect, sendto or bind by a step process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    /// Common header.
    pub hdr: Header,
    /// One of [`net_call`].
    pub call: u32,
    /// The socket fd in the calling process (-1 when unknown, e.g. an
    /// io_uring connect).
    pub fd: i32,
    /// `bpf_get_socket_cookie()` of the socket (0 when unknown).
    pub cookie: u64,
    /// One of [`net_source`].
    pub source: u32,
    /// Valid bytes of `addr`.
    pub addr_len: u32,
    /// A `struct sockaddr` (native-endian family, network-order port).
    pub addr: [u8; SOCKADDR_MAX],
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 48 + 24 + 128);

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(NetEvent);
crate::ring_record!(NetEvent => crate::kind::NET);
