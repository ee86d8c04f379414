//! The messages of the daemon socket: a [`Request`] from the CLI, the
//! daemon's [`Reply`], and their bodies. Every type here is the JSON on the
//! wire (see the [crate docs](crate) for the framing); field names and
//! defaults are the protocol, so older clients and daemons keep working.

use serde::{Deserialize, Serialize};

/// A request from the CLI.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "kebab-case")]
#[expect(
    clippy::large_enum_variant,
    reason = "one request per connection, parsed once: a box would only add a step to every constructor"
)]
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
    /// What became of the daemon's pushes of this envelope to the stores of
    /// its configuration (`store`), one per store; empty when it has none
    /// (or is older).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<StoreOutcome>,
    /// Length of the SLSA provenance export (`--attestor-slsa-export`: a
    /// DSSE envelope of an in-toto Statement v1, signed by the daemon) that
    /// follows the envelope's `bytes`; 0 when none follows. An older
    /// client reads `bytes` and ignores the rest.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slsa_bytes: u64,
    /// Why no SLSA provenance export follows although the step asked for
    /// one (e.g. the step has no product to be its subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slsa_error: Option<String>,
    /// What became of the daemon's pushes of the SLSA provenance export to
    /// its stores (as [`EnvelopeHeader::stored`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slsa_stored: Vec<StoreOutcome>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The daemon's push of a signed envelope to one store of its
/// configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreOutcome {
    /// The store (`oci://HOST/REPO`).
    pub url: String,
    /// Pushed (blob and referrers).
    pub ok: bool,
    /// What was pushed (blob digest, referrers), or why it failed and
    /// where the daemon keeps the envelope for its retries.
    #[serde(default)]
    pub detail: String,
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
        /// The daemon's pushes to its stores ([`EnvelopeHeader::stored`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stored: Vec<StoreOutcome>,
        /// The SLSA provenance export envelope, when the step asked for
        /// one ([`EnvelopeHeader::slsa_bytes`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slsa_envelope: Option<serde_json::Value>,
        /// [`EnvelopeHeader::slsa_error`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slsa_error: Option<String>,
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
