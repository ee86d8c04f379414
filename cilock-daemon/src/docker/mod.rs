//! The Docker API proxy: a socket a step's `docker` client talks to
//! (`DOCKER_HOST=unix:///run/cilock/docker.sock`), forwarding to the real
//! engine, that places the containers and classic-build RUNs a step asks
//! for inside the step's cgroup, where the kernel filter sees them as the
//! step's processes, and records them for the step's attestation.
//!
//! - this module: the [`StepDirectory`] contract with the engine,
//!   [`StepRef`], the proxy's settings, its socket and accept loop
//!   ([`Proxy::start`], [`Proxy::stop`]);
//! - `peer`: the peer's credentials; access never widens (a peer is served
//!   only if it could open the engine's socket itself);
//! - `route`: which API request a request is, decided as the engine's
//!   router decides it;
//! - `rewrite`: create bodies and build queries, read and rewritten;
//! - `forward`: HTTP forwarding, hijacked streams, the per-route handling;
//! - `build_stream`: the bounded parser of a build's streamed answer;
//! - `engine_api`: the proxy's own queries to the engine.
//!
//! Per connection the peer is identified once (`SO_PEERCRED`), checked
//! against the engine socket's permissions, and mapped to its step
//! ([`StepDirectory::step_of`]). Connections are bounded
//! ([`MAX_CONNECTIONS`]; more wait to be accepted), header sizes too.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

mod build_stream;
mod engine_api;
mod forward;
mod peer;
mod rewrite;
mod route;
#[cfg(test)]
mod tests;

pub use cilock_evidence::attestors::command_run::{Container, ContainerBuild, ContainerMount};
pub use peer::PeerCred;

/// Most proxy connections served at once, a connection whose stream was
/// hijacked counting until that stream ends; further clients wait in the
/// listen backlog until one ends.
pub const MAX_CONNECTIONS: usize = 512;

/// What the proxy needs from the tracing engine. Implemented for the
/// engine; tests use their own.
pub trait StepDirectory: Send + Sync + 'static {
    /// The step `pid` belongs to, from its cgroup (None: not in any step).
    fn step_of(&self, pid: u32) -> Option<StepRef>;
    /// A container the step created (what the request asked and the engine answered).
    fn record_container(&self, step: &StepRef, c: Container);
    /// A build the step ran.
    fn record_build(&self, step: &StepRef, b: ContainerBuild);
    /// While the guard lives, every process whose step-level ancestor is `cgroup` (an absolute
    /// path under the cgroup2 mount, created when missing) is traced as `step`'s.
    fn attribute_cgroup(
        &self,
        step: &StepRef,
        cgroup: &std::path::Path,
    ) -> Result<Box<dyn Send>, String>;
    /// `cgroup_parent` as a client wrote it (absolute, relative, or a systemd slice name)
    /// names a cgroup inside cilock's steps tree.
    fn inside_steps(&self, cgroup_parent: &str) -> bool;
}

/// A step, as the proxy knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRef {
    /// The step's owner.
    pub owner_uid: u32,
    /// The step's name.
    pub name: String,
    /// The step cgroup relative to the cgroup2 root, with a leading '/' (`/cilock.steps/u0.x.12.3`):
    /// the `CgroupParent` for an engine on the cgroupfs driver.
    pub cgroup: String,
    /// The step's systemd slice name when steps are slices (see `steps`), for the systemd driver.
    pub slice: Option<String>,
}

