//! Evidence in OCI registries: each signed envelope is pushed once as a blob
//! (`application/vnd.dsse.envelope.v1+json`) and referenced, for each subject
//! digest, by an OCI 1.1 referrer manifest. Registries without the referrers
//! API get the referrers tag schema (an image index tagged `<alg>-<hex>`),
//! maintained here by read-modify-write. Discovery reads the referrers API,
//! else the tag index, and cosign's legacy `sha256-<hex>.att` layout.
//!
//! SKELETON (lead): the types and signatures below are the contract the CLI
//! and the daemon are written against; the store helper fills them in.

#![deny(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Media type of a stored envelope blob.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// `artifactType` of a referrer manifest (as cosign's DSSE referrers).
pub const ARTIFACT_TYPE: &str = "application/vnd.in-toto+json";

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
    /// Not written yet (skeleton).
    #[error("not implemented")]
    Unimplemented,
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
    fn from_str(_s: &str) -> Result<Self, StoreError> {
        Err(StoreError::Unimplemented)
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
    /// `ALG:HEX`, or a bare 64-hex sha256.
    fn from_str(_s: &str) -> Result<Self, StoreError> {
        Err(StoreError::Unimplemented)
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
}

impl Store {
    /// Opens `url`, reading credentials from the Docker config.
    pub fn open(url: StoreUrl, _opts: StoreOptions) -> Result<Store, StoreError> {
        Ok(Store { url })
    }

    /// The store's URL.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Pushes `envelope` (a DSSE envelope of an in-toto statement, JSON,
    /// byte for byte as signed) and a referrer for each subject digest.
    pub async fn push(&self, _envelope: &[u8]) -> Result<PushReport, StoreError> {
        Err(StoreError::Unimplemented)
    }

    /// The envelopes referring to `subject`, each blob checked against its
    /// digest, deduplicated by blob digest.
    pub async fn discover(&self, _subject: &SubjectDigest) -> Result<Vec<Found>, StoreError> {
        Err(StoreError::Unimplemented)
    }
}
