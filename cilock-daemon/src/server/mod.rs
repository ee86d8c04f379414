//! The daemon's Unix-socket server.
//!
//! - [`Server::bind`] creates the socket (default `/run/cilock/cilock.sock`):
//!   it creates a missing parent directory (0750 and the configured group, or
//!   0755 when the socket is root-only), removes a stale socket file only when
//!   nothing answers on it, and sets the socket to mode 0660 with the
//!   configured group when that group exists, else 0600 (root only).
//! - [`Server::serve`] runs the accept loop until a shutdown future
//!   completes, then stops accepting, lets in-flight requests finish (bounded
//!   by [`ServerConfig::shutdown_grace`]) and removes the socket file.
//! - Every connection is authenticated with `SO_PEERCRED` before anything is
//!   read: root and members of the group (primary or supplementary, see
//!   [`auth`]) are served; anyone else gets one [`ErrorKind::Forbidden`]
//!   reply, a log line, and the connection is closed.
//! - Limits are applied right after authentication, never before `accept`:
//!   the accept loop never waits for a permit. A non-root uid may hold at
//!   most [`ServerConfig::max_connections_per_user`] connections at once
//!   (idle ones included), and all non-root peers together at most
//!   `max_connections - root_reserve`; root is exempt from the per-user cap
//!   and may use the reserve, so one user's load never locks root out, and
//!   never another user. A refused peer gets one [`ErrorKind::TooMany`]
//!   reply and the connection is closed.
//! - Framing is the [`cilock_api`] one (4-byte big-endian length + JSON).
//!   Each frame must arrive within [`ServerConfig::read_timeout`]; a frame
//!   longer than [`ServerConfig::max_message`] (the `max_request` setting)
//!   is refused with a [`ErrorKind::BadRequest`] reply before its body is
//!   read; malformed JSON and unknown requests get a `BadRequest` reply and
//!   the connection stays usable. Nothing a peer sends can panic the server,
//!   and one peer never blocks another: each connection is its own task, and
//!   service calls run on the blocking pool.
//! - While a request runs, the server watches the connection: when the
//!   client hangs up, its global connection slot is released at once and the
//!   service is told ([`RequestCtx::client_gone`]): a begin is not carried
//!   out, an end completes and its signed envelope is kept by the service
//!   ([`StepService::keep_undelivered`]). The uid's own slot stays taken
//!   until the abandoned work is over, so abandoned requests count against
//!   their user only. Envelopes that cannot be delivered (client gone, write
//!   failed, reply over [`MAX_MESSAGE`]) are kept the same way (the daemon's
//!   service keeps every envelope before replying: see [`crate::kept`]).
//! - A reply with a payload ([`Outgoing::payload`]: `Reply::Envelope`, for
//!   `end-step` with `stream` and `fetch-kept`) is the header frame followed
//!   by the raw bytes, sent in 1 MiB chunks, each within the write timeout:
//!   no size limit, and a stalled client is dropped (the envelope stays
//!   kept; a log line says so).

pub mod auth;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::UnixStream;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use cilock_api::{
    ApiError, EnvelopeHeader, ErrorKind, Outgoing, Payload, Peer, Reply, Request, RequestCtx,
    StepService, DEFAULT_MAX_REQUEST, MAX_MESSAGE,
};

pub use auth::Access;

