//! The process family's probes: raw tracepoints on exec, fork and exit
//! (`cilock-ebpf/src/probes/process.rs`).

use aya::Ebpf;

use super::super::loader::raw_tracepoint;
use super::super::EbpfError;
use crate::backend::{CaptureInfo, Concern};

/// Attaches the exec, fork and exit programs; sets their hooks in `info`.
pub(in crate::backend::ebpf) fn attach(
    ebpf: &mut Ebpf,
    info: &mut CaptureInfo,
) -> Result<(), EbpfError> {
    for (hook, concern) in [
        ("sched_process_exec", Concern::ProcessExec),
        ("sched_process_fork", Concern::ProcessFork),
        ("sched_process_exit", Concern::ProcessExit),
    ] {
        raw_tracepoint(ebpf, hook, hook)?;
        info.set_hook(concern, format!("raw_tp:{hook}"));
    }
    Ok(())
}
