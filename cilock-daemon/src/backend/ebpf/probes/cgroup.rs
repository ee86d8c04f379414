//! The cgroup family's probe: the raw tracepoint on `cgroup_attach_task`
//! that sees processes leave or join a step's cgroup
//! (`cilock-ebpf/src/probes/cgroup.rs`).

use aya::Ebpf;

use super::super::loader::raw_tracepoint;
use super::super::EbpfError;
use crate::backend::{CaptureInfo, Concern};

/// Attaches the cgroup-move program; sets its hook in `info`.
pub(in crate::backend::ebpf) fn attach(
    ebpf: &mut Ebpf,
    info: &mut CaptureInfo,
) -> Result<(), EbpfError> {
    let hook = "cgroup_attach_task";
    raw_tracepoint(ebpf, hook, hook)?;
    info.set_hook(Concern::CgroupMove, format!("raw_tp:{hook}"));
    Ok(())
}
