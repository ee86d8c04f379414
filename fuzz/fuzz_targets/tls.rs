//! TLS ClientHellos as a traced job can write them: SNI/ALPN extraction over
//! the whole input, the same answer whatever write boundaries the bytes
//! arrive in (the recorder and the ptrace backend call again while the
//! answer is `Incomplete`), the prefix parser on every cut (a server name
//! found in a prefix is the whole hello's), and the recorder's reassembly,
//! direct and behind an HTTP `CONNECT` proxy request. Nothing here may
//! panic.
#![no_main]

use std::time::SystemTime;

use cilock_trace::TraceEvent;
use cilock_trace::proto::tls::{client_hello_prefix, parse_client_hello, ClientHello};
use cilock_trace::fold::hash::{Hashed, Hasher, Identity};
use cilock_trace::fold::Recorder;
use cilock_evidence::digest::HashAlg;
use libfuzzer_sys::fuzz_target;

/// Hashes nothing: these inputs open no files.
struct NoFiles;

impl Hasher for NoFiles {
    fn hash_all(
        &self,
        jobs: &[(&str, Vec<Identity>)],
        _: &[HashAlg],
        _: u64,
        _: std::time::Duration,
    ) -> Vec<Hashed> {
        jobs.iter().map(|_| Hashed::Unreadable).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let whole = parse_client_hello(bytes);
    let whole_prefix = client_hello_prefix(bytes);
    assert_eq!(whole_prefix.is_none(), whole == ClientHello::NotTls);
    // A decided prefix decides the whole stream the same way.
    let step = step as usize + 1;
    let mut end = 0;
    while end < bytes.len() {
        end = (end + step).min(bytes.len());
        let r = parse_client_hello(&bytes[..end]);
        if let (Some(part), Some(w)) = (client_hello_prefix(&bytes[..end]), &whole_prefix) {
            // What a prefix found, the whole hello says too.
            if part.sni_seen {
                assert_eq!(part.sni, w.sni, "prefix of {end} bytes names another server");
            }
            if part.alpn.is_some() {
                assert_eq!(part.alpn, w.alpn, "prefix of {end} bytes: another ALPN");
            }
            assert!(!part.complete || part == *w, "a complete prefix differs");
        }
        if r != ClientHello::Incomplete {
            assert_eq!(r, whole, "prefix of {end} bytes decides differently");
            break;
        }
    }
    let time = SystemTime::UNIX_EPOCH;
    let mut r = Recorder::new(None);
    let mut proxied = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec();
    proxied.extend_from_slice(bytes);
    for (fd, port, stream) in [(3, 443, &bytes[..]), (4, 3128, &proxied[..])] {
        let dst = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        r.push(TraceEvent::Net {
            pid: 4242,
            call: cilock_trace::NetCall::Connect,
            fd,
            addr: cilock_trace::SockAddr::Ip(dst),
            time,
        });
        for part in stream.chunks(step) {
            r.push(TraceEvent::Egress {
                pid: 4242,
                fd,
                dst: Some(dst),
                stream: true,
                bytes: part.to_vec(),
                time,
            });
        }
    }
    let _ = r.finish(&NoFiles, &[HashAlg::Sha256], &[]);
});
