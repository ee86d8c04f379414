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

/// Largest stream [`DigestSet::from_reader`] buffers for a gitoid.
pub const MAX_UNSIZED_GITOID_BYTES: u64 = 64 << 20;

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
    ///
    /// Gitoids need the length before the content, so with a gitoid
    /// algorithm an unsized stream is read into memory, up to
    /// [`MAX_UNSIZED_GITOID_BYTES`] (beyond: an error): for files use
    /// [`DigestSet::from_file_handle`] (or [`DigestSet::from_sized_reader`]),
    /// which stream.
    pub fn from_reader(mut r: impl Read, algs: &[HashAlg]) -> io::Result<Self> {
        let want_gitoid = algs
            .iter()
            .any(|a| matches!(a, HashAlg::GitoidSha1 | HashAlg::GitoidSha256));
        if want_gitoid {
            let mut buf = Vec::new();
            (&mut r)
                .take(MAX_UNSIZED_GITOID_BYTES + 1)
                .read_to_end(&mut buf)?;
            if buf.len() as u64 > MAX_UNSIZED_GITOID_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a gitoid of a stream of unknown length is limited to {MAX_UNSIZED_GITOID_BYTES} bytes (files are hashed with from_file_handle, which streams)"
                    ),
                ));
            }
            return Ok(Self::from_bytes(&buf, algs));
        }
        let mut h = Hashers::new(algs, None);
        stream(r, &mut h, u64::MAX)?;
        Ok(h.finish())
    }

    /// Hashes exactly `len` bytes of `r` in one streaming pass with every
    /// algorithm of `algs`, gitoids included (`blob {len}\0` then the
    /// content). Reading more or fewer than `len` bytes is an error (the file
    /// changed while it was hashed): a digest is never given for content
    /// other than the one measured.
    pub fn from_sized_reader(r: impl Read, len: u64, algs: &[HashAlg]) -> io::Result<Self> {
        let mut h = Hashers::new(algs, Some(len));
        let n = stream(r, &mut h, len.saturating_add(1))?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                if n > len {
                    format!(
                        "the file grew while it was hashed (more than the {len} bytes fstat gave)"
                    )
                } else {
                    format!(
                        "the file shrank while it was hashed ({n} of the {len} bytes fstat gave)"
                    )
                },
            ));
        }
        Ok(h.finish())
    }

    /// Hashes an opened regular file from its current position, streaming:
    /// the length comes from `fstat`, memory use does not grow with it.
    pub fn from_file_handle(f: &std::fs::File, algs: &[HashAlg]) -> io::Result<Self> {
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Self::from_sized_reader(f, meta.len(), algs)
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
    /// Regular files stream (gitoids included); anything else is read as an
    /// unsized stream.
    pub fn from_file(path: &Path, algs: &[HashAlg]) -> io::Result<Self> {
        let f = std::fs::File::open(path)?;
        if f.metadata()?.is_file() {
            Self::from_file_handle(&f, algs)
        } else {
            Self::from_reader(f, algs)
        }
    }
}

/// A reader that hashes what passes through it, so a file can be parsed
/// and its digest proven in the same pass (no second read that could see
/// other content). `len` is the file's length from `fstat` (gitoids need it
/// first); [`HashingReader::finish`] reads what the parser left and fails
/// unless exactly `len` bytes went through.
pub struct HashingReader<R> {
    inner: R,
    hashers: Hashers,
    len: u64,
    seen: u64,
}

impl<R: Read> HashingReader<R> {
    /// Hashes `inner` (of `len` bytes) with every algorithm of `algs`.
    pub fn new(inner: R, len: u64, algs: &[HashAlg]) -> Self {
        HashingReader {
            inner,
            hashers: Hashers::new(algs, Some(len)),
            len,
            seen: 0,
        }
    }

    /// Reads the rest and returns the digest of all of it.
    pub fn finish(mut self) -> io::Result<DigestSet> {
        let left = self.len.saturating_sub(self.seen).saturating_add(1);
        let n = stream(&mut self.inner, &mut self.hashers, left)?;
        let total = self.seen + n;
        if total != self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the file changed size while it was read ({total} bytes, not the {} fstat gave)",
                    self.len
                ),
            ));
        }
        Ok(self.hashers.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hashers.update(&buf[..n]);
        self.seen += n as u64;
        Ok(n)
    }
}

/// Every hasher a digest set may need, fed in one pass.
struct Hashers {
    algs: Vec<HashAlg>,
    sha256: Option<Sha256>,
    sha1: Option<sha1::Sha1>,
    gitoid256: Option<Sha256>,
    gitoid1: Option<sha1::Sha1>,
}

