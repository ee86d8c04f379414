//! Digests: subject digests (`ALG:HEX`, the referrers tag schema's tag) and
//! content digests of blobs and manifests (`sha256:…`, `sha512:…`).

use sha2::{Digest as _, Sha256, Sha512};

use crate::StoreError;

/// The subject digest algorithms the store indexes, with their hex length.
pub(crate) const SUBJECT_ALGORITHMS: [(&str, usize); 3] =
    [("sha256", 64), ("sha512", 128), ("sha1", 40)];

fn hex_ok(hex: &str, len: usize) -> bool {
    hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses `ALG:HEX` (or a bare 64-hex sha256) into (algorithm, lowercase hex).
pub(crate) fn parse_subject(s: &str) -> Result<(String, String), StoreError> {
    let bad = |reason: String| StoreError::Digest {
        digest: s.to_string(),
        reason,
    };
    let (alg, hex) = match s.split_once(':') {
        Some((a, h)) => (a.to_ascii_lowercase(), h),
        None if s.len() == 64 => ("sha256".to_string(), s),
        None => {
            return Err(bad(
                "expected a subject digest ALG:HEX (sha256, sha512, sha1) or 64 hex digits".into(),
            ))
        }
    };
    let Some(&(_, len)) = SUBJECT_ALGORITHMS.iter().find(|(a, _)| *a == alg) else {
        return Err(bad(format!(
            "digest algorithm {alg:?} is not indexed: use sha256, sha512 or sha1"
        )));
    };
    if !hex_ok(hex, len) {
        return Err(bad(format!("a {alg} digest is {len} hex digits")));
    }
    Ok((alg, hex.to_ascii_lowercase()))
}

/// The referrers tag schema's tag of a subject: `<alg>-<hex>`, the
/// algorithm truncated to 32 and the hex to 64 characters (OCI
/// distribution spec 1.1, "Referrers Tag Schema"; a tag is at most 128
/// characters, so a sha512 subject's tag holds the first 64 hex digits).
pub(crate) fn tag_of(alg: &str, hex: &str) -> String {
    let a = &alg[..alg.len().min(32)];
    let h = &hex[..hex.len().min(64)];
    format!("{a}-{h}")
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks a content digest (`sha256:` 64 hex or `sha512:` 128 hex, lowercase
/// as registries write them); returns it unchanged.
pub(crate) fn check_content_digest(d: &str) -> Result<&str, String> {
    let ok = match d.split_once(':') {
        Some(("sha256", h)) => hex_ok(h, 64) && !h.bytes().any(|b| b.is_ascii_uppercase()),
        Some(("sha512", h)) => hex_ok(h, 128) && !h.bytes().any(|b| b.is_ascii_uppercase()),
        _ => false,
    };
    if ok {
        Ok(d)
    } else {
        Err(format!(
            "content digest {:?} is not sha256:<64 hex> or sha512:<128 hex>",
            truncate(d, 150)
        ))
    }
}

/// Whether `bytes` has the content digest `d` (checked with
/// [`check_content_digest`] first); returns the computed digest on mismatch.
pub(crate) fn verify_content(d: &str, bytes: &[u8]) -> Result<(), String> {
    let got = if d.starts_with("sha512:") {
        format!("sha512:{}", hex::encode(Sha512::digest(bytes)))
    } else {
        sha256_of(bytes)
    };
    if got == d {
        Ok(())
    } else {
        Err(got)
    }
}

/// At most `n` characters of `s` (for messages quoting remote text).
pub(crate) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";

    #[test]
    fn subjects() {
        assert_eq!(
            parse_subject(&format!("sha256:{H64}")).unwrap(),
            ("sha256".into(), H64.into())
        );
        assert_eq!(
            parse_subject(&H64.to_uppercase()).unwrap(),
            ("sha256".into(), H64.into())
        );
        let s1 = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parse_subject(&format!("SHA1:{s1}")).unwrap(),
            ("sha1".into(), s1.into())
        );
        let s512 = "a".repeat(128);
        assert_eq!(
            parse_subject(&format!("sha512:{s512}")).unwrap(),
            ("sha512".into(), s512.clone())
        );
        for (bad, needle) in [
            ("", "expected a subject digest"),
            ("abc", "expected a subject digest"),
            (
                "md5:0123456789abcdef0123456789abcdef",
                "\"md5\" is not indexed",
            ),
            ("sha256:abc", "a sha256 digest is 64 hex digits"),
            (&format!("sha256:{}", "g".repeat(64)), "64 hex digits"),
            (&format!("sha1:{H64}"), "a sha1 digest is 40 hex digits"),
            (&format!("sha256:{H64} "), "64 hex digits"),
        ] {
            let e = parse_subject(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of("sha256", H64), format!("sha256-{H64}"));
        let s512 = "b".repeat(128);
        assert_eq!(
            tag_of("sha512", &s512),
            format!("sha512-{}", "b".repeat(64))
        );
        assert_eq!(tag_of("sha1", "01"), "sha1-01");
    }

    #[test]
    fn content() {
        let d = sha256_of(b"{}");
        assert_eq!(
            d,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(check_content_digest(&d).is_ok());
        assert!(verify_content(&d, b"{}").is_ok());
        assert_eq!(verify_content(&d, b"{ }").unwrap_err(), sha256_of(b"{ }"));
        assert!(check_content_digest("sha256:ABC").is_err());
        assert!(check_content_digest(&d.to_uppercase()).is_err());
        assert!(check_content_digest("sha1:0123456789abcdef0123456789abcdef01234567").is_err());
    }
}
