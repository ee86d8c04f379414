//! Framing, limits, timeouts, error replies and lifecycle of the daemon's
//! socket server, run with the in-test stand-in service (no engine).

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::server_support::*;
use cilock_api::client::{self, Client, ClientError};
use cilock_api::{BeginStep, EndStep, ErrorKind, Reply, Request, MAX_MESSAGE};
use cilock_daemon::server::{Server, ServerConfig, ServerError};

/// The server runs as root in these tests; the group does not matter.
const GROUP: &str = "cilock-test-no-such-group";

/// Not a test: the client side run by `run_as` (unused here, but each test
/// binary must provide it for the shared helpers).
fn expect_error(reply: Option<Reply>, kind: ErrorKind, needle: &str) {
    match reply {
        Some(Reply::Error(e)) => {
            assert_eq!(e.kind, kind, "{e}");
            assert!(
                e.message.contains(needle),
                "message {:?} lacks {needle:?}",
                e.message
            );
        }
        other => panic!("expected a {kind:?} error, got {other:?}"),
    }
}

fn begin(step: &str) -> Request {
    Request::BeginStep(BeginStep {
        step: step.into(),
        pid: std::process::id(),
        attestations: vec![],
        workdir: None,
        cmd: vec![],
        options: None,
    })
}

fn end(step: &str) -> Request {
    Request::EndStep(EndStep {
        step: step.into(),
        owner_uid: None,
        kill: false,
        exitcode: Some(0),
        stdout: None,
        stderr: None,
        run: false,
        wait_descendants_ms: None,
        stream: false,
        ..Default::default()
    })
}

