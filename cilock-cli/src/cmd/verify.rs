//! `cilock verify` (being written).
use crate::cli::VerifyArgs;
pub fn verify(_a: VerifyArgs) -> anyhow::Result<u8> { anyhow::bail!("not yet available") }
