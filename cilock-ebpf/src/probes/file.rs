//! Written files: the state a step process leaves a file in when it lets go
//! of it, and the rename epoch of the open de-duplication.
//!
//! | program | hook | record |
//! |---|---|---|
//! | `sys_enter_close` | tracepoint `syscalls/sys_enter_close` | CLOSE (how = close) |
//! | `sys_enter_dup2`, `sys_enter_dup3` | tracepoints, the file at `newfd` | CLOSE (how = dup) |
//! | `sys_enter_close_range` | tracepoint, every fd of the range | CLOSE (how = close_range) |
//! | (from `sched_process_exit`) | every fd of the dying process | CLOSE (how = exit) |
//! | `sys_exit_rename{,at,at2}` | tracepoints, `ret == 0` | bumps `RENAMES[step]` |
//!
//! A CLOSE record is sent only for a regular file open for writing
//! (`O_WRONLY`/`O_RDWR`), with the inode's stamp read before the kernel
//! lets go of it. User space matches it with the process's write opens by
//! (device, inode). The exit stamp runs in the `sched_process_exit` raw
//! tracepoint, which the kernel calls before `exit_files()`; it walks at
//! most [`MAX_FDS`] fds in a `bpf_loop`.

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task, bpf_loop},
    macros::tracepoint,
    programs::TracePointContext,
};
use cilock_abi::{CloseEvent, Offsets, close_how, kind};

use crate::maps::{RENAMES, SeenKey, current_step, emit, off, scratch};
use crate::net::arg;
use crate::path::stamp;
use crate::probes::fill_header;
use crate::read::{rd, rd_ptr};

/// Most fds looked at by one close_range or exit.
pub const MAX_FDS: u32 = 1 << 16;

const O_ACCMODE_WRITE: u32 = 0o1 | 0o2;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
/// `CLOSE_RANGE_CLOEXEC`: only marks the fds close-on-exec.
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// Fills the name part of an open's de-duplication key: the leaf's parent
/// and name, and the step's rename epoch.
#[inline(always)]
pub fn seen_key_names(key: &mut SeenKey, step: u64) {
    if key.dentry != 0 {
        key.parent = rd::<u64>(key.dentry + off!(dentry_d_parent)).unwrap_or(0);
        let q = key.dentry + off!(dentry_d_name);
        key.name_len = rd::<u32>(q + off!(qstr_len)).unwrap_or(0);
        let h = off!(qstr_hash);
        if h != Offsets::ABSENT as u64 {
            key.name_hash = rd::<u32>(q + h).unwrap_or(0);
        }
    }
    key.epoch = unsafe { RENAMES.get(&step) }.copied().unwrap_or(0);
}

