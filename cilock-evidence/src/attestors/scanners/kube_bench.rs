//! The kube-bench attestor: CIS Kubernetes benchmark results.
//!
//! Skeleton: replaced by its implementation (issue #17).

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "kube-bench";

/// The kube-bench attestor.
#[derive(Debug)]
pub struct KubeBenchAttestor {}

impl KubeBenchAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(KubeBenchAttestor {})
    }
}

impl Attestor for KubeBenchAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, _ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        Err(AttestError::Absent(
            "kube-bench: not implemented yet".into(),
        ))
    }
}