/// Settings of the socket server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Socket path.
    pub socket: PathBuf,
    /// Group (name or numeric gid) allowed besides root.
    pub group: String,
    /// Time allowed for one whole request frame to arrive, counted from when
    /// the server starts waiting for it (also bounds an idle connection).
    pub read_timeout: Duration,
    /// Time allowed for writing one reply.
    pub write_timeout: Duration,
    /// Largest request accepted, in bytes (the `max_request` setting; at
    /// most [`MAX_MESSAGE`]).
    pub max_message: usize,
    /// Connections served at once, all peers together.
    pub max_connections: usize,
    /// Of `max_connections`, how many only root may take.
    pub root_reserve: usize,
    /// Connections one non-root uid may hold at once (idle ones included).
    pub max_connections_per_user: usize,
    /// On shutdown, how long in-flight requests may still run.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Defaults for `socket` and `group`: 30 s read and write timeouts,
    /// [`DEFAULT_MAX_REQUEST`], 128 connections of which 16 are reserved
    /// for root, 16 per user, 20 s shutdown grace.
    pub fn new(socket: impl Into<PathBuf>, group: impl Into<String>) -> Self {
        ServerConfig {
            socket: socket.into(),
            group: group.into(),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_message: DEFAULT_MAX_REQUEST,
            max_connections: 128,
            root_reserve: 16,
            max_connections_per_user: 16,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configured group could not be looked up.
    #[error("cannot look up group {group:?}: {source}")]
    Group {
        /// The group.
        group: String,
        /// The error.
        source: io::Error,
    },
    /// The socket's directory could not be created or set up.
    #[error("cannot create socket directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process answers on the socket.
    #[error("another daemon is already listening on {}", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket is at the path; it is left alone.
    #[error("{} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Binding, probing or removing the socket failed.
    #[error("cannot bind {}: {source}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Setting the socket's owner group or mode failed.
    #[error("cannot set permissions of {}: {source}", path.display())]
    Permissions {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Handing the socket to the async runtime failed.
    #[error("cannot register the socket with the runtime: {0}")]
    Runtime(io::Error),
}

/// Removes the socket file on drop, if it is still the one we bound.
#[derive(Debug)]
struct SocketGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketGuard {
    fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => debug!(socket = %self.path.display(), "removed socket file"),
                    Err(e) => {
                        warn!(socket = %self.path.display(), "cannot remove socket file: {e}")
                    }
                }
            }
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A bound, not yet serving, socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct Server {
    listener: std::os::unix::net::UnixListener,
    cfg: ServerConfig,
    access: Access,
    guard: SocketGuard,
}

impl Server {
    /// Binds the socket as described in the [module docs](self).
    pub fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        let path = cfg.socket.clone();
        let access = Access::for_group(&cfg.group).map_err(|source| ServerError::Group {
            group: cfg.group.clone(),
            source,
        })?;
        if access == Access::RootOnly {
            warn!(
                group = %cfg.group,
                "group does not exist: the socket is root-only (create it with `groupadd --system {}` and restart)",
                cfg.group
            );
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            ensure_parent(parent, &access)?;
        }
        remove_stale(&path)?;
        let listener =
            std::os::unix::net::UnixListener::bind(&path).map_err(|source| ServerError::Bind {
                path: path.clone(),
                source,
            })?;
        let meta = std::fs::symlink_metadata(&path).map_err(|source| ServerError::Bind {
            path: path.clone(),
            source,
        })?;
        let guard = SocketGuard {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // Until the mode is set the socket has the umask's mode; peers that
        // connect in that window are still authenticated per connection.
        let perm = |source| ServerError::Permissions {
            path: path.clone(),
            source,
        };
        match access.gid() {
            Some(gid) => {
                std::os::unix::fs::chown(&path, None, Some(gid)).map_err(perm)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
                    .map_err(perm)?;
            }
            None => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(perm)?;
            }
        }
        listener
            .set_nonblocking(true)
            .map_err(ServerError::Runtime)?;
        Ok(Server {
            listener,
            cfg,
            access,
            guard,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.guard.path
    }

    /// The access policy in effect.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Serves connections until `shutdown` completes, then stops accepting,
    /// waits up to [`ServerConfig::shutdown_grace`] for connections in
    /// flight, and removes the socket file. Must run inside a Tokio runtime
    /// (multi-threaded, or with the blocking pool available).
    pub async fn serve<F>(
        self,
        service: Arc<dyn StepService>,
        shutdown: F,
    ) -> Result<(), ServerError>
    where
        F: Future<Output = ()>,
    {
        let Server {
            listener,
            cfg,
            access,
            guard,
        } = self;
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(ServerError::Runtime)?;
        let total = cfg.max_connections.max(1);
        let ctx = Arc::new(Ctx {
            service,
            access,
            group: cfg.group.clone(),
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
            max_message: cfg.max_message.min(MAX_MESSAGE),
            slots: Arc::new(Slots {
                total,
                reserve: cfg.root_reserve.min(total - 1),
                per_user: cfg.max_connections_per_user.max(1),
                state: Mutex::default(),
            }),
            inflight: Arc::default(),
        });
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        info!(socket = %guard.path.display(), access = ?ctx.access, "listening");
        // Accepting never waits for a permit: limits are applied per peer
        // once it is authenticated (see the module docs).
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            error!("a connection task panicked: {e}");
                        }
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tasks.spawn(handle_connection(stream, ctx.clone()));
                    }
                    Err(e) => {
                        warn!("accept failed: {e}");
                        // Out of descriptors and similar: do not spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        guard.remove();
        while tasks.try_join_next().is_some() {}
        if !tasks.is_empty() {
            info!(
                connections = tasks.len(),
                "shutting down: waiting for requests in flight"
            );
            let drain = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(cfg.shutdown_grace, drain)
                .await
                .is_err()
            {
                // Connections idle or slow to read/write are async and stop
                // at once; a request on the blocking pool (hashing a FIFO,
                // a hung attestor helper) is abandoned: its step keeps its
                // record and the next daemon ends it (attestation says the
                // trace was interrupted).
                let cut = ctx.inflight.describe();
                warn!(
                    connections = tasks.len(),
                    requests = cut.len(),
                    "stop: requests still running after the shutdown grace ({:?}): closing {} connection(s)",
                    cfg.shutdown_grace,
                    tasks.len()
                );
                for what in cut {
                    warn!("stop: request cut short: {what}");
                }
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
        drop(guard);
        info!("server stopped");
        Ok(())
    }
}

/// Binds `cfg.socket` and serves until `shutdown` completes (see
/// [`Server::bind`] and [`Server::serve`]).
pub async fn serve<F>(
    cfg: ServerConfig,
    service: Arc<dyn StepService>,
    shutdown: F,
) -> Result<(), ServerError>
where
    F: Future<Output = ()>,
{
    Server::bind(cfg)?.serve(service, shutdown).await
}

fn ensure_parent(dir: &Path, access: &Access) -> Result<(), ServerError> {
    let err = |source| ServerError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if let Access::Group { gid, name } = access {
                let mode = m.mode();
                let searchable = mode & 0o001 != 0 || (m.gid() == *gid && mode & 0o010 != 0);
                if !searchable {
                    warn!(
                        dir = %dir.display(),
                        "members of group {name} cannot reach the socket: its directory has mode {:04o} and gid {}",
                        mode & 0o7777,
                        m.gid()
                    );
                }
            }
            return Ok(());
        }
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !up.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(up)
                .map_err(err)?;
        }
    }
    let mode = if access.gid().is_some() { 0o750 } else { 0o755 };
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    if let Some(gid) = access.gid() {
        std::os::unix::fs::chown(dir, None, Some(gid)).map_err(err)?;
    }
    // The umask may have removed bits.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "removing stale socket (nothing answers on it)");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ServerError::Bind {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServerError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

struct Ctx {
    service: Arc<dyn StepService>,
    access: Access,
    group: String,
    read_timeout: Duration,
    write_timeout: Duration,
    max_message: usize,
    slots: Arc<Slots>,
    /// Requests being handled (for the log when a stop cuts them short).
    inflight: Arc<Inflight>,
}

/// Requests being handled, by a serial: what, for whom, since when.
#[derive(Debug, Default)]
struct Inflight {
    next: std::sync::atomic::AtomicU64,
    map: Mutex<std::collections::BTreeMap<u64, (String, std::time::Instant)>>,
}

/// Removes its request from [`Inflight`] when dropped (the request
/// finished, or its task was aborted).
struct InflightGuard {
    set: Arc<Inflight>,
    id: u64,
}

impl Inflight {
    fn enter(self: &Arc<Self>, what: String) -> InflightGuard {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (what, std::time::Instant::now()));
        InflightGuard {
            set: self.clone(),
            id,
        }
    }

    fn describe(&self) -> Vec<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(w, t)| format!("{w} (running for {:.1} s)", t.elapsed().as_secs_f64()))
            .collect()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.set
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Connection slots: all peers together, and per non-root uid.
#[derive(Debug)]
struct Slots {
    total: usize,
    reserve: usize,
    per_user: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    used: usize,
    by_uid: HashMap<u32, usize>,
}

