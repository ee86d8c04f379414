//! Evidence in OCI registries: each signed envelope is pushed once as a blob
//! (`application/vnd.dsse.envelope.v1+json`) and referenced, for each subject
//! digest, by an OCI 1.1 referrer manifest. Registries without the referrers
//! API get the referrers tag schema (an image index tagged `<alg>-<hex>`),
//! maintained here by read-modify-write. Discovery reads the referrers API,
//! else the tag index, and cosign's legacy `sha256-<hex>.att` layout.
//!
//! Modules, one idea each: `url` and `digest`
//! parse what users give; `auth` reads the Docker config; `http` talks to
//! the registry (token flow, bounds, timeout); `oci` is the distribution
//! API; `push` writes envelopes and referrers; `tagindex` keeps the
//! referrers tag schema index; `discover` finds and checks envelopes.

#![deny(missing_docs)]

mod auth;
mod digest;
mod discover;
mod http;
mod oci;
mod push;
mod tagindex;
mod url;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Media type of a stored envelope blob.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// `artifactType` of a referrer manifest (as cosign's DSSE referrers).
pub const ARTIFACT_TYPE: &str = "application/vnd.in-toto+json";
/// Annotation of a referrer manifest (and its index entry) naming the
/// envelope blob's digest: a second push of the same envelope finds it.
pub const ENVELOPE_ANNOTATION: &str = "dev.cilock.envelope";
/// Largest manifest or index read from a registry (4 MiB).
pub const MAX_MANIFEST_BYTES: usize = http::MAX_MANIFEST_BYTES;
/// Most entries of a referrers index read or written.
pub const MAX_INDEX_ENTRIES: usize = tagindex::MAX_INDEX_ENTRIES;
/// Most envelopes [`Store::discover`] returns for one subject.
pub const MAX_FOUND: usize = discover::MAX_FOUND;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL is not `oci://HOST[:PORT]/REPO` or `oci+http://…`.
    #[error("store URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The envelope given to push is not a DSSE envelope of an in-toto statement.
    #[error("envelope: {0}")]
    Envelope(String),
    /// A subject digest is not `ALG:HEX` with sha256, sha512 or sha1.
    #[error("subject digest {digest:?}: {reason}")]
    Digest {
        /// The digest as given.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Credentials could not be read (Docker config, credential helper).
    #[error("credentials for {registry}: {reason}")]
    Credentials {
        /// The registry host.
        registry: String,
        /// Why.
        reason: String,
    },
    /// The registry could not be reached or answered with an error.
    #[error("{url}: {reason}")]
    Registry {
        /// The store URL.
        url: String,
        /// What happened (status, body excerpt, connection error).
        reason: String,
    },
    /// Something the registry returned is wrong (digest mismatch, too large, malformed).
    #[error("{url}: {reason}")]
    Integrity {
        /// The store URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where evidence is stored: `oci://HOST[:PORT]/REPO` (HTTPS) or
/// `oci+http://HOST[:PORT]/REPO` (plain HTTP, loopback/dev registries).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreUrl {
    /// Plain HTTP (`oci+http://`).
    pub insecure_http: bool,
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The repository (`a/b/c`).
    pub repository: String,
}

impl FromStr for StoreUrl {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let (insecure_http, registry, repository) = url::parse(s)?;
        Ok(StoreUrl {
            insecure_http,
            registry,
            repository,
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.insecure_http {
            "oci+http"
        } else {
            "oci"
        };
        write!(f, "{scheme}://{}/{}", self.registry, self.repository)
    }
}

/// A subject digest as the store indexes it: `ALG:HEX` (`sha256`, `sha512`,
/// `sha1` for git commits); the tag-schema index is tagged `ALG-HEX`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectDigest {
    /// `sha256`, `sha512` or `sha1`.
    pub algorithm: String,
    /// Lowercase hex.
    pub hex: String,
}

impl FromStr for SubjectDigest {
    type Err = StoreError;
    /// `ALG:HEX`, or a bare 64-hex sha256 (hex case-insensitive, kept lowercase).
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let (algorithm, hex) = digest::parse_subject(s)?;
        Ok(SubjectDigest { algorithm, hex })
    }
}

