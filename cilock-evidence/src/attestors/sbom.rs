//! The sbom attestor: the step's SPDX or CycloneDX JSON product, recorded
//! as Witness records it (go-witness `attestation/sbom/sbom.go`).
//!
//! The SBOM is the first product, in path order, whose MIME type the
//! product attestor found to be `application/spdx+json` or
//! `application/vnd.cyclonedx+json` ([`super::product`]). It is re-read
//! beneath the working directory and checked against the product digest
//! ([`super::product_files::read_product`]), so the document recorded is
//! the file the subjects name.
//!
//! - Predicate: the parsed document itself (Witness's shape).
//! - Type: `https://spdx.dev/Document` or `https://cyclonedx.org/bom`
//!   (Witness's re-typing; `https://witness.dev/attestations/sbom/v0.1`
//!   before the attestor has run).
//! - Subjects, as Witness names them: `file:<path>` (the product digest);
//!   `name:<name>` (SPDX: the document `name`; CycloneDX:
//!   `metadata.component.name`) and, for CycloneDX,
//!   `version:<metadata.component.version>`, each with the sha256 of the
//!   string. A name or version longer than [`MAX_SUBJECT_VALUE_BYTES`] is
//!   kept in the predicate but not made a subject.

use std::collections::BTreeMap;

use serde_json::Value;

use super::lifecycle::AttestorOptions;
use super::product::{CYCLONEDX_MIME, SPDX_MIME};
use super::product_files;
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::{DigestSet, HashAlg};

/// Attestor name.
pub const NAME: &str = "sbom";
/// Type of an SPDX document (Witness's).
pub const SPDX_TYPE: &str = "https://spdx.dev/Document";
/// Type of a CycloneDX BOM (Witness's).
pub const CYCLONEDX_TYPE: &str = "https://cyclonedx.org/bom";
/// Largest SBOM read, in bytes. The document is recorded whole, and through
/// the daemon it travels in the attest helper's reply (at most 64 MiB): an
/// SBOM and a SARIF report both at their bound still fit with room for the
/// other after-stage attestations.
pub const MAX_SBOM_BYTES: u64 = 24 << 20;
/// Longest name or version made a subject, in bytes.
pub const MAX_SUBJECT_VALUE_BYTES: usize = 1024;

/// The sbom attestor.
#[derive(Debug)]
pub struct SbomAttestor {
    type_uri: String,
    subjects: BTreeMap<String, DigestSet>,
}

impl SbomAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SbomAttestor {
            type_uri: crate::collection::witness_type(NAME),
            subjects: BTreeMap::new(),
        })
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

