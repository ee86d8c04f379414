//! The daemon ↔ CLI contract: requests and replies on the Unix socket, and
//! the service the daemon's socket server dispatches to.
//!
//! Wire format: each message is a 4-byte big-endian length followed by that
//! many bytes of JSON (one request per connection is typical, but a
//! connection may carry several). Requests over the daemon's `max_request`
//! (default [`DEFAULT_MAX_REQUEST`]) and replies over [`MAX_MESSAGE`] are
//! refused. One exception: a [`Reply::Envelope`] frame is followed by
//! exactly its header's `bytes` raw bytes (the signed envelope, of any
//! size), outside any frame.

use serde::{Deserialize, Serialize};

/// Default socket path; `CILOCK_SOCKET` overrides it everywhere.
pub const DEFAULT_SOCKET: &str = "/run/cilock/cilock.sock";
/// Environment variable naming the socket.
pub const SOCKET_ENV: &str = "CILOCK_SOCKET";
/// Largest reply sent or accepted (replies carry envelopes with stdout);
/// also the ceiling of the daemon's `max_request`.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Default largest request the daemon accepts (`max_request`).
pub const DEFAULT_MAX_REQUEST: usize = 64 * 1024 * 1024;

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
    /// List the envelopes the daemon keeps for the peer (root: anyone's).
    ListKept(ListKept),
    /// Send a kept envelope: a [`Reply::Envelope`] header, then its bytes.
    FetchKept(FetchKept),
    /// The client has written a kept envelope where it belongs: the daemon
    /// deletes its copy.
    AckKept(AckKept),
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EndStep {
    /// Step name.
    pub step: String,
    /// Whose step (root only; steps are keyed by owner uid and name). When
    /// absent, root ends its own step of that name, or the only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
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
    /// Sent by `cilock run` once the command's root process exited: the
    /// daemon waits for the command's descendants (the step cgroup
    /// becoming empty) before it ends the step. `step end` does not wait.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run: bool,
    /// With `run`: the bound on that wait in milliseconds (0: do not wait);
    /// absent: the daemon's `run_wait_descendants`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_descendants_ms: Option<u64>,
    /// `cilock run`: the signal that interrupted the run (the client's
    /// word: recorded under command-run `claimed.interrupted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<cilock_evidence::attestors::command_run::Interrupted>,
    /// `cilock run`: bytes of `stdout`/`stderr` the client did not capture
    /// (its bound was reached), per stream; recorded under `claimed.truncated`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub truncated: std::collections::BTreeMap<String, u64>,
    /// The client takes the envelope as a [`Reply::Envelope`] header
    /// followed by its raw bytes (any size, no frame limit), and
    /// acknowledges it with [`Request::AckKept`] once written. Unset (older
    /// clients): a [`Reply::Ended`] frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// `cilock step fetch --list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ListKept {
    /// Only envelopes of this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Whose envelopes (root only; root without it sees everyone's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

/// `cilock step fetch`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FetchKept {
    /// The newest kept envelope of this step (when no `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// This kept envelope (an id from [`Request::ListKept`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Whose envelope (root only; without it root looks at its own, else
    /// at the only user with a match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

/// Acknowledges a kept envelope: the client has it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AckKept {
    /// The envelope's id (from [`EnvelopeHeader::id`]).
    pub id: String,
    /// Whose envelope (root only; default: the peer's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

/// Header of a [`Reply::Envelope`]: exactly `bytes` raw bytes of the signed
/// envelope (JSON) follow the reply frame on the connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EnvelopeHeader {
    /// Step name.
    pub step: String,
    /// The step's owner.
    pub owner_uid: u32,
    /// Id of the daemon's kept copy (acknowledge it once written); `None`
    /// when the daemon could not keep it (then this reply is the only copy).
    #[serde(default)]
    pub id: Option<String>,
    /// Length of the raw envelope that follows.
    pub bytes: u64,
    /// Who ended the step: `step end`, `run`, `idle`, `timeout`,
    /// `daemon shutdown`, ….
    #[serde(default)]
    pub ended_by: String,
    /// When the daemon kept it (seconds since the epoch; 0: unknown).
    #[serde(default)]
    pub kept_at: u64,
    /// Events lost in the kernel during the step (0 when not recorded).
    #[serde(default)]
    pub lost_events: u64,
    /// Set when an attestor failed the step (the envelope is still signed).
    #[serde(default)]
    pub failure: Option<String>,
}