/// The proxy's settings (config keys `docker_proxy`, `docker_socket`,
/// `docker_buildkit_cgroup`, `group`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The socket the proxy serves.
    pub socket: PathBuf,
    /// The engine's socket.
    pub engine: PathBuf,
    /// Where the engine runs BuildKit RUNs, relative to the cgroup2 root.
    pub buildkit_cgroup: String,
    /// The group the socket belongs to (mode 0660; 0600 when it does not exist).
    pub group: String,
}

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket could not be made.
    #[error("docker proxy socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something answers on the socket already.
    #[error("docker proxy socket {} is in use by another process", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) cfg: ProxyConfig,
    pub(crate) dir: Arc<dyn StepDirectory>,
    /// The cgroup2 mount (None: not found; BuildKit builds then get no window).
    pub(crate) mount: Option<PathBuf>,
    /// Held for a whole BuildKit `/build` (the engine window).
    pub(crate) buildkit: Arc<tokio::sync::Mutex<()>>,
    /// Numbers builds (`build-<n>`).
    pub(crate) builds: AtomicU64,
    /// The engine's cgroup driver, once known.
    pub(crate) driver: tokio::sync::OnceCell<String>,
}

/// A running proxy. Dropping it without [`Proxy::stop`] aborts its tasks
/// and leaves the socket file.
pub struct Proxy {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
    ino: (u64, u64),
}

impl Proxy {
    /// Binds the socket (replacing a stale one, refusing one in use),
    /// gives it the group and mode of the main socket, and serves.
    pub fn start(cfg: ProxyConfig, dir: Arc<dyn StepDirectory>) -> Result<Proxy, ProxyError> {
        Self::start_with_slots(cfg, dir, MAX_CONNECTIONS)
    }

    /// [`Proxy::start`] serving at most `slots` connections at once (a
    /// hijacked stream holds its connection's slot until it ends).
    pub(crate) fn start_with_slots(
        cfg: ProxyConfig,
        dir: Arc<dyn StepDirectory>,
        slots: usize,
    ) -> Result<Proxy, ProxyError> {
        let path = cfg.socket.clone();
        let err = |source| ProxyError::Socket {
            path: path.clone(),
            source,
        };
        let access = crate::server::auth::Access::for_group(&cfg.group).map_err(err)?;
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(err)?;
            }
        }
        remove_stale(&path)?;
        let std_listener = std::os::unix::net::UnixListener::bind(&path).map_err(err)?;
        let meta = std::fs::symlink_metadata(&path).map_err(err)?;
        match access.gid() {
            Some(gid) => {
                std::os::unix::fs::chown(&path, None, Some(gid)).map_err(err)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
                    .map_err(err)?;
            }
            None => std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(err)?,
        }
        std_listener.set_nonblocking(true).map_err(err)?;
        let listener = UnixListener::from_std(std_listener).map_err(err)?;
        let mount = match crate::cgroup::Hierarchy::find() {
            Ok(h) => Some(h.mount),
            Err(e) => {
                warn!("docker proxy: no cgroup2 mount ({e}): BuildKit builds get no engine window");
                None
            }
        };
        info!(socket = %path.display(), engine = %cfg.engine.display(), "docker proxy listening");
        let shared = Arc::new(Shared {
            cfg,
            dir,
            mount,
            buildkit: Arc::new(tokio::sync::Mutex::new(())),
            builds: AtomicU64::new(0),
            driver: tokio::sync::OnceCell::new(),
        });
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared, slots, rx));
        Ok(Proxy {
            stop: Some(tx),
            task,
            path,
            ino: (meta.dev(), meta.ino()),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends every connection (hijacked streams and builds
    /// in flight are cut), removes the socket file if it is still ours.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        info!(socket = %self.path.display(), "docker proxy stopped");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    slots: usize,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(slots));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                conns.spawn(async move {
                    forward::connection(stream, shared).await;
                    drop(permit);
                });
            }
            Err(e) => {
                debug!("docker proxy: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    conns.shutdown().await;
}

fn remove_stale(path: &Path) -> Result<(), ProxyError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ProxyError::Socket {
                path: path.into(),
                source,
            })
        }
    };
    use std::os::unix::fs::FileTypeExt as _;
    if !meta.file_type().is_socket() {
        return Err(ProxyError::Socket {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not a socket"),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ProxyError::InUse { path: path.into() }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ProxyError::Socket {
                path: path.into(),
                source,
            }),
        Err(source) => Err(ProxyError::Socket {
            path: path.into(),
            source,
        }),
    }
}
