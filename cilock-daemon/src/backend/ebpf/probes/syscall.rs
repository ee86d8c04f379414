//! The syscall family's probes: one `sys_enter_*` tracepoint program per
//! suspicious syscall (`cilock-ebpf/src/probes/syscall.rs`; program name =
//! tracepoint name).

use std::path::Path;

use aya::Ebpf;

use super::super::loader::syscall_tracepoint;
use super::super::EbpfError;

/// Attaches the programs of the suspicious syscalls this kernel has;
/// returns their `trace.hooks` entry.
pub(in crate::backend::ebpf) fn attach(
    ebpf: &mut Ebpf,
    tracefs: &Path,
) -> Result<String, EbpfError> {
    let mut sus = Vec::new();
    // One program per suspicious syscall (program name = tracepoint name),
    // the set being the ABI's.
    for what in cilock_abi::syscall::what::ALL {
        let name = cilock_abi::syscall::what::name(what);
        if syscall_tracepoint(ebpf, tracefs, &format!("sys_enter_{name}"))? {
            sus.push(name);
        }
    }
    Ok(format!(
        "tracepoint:syscalls/sys_enter_{{{}}}",
        sus.join(",")
    ))
}
