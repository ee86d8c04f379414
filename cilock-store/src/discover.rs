//! Finding the envelopes of a subject: the referrers API (else the
//! referrers tag schema index) and cosign's legacy `sha256-<hex>.att`
//! manifest. Only in-toto/DSSE referrers are read: `artifactType`
//! `application/vnd.in-toto+json`, or a manifest without `artifactType`
//! that has DSSE layers. Every manifest is checked against the digest it is
//! listed under, every blob against its descriptor's size and digest: a
//! mismatch is an [`StoreError::Integrity`] error (a tampered store fails
//! loudly). A listed manifest that is gone is skipped with a warning
//! (deleted evidence cannot be told from never-stored evidence).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::digest::{check_content_digest, tag_of};
use crate::http::{Http, OCI_MANIFEST};
use crate::tagindex::{self, entry_digest, Source};
use crate::{Found, FoundVia, StoreError, StoreUrl, SubjectDigest, ARTIFACT_TYPE, DSSE_MEDIA_TYPE};

/// Most envelopes returned for one subject.
pub(crate) const MAX_FOUND: usize = 1000;

/// The DSSE layers (digest, size) of an image manifest.
fn dsse_layers(http: &Http, bytes: &[u8], what: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| http.integrity_error(format!("{what} is not JSON: {e}")))?;
    let layers = match v.get("layers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(http.integrity_error(format!("{what}: \"layers\" is not an array"))),
    };
    let mut out = Vec::new();
    for l in layers {
        if l.get("mediaType").and_then(Value::as_str) != Some(DSSE_MEDIA_TYPE) {
            continue;
        }
        let digest = l
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| http.integrity_error(format!("{what}: a DSSE layer has no digest")))?;
        check_content_digest(digest).map_err(|e| http.integrity_error(format!("{what}: {e}")))?;
        let size = l.get("size").and_then(Value::as_u64).ok_or_else(|| {
            http.integrity_error(format!("{what}: DSSE layer {digest} has no size"))
        })?;
        out.push((digest.to_string(), size));
    }
    Ok(out)
}

/// The `subject.digest` of a manifest, if it has one.
fn manifest_subject(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("subject")?
        .get("digest")?
        .as_str()
        .map(str::to_string)
}

struct Collector<'a> {
    http: &'a Http,
    url: &'a StoreUrl,
    seen: BTreeSet<String>,
    found: Vec<Found>,
    full: bool,
}

impl Collector<'_> {
    async fn layers(
        &mut self,
        layers: Vec<(String, u64)>,
        via: FoundVia,
    ) -> Result<(), StoreError> {
        for (digest, size) in layers {
            if self.seen.contains(&digest) {
                continue;
            }
            if self.found.len() >= MAX_FOUND {
                self.full = true;
                return Ok(());
            }
            let bytes = self
                .http
                .get_blob(&digest, size, cilock_evidence::limits::MAX_ENVELOPE_BYTES)
                .await?;
            self.seen.insert(digest.clone());
            self.found.push(Found {
                source: format!("{}@{digest}", self.url),
                blob: digest,
                bytes,
                via,
            });
        }
        Ok(())
    }
}

pub(crate) async fn discover(
    http: &Http,
    url: &StoreUrl,
    subject: &SubjectDigest,
) -> Result<Vec<Found>, StoreError> {
    let subject_str = subject.to_string();
    let mut c = Collector {
        http,
        url,
        seen: BTreeSet::new(),
        found: Vec::new(),
        full: false,
    };

    let listing = tagindex::list(
        http,
        &subject_str,
        &tag_of(&subject.algorithm, &subject.hex),
    )
    .await?;
    let via = match listing.source {
        Source::Api => FoundVia::ReferrersApi,
        Source::Tag => FoundVia::TagSchema,
    };
    let mut manifests_seen = BTreeSet::new();
    for entry in &listing.entries {
        let artifact_type = entry
            .get("artifactType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let media_type = entry.get("mediaType").and_then(Value::as_str).unwrap_or("");
        // In-toto referrers, and untyped image manifests (possibly DSSE layers).
        let wanted = artifact_type == ARTIFACT_TYPE
            || (artifact_type.is_empty() && media_type == OCI_MANIFEST);
        if !wanted {
            continue;
        }
        let Some(digest) = entry_digest(entry) else {
            return Err(http.integrity_error(format!(
                "a referrer of {subject_str} is listed without a digest"
            )));
        };
        check_content_digest(digest)
            .map_err(|e| http.integrity_error(format!("a referrer of {subject_str}: {e}")))?;
        if !manifests_seen.insert(digest.to_string()) {
            continue;
        }
        let Some(m) = http.get_manifest(digest).await? else {
            tracing::warn!(store = %url, subject = %subject_str, manifest = digest, "a listed referrer manifest is missing from the store");
            continue;
        };
        // A tag index is shared by subjects whose digests agree in the tag's
        // first 64 hex digits (sha512): keep the referrers of this one.
        if let Some(other) = manifest_subject(&m.bytes) {
            if other != subject_str {
                continue;
            }
        }
        let layers = dsse_layers(http, &m.bytes, &format!("referrer manifest {digest}"))?;
        c.layers(layers, via).await?;
        if c.full {
            break;
        }
    }

    // cosign's legacy layout: sha256 subjects only.
    if subject.algorithm == "sha256" && !c.full {
        let tag = format!("sha256-{}.att", subject.hex);
        if let Some(m) = http.get_manifest(&tag).await? {
            let layers = dsse_layers(
                http,
                &m.bytes,
                &format!("cosign attestation manifest {tag}"),
            )?;
            c.layers(layers, FoundVia::CosignAtt).await?;
        }
    }
    if c.full {
        tracing::warn!(store = %url, subject = %subject_str, "more than {MAX_FOUND} envelopes refer to the subject; only the first {MAX_FOUND} are read");
    }
    Ok(c.found)
}