#[tracepoint]
pub fn sys_exit_rename(ctx: TracePointContext) -> u32 {
    let _ = renamed(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_renameat(ctx: TracePointContext) -> u32 {
    let _ = renamed(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_renameat2(ctx: TracePointContext) -> u32 {
    let _ = renamed(&ctx);
    0
}

#[inline(always)]
fn renamed(ctx: &TracePointContext) -> Option<()> {
    let ret = unsafe { ctx.read_at::<i64>(off!(tp_exit_ret) as usize) }.ok()?;
    if ret != 0 {
        return None;
    }
    let step = current_step()?;
    match RENAMES.get_ptr_mut(&step) {
        // Not atomic: two renames at once may bump it once, which still
        // changes it, and that is all the key needs.
        Some(e) => unsafe { *e += 1 },
        None => {
            let _ = RENAMES.insert(&step, &1, 0);
        }
    }
    Some(())
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if let Some(step) = current_step() {
        let task = unsafe { bpf_get_current_task() };
        let _ = stamp_fd(step, task, arg(&ctx, 0), close_how::CLOSE);
    }
    0
}

#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    dup_over(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    dup_over(&ctx);
    0
}

/// dup2/dup3(oldfd, newfd): the file at `newfd` is let go of (dup2(fd,
/// fd) closes nothing).
#[inline(always)]
fn dup_over(ctx: &TracePointContext) {
    if arg(ctx, 0) == arg(ctx, 1) {
        return;
    }
    if let Some(step) = current_step() {
        let task = unsafe { bpf_get_current_task() };
        let _ = stamp_fd(step, task, arg(ctx, 1), close_how::DUP);
    }
}

#[tracepoint]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2) & CLOSE_RANGE_CLOEXEC != 0 {
        return 0;
    }
    if let Some(step) = current_step() {
        let task = unsafe { bpf_get_current_task() };
        let (first, last) = (arg(&ctx, 0), arg(&ctx, 1));
        let _ = stamp_range(step, task, first, last, close_how::CLOSE_RANGE);
    }
    0
}

/// Stamps every write-mode file of the dying process (`task`, its last
/// thread), before the kernel closes them.
#[inline(always)]
pub fn stamp_at_exit(step: u64, task: u64) {
    let _ = stamp_range(step, task, 0, u32::MAX as u64, close_how::EXIT);
}

/// The fd array of `task` and its size (`u64::MAX` when `fdtable.max_fds`
/// is unknown).
#[inline(always)]
fn fd_array(task: u64) -> Option<(u64, u64)> {
    let files = rd_ptr(task, off!(task_files))?;
    let fdt = rd_ptr(files, off!(files_fdt))?;
    let m = off!(fdtable_max_fds);
    let max = if m == Offsets::ABSENT as u64 {
        u64::MAX
    } else {
        rd::<u32>(fdt + m)? as u64
    };
    let fds = rd_ptr(fdt, off!(fdtable_fd))?;
    Some((fds, max))
}

#[repr(C)]
struct Range {
    step: u64,
    fds: u64,
    first: u64,
    how: u32,
    _pad: u32,
}

#[inline(never)]
unsafe extern "C" fn range_cb(i: u64, ctx: *mut c_void) -> i64 {
    let r = unsafe { &*(ctx as *const Range) };
    let fd = r.first + i;
    if let Some(file) = rd_ptr(r.fds, (fd & 0xf_ffff) * 8) {
        let _ = stamp_file(r.step, fd, file, r.how);
    }
    0
}

#[inline(always)]
fn stamp_range(step: u64, task: u64, first: u64, last: u64, how: u32) -> Option<()> {
    let (fds, max) = fd_array(task)?;
    // Without the table's size a range cannot be walked safely.
    if max == u64::MAX || first >= max || last < first {
        return None;
    }
    let end = if last >= max { max - 1 } else { last };
    let mut n = end - first + 1;
    if n > MAX_FDS as u64 {
        n = MAX_FDS as u64;
    }
    let mut r = Range {
        step,
        fds,
        first,
        how,
        _pad: 0,
    };
    unsafe {
        bpf_loop(
            n as u32,
            range_cb as *mut c_void,
            &raw mut r as *mut c_void,
            0,
        )
    };
    Some(())
}

/// Stamps fd `fd` of `task` if it is a regular file open for writing.
#[inline(always)]
fn stamp_fd(step: u64, task: u64, fd: u64, how: u32) -> Option<()> {
    let (fds, max) = fd_array(task)?;
    if fd >= max {
        return None;
    }
    let file = rd_ptr(fds, (fd & 0xf_ffff) * 8)?;
    stamp_file(step, fd, file, how)
}

#[inline(always)]
fn stamp_file(step: u64, fd: u64, file: u64, how: u32) -> Option<()> {
    let f_flags = rd::<u32>(file + off!(file_f_flags))?;
    if f_flags & O_ACCMODE_WRITE == 0 {
        return None;
    }
    let inode = rd_ptr(file, off!(file_f_inode))?;
    let mode = rd::<u16>(inode + off!(inode_i_mode))?;
    if mode & S_IFMT != S_IFREG {
        return None;
    }
    let buf = scratch()?;
    let ev = unsafe { &mut *(buf as *mut CloseEvent) };
    fill_header(&mut ev.hdr, kind::CLOSE, step);
    ev.fd = fd as i32;
    ev.how = how;
    ev.inode = Default::default();
    stamp(inode, &mut ev.inode);
    ev.hdr.size = size_of::<CloseEvent>() as u32;
    emit(buf, size_of::<CloseEvent>(), kind::CLOSE, step);
    Some(())
}
