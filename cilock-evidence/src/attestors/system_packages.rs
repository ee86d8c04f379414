//! The system-packages attestor: the runner's dpkg/rpm package database.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "system-packages";

/// The system-packages attestor.
#[derive(Debug)]
pub struct SystemPackagesAttestor {}

impl SystemPackagesAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SystemPackagesAttestor {})
    }
}

impl Attestor for SystemPackagesAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent(
            "system-packages: not implemented yet".into(),
        ))
    }
}
