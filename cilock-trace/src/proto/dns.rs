//! Pure parsers for network payloads captured by the backends (both eBPF and
//! ptrace hand the recorder the first bytes a process sent on a socket):
//! DNS queries/answers (UDP datagrams or TCP streams with the 2-byte length
//! prefix); TLS ClientHellos are [`super::tls`]'s.
//!
//! Everything here works on untrusted bytes from the traced job: no function
//! panics on any input, name decompression follows at most
//! [`MAX_POINTER_JUMPS`] pointers, and every length is checked.

/// Most compression pointers followed while decoding one DNS name.
pub const MAX_POINTER_JUMPS: usize = 32;
/// Longest DNS name accepted (RFC 1035: 255 octets on the wire).
const MAX_NAME_WIRE: usize = 255;
/// Most questions decoded from one message (real queries carry one).
const MAX_QUESTIONS: usize = 16;
/// Most resource records decoded from one answer message.
const MAX_RECORDS: usize = 256;

/// One question of a DNS query.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsQuery {
    /// Transaction id.
    pub id: u16,
    /// Queried name, dotted, without the trailing dot (`"."` for the root).
    /// Bytes outside printable ASCII are escaped as `\DDD` (RFC 4343 style).
    pub name: String,
    /// Query type as text: `A`, `AAAA`, `TXT`, … or `TYPE<n>`.
    pub qtype: String,
}

/// One answer record of a DNS response (A, AAAA and CNAME are decoded).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsAnswer {
    /// Transaction id of the response.
    pub id: u16,
    /// Owner name of the record.
    pub name: String,
    /// Record type as text (see [`qtype_name`]).
    pub rtype: String,
    /// Time to live in seconds.
    pub ttl: u32,
    /// Decoded data: the address for A/AAAA, the target for CNAME, hex
    /// otherwise.
    pub data: String,
}

/// Text for a DNS RR type number.
pub fn qtype_name(t: u16) -> String {
    let s = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        39 => "DNAME",
        41 => "OPT",
        43 => "DS",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        50 => "NSEC3",
        52 => "TLSA",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        _ => return format!("TYPE{t}"),
    };
    s.to_string()
}

pub(crate) fn be16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decodes the (possibly compressed) name at `off` in `msg`. Returns the
/// name and the offset just after it in the original position.
fn read_name(msg: &[u8], off: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut pos = off;
    let mut end_after: Option<usize> = None;
    let mut jumps = 0usize;
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(pos)? as usize;
        match len & 0xC0 {
            0x00 => {
                if len == 0 {
                    let end = end_after.unwrap_or(pos + 1);
                    if name.is_empty() {
                        name.push('.');
                    }
                    return Some((name, end));
                }
                let label = msg.get(pos + 1..pos + 1 + len)?;
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE {
                    return None;
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &c in label {
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        name.push(c as char);
                    } else {
                        name.push_str(&format!("\\{c:03}"));
                    }
                }
                pos += 1 + len;
            }
            0xC0 => {
                let lo = *msg.get(pos + 1)? as usize;
                let target = ((len & 0x3F) << 8) | lo;
                if end_after.is_none() {
                    end_after = Some(pos + 2);
                }
                jumps += 1;
                // A pointer must point backwards; together with the jump
                // limit this excludes loops.
                if jumps > MAX_POINTER_JUMPS || target >= pos {
                    return None;
                }
                pos = target;
            }
            _ => return None, // 0x40/0x80: extended label types, unsupported
        }
    }
}

