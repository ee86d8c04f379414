//! `cilock step begin|end` (being written).
use crate::cli::{StepBeginArgs, StepEndArgs};
pub fn begin(_a: StepBeginArgs) -> anyhow::Result<u8> { anyhow::bail!("not yet available") }
pub fn end(_a: StepEndArgs) -> anyhow::Result<u8> { anyhow::bail!("not yet available") }
