//! The oci attestor: a `docker save` tarball product (manifest and layer digests as subjects).
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "oci";

/// The oci attestor.
#[derive(Debug)]
pub struct OciAttestor {}

impl OciAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(OciAttestor {})
    }
}

impl Attestor for OciAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent("oci: not implemented yet".into()))
    }
}
