//! `cilock sign` (being written).
use crate::cli::SignArgs;
pub fn sign(_a: SignArgs) -> anyhow::Result<u8> { anyhow::bail!("not yet available") }
