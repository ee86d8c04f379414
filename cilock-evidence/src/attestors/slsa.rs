//! The slsa attestor: SLSA provenance v1 from the collection and the trace.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "slsa";

/// The slsa attestor.
#[derive(Debug)]
pub struct SlsaAttestor {}

impl SlsaAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SlsaAttestor {})
    }
}

impl Attestor for SlsaAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("slsa: not implemented yet".into()))
    }
}
