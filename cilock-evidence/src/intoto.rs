//! The in-toto Statement: v0.1 (as Witness and CI/lock write it, for every
//! collection cilock signs) and v1 with ResourceDescriptor subjects (the
//! SLSA provenance export).

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

/// An in-toto ResourceDescriptor (Statement v1 subjects, SLSA provenance
/// dependencies and byproducts). At least one of `name`, `uri` and
/// `digest` is set; empty fields are left out of the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDescriptor {
    /// Name (e.g. a path relative to the working directory).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// URI of the resource (`file:///abs/path`, `git+https://…@ref`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Digests: algorithm → lowercase hex.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub digest: std::collections::BTreeMap<String, String>,
    /// Where it may be downloaded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub download_location: String,
    /// Media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// Free-form annotations (a JSON object).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub annotations: serde_json::Map<String, serde_json::Value>,
}

impl ResourceDescriptor {
    /// The digest map of a [`DigestSet`] (keys as in-toto spells them).
    pub fn digest_of(d: &DigestSet) -> std::collections::BTreeMap<String, String> {
        d.0.iter()
            .map(|(k, v)| (k.key().to_string(), v.clone()))
            .collect()
    }
}

/// An in-toto Statement v1 (`https://in-toto.io/Statement/v1`): subjects
/// are [`ResourceDescriptor`]s. cilock's collection statements stay v0.1
/// ([`Statement`]) for Witness policy; v1 is used for the SLSA provenance
/// export.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatementV1<P = serde_json::Value> {
    /// [`STATEMENT_TYPE_V1`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// What the statement is about (each with a digest).
    pub subject: Vec<ResourceDescriptor>,
    /// Type of the predicate.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The predicate.
    pub predicate: P,
}

impl<P> StatementV1<P> {
    /// A v1 statement; subjects are sorted by name then uri for stable
    /// output.
    pub fn new(predicate_type: &str, mut subject: Vec<ResourceDescriptor>, predicate: P) -> Self {
        subject.sort_by(|a, b| (&a.name, &a.uri).cmp(&(&b.name, &b.uri)));
        StatementV1 {
            type_: STATEMENT_TYPE_V1.to_string(),
            subject,
            predicate_type: predicate_type.to_string(),
            predicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_statement_has_resource_descriptor_subjects_and_v01_stays() {
        let d = DigestSet::sha256("ab".repeat(32));
        let s = StatementV1::new(
            "https://slsa.dev/provenance/v1",
            vec![
                ResourceDescriptor {
                    name: "b".into(),
                    digest: ResourceDescriptor::digest_of(&d),
                    ..Default::default()
                },
                ResourceDescriptor {
                    name: "a".into(),
                    uri: "file:///w/a".into(),
                    digest: ResourceDescriptor::digest_of(&d),
                    ..Default::default()
                },
            ],
            serde_json::json!({"x": 1}),
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE_V1);
        assert_eq!(
            v["subject"],
            serde_json::json!([
                {"name": "a", "uri": "file:///w/a", "digest": {"sha256": "ab".repeat(32)}},
                {"name": "b", "digest": {"sha256": "ab".repeat(32)}}
            ])
        );
        let back: StatementV1 = serde_json::from_value(v).unwrap();
        assert_eq!(back.subject.len(), 2);
        let old = Statement::new("t", vec![Subject::new("n", &d)], serde_json::json!({}));
        assert_eq!(
            serde_json::to_value(&old).unwrap()["_type"],
            STATEMENT_TYPE_V01
        );
    }
}
