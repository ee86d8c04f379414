//! The proxy end to end against a fake engine (a hyper server on a Unix
//! socket that answers like dockerd 20.10 and keeps what it received) and
//! a test [`StepDirectory`]: what the engine receives, what the client
//! gets, what is recorded.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

use super::*;

const ID: &str = "9c0c06a4aa5e7d1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293";
const STEP_CG: &str = "/cilock.steps/u0.s.1";

#[derive(Default)]
struct TestDir {
    in_step: AtomicBool,
    slice: Mutex<Option<String>>,
    containers: Mutex<Vec<Container>>,
    builds: Mutex<Vec<ContainerBuild>>,
    attributed: Mutex<Vec<PathBuf>>,
}

impl StepDirectory for TestDir {
    fn step_of(&self, pid: u32) -> Option<StepRef> {
        (self.in_step.load(Ordering::SeqCst) && pid == std::process::id()).then(|| StepRef {
            owner_uid: 0,
            name: "s".into(),
            cgroup: STEP_CG.into(),
            slice: self.slice.lock().unwrap().clone(),
        })
    }
    fn record_container(&self, _: &StepRef, c: Container) {
        self.containers.lock().unwrap().push(c);
    }
    fn record_build(&self, _: &StepRef, b: ContainerBuild) {
        self.builds.lock().unwrap().push(b);
    }
    fn attribute_cgroup(&self, _: &StepRef, cgroup: &Path) -> Result<Box<dyn Send>, String> {
        self.attributed.lock().unwrap().push(cgroup.to_path_buf());
        Ok(Box::new(()))
    }
    fn inside_steps(&self, p: &str) -> bool {
        p.trim_start_matches('/').starts_with("cilock.steps")
    }
}

/// What the fake engine received: method, path and query, body.
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn fake_engine(sock: PathBuf, driver: &'static str, seen: Seen) {
    let listener = UnixListener::bind(&sock).unwrap();
    loop {
        let (s, _) = listener.accept().await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| engine_answer(req, driver, seen.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn engine_answer(
    mut req: Request<Incoming>,
    driver: &'static str,
    seen: Seen,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let pq = req.uri().path_and_query().unwrap().to_string();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let json = |s: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = s;
        Ok(r)
    };
    if path.ends_with("/attach") {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(up.await.unwrap());
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            io.write_all(&got).await.unwrap();
            io.write_all(b"bye").await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "Upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "tcp".parse().unwrap());
        return Ok(r);
    }
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    let parent = seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, p, _)| p.contains("/containers/create"))
        .and_then(|(_, _, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["HostConfig"]["CgroupParent"].as_str().map(str::to_string))
        .unwrap_or_default();
    seen.lock()
        .unwrap()
        .push((method.clone(), pq, body.clone()));
    match (method.as_str(), path.as_str()) {
        ("GET", "/info") => json(StatusCode::OK, serde_json::json!({"CgroupDriver": driver})),
        ("POST", p) if p.ends_with("/containers/create") => {
            json(StatusCode::CREATED, serde_json::json!({"Id": ID, "Warnings": []}))
        }
        ("GET", p) if p == format!("/containers/{ID}/json") => json(
            StatusCode::OK,
            serde_json::json!({"Id": ID, "Path": "cat", "Args": ["/f"], "Image": "sha256:ab12",
                "HostConfig": {"CgroupParent": parent},
                "Mounts": [{"Type": "bind", "Source": "/h", "Destination": "/c", "RW": false}]}),
        ),
        ("GET", "/images/sha256:ab12/json") => {
            json(StatusCode::OK, serde_json::json!({"RepoDigests": ["bb@sha256:cd"]}))
        }
        ("POST", p) if p.ends_with("/build") => Ok(Response::new(Full::new(Bytes::from_static(
            b"{\"stream\":\" ---\\u003e Running in 64ec2752e53b\\n\"}\r\n{\"aux\":{\"ID\":\"sha256:9a5c\"}}\r\n",
        )))),
        _ => json(StatusCode::OK, serde_json::json!({"bytes": body.len()})),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    proxy: PathBuf,
    dir: Arc<TestDir>,
    seen: Seen,
    _proxy: Proxy,
}

async fn setup(driver: &'static str, engine_up: bool) -> Setup {
    setup_with_slots(driver, engine_up, MAX_CONNECTIONS).await
}

async fn setup_with_slots(driver: &'static str, engine_up: bool, slots: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("engine.sock");
    let seen: Seen = Arc::default();
    if engine_up {
        tokio::spawn(fake_engine(engine.clone(), driver, seen.clone()));
        while !engine.exists() {
            tokio::task::yield_now().await;
        }
    }
    let proxy = tmp.path().join("proxy.sock");
    let dir = Arc::new(TestDir::default());
    let p = Proxy::start_with_slots(
        ProxyConfig {
            socket: proxy.clone(),
            engine,
            buildkit_cgroup: "docker/buildkit".into(),
            group: "no-such-group-cilock-test".into(),
        },
        dir.clone(),
        slots,
    )
    .unwrap();
    Setup {
        _dir: tmp,
        proxy,
        dir,
        seen,
        _proxy: p,
    }
}

/// One request on a new connection: status and body.
async fn call(sock: &Path, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let s = UnixStream::connect(sock).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "docker")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    let status = r.status();
    let b = r.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, b)
}

