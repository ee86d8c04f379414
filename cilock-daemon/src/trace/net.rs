//! Pure parsers for network payloads captured by the backends (both eBPF and
//! ptrace hand the recorder the first bytes a process sent on a socket):
//! DNS queries/answers (UDP datagrams or TCP streams with the 2-byte length
//! prefix) and TLS ClientHellos (SNI and ALPN).
//!
//! Everything here works on untrusted bytes from the traced job: no function
//! panics on any input, name decompression follows at most
//! [`MAX_POINTER_JUMPS`] pointers, and every length is checked.

use tls_parser::{
    parse_tls_extensions, parse_tls_message_handshake, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

/// Most compression pointers followed while decoding one DNS name.
pub const MAX_POINTER_JUMPS: usize = 32;
/// Longest DNS name accepted (RFC 1035: 255 octets on the wire).
const MAX_NAME_WIRE: usize = 255;
/// Most questions decoded from one message (real queries carry one).
const MAX_QUESTIONS: usize = 16;
/// Most resource records decoded from one answer message.
const MAX_RECORDS: usize = 256;
/// Largest ClientHello we try to reassemble (TLS allows 2^24, real hellos
/// with post-quantum key shares are under 2 KB).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

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

fn be16(b: &[u8], off: usize) -> Option<u16> {
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

/// The name of an address family (`AF_NETLINK`, …), `AF_<n>` for others.
pub fn family_name(f: u16) -> String {
    let s = match f {
        0 => "AF_UNSPEC",
        1 => "AF_UNIX",
        2 => "AF_INET",
        3 => "AF_AX25",
        4 => "AF_IPX",
        5 => "AF_APPLETALK",
        9 => "AF_X25",
        10 => "AF_INET6",
        15 => "AF_KEY",
        16 => "AF_NETLINK",
        17 => "AF_PACKET",
        21 => "AF_RDS",
        26 => "AF_LLC",
        29 => "AF_CAN",
        30 => "AF_TIPC",
        31 => "AF_BLUETOOTH",
        36 => "AF_IEEE802154",
        38 => "AF_ALG",
        40 => "AF_VSOCK",
        41 => "AF_KCM",
        42 => "AF_QIPCRTR",
        43 => "AF_SMC",
        44 => "AF_XDP",
        45 => "AF_MCTP",
        _ => return format!("AF_{f}"),
    };
    s.to_string()
}

/// Result of looking for a TLS ClientHello at the start of a TCP stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// A complete ClientHello.
    Hello {
        /// The `host_name` server name, if present (and valid UTF-8).
        sni: Option<String>,
        /// ALPN protocol names offered.
        alpn: Vec<String>,
    },
    /// The bytes so far are a plausible prefix of a ClientHello: keep
    /// buffering the stream.
    Incomplete,
    /// The stream does not start with a TLS ClientHello.
    NotTls,
}

/// Parses the first bytes a client wrote on a TCP connection. The
/// ClientHello may span several TLS handshake records (as large post-quantum
/// hellos do) and several writes: the caller concatenates what the process
/// wrote and calls again while the answer is [`ClientHello::Incomplete`].
/// [`client_hello_prefix`] tells what the bytes so far already show (the
/// server name is usually in the first few hundred bytes).
pub fn parse_client_hello(bytes: &[u8]) -> ClientHello {
    match client_hello_prefix(bytes) {
        None => ClientHello::NotTls,
        Some(p) if p.complete => ClientHello::Hello {
            sni: p.sni,
            alpn: p.alpn.unwrap_or_default(),
        },
        Some(_) => ClientHello::Incomplete,
    }
}

/// What the first bytes of a TLS stream show of its ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelloPrefix {
    /// The `host_name` server name, once its extension was read whole (and
    /// it is valid UTF-8).
    pub sni: Option<String>,
    /// The ALPN protocol names, once the ALPN extension was read whole
    /// (`None`: not offered, or not reached yet).
    pub alpn: Option<Vec<String>>,
    /// Whether the whole ClientHello was read. When false, extensions after
    /// the cut (possibly the ALPN or even the server name) are unknown.
    pub complete: bool,
    /// Whether the `server_name` extension was read whole.
    pub sni_seen: bool,
    /// The hello is malformed: an extension's content is (the entries
    /// before the fault are kept), an extension is repeated (the first
    /// counts), or a length runs past its end after something was found
    /// (parsing stopped there; `complete` is set as more bytes cannot help).
    pub malformed: bool,
}

