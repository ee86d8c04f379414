//! Which attestors a step's trace calls for: the catalogue maps tools the
//! trace saw run (`cyclonedx-py`, `syft` → sbom; `ruff`, `semgrep` → sarif;
//! …) to the attestors that read their outputs, so those are attested even
//! without `-a`. The catalogue is data (`catalogue.toml`), not code.
//!
//! Skeleton: replaced by its implementation (issue #17).

use serde::{Deserialize, Serialize};

/// An attestor chosen for a step, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectedAttestor {
    /// Attestor name.
    pub name: String,
    /// Why it ran: `requested` (`-a`), or which traced program called for
    /// it and which catalogue entry maps it.
    pub reason: String,
}

/// Reason recorded for an attestor requested with `-a`.
pub const REQUESTED: &str = "requested";

/// The attestors the trace in `command_run` (the command-run attestation's
/// JSON) calls for, one per attestor, in catalogue order.
pub fn select(_command_run: Option<&serde_json::Value>) -> Vec<SelectedAttestor> {
    Vec::new()
}
