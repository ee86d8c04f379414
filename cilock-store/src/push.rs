//! Pushing an envelope: the blob, then per subject digest a referrer
//! manifest (the conventions of the workspace: `artifactType`
//! `application/vnd.in-toto+json`, the OCI empty config, one DSSE layer,
//! `subject`, annotations), indexed by the registry (`OCI-Subject`) or in
//! the referrers tag schema index.
//!
//! The subject descriptor: when the repository holds a manifest with the
//! subject's digest (an image pushed there), its real media type and size;
//! otherwise — a file, a git commit, an image elsewhere — media type
//! `application/octet-stream` and size 0: the registry never resolves a
//! subject, and readers find referrers by the digest alone.
//!
//! Idempotent: a referrer of the same envelope for the same subject (the
//! manifest annotation [`crate::ENVELOPE_ANNOTATION`]) already listed is
//! reported, not written again.

use std::collections::{BTreeMap, BTreeSet};

use cilock_evidence::dsse::Envelope;
use cilock_evidence::intoto::{Statement, PAYLOAD_TYPE, STATEMENT_TYPE_V01, STATEMENT_TYPE_V1};
use serde::Serialize;
use serde_json::Value;

use crate::digest::{sha256_of, tag_of, SUBJECT_ALGORITHMS};
use crate::http::{Http, OCI_MANIFEST};
use crate::tagindex::{self, Source};
use crate::{
    IndexKind, PushReport, Referrer, Skipped, StoreError, StoreUrl, SubjectDigest, ARTIFACT_TYPE,
    DSSE_MEDIA_TYPE, ENVELOPE_ANNOTATION,
};

/// The OCI empty descriptor's media type.
pub(crate) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The OCI empty blob.
pub(crate) const EMPTY_BLOB: &[u8] = b"{}";

/// A descriptor, fields in the OCI order.
#[derive(Serialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Serialize)]
struct ReferrerManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    #[serde(rename = "artifactType")]
    artifact_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
    subject: Descriptor,
    annotations: &'a BTreeMap<String, String>,
}

/// What an envelope says that the push needs.
struct Parsed {
    annotations: BTreeMap<String, String>,
    subjects: Vec<SubjectDigest>,
    skipped: Vec<Skipped>,
}