/// Largest TLS record fragment accepted (RFC 8446 5.1: 2^14, plus the
/// expansion TLS 1.2 allowed).
const MAX_RECORD: usize = 16384 + 2048;

/// Streaming parser of a ClientHello: reads the record headers, the
/// handshake header, the fixed fields and the extensions in order, as far as
/// `bytes` go, and returns what it found before the end of the bytes.
/// Returns `None` when the bytes cannot be the start of a ClientHello (a
/// malformed length anywhere in the part read is not TLS). Never panics;
/// the work is linear in `bytes.len()` and bounded by [`MAX_CLIENT_HELLO`].
pub fn client_hello_prefix(bytes: &[u8]) -> Option<HelloPrefix> {
    // The handshake message bytes available, gathered from the records.
    let mut hs: Vec<u8> = Vec::new();
    let mut mlen: Option<usize> = None;
    let mut rest = bytes;
    // A record header after the first one is malformed: the hello ends
    // there (what was found before stays).
    let mut bad_record = false;
    loop {
        if let Some(m) = mlen {
            if hs.len() >= 4 + m {
                break;
            }
        }
        if rest.is_empty() {
            break;
        }
        let first = rest.len() == bytes.len();
        let sound = rest[0] == 0x16 && (rest.len() < 2 || rest[1] == 0x03);
        let len = if rest.len() >= 5 {
            u16::from_be_bytes([rest[3], rest[4]]) as usize
        } else {
            1
        };
        // Zero-length handshake fragments are not allowed.
        if !sound || len == 0 || len > MAX_RECORD {
            if first {
                return None;
            }
            bad_record = true;
            break;
        }
        if rest.len() < 5 {
            break;
        }
        let avail = &rest[5..];
        let take = len.min(avail.len());
        hs.extend_from_slice(&avail[..take]);
        if hs.first().is_some_and(|&t| t != 0x01) {
            return None;
        }
        if mlen.is_none() && hs.len() >= 4 {
            let m = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
            if !(38..=MAX_CLIENT_HELLO).contains(&m) {
                return None;
            }
            mlen = Some(m);
        }
        if hs.len() > MAX_CLIENT_HELLO + 4 {
            return None;
        }
        if take < len {
            break;
        }
        rest = &avail[len..];
    }
    let mut out = HelloPrefix::default();
    let Some(m) = mlen else {
        // Not even the handshake header yet.
        return (!bad_record).then_some(out);
    };
    hs.truncate(4 + m);
    // `end` bounds every length by the declared message; `hs.len()` is what
    // we have. A read past `end` is malformed; past `hs.len()`, cut.
    let body = &hs[4..];
    let end = m;
    let mut c = Cursor {
        b: body,
        pos: 0,
        end,
    };
    let step = match parse_hello_body(&mut c, &mut out) {
        Step::Cut if bad_record => Step::Bad,
        s => s,
    };
    match step {
        Step::Done => {
            out.complete = true;
            Some(out)
        }
        Step::Cut => Some(out),
        // What was found before a malformation stays found: a server name
        // must not vanish because of garbage after it.
        Step::Bad if out.sni_seen || out.alpn.is_some() => {
            out.complete = true;
            out.malformed = true;
            Some(out)
        }
        Step::Bad => None,
    }
}

/// Outcome of one step of the ClientHello parser.
enum Step {
    Done,
    Cut,
    Bad,
}

/// A read position in a partially available message of declared length
/// `end` (of which `b` holds the first `b.len()` bytes).
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    /// The next `n` bytes: `Err(Bad)` past the declared end, `Err(Cut)`
    /// past the available bytes.
    fn take(&mut self, n: usize, limit: usize) -> Result<&'a [u8], Step> {
        let to = self.pos.checked_add(n).ok_or(Step::Bad)?;
        if to > limit || to > self.end {
            return Err(Step::Bad);
        }
        let s = self.b.get(self.pos..to).ok_or(Step::Cut)?;
        self.pos = to;
        Ok(s)
    }

    fn u8(&mut self, limit: usize) -> Result<usize, Step> {
        Ok(self.take(1, limit)?[0] as usize)
    }

    fn u16(&mut self, limit: usize) -> Result<usize, Step> {
        let s = self.take(2, limit)?;
        Ok(u16::from_be_bytes([s[0], s[1]]) as usize)
    }
}

