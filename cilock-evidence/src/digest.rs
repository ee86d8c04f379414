//! Digest sets: the `{"sha256": "…"}` maps found everywhere in Witness
//! evidence. Only the keys Witness accepts are legal (`sha256`, `sha1`,
//! `gitoid:sha256`, `gitoid:sha1`, `dirHash`); any other key is an error, as
//! it is for Witness, so cilock never writes evidence Witness cannot read.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A hash algorithm a digest set may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlg {
    /// `sha256`
    Sha256,
    /// `sha1`
    Sha1,
    /// `gitoid:sha256`
    GitoidSha256,
    /// `gitoid:sha1`
    GitoidSha1,
    /// `dirHash`
    DirHash,
}

impl HashAlg {
    /// The JSON key of this algorithm.
    pub fn key(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha1 => "sha1",
            HashAlg::GitoidSha256 => "gitoid:sha256",
            HashAlg::GitoidSha1 => "gitoid:sha1",
            HashAlg::DirHash => "dirHash",
        }
    }

    /// Parses a JSON key (or a CLI name such as `sha256`).
    pub fn from_key(s: &str) -> Option<Self> {
        Some(match s {
            "sha256" => HashAlg::Sha256,
            "sha1" => HashAlg::Sha1,
            "gitoid:sha256" => HashAlg::GitoidSha256,
            "gitoid:sha1" => HashAlg::GitoidSha1,
            "dirHash" => HashAlg::DirHash,
            _ => return None,
        })
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A set of digests of one thing, keyed by algorithm.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DigestSet(pub BTreeMap<HashAlg, String>);

/// A digest-set key Witness does not accept.
#[derive(Debug, thiserror::Error)]
#[error("unsupported hash algorithm {0:?} in digest set")]
pub struct UnsupportedHash(pub String);

impl DigestSet {
    /// A set with one sha256 value.
    pub fn sha256(hex: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(HashAlg::Sha256, hex.into());
        DigestSet(m)
    }

    /// The sha256 value, if present.
    pub fn get_sha256(&self) -> Option<&str> {
        self.0.get(&HashAlg::Sha256).map(String::as_str)
    }

    /// True when the set holds no digest.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Witness `DigestSet.Equal`: the sets share at least one algorithm and
    /// every shared algorithm agrees.
    pub fn matches(&self, other: &DigestSet) -> bool {
        let mut shared = false;
        for (alg, v) in &self.0 {
            if let Some(o) = other.0.get(alg) {
                if !v.eq_ignore_ascii_case(o) {
                    return false;
                }
                shared = true;
            }
        }
        shared
    }

    /// Hashes everything `r` yields with each algorithm in `algs`.
    pub fn from_reader(mut r: impl Read, algs: &[HashAlg]) -> io::Result<Self> {
        // Read into memory only for gitoids (they need the length up front).
        let want_gitoid = algs
            .iter()
            .any(|a| matches!(a, HashAlg::GitoidSha1 | HashAlg::GitoidSha256));
        if want_gitoid {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf)?;
            return Ok(Self::from_bytes(&buf, algs));
        }
        let mut s256 = Sha256::new();
        let mut s1 = sha1::Sha1::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if algs.contains(&HashAlg::Sha256) {
                s256.update(&buf[..n]);
            }
            if algs.contains(&HashAlg::Sha1) {
                s1.update(&buf[..n]);
            }
        }
        let mut m = BTreeMap::new();
        if algs.contains(&HashAlg::Sha256) {
            m.insert(HashAlg::Sha256, hex::encode(s256.finalize()));
        }
        if algs.contains(&HashAlg::Sha1) {
            m.insert(HashAlg::Sha1, hex::encode(s1.finalize()));
        }
        Ok(DigestSet(m))
    }

    /// Hashes `data` with each algorithm in `algs` (`dirHash` is ignored).
    pub fn from_bytes(data: &[u8], algs: &[HashAlg]) -> Self {
        let mut m = BTreeMap::new();
        for alg in algs {
            let v = match alg {
                HashAlg::Sha256 => hex::encode(Sha256::digest(data)),
                HashAlg::Sha1 => hex::encode(sha1::Sha1::digest(data)),
                HashAlg::GitoidSha256 => {
                    let mut h = Sha256::new();
                    h.update(format!("blob {}\0", data.len()).as_bytes());
                    h.update(data);
                    format!("gitoid:blob:sha256:{}", hex::encode(h.finalize()))
                }
                HashAlg::GitoidSha1 => {
                    let mut h = sha1::Sha1::new();
                    h.update(format!("blob {}\0", data.len()).as_bytes());
                    h.update(data);
                    format!("gitoid:blob:sha1:{}", hex::encode(h.finalize()))
                }
                HashAlg::DirHash => continue,
            };
            m.insert(*alg, v);
        }
        DigestSet(m)
    }

    /// Hashes the file at `path`.
    pub fn from_file(path: &Path, algs: &[HashAlg]) -> io::Result<Self> {
        Self::from_reader(std::fs::File::open(path)?, algs)
    }
}

impl Serialize for DigestSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.key(), v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for DigestSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `null` decodes as an empty set (Witness's eBPF backend writes it).
        let raw: Option<BTreeMap<String, String>> = Option::deserialize(d)?;
        let mut m = BTreeMap::new();
        for (k, v) in raw.unwrap_or_default() {
            let alg = HashAlg::from_key(&k)
                .ok_or_else(|| serde::de::Error::custom(UnsupportedHash(k.clone())))?;
            m.insert(alg, v);
        }
        Ok(DigestSet(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let all = [
            HashAlg::Sha256,
            HashAlg::Sha1,
            HashAlg::GitoidSha256,
            HashAlg::GitoidSha1,
        ];
        let d = DigestSet::from_bytes(b"", &all);
        assert_eq!(
            d.0[&HashAlg::Sha256],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            d.0[&HashAlg::GitoidSha1],
            "gitoid:blob:sha1:e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert_eq!(
            d.0[&HashAlg::GitoidSha256],
            "gitoid:blob:sha256:473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813"
        );
        let streamed = DigestSet::from_reader(&b"hello\n"[..], &[HashAlg::Sha256]).unwrap();
        assert!(streamed.get_sha256().unwrap().starts_with("5891b5b5"));
    }

    #[test]
    fn rejects_unknown_keys_and_accepts_null() {
        assert!(serde_json::from_str::<DigestSet>(r#"{"sha512":"00"}"#).is_err());
        assert!(serde_json::from_str::<DigestSet>("null")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn equality_needs_a_shared_algorithm() {
        let a = DigestSet::sha256("ab");
        let mut b = DigestSet::sha256("AB");
        assert!(a.matches(&b));
        b.0.insert(HashAlg::Sha1, "x".into());
        assert!(a.matches(&b));
        let c = DigestSet(BTreeMap::from([(HashAlg::Sha1, "x".to_string())]));
        assert!(!a.matches(&c));
    }
}
