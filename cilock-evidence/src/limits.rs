//! Bounded reads of the files a user names on the command line (envelopes,
//! policies, keys, certificates, files to sign): a file over its limit, or
//! an endless stream such as `/dev/zero`, is an error after at most the
//! limit has been read, never an unbounded allocation.
//!
//! A regular file larger than the limit is refused from its size, before
//! any byte is read. Other files (devices, pipes) are read in chunks up to
//! the limit. [`read_file`] can also check the first bytes
//! ([`json_object_start`] for envelopes), so `/dev/zero` given as an
//! envelope fails on its first chunk.

use std::io::{self, Read};
use std::path::Path;

/// Largest DSSE envelope (attestation or policy) read: 256 MiB, the
/// daemon's largest reply.
pub const MAX_ENVELOPE_BYTES: u64 = 256 << 20;
/// Largest key or certificate file read: 1 MiB.
pub const MAX_KEY_BYTES: u64 = 1 << 20;
/// Largest file `cilock sign` wraps: 128 MiB (its base64 in an envelope
/// stays under [`MAX_ENVELOPE_BYTES`]).
pub const MAX_SIGN_INPUT_BYTES: u64 = 128 << 20;

const CHUNK: usize = 64 * 1024;

fn human(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Reads all of `path`, at most `max` bytes; `what` names the file in
/// errors ("policy", "public key"). `check_start` sees the first chunk read
/// (up to 64 KiB, or the whole file if smaller) and may refuse it.
pub fn read_file(
    path: &Path,
    max: u64,
    what: &str,
    check_start: impl Fn(&[u8]) -> Result<(), String>,
) -> io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a directory",
        ));
    }
    let limit = |detail: String| io::Error::new(io::ErrorKind::InvalidData, detail);
    if meta.is_file() && meta.len() > max {
        return Err(limit(format!(
            "the file has {} bytes, more than the {} limit for a {what}",
            meta.len(),
            human(max)
        )));
    }
    let reserve = if meta.is_file() {
        meta.len().min(max) as usize + 1
    } else {
        CHUNK
    };
    let mut buf: Vec<u8> = Vec::with_capacity(reserve);
    let mut checked = false;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.len() as u64 + n as u64 > max {
            return Err(limit(if meta.is_file() {
                format!(
                    "the file grew past the {} limit for a {what} while it was read",
                    human(max)
                )
            } else {
                format!(
                    "not a regular file, and more than the {} limit for a {what} could be read from it",
                    human(max)
                )
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !checked && (buf.len() >= CHUNK || !meta.is_file() || buf.len() as u64 >= meta.len()) {
            checked = true;
            check_start(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
    if !checked {
        check_start(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(buf)
}

/// A [`read_file`] check for JSON documents: the first byte that is not
/// white space must open an object.
pub fn json_object_start(start: &[u8]) -> Result<(), String> {
    match start.iter().find(|b| !b.is_ascii_whitespace()) {
        None | Some(b'{') => Ok(()),
        Some(b) if b.is_ascii_graphic() => Err(format!(
            "not a JSON object: it starts with {:?}",
            char::from(*b)
        )),
        Some(b) => Err(format!("not a JSON object: it starts with byte 0x{b:02x}")),
    }
}

/// No check of the first bytes.
pub fn any_start(_: &[u8]) -> Result<(), String> {
    Ok(())
}
