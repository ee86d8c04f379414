//! The CLI side of the daemon socket: one request, one reply, blocking.
//!
//! [`request`] connects to [`crate::socket_path`] (`CILOCK_SOCKET` or
//! `/run/cilock/cilock.sock`), sends the request framed as described in
//! [crate docs](crate), and waits for the reply. A daemon error reply
//! ([`Reply::Error`]) is returned as [`ClientError::Daemon`], so `Ok` always
//! holds a success reply.
//!
//! [`ClientError::Unavailable`] means no daemon is running (the socket file
//! is absent, or nothing listens on it): `cilock run` then falls back to the
//! in-process engine. Every other error (permission denied on the socket,
//! a daemon refusal, a timeout, a protocol error) is reported as is.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cilock_evidence::dsse::Envelope;

use crate::{
    socket_path, AckKept, ApiError, EndStep, EnvelopeHeader, FetchKept, KeptInfo, ListKept, Reply,
    Request, MAX_MESSAGE,
};

/// Largest envelope a client accepts after a [`Reply::Envelope`] (4 GiB).
pub const MAX_ENVELOPE: u64 = 4 << 30;

/// A signed envelope received from the daemon.
#[derive(Clone, Debug)]
pub struct Received {
    /// What the daemon says about it (its kept id among others).
    pub header: EnvelopeHeader,
    /// The envelope, byte for byte as the daemon keeps it.
    pub bytes: Vec<u8>,
    /// The SLSA provenance export envelope the daemon sent after it
    /// (`--attestor-slsa-export`), if any.
    pub slsa: Option<Vec<u8>>,
}

impl Received {
    /// The envelope parsed as DSSE ([`Received::bytes`] stay the copy to
    /// write: parsing and re-encoding may reorder fields).
    pub fn envelope(&self) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }
}

/// Why a request did not produce a success reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon: the socket does not exist or nothing listens on it.
    #[error("cilock-daemon is not running (no listener on {}): {source}", path.display())]
    Unavailable {
        /// The socket path tried.
        path: PathBuf,
        /// The connect error (`NotFound` or `ConnectionRefused`).
        source: io::Error,
    },
    /// Connecting failed for another reason (typically permission denied:
    /// the user is not in the daemon's group).
    #[error("cannot connect to cilock-daemon at {}: {source}", path.display())]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// Sending the request or receiving the reply failed.
    #[error("talking to cilock-daemon at {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The daemon did not answer within the timeout.
    #[error("cilock-daemon at {} did not answer within {} s", path.display(), timeout.as_secs())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The daemon closed the connection without replying.
    #[error("cilock-daemon at {} closed the connection without a reply", path.display())]
    NoReply {
        /// The socket path.
        path: PathBuf,
    },
    /// The reply is not a valid frame or not valid JSON, or the request is
    /// too large to send.
    #[error("protocol error with cilock-daemon: {0}")]
    Protocol(String),
    /// The daemon refused or failed the request.
    #[error("cilock-daemon: {0}")]
    Daemon(ApiError),
}

impl ClientError {
    /// True when no daemon is running (fall back to the embedded engine).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. })
    }
}

/// How to reach the daemon.
#[derive(Clone, Debug)]
pub struct Client {
    /// Socket path.
    pub socket: PathBuf,
    /// Time allowed to send the request.
    pub write_timeout: Duration,
    /// Time allowed for the reply to arrive. `None`: per request kind
    /// (`status` 10 s, `begin-step` 2 min, `end-step` 30 min, since ending
    /// a step hashes the workspace).
    pub reply_timeout: Option<Duration>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(socket_path())
    }
}