impl Slots {
    /// Takes a slot for `uid`, or says which limit is reached.
    fn take(self: &Arc<Self>, uid: u32) -> Result<Slot, String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if uid != 0 {
            let mine = st.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= self.per_user {
                return Err(format!(
                    "uid {uid} already holds {mine} connections (max_connections_per_user = {})",
                    self.per_user
                ));
            }
            if st.used >= self.total - self.reserve {
                return Err(format!(
                    "the daemon is serving {} connections, the most it takes from users other than root",
                    st.used
                ));
            }
            *st.by_uid.entry(uid).or_insert(0) += 1;
        } else if st.used >= self.total {
            return Err(format!(
                "the daemon is serving {} connections, its maximum",
                st.used
            ));
        }
        st.used += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
            global: true,
        })
    }
}

/// A taken connection slot; released on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
    /// Whether the global slot is still held (the per-uid one always is).
    global: bool,
}

impl Slot {
    /// Gives back the global slot now (the client is gone); the uid's own
    /// slot stays taken until the slot is dropped.
    fn release_global(&mut self) {
        if std::mem::take(&mut self.global) {
            let mut st = self.slots.state.lock().unwrap_or_else(|e| e.into_inner());
            st.used = st.used.saturating_sub(1);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_global();
        if self.uid != 0 {
            let mut st = self.slots.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = st.by_uid.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.by_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// Why reading a frame stopped.
#[derive(Debug)]
enum FrameError {
    /// The frame did not arrive in time.
    Timeout,
    /// The declared length exceeds the limit.
    TooLarge(usize),
    /// The peer hung up inside a frame (after `got` bytes).
    Truncated(usize),
    /// The socket failed.
    Io(io::Error),
}

/// Reads one frame; `Ok(None)` when the peer closed cleanly between frames.
async fn read_frame(
    stream: &mut UnixStream,
    max: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    let read = async {
        // Reads at most what the current frame still needs (never the next
        // frame); the body grows with the data received, not the declared
        // length.
        let mut dec = cilock_api::frame::FrameDecoder::new(max);
        // Grown to what is wanted (at most 64 KiB): an idle connection
        // waiting for a header holds 4 bytes.
        let mut chunk = Vec::new();
        loop {
            let want = dec.wanted().min(64 * 1024);
            if chunk.len() < want {
                chunk.resize(want, 0);
            }
            match stream.read(&mut chunk[..want]).await {
                Ok(0) if dec.is_idle() => return Ok(None),
                Ok(0) => return Err(FrameError::Truncated(dec.received())),
                Ok(n) => match dec.push(&chunk[..n]) {
                    Ok((_, Some(body))) => return Ok(Some(body)),
                    Ok((_, None)) => {}
                    Err(cilock_api::frame::TooLarge(len)) => return Err(FrameError::TooLarge(len)),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(FrameError::Timeout),
    }
}

/// Serialises `reply` as one frame. A reply over [`MAX_MESSAGE`] (or one
/// that cannot be serialised) is replaced by an `Internal` error.
fn encode_reply(reply: &Reply) -> Vec<u8> {
    encode_reply_noting(reply, &mut None)
}

/// [`encode_reply`]; for a reply over the limit, `kept` names where its
/// content was kept (mentioned in the error).
fn encode_reply_noting(reply: &Reply, kept: &mut Option<Result<PathBuf, String>>) -> Vec<u8> {
    let body = match serde_json::to_vec(reply) {
        Ok(b) if b.len() <= MAX_MESSAGE => {
            *kept = None;
            b
        }
        Ok(b) => {
            error!(bytes = b.len(), "reply exceeds the message limit");
            let note = match kept {
                Some(Ok(p)) => format!("; the signed envelope is kept in {}", p.display()),
                Some(Err(e)) => format!("; keeping it failed: {e}"),
                None => String::new(),
            };
            serde_json::to_vec(&Reply::Error(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "the reply ({} bytes) exceeds the {MAX_MESSAGE}-byte message limit{note}",
                    b.len()
                ),
            )))
            .unwrap_or_default()
        }
        Err(e) => {
            error!("cannot serialise reply: {e}");
            serde_json::to_vec(&Reply::Error(ApiError::new(
                ErrorKind::Internal,
                format!("cannot serialise the reply: {e}"),
            )))
            .unwrap_or_default()
        }
    };
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

async fn write_reply(stream: &mut UnixStream, reply: &Reply, timeout: Duration) -> io::Result<()> {
    write_frame(stream, encode_reply(reply), timeout).await
}

async fn write_frame(stream: &mut UnixStream, frame: Vec<u8>, timeout: Duration) -> io::Result<()> {
    let write = async {
        stream.write_all(&frame).await?;
        stream.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer did not read the reply in time",
        )),
    }
}

fn bad_request(message: impl Into<String>) -> Reply {
    Reply::Error(ApiError::new(ErrorKind::BadRequest, message))
}

async fn handle_connection(mut stream: UnixStream, ctx: Arc<Ctx>) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot read the peer's credentials (SO_PEERCRED): {e}; closing");
            return;
        }
    };
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
    };
    if let Err(denied) = auth::authorize(stream.as_fd(), &peer, &ctx.access, &ctx.group) {
        warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "refused connection: {denied}"
        );
        let reply = Reply::Error(ApiError::new(
            ErrorKind::Forbidden,
            format!("not allowed to use cilock-daemon: {denied}"),
        ));
        let _ = write_reply(&mut stream, &reply, ctx.write_timeout).await;
        return;
    }
    // Caps come after authentication: the peer's uid is known.
    let mut slot = match ctx.slots.take(peer.uid) {
        Ok(s) => s,
        Err(why) => {
            info!(uid = peer.uid, pid = peer.pid, "refused connection: {why}");
            let reply = Reply::Error(ApiError::new(ErrorKind::TooMany, why));
            let _ = write_reply(&mut stream, &reply, ctx.write_timeout).await;
            return;
        }
    };
    debug!(
        uid = peer.uid,
        gid = peer.gid,
        pid = peer.pid,
        "peer connected"
    );
    loop {
        let body = match read_frame(&mut stream, ctx.max_message, ctx.read_timeout).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                debug!(pid = peer.pid, "peer closed the connection");
                return;
            }
            Err(FrameError::TooLarge(len)) => {
                warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "refused a {len}-byte message (limit {})",
                    ctx.max_message
                );
                let reply = bad_request(format!(
                    "message of {len} bytes exceeds the limit of {} bytes",
                    ctx.max_message
                ));
                // The rest of the frame is not read: the stream cannot be
                // resynchronised, so the connection ends here.
                let _ = write_reply(&mut stream, &reply, ctx.write_timeout).await;
                return;
            }
            Err(FrameError::Timeout) => {
                debug!(
                    pid = peer.pid,
                    "no complete request within {:?}; closing", ctx.read_timeout
                );
                let reply = bad_request(format!(
                    "no complete request within {} s",
                    ctx.read_timeout.as_secs_f64()
                ));
                let _ = write_reply(&mut stream, &reply, ctx.write_timeout).await;
                return;
            }
            Err(FrameError::Truncated(got)) => {
                debug!(
                    pid = peer.pid,
                    "peer hung up inside a frame after {got} bytes"
                );
                return;
            }
            Err(FrameError::Io(e)) => {
                debug!(pid = peer.pid, "read error: {e}");
                return;
            }
        };
        let (reply, step): (Outgoing, String) = match serde_json::from_slice::<Request>(&body) {
            Ok(req) => {
                let step = request_step(&req);
                match dispatch(&ctx, peer, req, &mut stream, &mut slot).await {
                    Some(r) => (r, step),
                    // The client is gone; what had to be kept is kept.
                    None => return,
                }
            }
            Err(e) => {
                debug!(pid = peer.pid, "malformed request: {e}");
                (
                    bad_request(format!("invalid request: {e}")).into(),
                    String::new(),
                )
            }
        };
        if !deliver(&ctx, peer, &step, &mut stream, reply).await {
            return;
        }
    }
}