fn parse(envelope: &[u8], max_subjects: usize) -> Result<Parsed, StoreError> {
    let bad = |m: String| StoreError::Envelope(m);
    let limit = cilock_evidence::limits::MAX_ENVELOPE_BYTES;
    if envelope.len() as u64 > limit {
        return Err(bad(format!(
            "{} bytes, more than the {} MiB an envelope may have",
            envelope.len(),
            limit >> 20
        )));
    }
    let env = Envelope::from_json(envelope).map_err(|e| bad(e.to_string()))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(bad(format!(
            "payloadType is {:?}, not {PAYLOAD_TYPE:?}: only in-toto statements are stored",
            env.payload_type
        )));
    }
    if env.signatures.is_empty() {
        return Err(bad("the envelope has no signatures".into()));
    }
    let st: Statement = serde_json::from_slice(&env.payload)
        .map_err(|e| bad(format!("the payload is not an in-toto statement: {e}")))?;
    if st.type_ != STATEMENT_TYPE_V01 && st.type_ != STATEMENT_TYPE_V1 {
        return Err(bad(format!(
            "the payload's _type is {:?}, not an in-toto statement",
            st.type_
        )));
    }

    let mut annotations = BTreeMap::new();
    annotations.insert(
        "in-toto.io/predicate-type".to_string(),
        st.predicate_type.clone(),
    );
    if st.predicate_type == cilock_evidence::collection::COLLECTION_TYPE
        || st.predicate_type == cilock_evidence::collection::COLLECTION_TYPE_CILOCK
    {
        if let Some(name) = st.predicate.get("name").and_then(Value::as_str) {
            annotations.insert("dev.cilock.step".to_string(), name.to_string());
        }
    }
    let keyids: Vec<&str> = env
        .signatures
        .iter()
        .map(|s| s.keyid.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    annotations.insert("dev.cilock.keyids".to_string(), keyids.join(","));
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        cilock_evidence::timefmt::now(),
    );

    let mut subjects = Vec::new();
    let mut seen = BTreeSet::new();
    let mut skipped = Vec::new();
    for s in &st.subject {
        for (alg, hex) in &s.digest {
            let label = format!("{} {alg}:{hex}", s.name);
            if !SUBJECT_ALGORITHMS.iter().any(|(a, _)| a == alg) {
                skipped.push(Skipped {
                    subject: label,
                    reason: format!(
                        "digest algorithm {alg:?} is not indexed (sha256, sha512, sha1 are)"
                    ),
                });
                continue;
            }
            let d = match format!("{alg}:{hex}").parse::<SubjectDigest>() {
                Ok(d) => d,
                Err(e) => {
                    skipped.push(Skipped {
                        subject: label,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            if !seen.insert(d.clone()) {
                continue;
            }
            if subjects.len() >= max_subjects {
                skipped.push(Skipped {
                    subject: label,
                    reason: format!("beyond the {max_subjects} subjects indexed per envelope"),
                });
                continue;
            }
            subjects.push(d);
        }
    }
    Ok(Parsed {
        annotations,
        subjects,
        skipped,
    })
}

pub(crate) async fn push(
    http: &Http,
    url: &StoreUrl,
    envelope: &[u8],
    max_subjects: usize,
) -> Result<PushReport, StoreError> {
    let parsed = parse(envelope, max_subjects)?;
    let blob = sha256_of(envelope);
    let empty = sha256_of(EMPTY_BLOB);
    http.put_blob(&empty, bytes::Bytes::from_static(EMPTY_BLOB))
        .await?;
    http.put_blob(&blob, bytes::Bytes::copy_from_slice(envelope))
        .await?;

    let mut annotations = parsed.annotations;
    annotations.insert(ENVELOPE_ANNOTATION.to_string(), blob.clone());
    let layer = Descriptor {
        media_type: DSSE_MEDIA_TYPE.to_string(),
        digest: blob.clone(),
        size: envelope.len() as u64,
    };
    let config = Descriptor {
        media_type: EMPTY_MEDIA_TYPE.to_string(),
        digest: empty,
        size: EMPTY_BLOB.len() as u64,
    };

    let mut referrers = Vec::new();
    for subject in parsed.subjects {
        let subject_str = subject.to_string();
        let tag = tag_of(&subject.algorithm, &subject.hex);
        // Already there (the same envelope pushed before)?
        let listing = tagindex::list(http, &subject_str, &tag).await?;
        let existing = listing.entries.iter().find(|e| {
            e.get("annotations")
                .and_then(|a| a.get(ENVELOPE_ANNOTATION))
                .and_then(Value::as_str)
                == Some(blob.as_str())
        });
        if let Some(manifest) = existing.and_then(tagindex::entry_digest) {
            referrers.push(Referrer {
                subject,
                manifest: manifest.to_string(),
                index: match listing.source {
                    Source::Api => IndexKind::ReferrersApi,
                    Source::Tag => IndexKind::TagSchema,
                },
            });
            continue;
        }

        let subject_desc = match subject.algorithm.as_str() {
            "sha256" | "sha512" => http.head_manifest(&subject_str).await?,
            _ => None,
        };
        let subject_desc = match subject_desc {
            Some(h) => Descriptor {
                media_type: h.media_type,
                digest: subject_str.clone(),
                size: h.size,
            },
            None => Descriptor {
                media_type: "application/octet-stream".to_string(),
                digest: subject_str.clone(),
                size: 0,
            },
        };
        let manifest = ReferrerManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST,
            artifact_type: ARTIFACT_TYPE,
            config: config.clone(),
            layers: vec![layer.clone()],
            subject: subject_desc,
            annotations: &annotations,
        };
        let bytes =
            serde_json::to_vec(&manifest).map_err(|e| http.registry_error(e.to_string()))?;
        let digest = sha256_of(&bytes);
        let size = bytes.len();
        let put = http.put_manifest(&digest, OCI_MANIFEST, bytes).await?;
        let index = if put.oci_subject.is_some() {
            IndexKind::ReferrersApi
        } else {
            let entry = serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "artifactType": ARTIFACT_TYPE,
                "annotations": &annotations,
            });
            tagindex::add(http, &tag, entry, &digest).await?;
            IndexKind::TagSchema
        };
        tracing::debug!(subject = %subject, manifest = %digest, ?index, "referrer written");
        referrers.push(Referrer {
            subject,
            manifest: digest,
            index,
        });
    }
    Ok(PushReport {
        url: url.clone(),
        blob,
        referrers,
        skipped: parsed.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(statement: &Value, payload_type: &str, keyid: &str) -> Vec<u8> {
        let env = Envelope {
            payload: serde_json::to_vec(statement).unwrap(),
            payload_type: payload_type.into(),
            signatures: vec![cilock_evidence::dsse::Signature {
                keyid: keyid.into(),
                sig: vec![1, 2, 3],
                certificate: None,
                intermediates: vec![],
                timestamps: vec![],
            }],
        };
        env.to_json()
    }

    #[test]
    fn subjects_and_annotations() {
        let h = "a".repeat(64);
        let st = serde_json::json!({
            "_type": STATEMENT_TYPE_V01,
            "predicateType": cilock_evidence::collection::COLLECTION_TYPE,
            "predicate": {"name": "build", "attestations": []},
            "subject": [
                {"name": "file:a", "digest": {"sha256": h, "gitoidSha1": "x"}},
                {"name": "file:b", "digest": {"sha256": h, "sha1": "B".repeat(40)}},
                {"name": "file:c", "digest": {"sha256": "c".repeat(64), "sha512": "zz"}},
                {"name": "file:d", "digest": {"sha256": "d".repeat(64)}},
            ]
        });
        let p = parse(&envelope(&st, PAYLOAD_TYPE, "k1"), 3).unwrap();
        let subs: Vec<String> = p.subjects.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            subs,
            vec![
                format!("sha256:{h}"),
                format!("sha1:{}", "b".repeat(40)),
                format!("sha256:{}", "c".repeat(64)),
            ]
        );
        let skipped: Vec<(String, String)> = p
            .skipped
            .iter()
            .map(|s| (s.subject.clone(), s.reason.clone()))
            .collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert_eq!(skipped[0].0, "file:a gitoidSha1:x");
        assert!(skipped[0].1.contains("\"gitoidSha1\" is not indexed"));
        assert_eq!(skipped[1].0, "file:c sha512:zz");
        assert!(skipped[1].1.contains("128 hex digits"), "{}", skipped[1].1);
        assert_eq!(skipped[2].0, format!("file:d sha256:{}", "d".repeat(64)));
        assert_eq!(skipped[2].1, "beyond the 3 subjects indexed per envelope");
        assert_eq!(p.annotations["dev.cilock.step"], "build");
        assert_eq!(p.annotations["dev.cilock.keyids"], "k1");
        assert_eq!(
            p.annotations["in-toto.io/predicate-type"],
            cilock_evidence::collection::COLLECTION_TYPE
        );
        assert!(p.annotations["org.opencontainers.image.created"].ends_with('Z'));
    }

    #[test]
    fn refused_envelopes() {
        let st = serde_json::json!({"_type": STATEMENT_TYPE_V01, "predicateType": "x", "predicate": {}, "subject": []});
        let msg = |b: &[u8]| {
            parse(b, 10)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(msg(b"not json").contains("invalid DSSE envelope JSON"));
        assert!(msg(&envelope(&st, "text/plain", "k")).contains("payloadType is \"text/plain\""));
        let nosig =
            br#"{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[]}"#;
        assert!(msg(nosig).contains("no signatures"));
        let other = serde_json::json!({"_type": "x", "predicateType": "x", "predicate": {}});
        assert!(msg(&envelope(&other, PAYLOAD_TYPE, "k")).contains("_type is \"x\""));
        let notst = serde_json::json!([1]);
        assert!(msg(&envelope(&notst, PAYLOAD_TYPE, "k")).contains("not an in-toto statement"));
    }
}
