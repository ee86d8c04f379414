//! The lockfiles attestor: package manager lockfiles of the working directory.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "lockfiles";

/// The lockfiles attestor.
#[derive(Debug)]
pub struct LockfilesAttestor {}

impl LockfilesAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(LockfilesAttestor {})
    }
}

impl Attestor for LockfilesAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("lockfiles: not implemented yet".into()))
    }
}
