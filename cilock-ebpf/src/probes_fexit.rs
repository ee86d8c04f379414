//! The fexit file-open hook, used where the kernel allows BPF trampolines.
//!
//! | program | hook | record |
//! |---|---|---|
//! | `fexit_file_open` | fexit `security_file_open(struct file *)` | OPEN |
//!
//! `security_file_open` runs for every open that reaches `do_dentry_open`,
//! whatever started it: the open syscalls, but also io_uring's
//! `IORING_OP_OPENAT` (which the syscall tracepoints never see). The record is
//! the same [`OpenEvent`] the tracepoint program emits, with the same dentry
//! walk, so user space decodes both alike. Differences, handled here:
//!
//! * No fd exists yet (it is installed after the hook): `fd` is `-1` and
//!   `syscall` is [`FEXIT_SYSCALL`].
//! * The kernel's own opens for `execve` (the program and its ELF
//!   interpreter, through `open_exec()`) carry `__FMODE_EXEC` in `f_flags`;
//!   they are not opens of the process and are skipped (exec records cover
//!   the program).
//! * `do_dentry_open` clears `O_CREAT|O_EXCL|O_NOCTTY|O_TRUNC` only after
//!   this hook; they are cleared here too, so `f_flags` matches the
//!   installed file's, as the tracepoint program reads it.
//! * A failed hook (`ret != 0`, e.g. denied by an LSM) is no open.

use crate::maps::{current_step, off};
use crate::probes::report_open;
use crate::read::{rd, rd_ptr};
use aya_ebpf::{helpers::generated::bpf_get_current_task, macros::fexit, programs::FExitContext};

/// `OpenEvent::syscall` of records from this hook (no syscall number known).
pub const FEXIT_SYSCALL: u32 = u32::MAX;

/// `__FMODE_EXEC`: set in `f_flags` by `open_exec()` only (not a valid
/// `open(2)` flag, so user opens never carry it).
const FMODE_EXEC_FLAG: u32 = 0x20;

/// `PID_FS_MAGIC`: pidfds on kernels with pidfs (6.9 and later).
const PIDFS_MAGIC: u32 = 0x5049_4446;

/// Flags `do_dentry_open` strips after `security_file_open` returns.
const CLEARED_AFTER_OPEN: u32 = 0o100 | 0o200 | 0o400 | 0o1000;

/// A file was opened (the LSM hook returned 0).
#[fexit(function = "security_file_open")]
pub fn fexit_file_open(ctx: FExitContext) -> i32 {
    let _ = try_fexit_open(&ctx);
    0
}

#[inline(always)]
fn try_fexit_open(ctx: &FExitContext) -> Option<()> {
    let step = current_step()?;
    let file: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    if ret as i32 != 0 || file == 0 {
        return None;
    }
    let f_flags = rd::<u32>(file + off!(file_f_flags)).unwrap_or(0);
    if f_flags & FMODE_EXEC_FLAG != 0 {
        return None;
    }
    // pidfd_open() on kernels with pidfs opens its file through the same
    // hook: that is a pidfd, not an open of the process.
    if let Some(inode) = rd_ptr(file, off!(file_f_inode)) {
        if let Some(sb) = rd_ptr(inode, off!(inode_i_sb)) {
            if rd::<u64>(sb + off!(sb_s_magic)).unwrap_or(0) as u32 == PIDFS_MAGIC {
                return None;
            }
        }
    }
    let task = unsafe { bpf_get_current_task() };
    report_open(
        step,
        task,
        file,
        FEXIT_SYSCALL,
        -1,
        f_flags & !CLEARED_AFTER_OPEN,
    )
}