impl Attestor for SbomAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn type_uri(&self) -> String {
        self.type_uri.clone()
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<Value, AttestError> {
        let (rel, product, doc) = product_files::first_json_product(
            ctx,
            "sbom",
            "an SPDX or CycloneDX JSON document",
            |m| m == SPDX_MIME || m == CYCLONEDX_MIME,
            MAX_SBOM_BYTES,
        )?;
        let spdx = product.mime_type == SPDX_MIME;
        if !doc.is_object() {
            return Err(AttestError::Invalid(format!(
                "sbom: {rel}: the document is not a JSON object"
            )));
        }
        let mut named = Vec::new();
        if spdx {
            if !text(&doc, &["spdxVersion"]).is_some_and(|v| v.starts_with("SPDX-")) {
                return Err(AttestError::Invalid(format!(
                    "sbom: {rel}: no top-level \"spdxVersion\": \"SPDX-…\" (not an SPDX document)"
                )));
            }
            if let Some(n) = text(&doc, &["name"]) {
                named.push(("name", n));
            }
            self.type_uri = SPDX_TYPE.to_string();
        } else {
            if text(&doc, &["bomFormat"]) != Some("CycloneDX") {
                return Err(AttestError::Invalid(format!(
                    "sbom: {rel}: no top-level \"bomFormat\": \"CycloneDX\" (not a CycloneDX BOM)"
                )));
            }
            if let Some(n) = text(&doc, &["metadata", "component", "name"]) {
                named.push(("name", n));
            }
            if let Some(v) = text(&doc, &["metadata", "component", "version"]) {
                named.push(("version", v));
            }
            self.type_uri = CYCLONEDX_TYPE.to_string();
        }
        self.subjects
            .insert(format!("file:{rel}"), product.digest.clone());
        for (kind, value) in named {
            if value.len() <= MAX_SUBJECT_VALUE_BYTES {
                self.subjects.insert(
                    format!("{kind}:{value}"),
                    DigestSet::from_bytes(value.as_bytes(), &[HashAlg::Sha256]),
                );
            }
        }
        Ok(doc)
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.subjects.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestors::product::ProductAttestor;
    use crate::attestors::{filetree::PathFilter, run_one};

    fn sha(s: &str) -> String {
        DigestSet::from_bytes(s.as_bytes(), &[HashAlg::Sha256])
            .get_sha256()
            .unwrap()
            .to_string()
    }

    /// Runs product then sbom over `files` written into a fresh workdir.
    fn run(files: &[(&str, &[u8])]) -> (SbomAttestor, Result<Value, AttestError>) {
        let d = tempfile::tempdir().unwrap();
        for (n, b) in files {
            std::fs::write(d.path().join(n), b).unwrap();
        }
        let mut ctx = AttestationContext::new(d.path().to_path_buf(), Vec::new());
        run_one(
            &mut ctx,
            &mut ProductAttestor::new(PathFilter::new(&[], &[]).unwrap()),
        )
        .unwrap();
        let mut a = SbomAttestor::new(&AttestorOptions::default()).unwrap();
        let r = a.attest(&ctx);
        (a, r)
    }

    #[test]
    fn cyclonedx_subjects_are_witness_names() {
        let bom = br#"{"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
            "metadata": {"component": {"type": "application", "name": "app", "version": "1.2.3"}},
            "components": [{"type": "library", "name": "serde", "version": "1.0.0"}]}"#;
        let (a, r) = run(&[("z.cdx.json", bom), ("a.txt", b"x")]);
        let v = r.unwrap();
        assert_eq!(a.type_uri(), CYCLONEDX_TYPE);
        assert_eq!(v["components"][0]["name"], "serde");
        let s = a.subjects();
        assert_eq!(
            s.keys().cloned().collect::<Vec<_>>(),
            ["file:z.cdx.json", "name:app", "version:1.2.3"]
        );
        assert_eq!(s["name:app"].get_sha256(), Some(sha("app").as_str()));
        assert_eq!(s["version:1.2.3"].get_sha256(), Some(sha("1.2.3").as_str()));
        assert_eq!(
            s["file:z.cdx.json"].get_sha256(),
            Some(sha(std::str::from_utf8(bom).unwrap()).as_str())
        );
    }

    #[test]
    fn spdx_first_by_path_and_its_name() {
        let spdx = br#"{"spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "doc-1", "packages": []}"#;
        let other = br#"{"spdxVersion":"SPDX-2.3","name":"doc-2"}"#;
        let (a, r) = run(&[("b.spdx.json", spdx), ("c.spdx.json", other)]);
        assert_eq!(r.unwrap()["name"], "doc-1");
        assert_eq!(a.type_uri(), SPDX_TYPE);
        assert_eq!(
            a.subjects().keys().cloned().collect::<Vec<_>>(),
            ["file:b.spdx.json", "name:doc-1"]
        );
    }

    #[test]
    fn absent_and_invalid() {
        let (a, r) = run(&[("x.json", b"{\"a\": 1}")]);
        match r {
            Err(AttestError::Absent(m)) => assert_eq!(
                m,
                "sbom: none of the 1 products is an SPDX or CycloneDX JSON document"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.type_uri(), crate::collection::witness_type(NAME));
        assert!(a.subjects().is_empty());
        // Detected by its head, broken further on.
        let mut broken = b"{\"bomFormat\": \"CycloneDX\", \"components\": [".to_vec();
        broken.extend(std::iter::repeat_n(b'[', 4000));
        let (_, r) = run(&[("bom.json", &broken)]);
        match r {
            Err(AttestError::Invalid(m)) => {
                assert!(
                    m.starts_with("sbom: bom.json: not a valid JSON document"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // The marker is nested, not top-level.
        let mut nested = b"{\"x\": {\"bomFormat\": \"CycloneDX\"}, \"pad\": \"".to_vec();
        nested.extend(std::iter::repeat_n(b'a', 4000));
        nested.extend_from_slice(b"\"}");
        let (_, r) = run(&[("n.json", &nested)]);
        match r {
            Err(AttestError::Invalid(m)) => assert_eq!(
                m,
                "sbom: n.json: no top-level \"bomFormat\": \"CycloneDX\" (not a CycloneDX BOM)"
            ),
            other => panic!("{other:?}"),
        }
    }
}
