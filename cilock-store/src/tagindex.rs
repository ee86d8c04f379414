//! Referrer listings: the referrers API's answer, else the referrers tag
//! schema index (an OCI image index tagged `<alg>-<hex>`), and the
//! read-modify-write that keeps that index for registries without the API.
//!
//! Concurrent pushers: the registry has no compare-and-swap on tags, so a
//! pusher writes the merged index, waits a jittered moment (longer than
//! another pusher's read-to-write on a working registry), reads the tag
//! again and merges again if its entry was overwritten, for at most
//! [`MAX_ATTEMPTS`] writes. An entry that is confirmed stays confirmed as
//! long as every pusher follows the same protocol.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::http::{Http, OCI_INDEX};
use crate::StoreError;

/// Most entries of an index read or written.
pub(crate) const MAX_INDEX_ENTRIES: usize = 10_000;
/// Most index writes of one push for one subject.
const MAX_ATTEMPTS: u32 = 10;

/// Where a listing came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The referrers API answered.
    Api,
    /// The tag schema index (possibly absent: no entries).
    Tag,
}

/// The referrers of a subject as the registry lists them.
pub(crate) struct Listing {
    pub(crate) source: Source,
    pub(crate) entries: Vec<Value>,
}

/// The `manifests` of an image index, at most [`MAX_INDEX_ENTRIES`].
pub(crate) fn index_entries(
    bytes: &[u8],
    what: &str,
) -> Result<(Map<String, Value>, Vec<Value>), String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("{what} is not JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err(format!("{what} is not a JSON object"));
    };
    if let Some(mt) = obj.get("mediaType") {
        if mt.as_str() != Some(OCI_INDEX) {
            return Err(format!("{what} has mediaType {mt}, not {OCI_INDEX}"));
        }
    }
    let entries = match obj.remove("manifests") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(format!("{what}: \"manifests\" is not an array")),
    };
    if entries.len() > MAX_INDEX_ENTRIES {
        return Err(format!(
            "{what} lists {} manifests, more than the {MAX_INDEX_ENTRIES} allowed",
            entries.len()
        ));
    }
    Ok((obj, entries))
}

/// The `digest` of an index entry.
pub(crate) fn entry_digest(e: &Value) -> Option<&str> {
    e.get("digest").and_then(Value::as_str)
}

/// The referrers of `subject` (`ALG:HEX`, tag `tag`): the referrers API,
/// else the tag index, else none.
pub(crate) async fn list(http: &Http, subject: &str, tag: &str) -> Result<Listing, StoreError> {
    if let Some(body) = http.get_referrers(subject).await? {
        let (_, entries) =
            index_entries(&body, &format!("the referrers API's answer for {subject}"))
                .map_err(|e| http.integrity_error(e))?;
        return Ok(Listing {
            source: Source::Api,
            entries,
        });
    }
    let entries = read_tag(http, tag)
        .await?
        .map(|(_, e)| e)
        .unwrap_or_default();
    Ok(Listing {
        source: Source::Tag,
        entries,
    })
}

async fn read_tag(
    http: &Http,
    tag: &str,
) -> Result<Option<(Map<String, Value>, Vec<Value>)>, StoreError> {
    match http.get_manifest(tag).await? {
        None => Ok(None),
        Some(m) => index_entries(&m.bytes, &format!("the referrers tag index {tag}"))
            .map(Some)
            .map_err(|e| http.integrity_error(e)),
    }
}

/// Adds `entry` (a descriptor of the manifest `digest`) to the tag index
/// `tag`, and returns once a read of the tag lists it.
pub(crate) async fn add(
    http: &Http,
    tag: &str,
    entry: Value,
    digest: &str,
) -> Result<(), StoreError> {
    let mut wrote = 0u32;
    loop {
        // After our write and a pause: the entry is there (confirmed), or a
        // concurrent pusher overwrote the tag and we merge again.
        let (mut top, mut entries) = read_tag(http, tag).await?.unwrap_or_default();
        if entries.iter().any(|e| entry_digest(e) == Some(digest)) {
            return Ok(());
        }
        if wrote > 0 {
            tracing::debug!(
                tag,
                digest,
                "referrers tag index overwritten by a concurrent push; merging again"
            );
        }
        if wrote >= MAX_ATTEMPTS {
            return Err(http.registry_error(format!(
                "the referrers tag index {tag} was overwritten by concurrent pushes {MAX_ATTEMPTS} times; the referrer {digest} is stored but not listed"
            )));
        }
        if entries.len() >= MAX_INDEX_ENTRIES {
            return Err(http.registry_error(format!(
                "the referrers tag index {tag} already lists {} manifests, the most cilock keeps ({MAX_INDEX_ENTRIES}); the referrer {digest} is stored but not listed",
                entries.len()
            )));
        }
        entries.push(entry.clone());
        top.insert("schemaVersion".into(), Value::from(2));
        top.insert("mediaType".into(), Value::from(OCI_INDEX));
        top.insert("manifests".into(), Value::Array(entries));
        // serde_json's map is sorted: the same index is the same bytes.
        let bytes = serde_json::to_vec(&Value::Object(top))
            .map_err(|e| http.registry_error(e.to_string()))?;
        http.put_manifest(tag, OCI_INDEX, bytes).await?;
        wrote += 1;
        tokio::time::sleep(settle(wrote)).await;
    }
}

/// The pause after the `n`th write: 100 ms plus a random part that grows
/// with each conflict (up to 200·n ms, n ≤ 5), so colliding pushers drift apart.
fn settle(n: u32) -> Duration {
    Duration::from_millis(100 + jitter(200 * u64::from(n.clamp(1, 5))))
}

/// A random number below `n` (std's per-instance random hash keys).
pub(crate) fn jitter(n: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let (top, e) = index_entries(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:a"}],"annotations":{"x":"y"}}"#,
            "idx",
        )
        .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(entry_digest(&e[0]), Some("sha256:a"));
        assert!(top.contains_key("annotations"));
        assert!(index_entries(b"[]", "idx")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(index_entries(br#"{"manifests":{}}"#, "idx")
            .unwrap_err()
            .contains("not an array"));
        assert!(index_entries(
            br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
            "idx"
        )
        .unwrap_err()
        .contains("not application/vnd.oci.image.index.v1+json"));
        let many = format!(
            "{{\"manifests\":[{}]}}",
            vec!["{}"; MAX_INDEX_ENTRIES + 1].join(",")
        );
        assert!(index_entries(many.as_bytes(), "idx")
            .unwrap_err()
            .contains("more than the 10000 allowed"));
        assert!(jitter(10) < 10);
    }
}
