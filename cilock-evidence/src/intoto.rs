//! The in-toto Statement (v0.1, as Witness and CI/lock write it).

use serde::{Deserialize, Serialize};

use crate::digest::DigestSet;

/// `_type` of the statements cilock writes.
pub const STATEMENT_TYPE_V01: &str = "https://in-toto.io/Statement/v0.1";
/// `_type` of in-toto v1 statements (accepted when reading).
pub const STATEMENT_TYPE_V1: &str = "https://in-toto.io/Statement/v1";
/// DSSE payload type of a statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// An in-toto statement with a predicate of type `P` (raw JSON by default).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Statement<P = serde_json::Value> {
    /// Statement type URI.
    #[serde(rename = "_type")]
    pub type_: String,
    /// What the statement is about, by digest.
    #[serde(default)]
    pub subject: Vec<Subject>,
    /// Type of the predicate.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The predicate.
    pub predicate: P,
}

/// A subject of a statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Name, e.g. `https://witness.dev/attestations/product/v0.1/file:app`.
    pub name: String,
    /// Digests of the subject. In-toto allows any algorithm name here.
    pub digest: std::collections::BTreeMap<String, String>,
}

impl<P> Statement<P> {
    /// A v0.1 statement; subjects are sorted by name for stable output.
    pub fn new(predicate_type: &str, mut subject: Vec<Subject>, predicate: P) -> Self {
        subject.sort_by(|a, b| a.name.cmp(&b.name));
        Statement {
            type_: STATEMENT_TYPE_V01.to_string(),
            subject,
            predicate_type: predicate_type.to_string(),
            predicate,
        }
    }
}

impl Subject {
    /// A subject from a digest set.
    pub fn new(name: impl Into<String>, digest: &DigestSet) -> Self {
        Subject {
            name: name.into(),
            digest: digest
                .0
                .iter()
                .map(|(k, v)| (k.key().to_string(), v.clone()))
                .collect(),
        }
    }
}