fn parse_hello_body(c: &mut Cursor<'_>, out: &mut HelloPrefix) -> Step {
    match hello_fields(c, out) {
        Ok(()) => Step::Done,
        Err(s) => s,
    }
}

fn hello_fields(c: &mut Cursor<'_>, out: &mut HelloPrefix) -> Result<(), Step> {
    let end = c.end;
    let ver = c.take(2, end)?;
    if ver[0] != 0x03 {
        return Err(Step::Bad);
    }
    c.take(32, end)?; // random
    let sid = c.u8(end)?;
    if sid > 32 {
        return Err(Step::Bad);
    }
    c.take(sid, end)?;
    let cs = c.u16(end)?;
    if cs < 2 || cs % 2 != 0 {
        return Err(Step::Bad);
    }
    c.take(cs, end)?;
    let comp = c.u8(end)?;
    if comp < 1 {
        return Err(Step::Bad);
    }
    c.take(comp, end)?;
    if c.pos == end {
        return Ok(()); // no extensions
    }
    let elen = c.u16(end)?;
    let eend = c.pos + elen;
    if eend != end {
        return Err(Step::Bad);
    }
    while c.pos < eend {
        let typ = c.u16(eend)?;
        let len = c.u16(eend)?;
        let dend = c.pos.checked_add(len).ok_or(Step::Bad)?;
        if dend > eend {
            return Err(Step::Bad);
        }
        match typ {
            // A malformed or repeated extension is flagged, and parsing
            // goes on (its framing is sound): what a lax server would
            // read must not vanish from the record.
            0 => {
                let data = c.take(len, eend)?;
                let (sni, ok) = server_name(data);
                if out.sni_seen {
                    out.malformed = true;
                } else {
                    out.sni = sni;
                    out.sni_seen = true;
                }
                out.malformed |= !ok;
            }
            16 => {
                let data = c.take(len, eend)?;
                let (alpn, ok) = alpn_list(data);
                if out.alpn.is_some() {
                    out.malformed = true;
                } else {
                    out.alpn = Some(alpn);
                }
                out.malformed |= !ok;
            }
            _ => {
                // Skip what is there; the rest of the bytes may be cut.
                c.take(len, eend)?;
            }
        }
    }
    Ok(())
}

/// The `host_name` entry of a `server_name` extension (RFC 6066 3), and
/// whether the extension was well-formed (an entry found before a
/// malformation is kept).
fn server_name(d: &[u8]) -> (Option<String>, bool) {
    let mut host: Option<Option<String>> = None;
    let Some(n) = be16(d, 0) else {
        return (None, false);
    };
    let mut ok = n as usize + 2 == d.len() && n != 0;
    let d = &d[..(n as usize + 2).min(d.len())];
    let mut p = 2;
    while p < d.len() {
        let t = d[p];
        let Some(l) = be16(d, p + 1) else {
            ok = false;
            break;
        };
        let Some(name) = d.get(p + 3..p + 3 + l as usize) else {
            ok = false;
            break;
        };
        if t == 0 && host.is_none() {
            host = Some(std::str::from_utf8(name).ok().map(str::to_string));
        }
        p += 3 + l as usize;
    }
    (host.flatten(), ok)
}

/// The protocol names of an ALPN extension (RFC 7301 3.1), and whether the
/// list was well-formed (names before a malformation are kept).
fn alpn_list(d: &[u8]) -> (Vec<String>, bool) {
    let mut v = Vec::new();
    let Some(n) = be16(d, 0) else {
        return (v, false);
    };
    let mut ok = n as usize + 2 == d.len();
    let d = &d[..(n as usize + 2).min(d.len())];
    let mut p = 2;
    while p < d.len() {
        let l = d[p] as usize;
        match d.get(p + 1..p + 1 + l) {
            Some(name) if l > 0 => v.push(String::from_utf8_lossy(name).into_owned()),
            _ => {
                ok = false;
                break;
            }
        }
        p += 1 + l;
    }
    (v, ok)
}

