//! Tests of the DNS and TLS parsers on crafted, fragmented and random input.

use super::dns::*;
use super::tls::*;
use crate::event::family_name;

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
    ext.extend(std::iter::repeat_n(0u8, pad));

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
        if let (Some(p), ClientHello::Hello { sni, alpn }) = (&mine, decode_with_tls_parser(&hs)) {
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
