//! The testssl attestor: testssl.sh JSON findings.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "testssl";

/// The testssl attestor.
#[derive(Debug)]
pub struct TestsslAttestor {}

impl TestsslAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(TestsslAttestor {})
    }
}

impl Attestor for TestsslAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("testssl: not implemented yet".into()))
    }
}