fn message(b: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(b).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_create_is_placed_in_the_step_and_recorded() {
    let t = setup("cgroupfs", true).await;
    t.dir.in_step.store(true, Ordering::SeqCst);
    let body =
        br#"{"Image":"bb:local","Cmd":["cat","/f"],"HostConfig":{"CgroupParent":"/elsewhere"}}"#;
    let (st, b) = call(
        &t.proxy,
        "POST",
        "/v1.41/containers/create?name=x",
        body.to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["Id"],
        ID
    );
    let seen = t.seen.lock().unwrap().clone();
    let (_, pq, sent) = seen.iter().find(|(_, p, _)| p.contains("create")).unwrap();
    assert_eq!(pq, "/v1.41/containers/create?name=x");
    let sent: serde_json::Value = serde_json::from_slice(sent).unwrap();
    assert_eq!(sent["HostConfig"]["CgroupParent"], STEP_CG);
    assert_eq!(sent["Cmd"][1], "/f");
    let c = t.dir.containers.lock().unwrap().clone();
    assert_eq!(
        c,
        vec![Container {
            id: ID.into(),
            engine: "docker".into(),
            image_ref: "bb:local".into(),
            image_id: "sha256:ab12".into(),
            image_digests: vec!["bb@sha256:cd".into()],
            cmd: vec!["cat".into(), "/f".into()],
            mounts: vec![ContainerMount {
                kind: "bind".into(),
                source: "/h".into(),
                destination: "/c".into(),
                read_only: true
            }],
            cgroup: format!("{STEP_CG}/{ID}"),
            attribution: "cgroup-parent".into(),
            created_by: std::process::id(),
            ..Container::default()
        }]
    );
    // Too large a body: 413, nothing reaches the engine.
    let n = t.seen.lock().unwrap().len();
    let (st, b) = call(
        &t.proxy,
        "POST",
        "/containers/create",
        vec![b' '; MAX_CREATE_BODY_FOR_TESTS + 1],
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message(&b).contains("larger than"));
    assert_eq!(t.seen.lock().unwrap().len(), n);
}

const MAX_CREATE_BODY_FOR_TESTS: usize = super::rewrite::MAX_CREATE_BODY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_step_requests_pass_unchanged_unless_they_aim_at_a_step() {
    let t = setup("cgroupfs", true).await;
    let body = br#"{"Image":"bb:local",  "HostConfig":{"CgroupParent":"/mine"}}"#.to_vec();
    let (st, _) = call(&t.proxy, "POST", "/v1.41/containers/create", body.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, _, sent) = t.seen.lock().unwrap()[0].clone();
    assert_eq!(sent, body, "forwarded byte for byte");
    assert!(t.dir.containers.lock().unwrap().is_empty());
    let n = t.seen.lock().unwrap().len();
    let (st, b) = call(
        &t.proxy,
        "POST",
        "/v1.41/containers/create",
        br#"{"Image":"x","hostconfig":{"cgroupparent":"/cilock.steps/u1.other.2"}}"#.to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(
        message(&b).contains("inside cilock's steps"),
        "{}",
        message(&b)
    );
    let (st, _) = call(
        &t.proxy,
        "POST",
        "/v1.41/build?cgroupparent=%2Fcilock.steps%2Fx",
        vec![],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(t.seen.lock().unwrap().len(), n, "refusals reach no engine");
    // A large upload streams through.
    let (st, b) = call(&t.proxy, "POST", "/v1.41/images/load", vec![7; 8 << 20]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["bytes"],
        8 << 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_from_a_step() {
    let t = setup("cgroupfs", true).await;
    t.dir.in_step.store(true, Ordering::SeqCst);
    let (st, b) = call(
        &t.proxy,
        "POST",
        "/v1.41/build?t=a%3A1&cgroupparent=%2Fx&version=1",
        b"tar".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains("Running in"));
    let seen = t.seen.lock().unwrap().clone();
    let (_, pq, body) = seen.iter().find(|(_, p, _)| p.contains("/build")).unwrap();
    assert_eq!(
        pq,
        "/v1.41/build?t=a%3A1&version=1&cgroupparent=%2Fcilock.steps%2Fu0.s.1"
    );
    assert_eq!(body, b"tar");
    let (st, _) = call(&t.proxy, "POST", "/v1.41/build?version=2&t=k", vec![]).await;
    assert_eq!(st, StatusCode::OK);
    // The record is made when the answer's body is dropped.
    for _ in 0..100 {
        if t.dir.builds.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let builds = t.dir.builds.lock().unwrap().clone();
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0].builder, "classic");
    assert_eq!(builds[0].attribution, "cgroup-parent");
    assert_eq!(builds[0].tags, vec!["a:1"]);
    assert_eq!(builds[0].dockerfile, "Dockerfile");
    assert_eq!(builds[0].containers, vec!["64ec2752e53b"]);
    assert_eq!(builds[0].image_id, "sha256:9a5c");
    assert_eq!(builds[0].created_by, std::process::id());
    assert_ne!(builds[0].id, builds[1].id);
    assert_eq!(builds[1].builder, "buildkit");
    if let Ok(h) = crate::cgroup::Hierarchy::find() {
        assert_eq!(builds[1].attribution, "engine-window");
        assert_eq!(
            *t.dir.attributed.lock().unwrap(),
            vec![h.mount.join("docker/buildkit")]
        );
    }
    // A form body could carry options the engine reads before the query's.
    let s = UnixStream::connect(&t.proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/v1.41/build?remote=x")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"cgroupparent=%2Fy")))
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_driver_takes_the_steps_slice_or_refuses() {
    let t = setup("systemd", true).await;
    t.dir.in_step.store(true, Ordering::SeqCst);
    let (st, b) = call(
        &t.proxy,
        "POST",
        "/containers/create",
        br#"{"Image":"x"}"#.to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(message(&b).contains("systemd"), "{}", message(&b));
    *t.dir.slice.lock().unwrap() = Some("cilock-u0.s.1.slice".into());
    let (st, _) = call(
        &t.proxy,
        "POST",
        "/containers/create",
        br#"{"Image":"x"}"#.to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let c = t.dir.containers.lock().unwrap()[0].clone();
    assert_eq!(c.cgroup, format!("{STEP_CG}/docker-{ID}.scope"));
    assert_eq!(c.attribution, "cgroup-parent");
}

/// An attach through the proxy at `sock`, switched to the raw stream (the
/// `101` read).
async fn attach(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(
        b"POST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hijacked_streams_are_spliced_both_ways() {
    let t = setup("cgroupfs", true).await;
    let mut s = attach(&t.proxy).await;
    s.write_all(b"stdin bytes \x00\x01").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"stdin bytes \x00\x01bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_live_hijacked_stream() {
    let t = setup("cgroupfs", true).await;
    let mut s = attach(&t.proxy).await;
    s.write_all(b"still typing").await.unwrap();
    // The engine's side waits for the end of stdin: the splice is live.
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.read(&mut b))
            .await
            .is_err(),
        "the stream ended before the stop"
    );
    tokio::time::timeout(Duration::from_secs(10), t._proxy.stop())
        .await
        .expect("stop did not return");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "the hijacked stream outlived the proxy's stop"
    );
    // Cut, not completed: the engine's answer to the end of stdin never came.
    assert!(!rest.ends_with(b"bye"), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hijacked_stream_holds_its_connections_slot() {
    let t = setup_with_slots("cgroupfs", true, 1).await;
    let mut s = attach(&t.proxy).await;
    // The one slot is the splice's: another client waits.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            call(&t.proxy, "GET", "/_ping", vec![])
        )
        .await
        .is_err(),
        "a client was served beside a live hijacked stream with one slot"
    );
    s.write_all(b"x").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"xbye");
    // The splice ended: its slot is free.
    let (st, _) = tokio::time::timeout(
        Duration::from_secs(10),
        call(&t.proxy, "GET", "/_ping", vec![]),
    )
    .await
    .expect("no client is served after the hijacked stream ended");
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_is_down_is_a_502() {
    let t = setup("cgroupfs", false).await;
    let (st, b) = call(&t.proxy, "GET", "/_ping", vec![]).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    assert!(message(&b).contains("not reachable"), "{}", message(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_private_without_the_group_and_never_stolen() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("run").join("docker.sock");
    let cfg = ProxyConfig {
        socket: sock.clone(),
        engine: tmp.path().join("engine.sock"),
        buildkit_cgroup: "docker/buildkit".into(),
        group: "no-such-group-cilock-test".into(),
    };
    // A stale socket (nothing answers) is replaced.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let dir: Arc<dyn StepDirectory> = Arc::new(TestDir::default());
    let p = Proxy::start(cfg.clone(), dir.clone()).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // One in use is not.
    match Proxy::start(cfg.clone(), dir.clone()) {
        Err(ProxyError::InUse { path }) => assert_eq!(path, sock),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second proxy took the socket"),
    }
    // A file that is not a socket is left alone.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = Proxy::start(
        ProxyConfig {
            socket: file.clone(),
            ..cfg.clone()
        },
        dir,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    p.stop().await;
    assert!(!sock.exists(), "removed at stop");
}
