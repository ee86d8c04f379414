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
//! - Framing is the [`crate::api`] one (4-byte big-endian length + JSON).
//!   Each frame must arrive within [`ServerConfig::read_timeout`]; a frame
//!   longer than [`ServerConfig::max_message`] is refused with a
//!   [`ErrorKind::BadRequest`] reply before its body is read; malformed JSON
//!   and unknown requests get a `BadRequest` reply and the connection stays
//!   usable. Nothing a peer sends can panic the server, and one peer never
//!   blocks another: each connection is its own task, and service calls run
//!   on the blocking pool.

pub mod auth;
pub mod frame;

use std::future::Future;
use std::io;
use std::os::fd::AsFd as _;
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::api::{ApiError, ErrorKind, Peer, Reply, Request, StepService, MAX_MESSAGE};

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
    /// Largest request accepted, in bytes (at most [`MAX_MESSAGE`]).
    pub max_message: usize,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may still run.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Defaults for `socket` and `group`: 30 s read and write timeouts,
    /// [`MAX_MESSAGE`], 128 connections, 30 s shutdown grace.
    pub fn new(socket: impl Into<PathBuf>, group: impl Into<String>) -> Self {
        ServerConfig {
            socket: socket.into(),
            group: group.into(),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_message: MAX_MESSAGE,
            max_connections: 128,
            shutdown_grace: Duration::from_secs(30),
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
        let ctx = Arc::new(Ctx {
            service,
            access,
            group: cfg.group.clone(),
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
            max_message: cfg.max_message.min(MAX_MESSAGE),
        });
        let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        info!(socket = %guard.path.display(), access = ?ctx.access, "listening");
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
                permit = permits.clone().acquire_owned() => {
                    let Ok(permit) = permit else { break };
                    let accepted = tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        r = listener.accept() => r,
                    };
                    match accepted {
                        Ok((stream, _)) => {
                            let ctx = ctx.clone();
                            tasks.spawn(async move {
                                handle_connection(stream, ctx).await;
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            drop(permit);
                            warn!("accept failed: {e}");
                            // Out of descriptors and similar: do not spin.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
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
                warn!("requests still running after the shutdown grace period; abandoning them");
                tasks.abort_all();
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
        let mut dec = frame::FrameDecoder::new(max);
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
                    Err(frame::TooLarge(len)) => return Err(FrameError::TooLarge(len)),
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
    let body = match serde_json::to_vec(reply) {
        Ok(b) if b.len() <= MAX_MESSAGE => b,
        Ok(b) => {
            error!(bytes = b.len(), "reply exceeds the message limit");
            serde_json::to_vec(&Reply::Error(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "the reply ({} bytes) exceeds the {MAX_MESSAGE}-byte message limit",
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
    let frame = encode_reply(reply);
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
        let reply = match serde_json::from_slice::<Request>(&body) {
            Ok(req) => dispatch(&ctx, peer, req).await,
            Err(e) => {
                debug!(pid = peer.pid, "malformed request: {e}");
                bad_request(format!("invalid request: {e}"))
            }
        };
        if let Err(e) = write_reply(&mut stream, &reply, ctx.write_timeout).await {
            debug!(pid = peer.pid, "cannot send reply: {e}");
            return;
        }
    }
}

fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Status => "status",
        Request::BeginStep(_) => "begin-step",
        Request::EndStep(_) => "end-step",
    }
}

async fn dispatch(ctx: &Ctx, peer: Peer, req: Request) -> Reply {
    let name = request_name(&req);
    let step = match &req {
        Request::Status => String::new(),
        Request::BeginStep(b) => b.step.clone(),
        Request::EndStep(e) => e.step.clone(),
    };
    info!(uid = peer.uid, pid = peer.pid, request = name, step = %step, "request");
    let service = ctx.service.clone();
    let result = tokio::task::spawn_blocking(move || match req {
        Request::Status => Ok(Reply::Status(service.status())),
        Request::BeginStep(b) => service.begin(peer, b),
        Request::EndStep(e) => service.end(peer, e),
    })
    .await;
    match result {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            info!(uid = peer.uid, pid = peer.pid, request = name, step = %step, "request failed: {e}");
            Reply::Error(e)
        }
        Err(join) => {
            error!(request = name, step = %step, "the service failed while handling the request: {join}");
            Reply::Error(ApiError::new(
                ErrorKind::Internal,
                format!("the daemon failed while handling the {name} request"),
            ))
        }
    }
}
