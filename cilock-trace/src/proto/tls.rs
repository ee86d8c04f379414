//! TLS ClientHello parsing: the server name (SNI) and ALPN a process offered
//! at the start of a TCP stream.
//!
//! Works on untrusted bytes from the traced job: no function panics on any
//! input, every length is checked, and at most [`MAX_CLIENT_HELLO`] bytes
//! are looked at.

use super::dns::be16;
use tls_parser::{
    parse_tls_extensions, parse_tls_message_handshake, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

/// Largest ClientHello we try to reassemble (TLS allows 2^24, real hellos
/// with post-quantum key shares are under 2 KB).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Result of looking for a TLS ClientHello at the start of a TCP stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// A complete ClientHello.
    Hello {
        /// The `host_name` server name, if present (and valid UTF-8).
        sni: Option<String>,
        /// ALPN protocol names offered.
        alpn: Vec<String>,
    },
    /// The bytes so far are a plausible prefix of a ClientHello: keep
    /// buffering the stream.
    Incomplete,
    /// The stream does not start with a TLS ClientHello.
    NotTls,
}

/// Parses the first bytes a client wrote on a TCP connection. The
/// ClientHello may span several TLS handshake records (as large post-quantum
/// hellos do) and several writes: the caller concatenates what the process
/// wrote and calls again while the answer is [`ClientHello::Incomplete`].
/// [`client_hello_prefix`] tells what the bytes so far already show (the
/// server name is usually in the first few hundred bytes).
pub fn parse_client_hello(bytes: &[u8]) -> ClientHello {
    match client_hello_prefix(bytes) {
        None => ClientHello::NotTls,
        Some(p) if p.complete => ClientHello::Hello {
            sni: p.sni,
            alpn: p.alpn.unwrap_or_default(),
        },
        Some(_) => ClientHello::Incomplete,
    }
}

/// What the first bytes of a TLS stream show of its ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelloPrefix {
    /// The `host_name` server name, once its extension was read whole (and
    /// it is valid UTF-8).
    pub sni: Option<String>,
    /// The ALPN protocol names, once the ALPN extension was read whole
    /// (`None`: not offered, or not reached yet).
    pub alpn: Option<Vec<String>>,
    /// Whether the whole ClientHello was read. When false, extensions after
    /// the cut (possibly the ALPN or even the server name) are unknown.
    pub complete: bool,
    /// Whether the `server_name` extension was read whole.
    pub sni_seen: bool,
    /// The hello is malformed: an extension's content is (the entries
    /// before the fault are kept), an extension is repeated (the first
    /// counts), or a length runs past its end after something was found
    /// (parsing stopped there; `complete` is set as more bytes cannot help).
    pub malformed: bool,
}

/// Largest TLS record fragment accepted (RFC 8446 5.1: 2^14, plus the
/// expansion TLS 1.2 allowed).
const MAX_RECORD: usize = 16384 + 2048;

