//! The server side of the contract: what the daemon's socket server
//! dispatches an authenticated request to ([`StepService`]), who asked
//! ([`Peer`]), what the server tells the service while a request runs
//! ([`RequestCtx`]), and a reply with the raw bytes that follow it
//! ([`Outgoing`]).

use crate::message::{
    AckKept, ApiError, BeginStep, EndStep, ErrorKind, FetchKept, ListKept, Reply, StatusReply,
};

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
    /// Raw bytes after the payload: the SLSA provenance export envelope
    /// (exactly the header's `slsa_bytes`).
    pub slsa: Option<Vec<u8>>,
}

impl From<Reply> for Outgoing {
    fn from(reply: Reply) -> Self {
        Outgoing {
            reply,
            payload: None,
            slsa: None,
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
