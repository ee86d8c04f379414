//! The daemon ↔ CLI contract of cilock: the messages on the daemon's Unix
//! socket, their framing, the blocking client the CLI uses, and the service
//! trait the daemon's socket server dispatches to. No tracing code lives
//! here: a CLI that only talks to the daemon (or only verifies) links this
//! crate and `cilock-evidence`, never the engine or aya.
//!
//! - [`message`]: [`Request`], [`Reply`] and their bodies (the JSON on the
//!   wire), [`ApiError`].
//! - [`frame`]: the sans-IO frame decoder the server reads requests with.
//! - [`client`]: one request, one reply, blocking (the CLI's side).
//! - [`service`]: [`StepService`], what the server calls per request, with
//!   the authenticated [`Peer`].
//! - [`timefmt`]: durations and timestamps as both sides write them.
//! - [`manpage`]: man pages as both binaries write them.
//!
//! # Wire format
//!
//! Each message is a 4-byte big-endian length followed by that many bytes
//! of JSON (one request per connection is typical, but a connection may
//! carry several). Requests over the daemon's `max_request` (default
//! [`DEFAULT_MAX_REQUEST`]) and replies over [`MAX_MESSAGE`] are refused.
//! One exception: a [`Reply::Envelope`] frame is followed by exactly its
//! header's `bytes` raw bytes (the signed envelope, of any size), outside
//! any frame, then its `slsa_bytes` raw bytes (the SLSA provenance export
//! envelope, when the step asked for one; 0 otherwise).

#![deny(missing_docs)]

pub mod client;
pub mod frame;
pub mod manpage;
pub mod message;
pub mod service;
pub mod timefmt;

use std::time::Duration;

pub use message::{
    AckKept, ActiveStep, ApiError, BeginStep, EndStep, EnvelopeHeader, ErrorKind, FetchKept,
    KeptInfo, ListKept, Reply, Request, StatusReply, StoreOutcome,
};
pub use service::{Outgoing, Payload, Peer, RequestCtx, StepService};

/// Default socket path; `CILOCK_SOCKET` overrides it everywhere.
pub const DEFAULT_SOCKET: &str = "/run/cilock/cilock.sock";
/// The daemon's configuration file when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/cilock/cilock.toml";
/// The daemon's signing key when the configuration names none.
pub const DEFAULT_KEY: &str = "/etc/cilock/signing-key.pem";
/// The group whose members may use the socket when the configuration names none.
pub const DEFAULT_GROUP: &str = "cilock";
/// Environment variable naming the socket.
pub const SOCKET_ENV: &str = "CILOCK_SOCKET";
/// Largest reply sent or accepted (replies carry envelopes with stdout);
/// also the ceiling of the daemon's `max_request`.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Default largest request the daemon accepts (`max_request`).
pub const DEFAULT_MAX_REQUEST: usize = 64 * 1024 * 1024;
/// How long `cilock run` waits for the command's descendants once its root
/// process exited, when neither `--wait-descendants` nor the daemon's
/// `run_wait_descendants` says otherwise ([`EndStep::wait_descendants_ms`]
/// absent).
pub const DEFAULT_RUN_WAIT_DESCENDANTS: Duration = Duration::from_secs(30);

/// The socket path in effect (`CILOCK_SOCKET` or the default).
pub fn socket_path() -> std::path::PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}
