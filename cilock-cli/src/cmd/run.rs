//! `cilock run` (being written).
use crate::cli::RunArgs;
pub fn run(_a: RunArgs) -> anyhow::Result<u8> { anyhow::bail!("not yet available") }