/// Logs that an envelope could not be delivered: it stays kept (or, when
/// keeping it failed too, it is lost: an error line says so).
fn undelivered(peer: Peer, h: &EnvelopeHeader, why: &str) {
    match &h.id {
        Some(id) => {
            warn!(uid = peer.uid, owner = h.owner_uid, step = %h.step, id = %id, "{why}: the attestation was not delivered and stays kept (cilock step fetch)")
        }
        None => {
            error!(uid = peer.uid, owner = h.owner_uid, step = %h.step, "{why}: the attestation was not delivered and could not be kept either")
        }
    }
}

/// Sends `out`: the reply frame, then its payload (raw bytes, read from a
/// kept file in chunks; each chunk must be taken within the write
/// timeout, the whole transfer has no size limit). An `Ended` reply that is
/// too large or cannot be sent is kept by the service. False when the
/// connection is unusable.
async fn deliver(
    ctx: &Ctx,
    peer: Peer,
    step: &str,
    stream: &mut UnixStream,
    out: Outgoing,
) -> bool {
    let Outgoing {
        reply,
        payload,
        slsa,
    } = out;
    let Some(payload) = payload else {
        return deliver_reply(ctx, peer, step, stream, reply).await;
    };
    let header = match &reply {
        Reply::Envelope(h) => h.clone(),
        _ => EnvelopeHeader::default(),
    };
    if let Err(e) = write_frame(stream, encode_reply(&reply), ctx.write_timeout).await {
        debug!(pid = peer.pid, "cannot send reply: {e}");
        undelivered(peer, &header, &format!("sending the reply failed: {e}"));
        return false;
    }
    if let Err(e) = send_payload(stream, payload, header.bytes, ctx.write_timeout).await {
        undelivered(peer, &header, &format!("sending the envelope failed: {e}"));
        return false;
    }
    match slsa {
        Some(b) if header.slsa_bytes == b.len() as u64 => {
            match send_payload(
                stream,
                Payload::Bytes(b),
                header.slsa_bytes,
                ctx.write_timeout,
            )
            .await
            {
                Ok(()) => true,
                Err(e) => {
                    // The main envelope was sent; an older client does not
                    // read the export and may have closed the connection.
                    warn!(uid = peer.uid, step = %header.step, "the SLSA provenance export was not delivered: {e}");
                    false
                }
            }
        }
        _ => true,
    }
}

