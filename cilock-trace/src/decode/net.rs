//! Network records: connect, bind and the sends with an address.
//!
//! The bytes after the fixed part are data from the traced job: every
//! length is checked against the record (see the parent module).

use super::*;

/// A `kind::NET` record.
pub(super) fn net(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: NetEvent = read(b, k)?;
    let n = (e.addr_len as usize).min(e.addr.len());
    let Some(addr) = sockaddr::decode(&e.addr[..n]) else {
        return Err(DecodeError {
            kind: k,
            len: b.len(),
            what: "socket address too short",
        });
    };
    let call = match e.call {
        net_call::CONNECT => NetCall::Connect,
        net_call::SENDTO => NetCall::SendTo,
        net_call::BIND => NetCall::Bind,
        net_call::SENDMSG => NetCall::SendMsg,
        net_call::SENDMMSG => NetCall::SendMmsg,
        _ => {
            return Err(DecodeError {
                kind: k,
                len: b.len(),
                what: "unknown network call",
            })
        }
    };
    Ok(r.ev(TraceEvent::Net {
        pid: hdr.tgid,
        call,
        fd: e.fd,
        addr,
        time,
    }))
}
