//! The material attestor (`https://witness.dev/attestations/material/v0.1`,
//! stage material): every file of the working directory before the command,
//! as a map from relative path to digest set.

use std::collections::BTreeMap;

use super::filetree::{self, PathFilter, SkippedPath, TreeSnapshot};
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "material";

/// The material attestor.
#[derive(Debug)]
pub struct MaterialAttestor {
    filter: PathFilter,
    /// The full (unfiltered) snapshot, kept for the product attestor.
    snapshot: Option<TreeSnapshot>,
}

impl MaterialAttestor {
    /// A material attestor recording files that pass `filter` (cilock
    /// extension; Witness records everything, which is the default).
    pub fn new(filter: PathFilter) -> Self {
        MaterialAttestor {
            filter,
            snapshot: None,
        }
    }

    /// The full snapshot taken by `attest` (before filtering).
    pub fn snapshot(&self) -> Option<&TreeSnapshot> {
        self.snapshot.as_ref()
    }

    /// Paths that were not recorded, and why.
    pub fn skipped(&self) -> &[SkippedPath] {
        self.snapshot
            .as_ref()
            .map(|s| s.skipped.as_slice())
            .unwrap_or(&[])
    }
}

impl Attestor for MaterialAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Material
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let snap = filetree::snapshot(ctx)?;
        let recorded: BTreeMap<&String, &DigestSet> = snap
            .files
            .iter()
            .filter(|(k, _)| self.filter.matches(k))
            .collect();
        let json = serde_json::to_value(&recorded)
            .map_err(|e| AttestError::Invalid(format!("material: {e}")))?;
        self.snapshot = Some(snap);
        Ok(json)
    }
}
