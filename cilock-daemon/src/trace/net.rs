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
pub fn parse_client_hello(bytes: &[u8]) -> ClientHello {
    // Gather handshake-record fragments until the first handshake message
    // is complete.
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.is_empty() {
            return ClientHello::Incomplete;
        }
        if rest[0] != 0x16 {
            return ClientHello::NotTls;
        }
        if rest.len() >= 2 && rest[1] != 0x03 {
            return ClientHello::NotTls;
        }
        if rest.len() < 5 {
            return ClientHello::Incomplete;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        // RFC 8446 5.1: at most 2^14 bytes; zero-length handshake fragments
        // are not allowed.
        if len == 0 || len > 16384 + 2048 {
            return ClientHello::NotTls;
        }
        let avail = &rest[5..];
        let take = len.min(avail.len());
        hs.extend_from_slice(&avail[..take]);
        if hs.len() > MAX_CLIENT_HELLO + 4 {
            return ClientHello::NotTls;
        }
        if !hs.is_empty() && hs[0] != 0x01 {
            return ClientHello::NotTls;
        }
        if hs.len() >= 4 {
            let mlen = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
            if mlen > MAX_CLIENT_HELLO || mlen < 38 {
                return ClientHello::NotTls;
            }
            if hs.len() >= 4 + mlen {
                return decode_hello(&hs[..4 + mlen]);
            }
        }
        if take < len {
            return ClientHello::Incomplete;
        }
        rest = &avail[len..];
    }
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
            let _ = parse_dns_queries(&buf, i % 2 == 0);
            let _ = parse_dns_answers(&buf, i % 2 == 1);
        }
    }
}