/// Streaming parser of a ClientHello: reads the record headers, the
/// handshake header, the fixed fields and the extensions in order, as far as
/// `bytes` go, and returns what it found before the end of the bytes.
/// Returns `None` when the bytes cannot be the start of a ClientHello (a
/// malformed length anywhere in the part read is not TLS). Never panics;
/// the work is linear in `bytes.len()` and bounded by [`MAX_CLIENT_HELLO`].
pub fn client_hello_prefix(bytes: &[u8]) -> Option<HelloPrefix> {
    // The handshake message bytes available, gathered from the records.
    let mut hs: Vec<u8> = Vec::new();
    let mut mlen: Option<usize> = None;
    let mut rest = bytes;
    // A record header after the first one is malformed: the hello ends
    // there (what was found before stays).
    let mut bad_record = false;
    loop {
        if let Some(m) = mlen {
            if hs.len() >= 4 + m {
                break;
            }
        }
        if rest.is_empty() {
            break;
        }
        let first = rest.len() == bytes.len();
        let sound = rest[0] == 0x16 && (rest.len() < 2 || rest[1] == 0x03);
        let len = if rest.len() >= 5 {
            u16::from_be_bytes([rest[3], rest[4]]) as usize
        } else {
            1
        };
        // Zero-length handshake fragments are not allowed.
        if !sound || len == 0 || len > MAX_RECORD {
            if first {
                return None;
            }
            bad_record = true;
            break;
        }
        if rest.len() < 5 {
            break;
        }
        let avail = &rest[5..];
        let take = len.min(avail.len());
        hs.extend_from_slice(&avail[..take]);
        if hs.first().is_some_and(|&t| t != 0x01) {
            return None;
        }
        if mlen.is_none() && hs.len() >= 4 {
            let m = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
            if !(38..=MAX_CLIENT_HELLO).contains(&m) {
                return None;
            }
            mlen = Some(m);
        }
        if hs.len() > MAX_CLIENT_HELLO + 4 {
            return None;
        }
        if take < len {
            break;
        }
        rest = &avail[len..];
    }
    let mut out = HelloPrefix::default();
    let Some(m) = mlen else {
        // Not even the handshake header yet.
        return (!bad_record).then_some(out);
    };
    hs.truncate(4 + m);
    // `end` bounds every length by the declared message; `hs.len()` is what
    // we have. A read past `end` is malformed; past `hs.len()`, cut.
    let body = &hs[4..];
    let end = m;
    let mut c = Cursor {
        b: body,
        pos: 0,
        end,
    };
    let step = match parse_hello_body(&mut c, &mut out) {
        Step::Cut if bad_record => Step::Bad,
        s => s,
    };
    match step {
        Step::Done => {
            out.complete = true;
            Some(out)
        }
        Step::Cut => Some(out),
        // What was found before a malformation stays found: a server name
        // must not vanish because of garbage after it.
        Step::Bad if out.sni_seen || out.alpn.is_some() => {
            out.complete = true;
            out.malformed = true;
            Some(out)
        }
        Step::Bad => None,
    }
}

/// Outcome of one step of the ClientHello parser.
enum Step {
    Done,
    Cut,
    Bad,
}

/// A read position in a partially available message of declared length
/// `end` (of which `b` holds the first `b.len()` bytes).
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    /// The next `n` bytes: `Err(Bad)` past the declared end, `Err(Cut)`
    /// past the available bytes.
    fn take(&mut self, n: usize, limit: usize) -> Result<&'a [u8], Step> {
        let to = self.pos.checked_add(n).ok_or(Step::Bad)?;
        if to > limit || to > self.end {
            return Err(Step::Bad);
        }
        let s = self.b.get(self.pos..to).ok_or(Step::Cut)?;
        self.pos = to;
        Ok(s)
    }

    fn u8(&mut self, limit: usize) -> Result<usize, Step> {
        Ok(self.take(1, limit)?[0] as usize)
    }

    fn u16(&mut self, limit: usize) -> Result<usize, Step> {
        let s = self.take(2, limit)?;
        Ok(u16::from_be_bytes([s[0], s[1]]) as usize)
    }
}

fn parse_hello_body(c: &mut Cursor<'_>, out: &mut HelloPrefix) -> Step {
    match hello_fields(c, out) {
        Ok(()) => Step::Done,
        Err(s) => s,
    }
}

