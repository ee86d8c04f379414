//! Payload records: bytes captured at the step cgroup's `cgroup_skb` hooks.
//!
//! The bytes after the fixed part are data from the traced job: every
//! length is checked against the record (see the parent module).

use super::*;

/// Bytes captured from a step socket at the step cgroup's `cgroup_skb`
/// hook; TCP payloads are placed in their stream by `stream_off`.
#[derive(Debug, PartialEq)]
pub struct Payload {
    /// The step cgroup id.
    pub step_cgroup: u64,
    /// The process that last connected or sent with an address on the socket.
    pub pid: u32,
    /// Its fd for the socket (-1 when unknown).
    pub fd: i32,
    /// Socket cookie.
    pub cookie: u64,
    /// Sent (else received).
    pub egress: bool,
    /// TCP (else UDP).
    pub tcp: bool,
    /// TCP: offset of `bytes` in the stream.
    pub stream_off: u32,
    /// Source of the packet.
    pub src: std::net::SocketAddr,
    /// Destination of the packet.
    pub dst: std::net::SocketAddr,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// When.
    pub time: SystemTime,
}

/// A `kind::PAYLOAD` record.
pub(super) fn payload(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: PayloadEvent = read(b, k)?;
    let bytes = slice(b, size_of::<PayloadEvent>(), e.len as usize, k)?;
    let v6 = e.flags & payload_flags::IPV6 != 0;
    let ip = |a: &[u8; 16]| -> std::net::IpAddr {
        if v6 {
            std::net::Ipv6Addr::from(*a).into()
        } else {
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        }
    };
    Ok(Record::Payload(Payload {
        step_cgroup: hdr.step_cgroup,
        pid: hdr.tgid,
        fd: e.fd,
        cookie: e.cookie,
        egress: e.flags & payload_flags::EGRESS != 0,
        tcp: e.flags & payload_flags::TCP != 0,
        stream_off: e.stream_off,
        src: std::net::SocketAddr::new(ip(&e.saddr), e.sport),
        dst: std::net::SocketAddr::new(ip(&e.daddr), e.dport),
        bytes: bytes.to_vec(),
        time,
    }))
}