/// Decodes a whole ClientHello handshake message with `tls-parser` (a
/// reference for differential tests of [`client_hello_prefix`]).
pub fn decode_with_tls_parser(msg: &[u8]) -> ClientHello {
    decode_hello(msg)
}

fn decode_hello(msg: &[u8]) -> ClientHello {
    let ch = match parse_tls_message_handshake(msg) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) => ch,
        _ => return ClientHello::NotTls,
    };
    let mut sni = None;
    let mut alpn = Vec::new();
    if let Some(ext) = ch.ext {
        match parse_tls_extensions(ext) {
            Ok((_, exts)) => {
                for e in exts {
                    match e {
                        TlsExtension::SNI(names) => {
                            if let Some((_, n)) = names.iter().find(|(t, _)| t.0 == 0) {
                                sni = std::str::from_utf8(n).ok().map(str::to_string);
                            }
                        }
                        TlsExtension::ALPN(protos) => {
                            alpn = protos
                                .iter()
                                .map(|p| String::from_utf8_lossy(p).into_owned())
                                .collect();
                        }
                        _ => {}
                    }
                }
            }
            Err(_) => return ClientHello::NotTls,
        }
    }
    ClientHello::Hello { sni, alpn }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS query for `name`/`qtype` as a resolver would send it.
    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    /// A synthetic ClientHello with SNI, ALPN and `pad` bytes of a padding
    /// extension (to simulate large post-quantum hellos).
    fn hello(sni: &str, alpn: &[&str], pad: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        // server_name
        let mut sn = vec![0u8];
        sn.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        sn.extend_from_slice(sni.as_bytes());
        let mut snl = (sn.len() as u16).to_be_bytes().to_vec();
        snl.extend(sn);
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&(snl.len() as u16).to_be_bytes());
        ext.extend(snl);
        // ALPN
        let mut al = Vec::new();
        for p in alpn {
            al.push(p.len() as u8);
            al.extend_from_slice(p.as_bytes());
        }
        let mut all = (al.len() as u16).to_be_bytes().to_vec();
        all.extend(al);
        ext.extend_from_slice(&16u16.to_be_bytes());
        ext.extend_from_slice(&(all.len() as u16).to_be_bytes());
        ext.extend(all);
        // padding (21)
        ext.extend_from_slice(&21u16.to_be_bytes());
        ext.extend_from_slice(&(pad as u16).to_be_bytes());
        ext.extend(std::iter::repeat(0u8).take(pad));

        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1u8];
        let l = body.len() as u32;
        hs.extend_from_slice(&l.to_be_bytes()[1..]);
        hs.extend(body);
        hs
    }

    /// Wraps handshake bytes into records of at most `frag` bytes.
    fn records(hs: &[u8], frag: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in hs.chunks(frag) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    /// Tiny deterministic PRNG for the fuzz-style loops.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn dns_udp_query() {
        let q = query(0x1234, "github.com", 28);
        let r = parse_dns_queries(&q, false).unwrap();
        assert_eq!(
            r,
            vec![DnsQuery {
                id: 0x1234,
                name: "github.com".into(),
                qtype: "AAAA".into()
            }]
        );
        assert_eq!(
            parse_dns_queries(&query(1, "x.y", 4242), false).unwrap()[0].qtype,
            "TYPE4242"
        );
    }

    #[test]
    fn dns_tcp_stream_several_messages() {
        let mut s = Vec::new();
        for (i, t) in [(1u16, 1u16), (2, 16)] {
            let q = query(i, "example.org", t);
            s.extend_from_slice(&(q.len() as u16).to_be_bytes());
            s.extend(q);
        }
        let r = parse_dns_queries(&s, true).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].qtype, "TXT");
        // truncated second message: only the first is returned
        let r = parse_dns_queries(&s[..s.len() - 3], true).unwrap();
        assert_eq!(r.len(), 1);
        // a bare datagram is not a stream
        assert!(parse_dns_queries(&query(1, "a.b", 1), true).is_none());
    }

    #[test]
    fn dns_compression_loops_and_forward_pointers_rejected() {
        let mut q = query(7, "a.b", 1);
        // Replace the name by a pointer to itself.
        q.truncate(12);
        q.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert!(parse_dns_queries(&q, false).is_none());
        // Two questions, the second pointing back to the first name.
        let mut q = query(8, "www.example.com", 1);
        q[5] = 2;
        q.extend_from_slice(&[0xC0, 12, 0, 28, 0, 1]);
        let r = parse_dns_queries(&q, false).unwrap();
        assert_eq!(r[1].name, "www.example.com");
        assert_eq!(r[1].qtype, "AAAA");
    }

    #[test]
    fn dns_answers() {
        let mut m = query(9, "ex.com", 1);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 2; // ancount
                  // CNAME ex.com -> www.ex.com (pointer), then A
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'w', b'w', b'w']);
        m.extend_from_slice(&[0xC0, 12]);
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 61, 0, 4, 10, 0, 0, 1]);
        let a = parse_dns_answers(&m, false).unwrap();
        assert_eq!(a[0].data, "www.ex.com");
        assert_eq!(a[1].data, "10.0.0.1");
        assert_eq!(a[1].ttl, 61);
        assert!(parse_dns_queries(&m, false).is_none());
    }

    #[test]
    fn client_hello_single_and_fragmented() {
        let hs = hello("sni.test.example", &["h2", "http/1.1"], 40);
        let want = ClientHello::Hello {
            sni: Some("sni.test.example".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
        };
        let one = records(&hs, 16384);
        assert_eq!(parse_client_hello(&one), want);
        // Post-quantum sized hello split across records of 500 bytes.
        let big = hello("pq.example", &[], 1500);
        let many = records(&big, 500);
        assert!(many.len() > 1500);
        match parse_client_hello(&many) {
            ClientHello::Hello { sni, .. } => assert_eq!(sni.as_deref(), Some("pq.example")),
            o => panic!("{o:?}"),
        }
        // Every strict prefix is incomplete.
        for cut in 0..many.len() {
            assert_eq!(
                parse_client_hello(&many[..cut]),
                ClientHello::Incomplete,
                "cut {cut}"
            );
        }
        // Trailing bytes after the hello are fine.
        let mut more = one.clone();
        more.extend_from_slice(b"garbage");
        assert_eq!(parse_client_hello(&more), want);
    }

    /// Offset just past the extension of type `typ` in record-wrapped
    /// `stream` made by [`records`] with one record (5-byte header).
    fn ext_end(hs: &[u8], typ: u16) -> usize {
        // handshake header 4, version 2, random 32, sid 1 (empty),
        // suites 2+4, compression 1+1, extensions length 2.
        let mut p = 4 + 2 + 32 + 1 + 6 + 2 + 2;
        loop {
            let t = u16::from_be_bytes([hs[p], hs[p + 1]]);
            let l = u16::from_be_bytes([hs[p + 2], hs[p + 3]]) as usize;
            p += 4 + l;
            if t == typ {
                return p;
            }
        }
    }

    #[test]
    fn hello_prefix_every_cut() {
        // SNI first, ALPN second, then 16 KB of padding: a post-quantum
        // sized hello split in records of 16384 bytes.
        let hs = hello("cut.example", &["h2", "http/1.1"], 16_000);
        let stream = records(&hs, 16384);
        assert!(stream.len() > 16_000);
        let sni_end = 5 + ext_end(&hs, 0);
        let alpn_end = 5 + ext_end(&hs, 16);
        for cut in 0..=stream.len() {
            let p = client_hello_prefix(&stream[..cut])
                .unwrap_or_else(|| panic!("cut {cut}: a prefix is not NotTls"));
            assert_eq!(
                p.sni.as_deref(),
                (cut >= sni_end).then_some("cut.example"),
                "cut {cut}"
            );
            assert_eq!(p.sni_seen, cut >= sni_end, "cut {cut}");
            assert_eq!(
                p.alpn,
                (cut >= alpn_end).then(|| vec!["h2".to_string(), "http/1.1".to_string()]),
                "cut {cut}"
            );
            // The second record's header (16389..16394) adds nothing.
            assert_eq!(p.complete, cut == stream.len(), "cut {cut}");
            assert!(!p.malformed);
        }
        // The whole hello agrees with tls-parser.
        let want = decode_with_tls_parser(&hs);
        assert_eq!(parse_client_hello(&stream), want);
    }

    #[test]
    fn hello_prefix_server_name_after_a_large_key_share() {
        // An extension of 9000 bytes before the server name: a capture of
        // 8 KiB cannot hold the name, and none is made up.
        let mut hs = hello("late.example", &["h2"], 0);
        let ext_start = 4 + 2 + 32 + 1 + 6 + 2 + 2;
        let mut ks = 51u16.to_be_bytes().to_vec();
        ks.extend_from_slice(&9000u16.to_be_bytes());
        ks.extend(std::iter::repeat_n(0x42, 9000));
        hs.splice(ext_start..ext_start, ks);
        let total = (hs.len() - 4) as u32;
        hs[1..4].copy_from_slice(&total.to_be_bytes()[1..]);
        let elen = (hs.len() - ext_start) as u16;
        hs[ext_start - 2..ext_start].copy_from_slice(&elen.to_be_bytes());
        let stream = records(&hs, 16384);
        let p = client_hello_prefix(&stream[..8192]).unwrap();
        assert_eq!(p.sni, None);
        assert!(!p.sni_seen && !p.complete);
        let p = client_hello_prefix(&stream).unwrap();
        assert_eq!(p.sni.as_deref(), Some("late.example"));
        assert_eq!(p.alpn, Some(vec!["h2".to_string()]));
        assert!(p.complete);
        assert_eq!(parse_client_hello(&stream), decode_with_tls_parser(&hs));
    }

    #[test]
    fn hello_prefix_keeps_the_name_before_garbage() {
        let hs = hello("kept.example", &["h2"], 10);
        let mut stream = records(&hs, 16384);
        // Break the ALPN extension's length (past the extensions): the
        // name read before stays.
        let at = 5 + ext_end(&hs, 0) + 2;
        stream[at] = 0xff;
        let p = client_hello_prefix(&stream).unwrap();
        assert_eq!(p.sni.as_deref(), Some("kept.example"));
        assert!(p.malformed && p.complete && p.alpn.is_none());
        // A bad ALPN list length inside a sound extension: flagged, the
        // names are kept.
        let mut s2 = records(&hs, 16384);
        s2[5 + ext_end(&hs, 0) + 4] = 0xff;
        let p = client_hello_prefix(&s2).unwrap();
        assert_eq!(p.sni.as_deref(), Some("kept.example"));
        assert_eq!(p.alpn, Some(vec!["h2".to_string()]));
        assert!(p.malformed && p.complete);
        // Garbage before any name: not TLS.
        let mut bad = records(&hs, 16384);
        bad[5 + 4 + 2 + 32] = 200; // session id length > 32
        assert_eq!(client_hello_prefix(&bad), None);
    }

    #[test]
    fn hello_prefix_agrees_with_tls_parser_on_mutations() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let seeds = [
            hello("a.example", &["h2", "http/1.1"], 30),
            hello("bb.example", &[], 300),
        ];
        for i in 0..20_000 {
            let mut hs = seeds[i % 2].clone();
            for _ in 0..(rng.next() % 4) {
                let p = (rng.next() as usize) % hs.len();
                hs[p] = rng.next() as u8;
            }
            let stream = records(&hs, 1 + (rng.next() as usize) % 400);
            let mine = client_hello_prefix(&stream);
            if let (Some(p), ClientHello::Hello { sni, alpn }) =
                (&mine, decode_with_tls_parser(&hs))
            {
                // What tls-parser finds, the prefix parser finds too
                // (tls-parser is laxer or stricter on some malformed
                // extensions: only this direction matters for evasion).
                if sni.is_some() {
                    assert_eq!(p.sni, sni, "{hs:02x?}");
                }
                if !alpn.is_empty() {
                    assert_eq!(p.alpn.clone().unwrap_or_default(), alpn, "{hs:02x?}");
                }
            }
            // Every prefix: never more than the whole, never a different name.
            let cut = (rng.next() as usize) % (stream.len() + 1);
            if let (Some(part), Some(whole)) = (client_hello_prefix(&stream[..cut]), &mine) {
                if part.sni_seen && !whole.malformed {
                    assert_eq!(part.sni, whole.sni);
                }
            }
        }
    }

    #[test]
    fn dns_tcp_start_strict() {
        let q = query(0x4242, "tcp-high.example", 1);
        let mut s = (q.len() as u16).to_be_bytes().to_vec();
        s.extend_from_slice(&q);
        assert_eq!(dns_tcp_start(&s), DnsStart::Yes);
        for cut in 0..s.len() {
            assert_eq!(dns_tcp_start(&s[..cut]), DnsStart::Incomplete, "cut {cut}");
        }
        // Pipelined data after the first query is fine.
        let mut two = s.clone();
        two.extend_from_slice(&s);
        assert_eq!(dns_tcp_start(&two), DnsStart::Yes);
        // With an EDNS OPT record (as glibc and dig send).
        let mut e = query(7, "edns.example", 28);
        e[11] = 1;
        e.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        let mut es = (e.len() as u16).to_be_bytes().to_vec();
        es.extend_from_slice(&e);
        assert_eq!(dns_tcp_start(&es), DnsStart::Yes);
        // Not DNS: TLS, HTTP, a response, a wrong length, two questions.
        assert_eq!(dns_tcp_start(&[0x16, 0x03, 0x01]), DnsStart::No);
        assert_eq!(dns_tcp_start(b"GET / HTTP/1.1\r\n"), DnsStart::No);
        assert_eq!(dns_tcp_start(b"SSH-2.0-OpenSSH"), DnsStart::No);
        let mut r = s.clone();
        r[4] |= 0x80;
        assert_eq!(dns_tcp_start(&r), DnsStart::No);
        let mut l = s.clone();
        l[1] += 1;
        l.push(0);
        assert_eq!(dns_tcp_start(&l), DnsStart::No);
        let mut q2 = s.clone();
        q2[7] = 2;
        assert_eq!(dns_tcp_start(&q2[..8]), DnsStart::No);
        assert_eq!(family_name(16), "AF_NETLINK");
        assert_eq!(family_name(40), "AF_VSOCK");
        assert_eq!(family_name(200), "AF_200");
    }

    #[test]
    fn client_hello_not_tls() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n"),
            ClientHello::NotTls
        );
        assert_eq!(parse_client_hello(&[0x16, 0x01]), ClientHello::NotTls);
        // server hello (type 2) is not a client hello
        let mut hs = hello("x", &[], 0);
        hs[0] = 2;
        assert_eq!(
            parse_client_hello(&records(&hs, 16384)),
            ClientHello::NotTls
        );
        assert_eq!(parse_client_hello(&[]), ClientHello::Incomplete);
    }

    #[test]
    fn never_panics_on_random_or_mutated_input() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seeds: Vec<Vec<u8>> = vec![
            records(&hello("a.example", &["h2"], 10), 16384),
            records(&hello("b.example", &["x"], 900), 300),
            query(1, "www.example.com", 1),
        ];
        for i in 0..20_000 {
            let mut buf = if i % 2 == 0 {
                let n = (rng.next() % 600) as usize;
                rng.bytes(n)
            } else {
                seeds[i % seeds.len()].clone()
            };
            if !buf.is_empty() {
                for _ in 0..(rng.next() % 8) {
                    let p = (rng.next() as usize) % buf.len();
                    buf[p] = rng.next() as u8;
                }
                let cut = (rng.next() as usize) % (buf.len() + 1);
                buf.truncate(cut);
            }
            if i % 3 == 0 && !buf.is_empty() {
                buf[0] = 0x16;
            }
            let _ = parse_client_hello(&buf);
            let _ = client_hello_prefix(&buf);
            let _ = dns_tcp_start(&buf);
            let _ = parse_dns_queries(&buf, i % 2 == 0);
            let _ = parse_dns_answers(&buf, i % 2 == 1);
        }
    }
}
