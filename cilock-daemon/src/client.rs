//! The CLI side of the daemon socket: one request, one reply, blocking.
//!
//! [`request`] connects to [`crate::api::socket_path`] (`CILOCK_SOCKET` or
//! `/run/cilock/cilock.sock`), sends the request framed as described in
//! [`crate::api`], and waits for the reply. A daemon error reply
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

use crate::api::{socket_path, ApiError, Reply, Request, MAX_MESSAGE};

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

    /// Sends `req` and returns the daemon's success reply.
    pub fn request(&self, req: &Request) -> Result<Reply, ClientError> {
        let reply_timeout = self.reply_timeout.unwrap_or(match req {
            Request::Status => Duration::from_secs(10),
            Request::BeginStep(_) => Duration::from_secs(120),
            Request::EndStep(_) => Duration::from_secs(30 * 60),
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
                    return into_result(reply);
                }
            }
            return Err(self.classify(e, self.write_timeout));
        }
        let reply = self.read_reply(&mut stream, reply_timeout)?;
        into_result(reply)
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

/// Like [`request`], on the socket at `socket`.
pub fn request_at(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
    Client::new(socket).request(req)
}
