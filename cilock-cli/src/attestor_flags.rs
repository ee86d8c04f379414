//! Attestor options shared by `run` and `step begin` (being written).

use clap::Args;

/// Options of the attestors.
#[derive(Debug, Clone, Default, Args)]
pub struct AttestorFlags {}
