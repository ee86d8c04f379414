//! DNS as a traced job can send it and its resolver can answer: the
//! parsers over UDP datagrams and TCP streams (2-byte length prefixes), then
//! the recorder's reassembly of a TCP stream split at a fuzzer-chosen point
//! and the matching of an answer to its query. Nothing here may panic.
#![no_main]

use std::time::SystemTime;

use cilock_trace::TraceEvent;
use cilock_trace::proto::dns::{parse_dns_answers, parse_dns_queries};
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
    // The first byte picks where the TCP stream is split; the rest is the
    // message (or the stream of length-prefixed messages).
    let Some((&split, msg)) = data.split_first() else {
        return;
    };
    for stream in [false, true] {
        if let Some(qs) = parse_dns_queries(msg, stream) {
            for q in qs {
                // 255 wire octets at most, each octet at most 4 characters
                // once escaped.
                assert!(q.name.len() <= 4 * 255, "name too long");
            }
        }
        let _ = parse_dns_answers(msg, stream);
    }
    if msg.len() < 3 {
        return;
    }
    // The same message as a query (QR clear) and as its answer (QR set).
    let mut query = msg.to_vec();
    let mut answer = msg.to_vec();
    query[2] &= 0x7f;
    answer[2] |= 0x80;
    let time = SystemTime::UNIX_EPOCH;
    let server = "127.0.0.53:53".parse().expect("address");
    let mut r = Recorder::new(None);
    r.push(TraceEvent::Egress {
        pid: 4242,
        fd: 3,
        dst: Some(server),
        stream: false,
        bytes: query.clone(),
        time,
    });
    // TCP: the length prefix, then the message in two writes.
    let mut tcp = (query.len().min(u16::MAX as usize) as u16)
        .to_be_bytes()
        .to_vec();
    tcp.extend_from_slice(&query);
    let split = (split as usize).min(tcp.len());
    for part in [&tcp[..split], &tcp[split..], msg] {
        r.push(TraceEvent::Egress {
            pid: 4242,
            fd: 4,
            dst: Some(server),
            stream: true,
            bytes: part.to_vec(),
            time,
        });
    }
    r.push(TraceEvent::Ingress {
        pid: 4242,
        src: server,
        stream: false,
        bytes: answer.to_vec(),
        time,
    });
    r.push(TraceEvent::Ingress {
        pid: 4242,
        src: server,
        stream: false,
        bytes: msg.to_vec(),
        time,
    });
    let _ = r.finish(&NoFiles, &[HashAlg::Sha256], &[]);
});
