//! Connection limits of the daemon's socket server, with real users: one
//! uid's connections never lock root or another uid out; a client that
//! hangs up while its request runs releases its slot at once and the
//! service is told. Run as root (setpriv, groupadd); the service is the
//! in-test stand-in.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server_support::*;
use cilock_api::client::Client;
use cilock_api::{ErrorKind, Reply, Request};
use cilock_testkit::users::Group;

const HOLD_ENV: &str = "CILOCK_TEST_HOLD_SOCKET";
const HOLD_N_ENV: &str = "CILOCK_TEST_HOLD_N";

/// Not a test: when `HOLD_ENV` is set, opens `HOLD_N_ENV` connections,
/// reports how many were refused with `too-many`, and holds the others
/// open until stdin closes.
#[test]
fn peer_hold_helper() {
    let Some(path) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let n: usize = std::env::var(HOLD_N_ENV).unwrap().parse().unwrap();
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(UnixStream::connect(&path).expect("connect"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (mut open, mut too_many, mut other) = (0, 0, 0);
    for c in &mut conns {
        c.set_nonblocking(true).unwrap();
        let mut hdr = [0u8; 4];
        match c.read(&mut hdr) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
            Ok(4) => {
                c.set_nonblocking(false).unwrap();
                let mut body = vec![0u8; u32::from_be_bytes(hdr) as usize];
                c.read_exact(&mut body).unwrap();
                match serde_json::from_slice::<Reply>(&body) {
                    Ok(Reply::Error(e)) if e.kind == ErrorKind::TooMany => too_many += 1,
                    _ => other += 1,
                }
            }
            _ => other += 1,
        }
    }
    println!("HELD open={open} too_many={too_many} other={other}");
    std::io::stdout().flush().unwrap();
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}

#[test]
fn one_users_connections_never_lock_out_root_or_another_user() {
    cilock_testkit::users::require_root();
    let g = Group::create_system("clklim");
    let srv = TestServer::start(&g.name, |c| {
        c.read_timeout = Duration::from_secs(60);
        c.max_connections = 40;
        c.root_reserve = 8;
        c.max_connections_per_user = 16;
    });
    let regid = format!("--regid={}", g.gid);
    let groups = format!("--groups={}", g.gid);
    // uid 65534 opens 200 connections and holds the ones it gets.
    let mut holder = Command::new("setpriv")
        .args(["--reuid=65534", &regid, &groups, "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "server_limits::peer_hold_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, &srv.path)
        .env(HOLD_N_ENV, "200")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let report = loop {
        let l = lines.next().expect("holder report").unwrap();
        if let Some((_, r)) = l.split_once("HELD ") {
            break r.to_string();
        }
    };
    eprintln!("holder: {report}");
    assert_eq!(report, "open=16 too_many=184 other=0", "{report}");
    // While they are held: root and another user are served.
    status_ok(&srv.path);
    match run_as(&["--reuid=65533", &regid, &groups], &srv.path) {
        PeerOutcome::Ok(Reply::Status(_)) => {}
        other => panic!("another user was not served: {other:?}"),
    }
    // A second uid fills the rest of the non-root share: root still has its
    // reserve, so it is served; a third uid is refused with too-many.
    let mut second = Command::new("setpriv")
        .args(["--reuid=65532", &regid, &groups, "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "server_limits::peer_hold_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, &srv.path)
        .env(HOLD_N_ENV, "16")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines2 = BufReader::new(second.stdout.take().unwrap()).lines();
    let report2 = loop {
        let l = lines2.next().expect("second report").unwrap();
        if let Some((_, r)) = l.split_once("HELD ") {
            break r.to_string();
        }
    };
    eprintln!("second: {report2}");
    // 40 - 8 reserved = 32 for users: 16 + 16.
    assert_eq!(report2, "open=16 too_many=0 other=0", "{report2}");
    match run_as(&["--reuid=65531", &regid, &groups], &srv.path) {
        PeerOutcome::Daemon(e) => assert_eq!(e.kind, ErrorKind::TooMany, "{e}"),
        other => panic!("expected too-many for a third user, got {other:?}"),
    }
    for _ in 0..5 {
        status_ok(&srv.path);
    }
    // When the holder lets go, its slots come back.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match run_as(&["--reuid=65531", &regid, &groups], &srv.path) {
            PeerOutcome::Ok(Reply::Status(_)) => break,
            other => assert!(Instant::now() < deadline, "slots not released: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(second.stdin.take());
    second.wait().unwrap();
}

#[test]
fn a_client_that_hangs_up_releases_its_slot_and_its_request_is_cancelled() {
    cilock_testkit::users::require_root();
    // One connection in all: the stuck request's slot must come back when
    // its client goes, though the call itself keeps running for 20 s.
    let srv = TestServer::start("cilock-test-no-such-group", |c| {
        c.max_connections = 1;
        c.root_reserve = 0;
    });
    let body = br#"{"request":"begin-step","step":"stuck","pid":1}"#;
    let mut s = connect(&srv.path);
    write_frame(&mut s, body);
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let c = Client {
        reply_timeout: Some(Duration::from_secs(15)),
        ..Client::new(&srv.path)
    };
    let t = Instant::now();
    let mut served = false;
    while t.elapsed() < Duration::from_secs(15) {
        match c.request(&Request::Status) {
            Ok(Reply::Status(_)) => {
                served = true;
                break;
            }
            Ok(other) => panic!("{other:?}"),
            // Refused (too-many) until the hang-up is noticed.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert!(served, "the slot of the departed client was not released");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "released only when the stuck call ended"
    );

    // The service is told its client is gone (a server with room to spare:
    // a slot is given back only once the server sees its client's EOF).
    drop(srv);
    let srv = TestServer::start("cilock-test-no-such-group", |_| {});
    let mut s = connect(&srv.path);
    write_frame(
        &mut s,
        br#"{"request":"begin-step","step":"hang1","pid":1}"#,
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = srv.service.gone_seen.lock().unwrap().clone();
        if !seen.is_empty() {
            assert_eq!(seen, vec![("hang1".to_string(), true)]);
            break;
        }
        assert!(Instant::now() < deadline, "the service was not told");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A pipelined second request is not mistaken for a hang-up.
    let mut s = connect(&srv.path);
    let mut two = Vec::new();
    for b in [
        &br#"{"request":"begin-step","step":"slow","pid":1}"#[..],
        br#"{"request":"status"}"#,
    ] {
        two.extend_from_slice(&(b.len() as u32).to_be_bytes());
        two.extend_from_slice(b);
    }
    s.write_all(&two).unwrap();
    match read_reply(&mut s) {
        Some(Reply::Begun { cgroup }) => assert_eq!(cgroup, "/stand-in/slow"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(read_reply(&mut s), Some(Reply::Status(_))));
}
