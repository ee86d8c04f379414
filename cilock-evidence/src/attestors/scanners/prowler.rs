//! The prowler attestor: Prowler findings.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "prowler";

/// The prowler attestor.
#[derive(Debug)]
pub struct ProwlerAttestor {}

impl ProwlerAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(ProwlerAttestor {})
    }
}

impl Attestor for ProwlerAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("prowler: not implemented yet".into()))
    }
}
