//! The sbom attestor: SPDX and CycloneDX JSON products.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "sbom";

/// The sbom attestor.
#[derive(Debug)]
pub struct SbomAttestor {}

impl SbomAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SbomAttestor {})
    }
}

impl Attestor for SbomAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("sbom: not implemented yet".into()))
    }
}
