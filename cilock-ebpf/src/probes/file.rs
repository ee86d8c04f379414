//! The file family: opens, and the state a step process leaves a written
//! file in.
//!
//! | program | hook | record |
//! |---|---|---|
//! | `sys_exit_open` | tracepoints `syscalls/sys_exit_{open,openat,openat2,creat,open_by_handle_at}` | OPEN |
//! | `fexit_file_open` | fexit `security_file_open(struct file *)`, where the kernel allows BPF trampolines | OPEN (`syscall` = [`FEXIT_SYSCALL`], `fd` = -1) |
//! | `sys_enter_close` | tracepoint `syscalls/sys_enter_close` | CLOSE (how = close) |
//! | `sys_enter_dup2`, `sys_enter_dup3` | tracepoints, the file at `newfd` | CLOSE (how = dup) |
//! | `sys_enter_close_range` | tracepoint, every fd of the range | CLOSE (how = close_range) |
//! | (from `sched_process_exit`) | every fd of the dying process | CLOSE (how = exit) |
//! | `sys_exit_rename{,at,at2}` | tracepoints, `ret == 0` | bumps `RENAMES[step]` |
//!
//! **Opens.** Both open hooks go through [`report_open`]: the same
//! [`OpenEvent`] with the same dentry walk, de-duplicated per process in
//! `SEEN`. The fexit hook runs for every open that reaches
//! `do_dentry_open`, whatever started it: the open syscalls, but also
//! io_uring's `IORING_OP_OPENAT` (which the syscall tracepoints never see).
//! Its differences, handled in [`fexit_file_open`]:
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
//!
//! **Written files.** A CLOSE record is sent only for a regular file open
//! for writing (`O_WRONLY`/`O_RDWR`), with the inode's stamp read before
//! the kernel lets go of it. User space matches it with the process's write
//! opens by (device, inode). The exit stamp runs in the
//! `sched_process_exit` raw tracepoint, which the kernel calls before
//! `exit_files()`; it walks at most [`MAX_FDS`] fds in a `bpf_loop`.
//!
//! **Renames** bump the step's rename epoch, part of the open
//! de-duplication key: a reopen after a rename is reported again.

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task, bpf_loop},
    },
    macros::{fexit, map, tracepoint},
    maps::LruHashMap,
    programs::{FExitContext, TracePointContext},
};
use cilock_abi::{CloseEvent, Offsets, OpenEvent, close_how};

use crate::common::maps::{current_step, off};
use crate::common::path::{stamp, walk_path};
use crate::common::read::{arg, fd_array, file_at, file_of, rd, rd_ptr};
use crate::common::record::{self, emit_fixed};
use crate::probes::cgroup;

/// Successful opens. Attached to every open-like syscall's exit.
#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    let _ = try_open(&ctx);
    0
}

#[inline(always)]
fn try_open(ctx: &TracePointContext) -> Option<()> {
    let step = current_step()?;
    let ret = unsafe { ctx.read_at::<i64>(off!(tp_exit_ret) as usize) }.ok()?;
    if ret < 0 {
        return None;
    }
    let nr = unsafe { ctx.read_at::<i32>(off!(tp_exit_nr) as usize) }.unwrap_or(-1);
    let task = unsafe { bpf_get_current_task() };
    let file = file_of(task, ret as u64)?;
    let f_flags = rd::<u32>(file + off!(file_f_flags)).unwrap_or(0);
    report_open(step, task, file, nr as u32, ret as i32, f_flags)
}

/// `O_WRONLY | O_RDWR | O_APPEND`: an open that may change the file.
const WRITE_FLAGS: u32 = 0o1 | 0o2 | 0o2000;
/// `O_PATH`: a handle without read or write access.
const O_PATH: u32 = 0o10000000;

