//! The sarif attestor: SARIF products (rule ids, levels, counts).
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "sarif";

/// The sarif attestor.
#[derive(Debug)]
pub struct SarifAttestor {}

impl SarifAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SarifAttestor {})
    }
}

impl Attestor for SarifAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("sarif: not implemented yet".into()))
    }
}
