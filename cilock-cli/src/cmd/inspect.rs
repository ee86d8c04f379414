//! `cilock inspect` (being written).
use crate::cli::InspectArgs;
pub fn inspect(_a: InspectArgs) -> anyhow::Result<u8> { anyhow::bail!("not yet available") }