/// Reports the open of `file` by the current task, unless the same process
/// already reported the same file opened the same way in this step (see
/// `SEEN`). Shared by every file-open hook.
#[inline(always)]
pub fn report_open(
    step: u64,
    task: u64,
    file: u64,
    syscall: u32,
    fd: i32,
    f_flags: u32,
) -> Option<()> {
    let f_path = file + off!(file_f_path);
    let inode = rd_ptr(file, off!(file_f_inode));
    let mut key = SeenKey {
        step,
        leader_start: cgroup::leader_start(task),
        dentry: rd::<u64>(f_path + off!(path_dentry)).unwrap_or(0),
        mnt: rd::<u64>(f_path + off!(path_mnt)).unwrap_or(0),
        ino: inode
            .and_then(|i| rd::<u64>(i + off!(inode_i_ino)))
            .unwrap_or(0),
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        generation: inode
            .and_then(|i| rd::<u32>(i + off!(inode_i_generation)))
            .unwrap_or(0),
        // An O_PATH handle and a real open of the same file are two ways:
        // the daemon hashes only for the latter.
        write: (f_flags & WRITE_FLAGS != 0) as u32 | ((f_flags & O_PATH != 0) as u32) << 1,
        _pad: 0,
        parent: 0,
        name_hash: 0,
        name_len: 0,
        epoch: 0,
    };
    seen_key_names(&mut key, step);
    if unsafe { SEEN.get(&key) }.is_some() {
        return None;
    }
    let (buf, ev) = record::start::<OpenEvent>(step)?;
    ev.syscall = syscall;
    ev.fd = fd;
    ev.f_flags = f_flags;
    ev._pad = 0;
    ev.inode = Default::default();
    if let Some(inode) = inode {
        stamp(inode, &mut ev.inode);
    }
    ev.path = Default::default();
    let base = size_of::<OpenEvent>() as u32;
    walk_path(f_path, task, base, &mut ev.path)?;
    let size = size_of::<OpenEvent>() + (ev.path.len as usize & 0xfff);
    // Only what was delivered counts as seen: a lost record is retried at
    // the next open.
    if record::send::<OpenEvent>(buf, size, step) {
        let _ = SEEN.insert(&key, &1, 0);
    }
    Some(())
}

/// `OpenEvent::syscall` of records from this hook (no syscall number known).
pub const FEXIT_SYSCALL: u32 = u32::MAX;

/// `__FMODE_EXEC`: set in `f_flags` by `open_exec()` only (not a valid
/// `open(2)` flag, so user opens never carry it).
const FMODE_EXEC_FLAG: u32 = 0x20;

/// `PID_FS_MAGIC`: pidfds on kernels with pidfs (6.9 and later).
const PIDFS_MAGIC: u32 = 0x5049_4446;

/// Flags `do_dentry_open` strips after `security_file_open` returns.
const CLEARED_AFTER_OPEN: u32 = 0o100 | 0o200 | 0o400 | 0o1000;

/// A file was opened (the LSM hook returned 0); see the module doc for
/// how this hook differs from `sys_exit_open`.
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

/// Most fds looked at by one close_range or exit.
pub const MAX_FDS: u32 = 1 << 16;

const O_ACCMODE_WRITE: u32 = 0o1 | 0o2;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
/// `CLOSE_RANGE_CLOEXEC`: only marks the fds close-on-exec.
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// What identifies one open for de-duplication: the same process (incarnation)
/// of the same step opening the same file (path and inode) the same way.
#[repr(C)]
pub struct SeenKey {
    pub step: u64,
    /// Start time of the thread-group leader: tells reused pids apart.
    pub leader_start: u64,
    pub dentry: u64,
    pub mnt: u64,
    pub ino: u64,
    pub tgid: u32,
    pub generation: u32,
    /// Bit 0: opened for writing; bit 1: opened with O_PATH.
    pub write: u32,
    pub _pad: u32,
    /// The leaf's `d_parent` and `d_name` hash and length: a rename moves
    /// the same dentry to another name or directory (D2).
    pub parent: u64,
    pub name_hash: u32,
    pub name_len: u32,
    /// The step's rename epoch (`RENAMES`): a rename by a step process,
    /// of a file or a directory above it, reports every open again.
    pub epoch: u64,
}

/// Step cgroup id → number of successful renames by its processes.
#[map]
pub static RENAMES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1024, 0);

/// Opens already reported. A repeated open (a build reading the same header
/// again, an open storm) costs a lookup instead of a path walk and a record.
/// An evicted entry only means the open is reported again.
#[map]
pub static SEEN: LruHashMap<SeenKey, u8> = LruHashMap::with_max_entries(65536, 0);

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
    if let Some(file) = file_at(r.fds, fd) {
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
    let file = file_of(task, fd)?;
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
    emit_fixed::<CloseEvent>(step, |ev| {
        ev.fd = fd as i32;
        ev.how = how;
        ev.inode = Default::default();
        stamp(inode, &mut ev.inode);
    });
    Some(())
}
