//! Shared helpers for the `server_*` integration tests.
//!
//! [`StandInService`] is a stand-in for the tracing engine
//! (`service::DaemonService`): it keeps a map of active steps in memory and
//! does no tracing at all. It exists only so the tests can exercise the real
//! socket server (framing, authentication, dispatch, error replies) without
//! eBPF, cgroups or a signing key.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cilock_api::{
    ApiError, BeginStep, EndStep, EnvelopeHeader, ErrorKind, FetchKept, Outgoing, Payload, Peer,
    Reply, Request, RequestCtx, StatusReply, StepService,
};
use cilock_daemon::server::{Server, ServerConfig};

/// In-memory stand-in for the engine (see the module docs).
#[derive(Default)]
pub struct StandInService {
    /// Active steps and who began them.
    pub steps: Mutex<BTreeMap<String, Peer>>,
    /// `hang*` begins that returned, and whether they saw the client gone.
    pub gone_seen: Mutex<Vec<(String, bool)>>,
}

impl StepService for StandInService {
    fn status(&self, _peer: Peer) -> StatusReply {
        StatusReply {
            version: "test".into(),
            backend: "none".into(),
            hooks: BTreeMap::new(),
            steps: self.steps.lock().unwrap().keys().cloned().collect(),
            active: Vec::new(),
            keyid: "test-key".into(),
        }
    }

    fn begin(&self, peer: Peer, req: BeginStep, cx: &RequestCtx) -> Result<Reply, ApiError> {
        match req.step.as_str() {
            // A service bug: the server must turn it into an Internal reply.
            "panic" => panic!("stand-in service panics on purpose"),
            // A slow call: must not block other connections.
            "slow" => std::thread::sleep(Duration::from_millis(1500)),
            // Runs 20 s whatever happens (a stuck call).
            "stuck" => std::thread::sleep(Duration::from_secs(20)),
            // A call that runs until its client hangs up (or 60 s): records
            // whether the server said so.
            s if s.starts_with("hang") => {
                let t = std::time::Instant::now();
                while !cx.client_gone() && t.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.gone_seen
                    .lock()
                    .unwrap()
                    .push((req.step.clone(), cx.client_gone()));
                return Err(ApiError::new(ErrorKind::BadRequest, "client gone"));
            }
            _ => {}
        }
        let mut steps = self.steps.lock().unwrap();
        if steps.contains_key(&req.step) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("step {} is already active", req.step),
            ));
        }
        steps.insert(req.step.clone(), peer);
        Ok(Reply::Begun {
            cgroup: format!("/stand-in/{}", req.step),
        })
    }

    fn end(&self, peer: Peer, req: EndStep, _cx: &RequestCtx) -> Result<Reply, ApiError> {
        let began = self
            .steps
            .lock()
            .unwrap()
            .remove(&req.step)
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no step {}", req.step)))?;
        Ok(Reply::Ended {
            envelope: serde_json::json!({
                "step": req.step,
                "began_by": {"uid": began.uid, "pid": began.pid},
                "ended_by": {"uid": peer.uid, "pid": peer.pid},
            }),
            lost_events: 0,
            failure: None,
            kept: None,
            stored: Vec::new(),
            slsa_envelope: None,
            slsa_error: None,
        })
    }

    /// `big-N` (N bytes): an envelope of N bytes sent as a payload, from a
    /// sparse file with [`BIG_MARKS`] at its start, middle and end.
    fn fetch_kept(&self, peer: Peer, req: FetchKept) -> Result<Outgoing, ApiError> {
        use std::os::unix::fs::FileExt as _;
        let n: u64 = req
            .step
            .as_deref()
            .and_then(|s| s.strip_prefix("big-"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, "no such kept envelope"))?;
        let f = tempfile::tempfile().unwrap();
        f.set_len(n).unwrap();
        for (at, mark) in big_marks(n) {
            f.write_all_at(mark, at).unwrap();
        }
        Ok(Outgoing {
            reply: Reply::Envelope(EnvelopeHeader {
                step: req.step.unwrap_or_default(),
                owner_uid: peer.uid,
                id: Some("big.1.0".into()),
                bytes: n,
                ..Default::default()
            }),
            payload: Some(Payload::File(f)),
            slsa: None,
        })
    }
}

