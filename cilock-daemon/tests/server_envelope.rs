//! Envelopes larger than one socket frame ([`MAX_MESSAGE`]) go through the
//! real server and client whole: a `Reply::Envelope` header, then the raw
//! bytes, read from a file in chunks.

use std::io::Read as _;

use crate::server_support::*;
use cilock_api::client::Client;
use cilock_api::{FetchKept, Reply, Request, MAX_MESSAGE};

#[test]
fn an_envelope_larger_than_a_frame_arrives_whole() {
    let srv = TestServer::start("root", |_| {});
    let n = MAX_MESSAGE as u64 + (1 << 20) + 3;
    let got = Client::new(&srv.path)
        .fetch(FetchKept {
            step: Some(format!("big-{n}")),
            ..Default::default()
        })
        .expect("fetch");
    assert_eq!(got.header.bytes, n);
    assert_eq!(got.bytes.len() as u64, n);
    for (at, mark) in big_marks(n) {
        let at = at as usize;
        assert_eq!(&got.bytes[at..at + mark.len()], mark, "mark at {at}");
    }
    // Zeros elsewhere (the sparse file), at chunk boundaries too.
    for at in [
        6usize,
        1 << 20,
        (1 << 20) - 1,
        (n / 2) as usize - 1,
        n as usize - 5,
    ] {
        assert_eq!(got.bytes[at], 0, "byte {at}");
    }
    assert_eq!(got.header.id.as_deref(), Some("big.1.0"));
    status_ok(&srv.path);
}

#[test]
fn a_client_leaving_inside_an_envelope_does_not_hurt_the_server() {
    let srv = TestServer::start("root", |_| {});
    let mut s = connect(&srv.path);
    let req = Request::FetchKept(FetchKept {
        step: Some(format!("big-{}", 64 << 20)),
        ..Default::default()
    });
    write_frame(&mut s, &serde_json::to_vec(&req).unwrap());
    match read_reply(&mut s) {
        Some(Reply::Envelope(h)) => assert_eq!(h.bytes, 64 << 20),
        other => panic!("expected an envelope header, got {other:?}"),
    }
    let mut some = vec![0u8; 1 << 20];
    s.read_exact(&mut some).unwrap();
    assert_eq!(&some[..6], b"{start");
    drop(s);
    status_ok(&srv.path);
    srv.stop().expect("server stops");
}