impl Hashers {
    /// `len`: the content length, required for gitoids (ignored without).
    fn new(algs: &[HashAlg], len: Option<u64>) -> Self {
        let header = len.map(|l| format!("blob {l}\0"));
        let gitoid = |alg: HashAlg| algs.contains(&alg) && header.is_some();
        Hashers {
            algs: algs.to_vec(),
            sha256: algs.contains(&HashAlg::Sha256).then(Sha256::new),
            sha1: algs.contains(&HashAlg::Sha1).then(sha1::Sha1::new),
            gitoid256: gitoid(HashAlg::GitoidSha256).then(|| {
                let mut h = Sha256::new();
                h.update(header.as_deref().unwrap_or_default().as_bytes());
                h
            }),
            gitoid1: gitoid(HashAlg::GitoidSha1).then(|| {
                let mut h = sha1::Sha1::new();
                h.update(header.as_deref().unwrap_or_default().as_bytes());
                h
            }),
        }
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha1 {
            h.update(data);
        }
        if let Some(h) = &mut self.gitoid256 {
            h.update(data);
        }
        if let Some(h) = &mut self.gitoid1 {
            h.update(data);
        }
    }

    fn finish(self) -> DigestSet {
        let mut m = BTreeMap::new();
        for alg in &self.algs {
            let v = match alg {
                HashAlg::Sha256 => self.sha256.clone().map(|h| hex::encode(h.finalize())),
                HashAlg::Sha1 => self.sha1.clone().map(|h| hex::encode(h.finalize())),
                HashAlg::GitoidSha256 => self
                    .gitoid256
                    .clone()
                    .map(|h| format!("gitoid:blob:sha256:{}", hex::encode(h.finalize()))),
                HashAlg::GitoidSha1 => self
                    .gitoid1
                    .clone()
                    .map(|h| format!("gitoid:blob:sha1:{}", hex::encode(h.finalize()))),
                HashAlg::DirHash => None,
            };
            if let Some(v) = v {
                m.insert(*alg, v);
            }
        }
        DigestSet(m)
    }
}

/// Feeds at most `max` bytes of `r` to `h` through a fixed buffer; returns
/// how many bytes were read.
fn stream(mut r: impl Read, h: &mut Hashers, max: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    while total < max {
        let want = (max - total).min(buf.len() as u64) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok(total)
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
    fn hashing_reader_proves_what_went_through() {
        let data = b"hello, hashing reader".repeat(1000);
        let algs = [HashAlg::Sha256, HashAlg::GitoidSha256];
        let mut r = HashingReader::new(&data[..], data.len() as u64, &algs);
        let mut head = [0u8; 10];
        r.read_exact(&mut head).unwrap();
        // finish reads the rest the parser left.
        assert_eq!(r.finish().unwrap(), DigestSet::from_bytes(&data, &algs));
        // Fewer or more bytes than fstat gave: an error, no digest.
        let short = HashingReader::new(&data[..5], 6, &algs)
            .finish()
            .unwrap_err();
        assert!(short.to_string().contains("5 bytes, not the 6"), "{short}");
        let long = HashingReader::new(&data[..7], 6, &algs)
            .finish()
            .unwrap_err();
        assert!(long.to_string().contains("7 bytes, not the 6"), "{long}");
    }

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
    fn sized_streaming_matches_in_memory_and_checks_the_length() {
        let all = [
            HashAlg::Sha256,
            HashAlg::Sha1,
            HashAlg::GitoidSha256,
            HashAlg::GitoidSha1,
        ];
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let streamed = DigestSet::from_sized_reader(&data[..], data.len() as u64, &all).unwrap();
        assert_eq!(streamed, DigestSet::from_bytes(&data, &all));
        let e = DigestSet::from_sized_reader(&data[..], 10, &all).unwrap_err();
        assert!(e.to_string().contains("grew"), "{e}");
        let e = DigestSet::from_sized_reader(&data[..5], 10, &all).unwrap_err();
        assert!(e.to_string().contains("shrank"), "{e}");
        // An unsized stream is buffered for gitoids up to a bound only.
        let zeros = std::io::repeat(0).take(MAX_UNSIZED_GITOID_BYTES + 1);
        let e = DigestSet::from_reader(zeros, &[HashAlg::GitoidSha1]).unwrap_err();
        assert!(e.to_string().contains("limited to"), "{e}");
        assert_eq!(
            DigestSet::from_reader(&data[..], &all).unwrap(),
            DigestSet::from_bytes(&data, &all)
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &data).unwrap();
        assert_eq!(
            DigestSet::from_file(&p, &all).unwrap(),
            DigestSet::from_bytes(&data, &all)
        );
    }

    #[test]
    fn gitoid_of_a_sparse_file_streams() {
        // 32 MiB of holes: hashed through the fixed buffer (from fstat's
        // size), never read into a buffer of the file's size.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = std::fs::File::create(&p).unwrap();
        let len: u64 = 32 << 20;
        f.set_len(len).unwrap();
        drop(f);
        let f = std::fs::File::open(&p).unwrap();
        let d = DigestSet::from_file_handle(&f, &[HashAlg::GitoidSha256]).unwrap();
        let mut h = Sha256::new();
        h.update(format!("blob {len}\0").as_bytes());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..32 {
            h.update(&zeros);
        }
        assert_eq!(
            d.0[&HashAlg::GitoidSha256],
            format!("gitoid:blob:sha256:{}", hex::encode(h.finalize()))
        );
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
