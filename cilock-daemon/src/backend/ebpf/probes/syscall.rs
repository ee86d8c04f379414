//! The syscall family's probes: one `sys_enter_*` tracepoint program per
//! suspicious syscall (`cilock-ebpf/src/probes/syscall.rs`; program name =
//! tracepoint name).

use std::path::Path;

use aya::Ebpf;

use super::super::loader::syscall_tracepoint;
use super::super::EbpfError;

/// Suspicious syscalls, one program each (program name = tracepoint name).
const SUSPICIOUS: [&str; 21] = [
    "sys_enter_ptrace",
    "sys_enter_memfd_create",
    "sys_enter_mount",
    "sys_enter_fsmount",
    "sys_enter_move_mount",
    "sys_enter_open_tree",
    "sys_enter_fsopen",
    "sys_enter_unshare",
    "sys_enter_setns",
    "sys_enter_clone",
    "sys_enter_clone3",
    "sys_enter_bpf",
    "sys_enter_init_module",
    "sys_enter_finit_module",
    "sys_enter_io_uring_setup",
    "sys_enter_process_vm_readv",
    "sys_enter_process_vm_writev",
    "sys_enter_kill",
    "sys_enter_tkill",
    "sys_enter_tgkill",
    "sys_enter_pidfd_send_signal",
];

/// Attaches the programs of the suspicious syscalls this kernel has;
/// returns their `trace.hooks` entry.
pub(in crate::backend::ebpf) fn attach(
    ebpf: &mut Ebpf,
    tracefs: &Path,
) -> Result<String, EbpfError> {
    let mut sus = Vec::new();
    for name in SUSPICIOUS {
        if syscall_tracepoint(ebpf, tracefs, name)? {
            sus.push(name.trim_start_matches("sys_enter_"));
        }
    }
    Ok(format!(
        "tracepoint:syscalls/sys_enter_{{{}}}",
        sus.join(",")
    ))
}