impl Client {
    /// A client for the socket at `socket`, with default timeouts.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            write_timeout: Duration::from_secs(30),
            reply_timeout: None,
        }
    }

    /// Sends `req` and returns the daemon's success reply. A
    /// [`Reply::Envelope`]'s raw bytes are left unread: use
    /// [`Client::request_envelope`] for requests that get one.
    pub fn request(&self, req: &Request) -> Result<Reply, ClientError> {
        self.exchange(req).map(|(reply, _, _)| reply)
    }

    /// Sends `req` (an `EndStep` with `stream`, or a `FetchKept`) and
    /// returns the envelope the daemon sends: the header and exactly its
    /// `bytes` raw bytes. An older daemon's inline [`Reply::Ended`] is
    /// turned into the same shape (no kept id).
    pub fn request_envelope(&self, req: &Request) -> Result<Received, ClientError> {
        let (reply, mut stream, timeout) = self.exchange(req)?;
        match reply {
            Reply::Envelope(header) => {
                if header.bytes > MAX_ENVELOPE {
                    return Err(ClientError::Protocol(format!(
                        "an envelope of {} bytes exceeds the {MAX_ENVELOPE}-byte limit",
                        header.bytes
                    )));
                }
                let mut bytes = Vec::with_capacity(header.bytes.min(64 << 20) as usize);
                let n = (&mut stream)
                    .take(header.bytes)
                    .read_to_end(&mut bytes)
                    .map_err(|e| self.classify(e, timeout))?;
                if (n as u64) < header.bytes {
                    return Err(ClientError::Protocol(format!(
                        "the daemon hung up after {n} of {} envelope bytes{}",
                        header.bytes,
                        header
                            .id
                            .as_ref()
                            .map(|id| format!(
                                " (it keeps the envelope: cilock step fetch --id {id})"
                            ))
                            .unwrap_or_default()
                    )));
                }
                let mut slsa = None;
                if header.slsa_bytes > 0 {
                    if header.slsa_bytes > MAX_ENVELOPE {
                        return Err(ClientError::Protocol(format!(
                            "an SLSA export of {} bytes exceeds the {MAX_ENVELOPE}-byte limit",
                            header.slsa_bytes
                        )));
                    }
                    let mut b = Vec::with_capacity(header.slsa_bytes.min(64 << 20) as usize);
                    let n = (&mut stream)
                        .take(header.slsa_bytes)
                        .read_to_end(&mut b)
                        .map_err(|e| self.classify(e, timeout))?;
                    if (n as u64) < header.slsa_bytes {
                        return Err(ClientError::Protocol(format!(
                            "the daemon hung up after {n} of {} SLSA export bytes",
                            header.slsa_bytes
                        )));
                    }
                    slsa = Some(b);
                }
                Ok(Received {
                    header,
                    bytes,
                    slsa,
                })
            }
            Reply::Ended {
                envelope,
                lost_events,
                failure,
                kept,
                stored,
                slsa_envelope,
                slsa_error,
            } => {
                let bytes = serde_json::to_vec(&envelope).map_err(|e| {
                    ClientError::Protocol(format!("cannot encode the envelope: {e}"))
                })?;
                let slsa = match &slsa_envelope {
                    Some(v) => Some(serde_json::to_vec(v).map_err(|e| {
                        ClientError::Protocol(format!("cannot encode the SLSA export: {e}"))
                    })?),
                    None => None,
                };
                let step = match req {
                    Request::EndStep(e) => e.step.clone(),
                    _ => String::new(),
                };
                Ok(Received {
                    header: EnvelopeHeader {
                        step,
                        // SAFETY: geteuid has no preconditions. (A non-root
                        // client ends only its own steps.)
                        owner_uid: unsafe { libc::geteuid() },
                        id: kept,
                        bytes: bytes.len() as u64,
                        ended_by: String::new(),
                        kept_at: 0,
                        lost_events,
                        failure,
                        stored,
                        slsa_bytes: slsa.as_ref().map_or(0, |b| b.len() as u64),
                        slsa_error,
                        slsa_stored: Vec::new(),
                    },
                    bytes,
                    slsa,
                })
            }
            other => Err(ClientError::Protocol(format!(
                "unexpected reply from the daemon: {other:?}"
            ))),
        }
    }

    /// Ends a step (the daemon streams the envelope: any size).
    pub fn end_step(&self, mut req: EndStep) -> Result<Received, ClientError> {
        req.stream = true;
        self.request_envelope(&Request::EndStep(req))
    }

    /// Fetches a kept envelope.
    pub fn fetch(&self, req: FetchKept) -> Result<Received, ClientError> {
        self.request_envelope(&Request::FetchKept(req))
    }

    /// Lists kept envelopes.
    pub fn list_kept(&self, req: ListKept) -> Result<Vec<KeptInfo>, ClientError> {
        match self.request(&Request::ListKept(req))? {
            Reply::Kept { entries } => Ok(entries),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply from the daemon: {other:?}"
            ))),
        }
    }

    /// Tells the daemon the envelope of `header` is written where it
    /// belongs: it deletes its kept copy. Nothing to do without an id.
    pub fn acknowledge(&self, header: &EnvelopeHeader) -> Result<(), ClientError> {
        let Some(id) = &header.id else { return Ok(()) };
        let req = Request::AckKept(AckKept {
            id: id.clone(),
            owner_uid: Some(header.owner_uid),
        });
        match self.request(&req)? {
            Reply::Acked { .. } => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply from the daemon: {other:?}"
            ))),
        }
    }

    fn exchange(&self, req: &Request) -> Result<(Reply, UnixStream, Duration), ClientError> {
        let reply_timeout = self.reply_timeout.unwrap_or(match req {
            Request::Status | Request::ListKept(_) | Request::AckKept(_) => Duration::from_secs(10),
            Request::BeginStep(_) => Duration::from_secs(120),
            Request::EndStep(_) => Duration::from_secs(30 * 60),
            Request::FetchKept(_) => Duration::from_secs(120),
        });
        let body = serde_json::to_vec(req)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        if body.len() > MAX_MESSAGE {
            return Err(ClientError::Protocol(format!(
                "request of {} bytes exceeds the {MAX_MESSAGE}-byte limit",
                body.len()
            )));
        }
        let mut stream = self.connect()?;
        let io_err = |source: io::Error| ClientError::Io {
            path: self.socket.clone(),
            source,
        };
        stream
            .set_write_timeout(Some(nonzero(self.write_timeout)))
            .map_err(io_err)?;
        stream
            .set_read_timeout(Some(nonzero(reply_timeout)))
            .map_err(io_err)?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        if let Err(e) = stream.write_all(&frame).and_then(|()| stream.flush()) {
            // The daemon may have answered (e.g. Forbidden, or an oversize
            // refusal) and closed before reading everything: prefer its reply.
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                if let Ok(reply) = self.read_reply(&mut stream, reply_timeout) {
                    return into_result(reply).map(|r| (r, stream, reply_timeout));
                }
            }
            return Err(self.classify(e, self.write_timeout));
        }
        let reply = self.read_reply(&mut stream, reply_timeout)?;
        into_result(reply).map(|r| (r, stream, reply_timeout))
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        match UnixStream::connect(&self.socket) {
            Ok(s) => Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Err(ClientError::Unavailable {
                    path: self.socket.clone(),
                    source: e,
                })
            }
            Err(e) => Err(ClientError::Connect {
                path: self.socket.clone(),
                source: e,
            }),
        }
    }

    fn classify(&self, e: io::Error, timeout: Duration) -> ClientError {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout {
                path: self.socket.clone(),
                timeout,
            }
        } else {
            ClientError::Io {
                path: self.socket.clone(),
                source: e,
            }
        }
    }

    fn read_reply(&self, stream: &mut UnixStream, timeout: Duration) -> Result<Reply, ClientError> {
        let mut hdr = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match stream.read(&mut hdr[got..]) {
                Ok(0) if got == 0 => {
                    return Err(ClientError::NoReply {
                        path: self.socket.clone(),
                    })
                }
                Ok(0) => {
                    return Err(ClientError::Protocol(
                        "the daemon hung up inside a reply header".into(),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.classify(e, timeout)),
            }
        }
        let len = u32::from_be_bytes(hdr) as usize;
        if len > MAX_MESSAGE {
            return Err(ClientError::Protocol(format!(
                "reply of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"
            )));
        }
        let mut body = Vec::with_capacity(len.min(1 << 20));
        let n = (&mut *stream)
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(|e| self.classify(e, timeout))?;
        if n < len {
            return Err(ClientError::Protocol(format!(
                "the daemon hung up after {n} of {len} reply bytes"
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("invalid reply from the daemon: {e}")))
    }
}

fn nonzero(d: Duration) -> Duration {
    // A zero timeout is rejected by the socket API.
    d.max(Duration::from_millis(1))
}

fn into_result(reply: Reply) -> Result<Reply, ClientError> {
    match reply {
        Reply::Error(e) => Err(ClientError::Daemon(e)),
        r => Ok(r),
    }
}

/// Sends `req` to the daemon at [`socket_path`] with default timeouts and
/// returns its success reply (see the [module docs](self)).
pub fn request(req: &Request) -> Result<Reply, ClientError> {
    Client::default().request(req)
}

/// [`Client::end_step`] on the default socket.
pub fn end_step(req: EndStep) -> Result<Received, ClientError> {
    Client::default().end_step(req)
}

/// [`Client::acknowledge`] on the default socket.
pub fn acknowledge(header: &EnvelopeHeader) -> Result<(), ClientError> {
    Client::default().acknowledge(header)
}

/// Like [`request`], on the socket at `socket`.
pub fn request_at(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
    Client::new(socket).request(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_envelope_parses_as_dsse_and_keeps_its_bytes() {
        let bytes = br#"{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"k","sig":"AAE="}]}"#.to_vec();
        let got = Received {
            header: EnvelopeHeader {
                bytes: bytes.len() as u64,
                ..Default::default()
            },
            bytes: bytes.clone(),
            slsa: None,
        };
        let env = got.envelope().unwrap();
        assert_eq!(env.payload, b"{}");
        assert_eq!(env.payload_type, "application/vnd.in-toto+json");
        assert_eq!(env.signatures.len(), 1);
        assert_eq!(env.signatures[0].keyid, "k");
        assert_eq!(env.signatures[0].sig, [0, 1]);
        assert_eq!(got.bytes, bytes);
        let not_dsse = Received {
            bytes: br#"{"step":"x"}"#.to_vec(),
            ..got
        };
        assert!(not_dsse.envelope().is_err());
    }
}