impl SubjectDigest {
    /// The referrers tag schema's tag: `ALG-HEX` (the hex truncated to 64
    /// characters, as the OCI distribution spec says: a sha512 subject's
    /// tag holds its first 64 hex digits).
    pub fn tag(&self) -> String {
        digest::tag_of(&self.algorithm, &self.hex)
    }
}

impl fmt::Display for SubjectDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Docker config directory holding `config.json` [default:
    /// `$DOCKER_CONFIG`, else `~/.docker`].
    pub docker_config: Option<PathBuf>,
    /// Bound on each request (connect + answer).
    pub timeout: Duration,
    /// Most subjects one envelope gets referrers for; the rest are
    /// reported in [`PushReport::skipped`].
    pub max_subjects: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            docker_config: None,
            timeout: Duration::from_secs(60),
            max_subjects: 512,
        }
    }
}

/// How a referrer is indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// The registry's OCI 1.1 referrers API.
    ReferrersApi,
    /// The referrers tag schema (`ALG-HEX` image index kept by cilock).
    TagSchema,
}

/// One referrer manifest written.
#[derive(Clone, Debug)]
pub struct Referrer {
    /// Its subject.
    pub subject: SubjectDigest,
    /// The referrer manifest's digest (`sha256:…`).
    pub manifest: String,
    /// How it can be found.
    pub index: IndexKind,
}

/// A subject that got no referrer, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// The subject (`name` and digest as the statement says).
    pub subject: String,
    /// Why.
    pub reason: String,
}

/// What a push did.
#[derive(Clone, Debug)]
pub struct PushReport {
    /// The store.
    pub url: StoreUrl,
    /// The envelope blob's digest (`sha256:…`).
    pub blob: String,
    /// Referrers written (one per indexed subject digest).
    pub referrers: Vec<Referrer>,
    /// Subjects not indexed (unsupported algorithm, beyond `max_subjects`, refused).
    pub skipped: Vec<Skipped>,
}

/// Where a found envelope came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundVia {
    /// The referrers API.
    ReferrersApi,
    /// The referrers tag schema index.
    TagSchema,
    /// cosign's legacy `sha256-<hex>.att` manifest (DSSE layers).
    CosignAtt,
}

/// An envelope found in the store; its bytes match `blob`.
#[derive(Clone, Debug)]
pub struct Found {
    /// A label for reports: `oci://HOST/REPO@sha256:<blob>`.
    pub source: String,
    /// The blob digest (checked against `bytes`).
    pub blob: String,
    /// The envelope, byte for byte as stored.
    pub bytes: Vec<u8>,
    /// How it was found.
    pub via: FoundVia,
}

/// An opened store (URL, client, credentials).
#[derive(Debug)]
pub struct Store {
    url: StoreUrl,
    http: http::Http,
    max_subjects: usize,
}

impl Store {
    /// Opens `url`, reading credentials from the Docker config (running a
    /// credential helper if the config names one for the registry: this
    /// blocks for up to 30 s, so async callers use `spawn_blocking`).
    /// Nothing is sent to the registry yet.
    pub fn open(url: StoreUrl, opts: StoreOptions) -> Result<Store, StoreError> {
        let dir = auth::config_dir(opts.docker_config.as_deref());
        let credential = auth::credentials(dir.as_deref(), &url.registry)?;
        let http = http::Http::new(&url, credential, opts.timeout)?;
        Ok(Store {
            url,
            http,
            max_subjects: opts.max_subjects,
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Pushes `envelope` (a DSSE envelope of an in-toto statement, JSON,
    /// byte for byte as signed) and a referrer for each subject digest.
    pub async fn push(&self, envelope: &[u8]) -> Result<PushReport, StoreError> {
        push::push(&self.http, &self.url, envelope, self.max_subjects).await
    }

    /// The envelopes referring to `subject`, each blob checked against its
    /// digest, deduplicated by blob digest.
    /// At most [`MAX_FOUND`] envelopes are returned.
    pub async fn discover(&self, subject: &SubjectDigest) -> Result<Vec<Found>, StoreError> {
        discover::discover(&self.http, &self.url, subject).await
    }
}
