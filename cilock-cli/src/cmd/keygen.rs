//! `cilock keygen` (being written).
use crate::cli::KeygenArgs;
pub fn keygen(_a: KeygenArgs) -> anyhow::Result<u8> { anyhow::bail!("not yet available") }
