//! Lossless text for names that are bytes (paths, argv, cwd, comm).
//!
//! Linux names are byte strings; evidence is JSON text. A name is written
//! as text by [`escape`]:
//! - a backslash becomes `\\`;
//! - every byte that is not part of valid UTF-8 becomes `\xHH` (two
//!   lowercase hex digits);
//! - everything else (valid UTF-8, including U+FFFD itself) is unchanged.
//!
//! [`unescape`] inverts it exactly, so distinct names never share a text:
//! `coll-\xff.bin` (the byte 0xFF) and `coll-�.bin` (a file really named
//! with U+FFFD) stay two entries, and the digest cache opens the real bytes.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// `path` (absolute) with `.`, `..` and repeated `/` resolved as text,
/// without touching the file system (Go's `path.Clean` for an absolute
/// path: `/a//b/./c/../d/` → `/a/b/d`, `/../x` → `/x`).
pub fn lexically_normal(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The escaped text of `bytes` (see the module documentation).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_text(&mut out, s);
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // SAFETY-free: `good` is valid UTF-8 by construction.
                push_text(&mut out, std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
}

fn push_text(out: &mut String, s: &str) {
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
}

/// The bytes [`escape`] made `text` from; `None` if `text` is not in the
/// escaped form (a lone backslash, an unknown or short escape).
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = |c: u8| match c {
                    b'0'..=b'9' => Some(c - b'0'),
                    b'a'..=b'f' => Some(c - b'a' + 10),
                    _ => None,
                };
                let hi = hex(*b.get(i + 2)?)?;
                let lo = hex(*b.get(i + 3)?)?;
                out.push(hi << 4 | lo);
                i += 4;
            }
            _ => return None,
        }
    }
    // Only bytes that are not valid UTF-8 are ever written as \xHH: an
    // escape that spells valid UTF-8 is not a text escape() produces.
    (escape(&out) == text).then_some(out)
}

/// [`escape`] of an OS string.
pub fn escape_os(s: impl Into<OsString>) -> String {
    escape(&s.into().into_vec())
}

/// The path an escaped text names, for opening it.
pub fn to_path(text: &str) -> Option<PathBuf> {
    unescape(text).map(|b| PathBuf::from(OsString::from_vec(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        assert_eq!(escape(b"/etc/hosts"), "/etc/hosts");
        assert_eq!(escape(b"bad-\xff\xfe.bin"), "bad-\\xff\\xfe.bin");
        assert_eq!(escape(b"a\\b"), "a\\\\b");
        assert_eq!(escape("ünï €".as_bytes()), "ünï €");
        // A truncated multi-byte sequence: each byte escaped.
        assert_eq!(escape(b"x\xe2\x82"), "x\\xe2\\x82");
        assert_eq!(escape(b"\xe2\x82y"), "\\xe2\\x82y");
        // A backslash followed by "xff" in a real name is not the byte.
        assert_eq!(escape(b"\\xff"), "\\\\xff");
        assert_eq!(unescape("\\\\xff").unwrap(), b"\\xff");
        assert_eq!(unescape("bad-\\xff\\xfe.bin").unwrap(), b"bad-\xff\xfe.bin");
        for bad in ["\\", "a\\", "\\q", "\\x", "\\xf", "\\xfg", "\\xFF", "\\x41"] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_replacement_character_decoy_stays_distinct() {
        let real = escape(b"coll-\xff.bin");
        let decoy = escape(b"coll-\xef\xbf\xbd.bin");
        assert_eq!(decoy, "coll-\u{fffd}.bin");
        assert_eq!(real, "coll-\\xff.bin");
        assert_ne!(real, decoy);
        assert_eq!(unescape(&decoy).unwrap(), b"coll-\xef\xbf\xbd.bin");
        assert_eq!(
            to_path(&real).unwrap().as_os_str().as_bytes(),
            b"coll-\xff.bin"
        );
    }

    use std::os::unix::ffi::OsStrExt;

    /// Fuzz-style: arbitrary byte strings (biased to backslashes, `x`, hex
    /// digits, UTF-8 lead and continuation bytes) round-trip, and escaping
    /// is injective (checked on every pair of a batch).
    #[test]
    fn round_trips_arbitrary_bytes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const ALPHABET: &[u8] = b"\\xXf0a/.\xc3\xa9\xe2\x82\xac\xef\xbf\xbd\xf0\x9f\x98\x80\x80\xbf\xff\xfe\xc0\xed\xa0";
        let mut batch: Vec<Vec<u8>> = Vec::new();
        for round in 0..20_000 {
            let len = (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 3 == 0 {
                        (r >> 8) as u8
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            let text = escape(&bytes);
            assert_eq!(
                unescape(&text).as_deref(),
                Some(bytes.as_slice()),
                "{bytes:?} → {text:?}"
            );
            batch.push(bytes);
            if round % 200 == 199 {
                let texts: Vec<String> = batch.iter().map(|b| escape(b)).collect();
                for i in 0..batch.len() {
                    for j in 0..i {
                        if batch[i] != batch[j] {
                            assert_ne!(texts[i], texts[j], "{:?} {:?}", batch[i], batch[j]);
                        }
                    }
                }
                batch.clear();
            }
        }
        // Every single byte and every pair.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let v = [a, b];
                assert_eq!(unescape(&escape(&v)).as_deref(), Some(&v[..]));
            }
        }
    }
}