fn hello_fields(c: &mut Cursor<'_>, out: &mut HelloPrefix) -> Result<(), Step> {
    let end = c.end;
    let ver = c.take(2, end)?;
    if ver[0] != 0x03 {
        return Err(Step::Bad);
    }
    c.take(32, end)?; // random
    let sid = c.u8(end)?;
    if sid > 32 {
        return Err(Step::Bad);
    }
    c.take(sid, end)?;
    let cs = c.u16(end)?;
    if cs < 2 || cs % 2 != 0 {
        return Err(Step::Bad);
    }
    c.take(cs, end)?;
    let comp = c.u8(end)?;
    if comp < 1 {
        return Err(Step::Bad);
    }
    c.take(comp, end)?;
    if c.pos == end {
        return Ok(()); // no extensions
    }
    let elen = c.u16(end)?;
    let eend = c.pos + elen;
    if eend != end {
        return Err(Step::Bad);
    }
    while c.pos < eend {
        let typ = c.u16(eend)?;
        let len = c.u16(eend)?;
        let dend = c.pos.checked_add(len).ok_or(Step::Bad)?;
        if dend > eend {
            return Err(Step::Bad);
        }
        match typ {
            // A malformed or repeated extension is flagged, and parsing
            // goes on (its framing is sound): what a lax server would
            // read must not vanish from the record.
            0 => {
                let data = c.take(len, eend)?;
                let (sni, ok) = server_name(data);
                if out.sni_seen {
                    out.malformed = true;
                } else {
                    out.sni = sni;
                    out.sni_seen = true;
                }
                out.malformed |= !ok;
            }
            16 => {
                let data = c.take(len, eend)?;
                let (alpn, ok) = alpn_list(data);
                if out.alpn.is_some() {
                    out.malformed = true;
                } else {
                    out.alpn = Some(alpn);
                }
                out.malformed |= !ok;
            }
            _ => {
                // Skip what is there; the rest of the bytes may be cut.
                c.take(len, eend)?;
            }
        }
    }
    Ok(())
}

/// The `host_name` entry of a `server_name` extension (RFC 6066 3), and
/// whether the extension was well-formed (an entry found before a
/// malformation is kept).
fn server_name(d: &[u8]) -> (Option<String>, bool) {
    let mut host: Option<Option<String>> = None;
    let Some(n) = be16(d, 0) else {
        return (None, false);
    };
    let mut ok = n as usize + 2 == d.len() && n != 0;
    let d = &d[..(n as usize + 2).min(d.len())];
    let mut p = 2;
    while p < d.len() {
        let t = d[p];
        let Some(l) = be16(d, p + 1) else {
            ok = false;
            break;
        };
        let Some(name) = d.get(p + 3..p + 3 + l as usize) else {
            ok = false;
            break;
        };
        if t == 0 && host.is_none() {
            host = Some(std::str::from_utf8(name).ok().map(str::to_string));
        }
        p += 3 + l as usize;
    }
    (host.flatten(), ok)
}

/// The protocol names of an ALPN extension (RFC 7301 3.1), and whether the
/// list was well-formed (names before a malformation are kept).
fn alpn_list(d: &[u8]) -> (Vec<String>, bool) {
    let mut v = Vec::new();
    let Some(n) = be16(d, 0) else {
        return (v, false);
    };
    let mut ok = n as usize + 2 == d.len();
    let d = &d[..(n as usize + 2).min(d.len())];
    let mut p = 2;
    while p < d.len() {
        let l = d[p] as usize;
        match d.get(p + 1..p + 1 + l) {
            Some(name) if l > 0 => v.push(String::from_utf8_lossy(name).into_owned()),
            _ => {
                ok = false;
                break;
            }
        }
        p += 1 + l;
    }
    (v, ok)
}

/// Decodes a whole ClientHello handshake message with `tls-parser` (a
/// reference for differential tests of [`client_hello_prefix`]).
pub fn decode_with_tls_parser(msg: &[u8]) -> ClientHello {
    decode_hello(msg)
}

fn decode_hello(msg: &[u8]) -> ClientHello {
    let ch = match parse_tls_message_handshake(msg) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) => ch,
        _ => return ClientHello::NotTls,
    };
    let mut sni = None;
    let mut alpn = Vec::new();
    if let Some(ext) = ch.ext {
        match parse_tls_extensions(ext) {
            Ok((_, exts)) => {
                for e in exts {
                    match e {
                        TlsExtension::SNI(names) => {
                            if let Some((_, n)) = names.iter().find(|(t, _)| t.0 == 0) {
                                sni = std::str::from_utf8(n).ok().map(str::to_string);
                            }
                        }
                        TlsExtension::ALPN(protos) => {
                            alpn = protos
                                .iter()
                                .map(|p| String::from_utf8_lossy(p).into_owned())
                                .collect();
                        }
                        _ => {}
                    }
                }
            }
            Err(_) => return ClientHello::NotTls,
        }
    }
    ClientHello::Hello { sni, alpn }
}
