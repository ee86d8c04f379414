//! The falco attestor: Falco JSON events.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "falco";

/// The falco attestor.
#[derive(Debug)]
pub struct FalcoAttestor {}

impl FalcoAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(FalcoAttestor {})
    }
}

impl Attestor for FalcoAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("falco: not implemented yet".into()))
    }
}
