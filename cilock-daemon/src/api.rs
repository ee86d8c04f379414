//! The daemon ↔ CLI contract: requests and replies on the Unix socket, and
//! the service the daemon's socket server dispatches to.
//!
//! Wire format: each message is a 4-byte big-endian length followed by that
//! many bytes of JSON (one request per connection is typical, but a
//! connection may carry several). Messages over [`MAX_MESSAGE`] are refused.

use serde::{Deserialize, Serialize};

/// Default socket path; `CILOCK_SOCKET` overrides it everywhere.
pub const DEFAULT_SOCKET: &str = "/run/cilock/cilock.sock";
/// Environment variable naming the socket.
pub const SOCKET_ENV: &str = "CILOCK_SOCKET";
/// Largest request or reply accepted (replies carry envelopes with stdout).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// The socket path in effect (`CILOCK_SOCKET` or the default).
pub fn socket_path() -> std::path::PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}

/// A request from the CLI.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Liveness and backend information.
    Status,
    /// Start tracing a step.
    BeginStep(BeginStep),
    /// Stop a step and return its signed attestation.
    EndStep(EndStep),
}

/// `cilock step begin`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BeginStep {
    /// Step name (also the collection name).
    pub step: String,
    /// The process to move into the step (with everything it starts later).
    pub pid: u32,
    /// Extra attestors to run (names), besides command-run/material/product.
    #[serde(default)]
    pub attestations: Vec<String>,
    /// Working directory for materials/products (absolute).
    #[serde(default)]
    pub workdir: Option<String>,
    /// The command, when the step wraps one command (`cilock run`).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Attestor options (defaults when absent).
    #[serde(default)]
    pub options: Option<cilock_evidence::attestors::lifecycle::AttestorOptions>,
}

/// `cilock step end`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndStep {
    /// Step name.
    pub step: String,
    /// Kill processes still alive in the step.
    #[serde(default)]
    pub kill: bool,
    /// Exit code of the wrapped command (`cilock run` through the daemon).
    #[serde(default)]
    pub exitcode: Option<i32>,
    /// Captured stdout of the wrapped command.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Captured stderr of the wrapped command.
    #[serde(default)]
    pub stderr: Option<String>,
}

/// A reply from the daemon.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// `Status`.
    Status(StatusReply),
    /// `BeginStep` succeeded.
    Begun {
        /// The step's cgroup path.
        cgroup: String,
    },
    /// `EndStep` succeeded: the DSSE envelope (JSON).
    Ended {
        /// The signed envelope.
        envelope: serde_json::Value,
        /// Events lost in the kernel during the step (also in the envelope).
        lost_events: u64,
        /// Set when an attestor failed the step (e.g. secretscan with
        /// fail-on-detection); the envelope is still signed and returned.
        #[serde(default)]
        failure: Option<String>,
    },
    /// The request failed.
    Error(ApiError),
}

/// Daemon status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReply {
    /// Daemon version.
    pub version: String,
    /// `ebpf` or `ptrace`.
    pub backend: String,
    /// Hook choices.
    pub hooks: std::collections::BTreeMap<String, String>,
    /// Names of active steps.
    pub steps: Vec<String>,
    /// Signing key id.
    pub keyid: String,
}

/// Why a request failed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    /// Machine-readable kind.
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
}

/// Kinds of [`ApiError`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request could not be parsed or is invalid.
    BadRequest,
    /// The peer is not allowed (not root and not in the group; not the owner).
    Forbidden,
    /// No such step.
    NotFound,
    /// A step of that name is already active.
    Conflict,
    /// The daemon failed.
    Internal,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

/// The authenticated peer of a request (from SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

/// What the socket server dispatches authenticated requests to. Calls may
/// block (ending a step hashes files): the server runs them off the runtime.
pub trait StepService: Send + Sync + 'static {
    /// Daemon status.
    fn status(&self) -> StatusReply;
    /// Begin a step for `peer`.
    fn begin(&self, peer: Peer, req: BeginStep) -> Result<Reply, ApiError>;
    /// End a step for `peer`.
    fn end(&self, peer: Peer, req: EndStep) -> Result<Reply, ApiError>;
}