/// One kept envelope, as [`Request::ListKept`] lists it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KeptInfo {
    /// Its id (for `cilock step fetch --id`).
    pub id: String,
    /// Step name.
    pub step: String,
    /// The step's owner.
    pub owner_uid: u32,
    /// Who ended the step.
    #[serde(default)]
    pub ended_by: String,
    /// When the daemon kept it (seconds since the epoch).
    #[serde(default)]
    pub kept_at: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Events lost in the kernel during the step (also in the envelope).
    #[serde(default)]
    pub lost_events: u64,
    /// Set when an attestor failed the step.
    #[serde(default)]
    pub failure: Option<String>,
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
        /// Id of the daemon's kept copy: acknowledge it with
        /// [`Request::AckKept`] once written (older daemons: absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept: Option<String>,
    },
    /// The request failed.
    Error(ApiError),
    /// A signed envelope: this header, then `bytes` raw bytes (`EndStep`
    /// with `stream`, and `FetchKept`).
    Envelope(EnvelopeHeader),
    /// `ListKept`.
    Kept {
        /// Kept envelopes, oldest first.
        entries: Vec<KeptInfo>,
    },
    /// `AckKept`: the kept copy is deleted.
    Acked {
        /// Its id.
        id: String,
    },
}

/// Bytes sent after a reply frame (the raw envelope of a [`Reply::Envelope`]).
#[derive(Debug)]
pub enum Payload {
    /// A kept envelope's file, read from its start.
    File(std::fs::File),
    /// In memory (when keeping it failed).
    Bytes(Vec<u8>),
}

/// A reply and what follows it.
#[derive(Debug)]
pub struct Outgoing {
    /// The reply frame.
    pub reply: Reply,
    /// Raw bytes after the frame (exactly the header's `bytes`).
    pub payload: Option<Payload>,
}

impl From<Reply> for Outgoing {
    fn from(reply: Reply) -> Self {
        Outgoing {
            reply,
            payload: None,
        }
    }
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
    /// Names of active steps (a non-root peer sees only its own).
    pub steps: Vec<String>,
    /// The same steps with their owners.
    #[serde(default)]
    pub active: Vec<ActiveStep>,
    /// Signing key id.
    pub keyid: String,
}

/// An active step and the uid that began it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ActiveStep {
    /// Step name.
    pub step: String,
    /// Owner uid.
    pub owner_uid: u32,
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
    /// A limit was reached (connections or steps per user, steps in all).
    TooMany,
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

/// What the server tells the service about the request in progress.
#[derive(Clone, Debug, Default)]
pub struct RequestCtx {
    gone: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RequestCtx {
    /// A context whose client is present.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the server saw the client hang up: a begin must not be
    /// carried out, an end's envelope must be kept instead of returned.
    pub fn client_gone(&self) -> bool {
        self.gone.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks the client as gone (the server does this).
    pub fn set_client_gone(&self) {
        self.gone.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the socket server dispatches authenticated requests to. Calls may
/// block (ending a step hashes files): the server runs them off the runtime.
pub trait StepService: Send + Sync + 'static {
    /// Daemon status as `peer` may see it (its own steps unless root).
    fn status(&self, peer: Peer) -> StatusReply;
    /// Begin a step for `peer`; not carried out once `cx.client_gone()`.
    fn begin(&self, peer: Peer, req: BeginStep, cx: &RequestCtx) -> Result<Reply, ApiError>;
    /// End a step for `peer`; the step ends even when the client is gone.
    fn end(&self, peer: Peer, req: EndStep, cx: &RequestCtx) -> Result<Reply, ApiError>;
    /// Keeps a success reply of `step` (owned by `peer`) that could not be
    /// delivered (the client hung up, or the reply is too large); returns
    /// where it was kept. The default keeps nothing.
    fn keep_undelivered(
        &self,
        peer: Peer,
        step: &str,
        reply: &Reply,
    ) -> Result<Option<std::path::PathBuf>, String> {
        let _ = (peer, step, reply);
        Ok(None)
    }
    /// `EndStep` with `stream`: ends the step like [`StepService::end`]
    /// and returns a [`Reply::Envelope`] with the envelope as payload. The
    /// default sends [`StepService::end`]'s reply as is.
    fn end_stream(&self, peer: Peer, req: EndStep, cx: &RequestCtx) -> Result<Outgoing, ApiError> {
        self.end(peer, req, cx).map(Outgoing::from)
    }
    /// Lists kept envelopes. The default keeps none.
    fn list_kept(&self, peer: Peer, req: ListKept) -> Result<Reply, ApiError> {
        let _ = (peer, req);
        Ok(Reply::Kept {
            entries: Vec::new(),
        })
    }
    /// Sends a kept envelope. The default keeps none.
    fn fetch_kept(&self, peer: Peer, req: FetchKept) -> Result<Outgoing, ApiError> {
        let _ = (peer, req);
        Err(ApiError::new(
            ErrorKind::NotFound,
            "this daemon keeps no envelopes",
        ))
    }
    /// Deletes a kept envelope the client has. The default keeps none.
    fn ack_kept(&self, peer: Peer, req: AckKept) -> Result<Reply, ApiError> {
        let _ = peer;
        Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no kept envelope {:?}", req.id),
        ))
    }
}