#[test]
fn begin_and_end_carry_the_peer() {
    let srv = TestServer::start(GROUP, |_| {});
    let r = client::request_at(&srv.path, &begin("build")).unwrap();
    assert_eq!(
        r,
        Reply::Begun {
            cgroup: "/stand-in/build".into()
        }
    );
    // A second begin of the same step is the service's Conflict, passed on.
    match client::request_at(&srv.path, &begin("build")) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::Conflict),
        other => panic!("expected Conflict, got {other:?}"),
    }
    match client::request_at(&srv.path, &Request::Status).unwrap() {
        Reply::Status(s) => assert_eq!(s.steps, vec!["build".to_string()]),
        other => panic!("{other:?}"),
    }
    match client::request_at(&srv.path, &end("build")).unwrap() {
        Reply::Ended { envelope, .. } => {
            // SO_PEERCRED identified this process.
            assert_eq!(envelope["began_by"]["pid"], std::process::id());
            assert_eq!(envelope["ended_by"]["uid"], unsafe { libc::getuid() });
        }
        other => panic!("{other:?}"),
    }
    match client::request_at(&srv.path, &end("build")) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn several_requests_on_one_connection() {
    let srv = TestServer::start(GROUP, |_| {});
    let mut s = connect(&srv.path);
    for _ in 0..3 {
        write_frame(&mut s, br#"{"request":"status"}"#);
        assert!(matches!(read_reply(&mut s), Some(Reply::Status(_))));
    }
}

#[test]
fn malformed_json_is_a_bad_request_and_the_connection_survives() {
    let srv = TestServer::start(GROUP, |_| {});
    let mut s = connect(&srv.path);
    write_frame(&mut s, b"{not json");
    expect_error(read_reply(&mut s), ErrorKind::BadRequest, "invalid request");
    write_frame(&mut s, b"\xff\xfe\x00");
    expect_error(read_reply(&mut s), ErrorKind::BadRequest, "invalid request");
    // Valid JSON of the wrong shape.
    write_frame(&mut s, br#"{"request":"begin-step","step":7}"#);
    expect_error(read_reply(&mut s), ErrorKind::BadRequest, "invalid request");
    // An empty frame.
    write_frame(&mut s, b"");
    expect_error(read_reply(&mut s), ErrorKind::BadRequest, "invalid request");
    // The same connection still works.
    write_frame(&mut s, br#"{"request":"status"}"#);
    assert!(matches!(read_reply(&mut s), Some(Reply::Status(_))));
}

#[test]
fn unknown_request_tag_is_a_bad_request() {
    let srv = TestServer::start(GROUP, |_| {});
    let mut s = connect(&srv.path);
    write_frame(&mut s, br#"{"request":"format-disk"}"#);
    expect_error(read_reply(&mut s), ErrorKind::BadRequest, "format-disk");
    write_frame(&mut s, br#"{"no-tag":true}"#);
    expect_error(read_reply(&mut s), ErrorKind::BadRequest, "invalid request");
    write_frame(&mut s, br#"{"request":"status"}"#);
    assert!(matches!(read_reply(&mut s), Some(Reply::Status(_))));
}

#[test]
fn oversized_length_prefix_is_refused_without_reading_the_body() {
    let srv = TestServer::start(GROUP, |_| {});
    let mut s = connect(&srv.path);
    // Over the protocol limit: refused from the header alone.
    s.write_all(&((MAX_MESSAGE as u32) + 1).to_be_bytes())
        .unwrap();
    expect_error(
        read_reply(&mut s),
        ErrorKind::BadRequest,
        "exceeds the limit",
    );
    assert_closed(&mut s);
    status_ok(&srv.path);

    let mut s = connect(&srv.path);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    expect_error(
        read_reply(&mut s),
        ErrorKind::BadRequest,
        "exceeds the limit",
    );
    assert_closed(&mut s);
    status_ok(&srv.path);
}

#[test]
fn configured_smaller_limit_applies() {
    let srv = TestServer::start(GROUP, |c| c.max_message = 64);
    let mut s = connect(&srv.path);
    let big = format!(
        r#"{{"request":"begin-step","step":"{}","pid":1}}"#,
        "x".repeat(100)
    );
    write_frame(&mut s, big.as_bytes());
    expect_error(
        read_reply(&mut s),
        ErrorKind::BadRequest,
        "limit of 64 bytes",
    );
    assert_closed(&mut s);
    // The crate's client gets the refusal as a daemon error.
    match client::request_at(&srv.path, &begin(&"y".repeat(200))) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::BadRequest),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    status_ok(&srv.path);
}

#[test]
fn silent_peer_times_out_and_does_not_block_others() {
    let srv = TestServer::start(GROUP, |c| c.read_timeout = Duration::from_millis(400));
    let mut silent = connect(&srv.path);
    // Others are served while the silent peer waits.
    let t = Instant::now();
    status_ok(&srv.path);
    assert!(t.elapsed() < Duration::from_millis(400));
    expect_error(
        read_reply(&mut silent),
        ErrorKind::BadRequest,
        "no complete request",
    );
    assert_closed(&mut silent);
    status_ok(&srv.path);
}

#[test]
fn slow_peer_mid_frame_times_out() {
    let srv = TestServer::start(GROUP, |c| c.read_timeout = Duration::from_millis(400));
    let mut slow = connect(&srv.path);
    slow.write_all(&100u32.to_be_bytes()).unwrap();
    slow.write_all(b"{\"request\"").unwrap();
    expect_error(
        read_reply(&mut slow),
        ErrorKind::BadRequest,
        "no complete request",
    );
    assert_closed(&mut slow);
    status_ok(&srv.path);
}

#[test]
fn half_frame_then_hang_up() {
    let srv = TestServer::start(GROUP, |_| {});
    {
        let mut s = connect(&srv.path);
        s.write_all(&100u32.to_be_bytes()).unwrap();
        s.write_all(b"{\"request\":").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_closed(&mut s);
    }
    {
        // Half a header.
        let mut s = connect(&srv.path);
        s.write_all(&[0, 0]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_closed(&mut s);
    }
    {
        // Hang up without reading the reply.
        let mut s = connect(&srv.path);
        write_frame(&mut s, br#"{"request":"status"}"#);
        drop(s);
    }
    {
        // Connect and close at once.
        drop(connect(&srv.path));
    }
    status_ok(&srv.path);
}

#[test]
fn slow_service_call_does_not_block_other_peers() {
    let srv = TestServer::start(GROUP, |_| {});
    let path = srv.path.clone();
    let slow = std::thread::spawn(move || client::request_at(&path, &begin("slow")));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    status_ok(&srv.path);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "status waited for the slow call: {:?}",
        t.elapsed()
    );
    assert!(matches!(slow.join().unwrap(), Ok(Reply::Begun { .. })));
}

#[test]
fn service_panic_is_an_internal_error_and_serving_continues() {
    let srv = TestServer::start(GROUP, |_| {});
    match client::request_at(&srv.path, &begin("panic")) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::Internal),
        other => panic!("expected Internal, got {other:?}"),
    }
    status_ok(&srv.path);
}

#[test]
fn many_concurrent_clients() {
    let srv = TestServer::start(GROUP, |c| c.max_connections = 4);
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let path = srv.path.clone();
            std::thread::spawn(move || {
                let step = format!("s{i}");
                // Over the connection limit a client is refused (too-many)
                // at once, never queued: it retries.
                let retry = |req: &Request| loop {
                    match client::request_at(&path, req) {
                        Err(ClientError::Daemon(e)) if e.kind == ErrorKind::TooMany => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        r => break r.unwrap(),
                    }
                };
                retry(&begin(&step));
                retry(&end(&step));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    match client::request_at(&srv.path, &Request::Status).unwrap() {
        Reply::Status(s) => assert!(s.steps.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_reports_unavailable_without_a_daemon() {
    let (_dir, path) = temp_socket_dir();
    match client::request_at(&path, &Request::Status) {
        Err(e @ ClientError::Unavailable { .. }) => assert!(e.is_unavailable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // A stale socket file (nothing listening) is also "not running".
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    match client::request_at(&path, &Request::Status) {
        Err(ClientError::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn client_times_out_on_a_mute_daemon() {
    let (_dir, path) = temp_socket_dir();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _listener = UnixListener::bind(&path).unwrap(); // never accepts
    let mut c = Client::new(&path);
    c.reply_timeout = Some(Duration::from_millis(200));
    match c.request(&Request::Status) {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[test]
fn bind_removes_a_stale_socket_but_not_a_live_one_or_a_file() {
    let (_dir, path) = temp_socket_dir();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&path).unwrap());
    // Stale: replaced.
    let server = Server::bind(ServerConfig::new(&path, GROUP)).unwrap();
    // Live: refused, and the live socket is left in place.
    match Server::bind(ServerConfig::new(&path, GROUP)) {
        Err(ServerError::InUse { .. }) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(path.exists());
    drop(server);
    assert!(
        !path.exists(),
        "dropping an unserved Server removes its socket"
    );

    std::fs::write(&path, b"not a socket").unwrap();
    match Server::bind(ServerConfig::new(&path, GROUP)) {
        Err(ServerError::NotASocket { .. }) => {}
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[test]
fn shutdown_removes_the_socket_and_waits_for_requests_in_flight() {
    let srv = TestServer::start(GROUP, |_| {});
    let path = srv.path.clone();
    let p = path.clone();
    let slow = std::thread::spawn(move || client::request_at(&p, &begin("slow")));
    std::thread::sleep(Duration::from_millis(300));
    srv.stop().unwrap();
    assert!(!path.exists(), "socket file removed");
    // The request in flight was completed before the server stopped.
    assert!(matches!(slow.join().unwrap(), Ok(Reply::Begun { .. })));
    match client::request_at(&path, &Request::Status) {
        Err(ClientError::Unavailable { .. }) => {}
        other => panic!("expected Unavailable after shutdown, got {other:?}"),
    }
}

#[test]
fn socket_env_selects_the_socket() {
    // socket_path() honours CILOCK_SOCKET (set only in this test's process
    // via a child to avoid racing other tests on the environment).
    let (_dir, path) = temp_socket_dir();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "server_framing::socket_env_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CILOCK_SOCKET", &path)
        .env("CILOCK_TEST_EXPECT_SOCKET", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn socket_env_child() {
    let Some(expect) = std::env::var_os("CILOCK_TEST_EXPECT_SOCKET") else {
        return;
    };
    assert_eq!(cilock_api::socket_path(), std::path::PathBuf::from(&expect));
    // The default client uses it: no daemon there, so Unavailable names it.
    match client::request(&Request::Status) {
        Err(ClientError::Unavailable { path, .. }) => assert_eq!(path, expect),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