/// Splits a payload into DNS messages: one datagram, or the length-prefixed
/// messages of a TCP stream (complete ones only).
fn dns_messages(payload: &[u8], stream: bool) -> Vec<&[u8]> {
    if !stream {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(len) = be16(rest, 0) {
        let len = len as usize;
        match rest.get(2..2 + len) {
            Some(m) => {
                out.push(m);
                rest = &rest[2 + len..];
            }
            None => break,
        }
    }
    out
}

/// Parses the questions of the DNS query (QR bit clear) messages in
/// `payload`. `stream` means TCP framing (each message preceded by a 2-byte
/// length; several may follow each other). Returns `None` when no message is
/// a well-formed query.
pub fn parse_dns_queries(payload: &[u8], stream: bool) -> Option<Vec<DnsQuery>> {
    let mut out = Vec::new();
    let mut any = false;
    for msg in dns_messages(payload, stream) {
        if let Some(qs) = parse_one_query(msg) {
            any = true;
            out.extend(qs);
        }
    }
    any.then_some(out)
}

fn parse_one_query(msg: &[u8]) -> Option<Vec<DnsQuery>> {
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    if flags & 0x8000 != 0 {
        return None; // a response
    }
    let opcode = (flags >> 11) & 0xF;
    if opcode > 6 {
        return None;
    }
    let qd = be16(msg, 4)? as usize;
    if qd == 0 || qd > MAX_QUESTIONS {
        return None;
    }
    let mut pos = 12usize;
    let mut out = Vec::with_capacity(qd);
    for _ in 0..qd {
        let (name, next) = read_name(msg, pos)?;
        let qtype = be16(msg, next)?;
        be16(msg, next + 2)?; // qclass must be present
        pos = next + 4;
        out.push(DnsQuery {
            id,
            name,
            qtype: qtype_name(qtype),
        });
    }
    Some(out)
}

/// Parses the answer section of DNS response (QR bit set) messages in
/// `payload` (same framing rules as [`parse_dns_queries`]). Returns `None`
/// when no message is a well-formed response.
pub fn parse_dns_answers(payload: &[u8], stream: bool) -> Option<Vec<DnsAnswer>> {
    let mut out = Vec::new();
    let mut any = false;
    for msg in dns_messages(payload, stream) {
        if let Some(a) = parse_one_response(msg) {
            any = true;
            out.extend(a);
        }
    }
    any.then_some(out)
}

fn parse_one_response(msg: &[u8]) -> Option<Vec<DnsAnswer>> {
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    if flags & 0x8000 == 0 {
        return None;
    }
    let qd = be16(msg, 4)? as usize;
    let an = be16(msg, 6)? as usize;
    if qd > MAX_QUESTIONS || an > MAX_RECORDS {
        return None;
    }
    let mut pos = 12usize;
    for _ in 0..qd {
        let (_, next) = read_name(msg, pos)?;
        be32(msg, next)?;
        pos = next + 4;
    }
    let mut out = Vec::with_capacity(an);
    for _ in 0..an {
        let (name, next) = read_name(msg, pos)?;
        let rtype = be16(msg, next)?;
        let ttl = be32(msg, next + 4)?;
        let rdlen = be16(msg, next + 8)? as usize;
        let rstart = next + 10;
        let rdata = msg.get(rstart..rstart + rdlen)?;
        let data = match (rtype, rdlen) {
            (1, 4) => std::net::Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string(),
            (28, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(rdata);
                std::net::Ipv6Addr::from(a).to_string()
            }
            (5, _) | (2, _) | (12, _) => read_name(msg, rstart).map(|(n, _)| n)?,
            _ => hex::encode(rdata),
        };
        out.push(DnsAnswer {
            id,
            name,
            rtype: qtype_name(rtype),
            ttl,
            data,
        });
        pos = rstart + rdlen;
    }
    Some(out)
}

/// Longest DNS query accepted at the start of a TCP stream on a port other
/// than 53 (real queries, EDNS options included, are a few hundred bytes).
pub const MAX_DNS_TCP_QUERY: usize = 4096;

/// What the first bytes of a TCP stream say about DNS over TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsStart {
    /// The stream starts with one complete, strictly valid, length-prefixed
    /// DNS query.
    Yes,
    /// The bytes so far are a plausible prefix of one.
    Incomplete,
    /// Not a DNS query.
    No,
}

/// Recognises DNS over TCP on any port: the stream must start with a
/// 2-byte length and a standard query (QR clear, opcode QUERY, no flags
/// but RD/CD/AD, RCODE 0, exactly one question, no answer or authority
/// records, at most one additional record which must be an EDNS OPT) whose
/// question and OPT fill the stated length exactly, without compression.
/// Strict so that other protocols are not mistaken for DNS.
pub fn dns_tcp_start(b: &[u8]) -> DnsStart {
    let Some(len) = be16(b, 0) else {
        return DnsStart::Incomplete;
    };
    let len = len as usize;
    if !(17..=MAX_DNS_TCP_QUERY).contains(&len) {
        return DnsStart::No;
    }
    let m = &b[2..];
    // Header checks on what is there.
    if let Some(&f0) = m.get(2) {
        // QR, opcode (4 bits), AA, TC: a query is 0 here except RD.
        if f0 & 0xFE != 0 {
            return DnsStart::No;
        }
    }
    if let Some(&f1) = m.get(3) {
        // RA, Z, AD, CD, RCODE: RA/Z and RCODE are 0 in a query.
        if f1 & 0xCF != 0 {
            return DnsStart::No;
        }
    }
    for (off, max) in [(4usize, 1u16), (6, 0), (8, 0), (10, 1)] {
        if let Some(v) = be16(m, off) {
            if v > max || (off == 4 && v != 1) {
                return DnsStart::No;
            }
        }
    }
    let Some(msg) = m.get(..len) else {
        return DnsStart::Incomplete;
    };
    // QNAME: plain labels only.
    let mut pos = 12;
    let mut wire = 0;
    loop {
        let Some(&l) = msg.get(pos) else {
            return DnsStart::No;
        };
        if l == 0 {
            pos += 1;
            break;
        }
        if l & 0xC0 != 0 {
            return DnsStart::No;
        }
        wire += l as usize + 1;
        if wire > MAX_NAME_WIRE {
            return DnsStart::No;
        }
        pos += 1 + l as usize;
    }
    let (Some(_qtype), Some(qclass)) = (be16(msg, pos), be16(msg, pos + 2)) else {
        return DnsStart::No;
    };
    if !matches!(qclass, 1 | 3 | 4 | 254 | 255) {
        return DnsStart::No;
    }
    pos += 4;
    if be16(msg, 10) == Some(1) {
        // OPT: root name, type 41, class, ttl, rdlength, rdata.
        if msg.get(pos) != Some(&0) || be16(msg, pos + 1) != Some(41) {
            return DnsStart::No;
        }
        let Some(rdlen) = be16(msg, pos + 9) else {
            return DnsStart::No;
        };
        pos += 11 + rdlen as usize;
    }
    if pos == len {
        DnsStart::Yes
    } else {
        DnsStart::No
    }
}