/// Writes exactly `len` bytes of `payload`.
async fn send_payload(
    stream: &mut UnixStream,
    payload: Payload,
    len: u64,
    timeout: Duration,
) -> io::Result<()> {
    let short = || {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the kept file is shorter than announced",
        )
    };
    let within = |r: Result<io::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer did not read the envelope in time",
        )),
    };
    match payload {
        Payload::Bytes(b) => {
            if b.len() as u64 != len {
                return Err(short());
            }
            for chunk in b.chunks(1 << 20) {
                within(tokio::time::timeout(timeout, stream.write_all(chunk)).await)?;
            }
        }
        Payload::File(f) => {
            let mut f = tokio::fs::File::from_std(f);
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = f.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(short());
                }
                within(tokio::time::timeout(timeout, stream.write_all(&buf[..n])).await)?;
                left -= n as u64;
            }
        }
    }
    within(tokio::time::timeout(timeout, stream.flush()).await)
}

/// Sends `reply`; an `Ended` reply that is too large or cannot be sent is
/// kept by the service. False when the connection is unusable.
async fn deliver_reply(
    ctx: &Ctx,
    peer: Peer,
    step: &str,
    stream: &mut UnixStream,
    reply: Reply,
) -> bool {
    let ended = matches!(reply, Reply::Ended { .. });
    let mut kept = None;
    let mut frame = encode_reply_noting(&reply, &mut kept);
    if ended
        && frame.len() > 4
        && !matches!(
            serde_json::from_slice::<Reply>(&frame[4..]),
            Ok(Reply::Ended { .. })
        )
    {
        // Replaced by an error: keep the envelope and say where.
        kept = Some(keep(ctx, peer, step, &reply).await);
        frame = encode_reply_noting(&reply, &mut kept);
    }
    match write_frame(stream, frame, ctx.write_timeout).await {
        Ok(()) => true,
        Err(e) => {
            debug!(pid = peer.pid, "cannot send reply: {e}");
            if ended && kept.is_none() {
                let _ = keep(ctx, peer, step, &reply).await;
            }
            false
        }
    }
}

