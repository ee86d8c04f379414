//! The attestation collection: the predicate of every statement cilock signs
//! for a step, and the type URIs it may contain.
//!
//! cilock writes the Witness URIs (so `witness verify` reads its output) and
//! accepts the CI/lock (`aflock.ai`) URIs as aliases when reading.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::DigestSet;

/// Predicate type of a Witness collection (what cilock writes).
pub const COLLECTION_TYPE: &str = "https://witness.testifysec.com/attestation-collection/v0.1";
/// Predicate type of a CI/lock collection (accepted as an alias).
pub const COLLECTION_TYPE_CILOCK: &str = "https://aflock.ai/attestation-collection/v0.1";

const WITNESS_PREFIX: &str = "https://witness.dev/attestations/";
const CILOCK_PREFIX: &str = "https://aflock.ai/attestations/";

/// The Witness type URI of attestor `name` at version v0.1.
pub fn witness_type(name: &str) -> String {
    format!("{WITNESS_PREFIX}{name}/v0.1")
}

/// Canonical form of an attestor or collection type URI: CI/lock URIs map to
/// their Witness equivalents, anything else is returned unchanged.
pub fn canonical_type(uri: &str) -> String {
    if uri == COLLECTION_TYPE_CILOCK {
        return COLLECTION_TYPE.to_string();
    }
    match uri.strip_prefix(CILOCK_PREFIX) {
        Some(rest) => format!("{WITNESS_PREFIX}{rest}"),
        None => uri.to_string(),
    }
}

/// True when two type URIs name the same attestor type (aliases included).
pub fn same_type(a: &str, b: &str) -> bool {
    canonical_type(a) == canonical_type(b)
}

/// True for either collection predicate type.
pub fn is_collection_type(uri: &str) -> bool {
    uri == COLLECTION_TYPE || uri == COLLECTION_TYPE_CILOCK
}

/// A step's attestation collection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Collection {
    /// The step name.
    pub name: String,
    /// The attestations, in the order they completed.
    #[serde(default)]
    pub attestations: Vec<CollectionAttestation>,
    /// CI/lock's recorded back-references (kept when reading, never written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backrefs: Option<BTreeMap<String, DigestSet>>,
}

/// One attestor's output inside a collection. The attestation itself stays
/// raw JSON here, so unknown attestor types are kept, never a decode failure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectionAttestation {
    /// Attestor type URI.
    #[serde(rename = "type")]
    pub type_: String,
    /// The attestor's JSON.
    pub attestation: serde_json::Value,
    /// When the attestor started (RFC 3339).
    #[serde(default)]
    pub starttime: String,
    /// When the attestor finished (RFC 3339).
    #[serde(default)]
    pub endtime: String,
}

impl Collection {
    /// The attestations of a type (aliases included).
    pub fn of_type<'a>(
        &'a self,
        type_uri: &'a str,
    ) -> impl Iterator<Item = &'a CollectionAttestation> + 'a {
        self.attestations
            .iter()
            .filter(move |a| same_type(&a.type_, type_uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        assert!(same_type(
            "https://aflock.ai/attestations/command-run/v0.1",
            "https://witness.dev/attestations/command-run/v0.1"
        ));
        assert!(!same_type(
            "https://aflock.ai/attestations/command-run/v0.2",
            "https://witness.dev/attestations/command-run/v0.1"
        ));
        assert!(is_collection_type(COLLECTION_TYPE_CILOCK));
    }
}