/// Where the stand-in's `big-N` envelopes carry marks (offset, bytes).
pub fn big_marks(n: u64) -> [(u64, &'static [u8]); 3] {
    [(0, b"{start"), (n / 2, b"middle"), (n - 4, b"end}")]
}

/// A server running on its own thread and runtime; stopped on drop.
pub struct TestServer {
    /// Its socket.
    pub path: PathBuf,
    /// The temporary directory of the socket (removed at drop).
    _dir: tempfile::TempDir,
    /// The stand-in service it dispatches to.
    pub service: Arc<StandInService>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

/// A socket path inside a fresh temp dir that uid 65534 can traverse.
pub fn temp_socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("cilock-srv-")
        .tempdir_in("/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("run").join("cilock.sock");
    (dir, path)
}

impl TestServer {
    /// Binds with `tweak` applied to a default config (socket in a temp dir,
    /// group `group`), then serves on a thread.
    pub fn start(group: &str, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let (dir, path) = temp_socket_dir();
        let mut cfg = ServerConfig::new(&path, group);
        cfg.read_timeout = Duration::from_secs(5);
        tweak(&mut cfg);
        let server = Server::bind(cfg).expect("bind");
        Self::run(server, dir, path)
    }

    /// Serves an already bound server on a thread.
    pub fn run(server: Server, dir: tempfile::TempDir, path: PathBuf) -> TestServer {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stand_in = Arc::new(StandInService::default());
        let service: Arc<dyn StepService> = stand_in.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(server.serve(service, async {
                let _ = rx.await;
            }))
            .map_err(|e| e.to_string())
        });
        TestServer {
            path,
            _dir: dir,
            service: stand_in,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the server and returns the result of `serve`.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Writes one raw frame, header and body in one write (a server that
/// refuses the header and hangs up must not turn the body's write into a
/// racy EPIPE).
pub fn write_frame(s: &mut UnixStream, body: &[u8]) {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    s.write_all(&f).unwrap();
}

/// Reads one reply frame; `None` on a clean EOF.
pub fn read_reply(s: &mut UnixStream) -> Option<Reply> {
    let mut hdr = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match s.read(&mut hdr[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
    let mut body = vec![0u8; u32::from_be_bytes(hdr) as usize];
    s.read_exact(&mut body).unwrap();
    Some(serde_json::from_slice(&body).expect("reply JSON"))
}

/// Asserts the connection is closed by the server (EOF, or reset).
pub fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("unexpected data after the last reply"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected EOF, got {e}"),
    }
}

/// Connects with a 10 s read timeout.
pub fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request on a fresh connection, through the crate's client.
pub fn status_ok(path: &Path) {
    match cilock_api::client::request_at(path, &Request::Status) {
        Ok(Reply::Status(s)) => assert_eq!(s.keyid, "test-key"),
        other => panic!("expected a status reply, got {other:?}"),
    }
}

/// The outcome of a request made by another user (see [`run_as`]).
#[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
pub enum PeerOutcome {
    /// A success reply.
    Ok(Reply),
    /// `ClientError::Daemon`.
    Daemon(ApiError),
    /// `ClientError::Connect` (permission denied on the socket file).
    Connect(String),
    /// `ClientError::Unavailable`.
    Unavailable(String),
    /// Anything else.
    Other(String),
}

/// Environment variable that switches the helper test into client mode.
pub const PEER_SOCKET_ENV: &str = "CILOCK_TEST_PEER_SOCKET";
const RESULT_MARK: &str = "CILOCK_PEER_RESULT:";

/// Body of the `peer_client_helper` test in each test binary: when
/// [`PEER_SOCKET_ENV`] is set, send a status request there and print the
/// outcome; otherwise do nothing.
pub fn peer_client_helper() {
    let Some(path) = std::env::var_os(PEER_SOCKET_ENV) else {
        return;
    };
    let outcome = match cilock_api::client::request_at(Path::new(&path), &Request::Status) {
        Ok(r) => PeerOutcome::Ok(r),
        Err(cilock_api::client::ClientError::Daemon(e)) => PeerOutcome::Daemon(e),
        Err(e @ cilock_api::client::ClientError::Connect { .. }) => {
            PeerOutcome::Connect(e.to_string())
        }
        Err(e @ cilock_api::client::ClientError::Unavailable { .. }) => {
            PeerOutcome::Unavailable(e.to_string())
        }
        Err(e) => PeerOutcome::Other(e.to_string()),
    };
    println!("{RESULT_MARK}{}", serde_json::to_string(&outcome).unwrap());
}

/// Re-runs this test binary's `peer_client_helper` test as another user
/// through `setpriv` (`setpriv_args`, e.g. `--reuid=65534 --regid=65534
/// --clear-groups`) and returns what its client got.
pub fn run_as(setpriv_args: &[&str], socket: &Path) -> PeerOutcome {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(&exe)
        .args([
            "--exact",
            "peer_client_helper", // the one in tests/integration.rs
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PEER_SOCKET_ENV, socket)
        .output()
        .expect("run setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(RESULT_MARK).map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no result (status {}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(&line).unwrap()
}