/// Has the service keep an undelivered reply (logged either way).
async fn keep(ctx: &Ctx, peer: Peer, step: &str, reply: &Reply) -> Result<PathBuf, String> {
    let service = ctx.service.clone();
    let (step2, reply2) = (step.to_string(), reply.clone());
    let r = tokio::task::spawn_blocking(move || service.keep_undelivered(peer, &step2, &reply2))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match r {
        Ok(Some(p)) => {
            warn!(uid = peer.uid, step = %step, file = %p.display(), "undelivered attestation kept");
            Ok(p)
        }
        Ok(None) => Err("the service keeps no undelivered replies".into()),
        Err(e) => {
            error!(uid = peer.uid, step = %step, "cannot keep an undelivered attestation: {e}");
            Err(e)
        }
    }
}

fn request_step(req: &Request) -> String {
    match req {
        Request::Status | Request::AckKept(_) => String::new(),
        Request::BeginStep(b) => b.step.clone(),
        Request::EndStep(e) => e.step.clone(),
        Request::ListKept(l) => l.step.clone().unwrap_or_default(),
        Request::FetchKept(f) => f.step.clone().or_else(|| f.id.clone()).unwrap_or_default(),
    }
}

/// Resolves when the peer has hung up (EOF or a reset); never resolves when
/// it sends more data instead (pipelined requests are read afterwards).
async fn hung_up(stream: &UnixStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let fd = stream.as_raw_fd();
        let peeked = stream.try_io(Interest::READABLE, || {
            let mut b = 0u8;
            // SAFETY: one byte into a local buffer; MSG_PEEK leaves it queued.
            let n = unsafe {
                libc::recv(
                    fd,
                    (&mut b as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n)
            }
        });
        match peeked {
            Ok(0) => return,
            Ok(_) => return std::future::pending().await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Status => "status",
        Request::BeginStep(_) => "begin-step",
        Request::EndStep(_) => "end-step",
        Request::ListKept(_) => "list-kept",
        Request::FetchKept(_) => "fetch-kept",
        Request::AckKept(_) => "ack-kept",
    }
}

/// Runs `req` on the blocking pool while watching the connection. `None`
/// when the client hung up meanwhile (nothing to send; an end's envelope
/// has been kept).
async fn dispatch(
    ctx: &Ctx,
    peer: Peer,
    req: Request,
    stream: &mut UnixStream,
    slot: &mut Slot,
) -> Option<Outgoing> {
    let name = request_name(&req);
    let step = request_step(&req);
    info!(uid = peer.uid, pid = peer.pid, request = name, step = %step, "request");
    let _inflight = ctx.inflight.enter(format!(
        "{name} step {step:?} of uid {} (pid {})",
        peer.uid, peer.pid
    ));
    let service = ctx.service.clone();
    let cx = RequestCtx::new();
    let cx2 = cx.clone();
    let mut job = tokio::task::spawn_blocking(move || match req {
        Request::Status => Ok(Reply::Status(service.status(peer)).into()),
        Request::BeginStep(b) => service.begin(peer, b, &cx2).map(Outgoing::from),
        Request::EndStep(e) if e.stream => service.end_stream(peer, e, &cx2),
        Request::EndStep(e) => service.end(peer, e, &cx2).map(Outgoing::from),
        Request::ListKept(l) => service.list_kept(peer, l).map(Outgoing::from),
        Request::FetchKept(f) => service.fetch_kept(peer, f),
        Request::AckKept(a) => service.ack_kept(peer, a).map(Outgoing::from),
    });
    let result = tokio::select! {
        r = &mut job => r,
        () = hung_up(stream) => {
            cx.set_client_gone();
            slot.release_global();
            info!(uid = peer.uid, pid = peer.pid, request = name, step = %step, "the client hung up while its request runs; its connection slot is released");
            let r = job.await;
            match r {
                Ok(Ok(Outgoing { reply: reply @ Reply::Ended { .. }, .. })) => {
                    let _ = keep(ctx, peer, &step, &reply).await;
                }
                Ok(Ok(Outgoing { reply: Reply::Envelope(h), .. })) => undelivered(peer, &h, "the client hung up"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => info!(uid = peer.uid, request = name, step = %step, "request of a departed client failed: {e}"),
                Err(e) => error!(request = name, step = %step, "the service failed while handling the request: {e}"),
            }
            return None;
        }
    };
    Some(match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            info!(uid = peer.uid, pid = peer.pid, request = name, step = %step, "request failed: {e}");
            Reply::Error(e).into()
        }
        Err(join) => {
            error!(request = name, step = %step, "the service failed while handling the request: {join}");
            Reply::Error(ApiError::new(
                ErrorKind::Internal,
                format!("the daemon failed while handling the {name} request"),
            ))
            .into()
        }
    })
}
