//! HTTP proxy `CONNECT` requests: the tunnelled host of a TCP stream that
//! starts with one (the TLS ClientHello follows the request's headers).
//!
//! Works on untrusted bytes from the traced job: never panics, and gives up
//! (as "not CONNECT") when no end of headers appears in the first 8 KiB.

/// Whether a TCP stream starts with an HTTP proxy `CONNECT` request.
#[derive(Debug, PartialEq, Eq)]
pub enum Connect {
    /// It does not.
    No,
    /// Maybe: the request line or headers are not complete yet.
    Incomplete,
    /// The target host, and where the tunnelled bytes start.
    Target(String, usize),
}

/// Looks for a `CONNECT host:port HTTP/1.x` request (and its headers) at
/// the start of `buf`.
pub fn http_connect(buf: &[u8]) -> Connect {
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
