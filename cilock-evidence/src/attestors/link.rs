//! The link attestor: an in-toto link predicate (https://in-toto.io/attestation/link/v0.3).
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "link";

/// The link attestor.
#[derive(Debug)]
pub struct LinkAttestor {}

impl LinkAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(LinkAttestor {})
    }
}

impl Attestor for LinkAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("link: not implemented yet".into()))
    }
}
