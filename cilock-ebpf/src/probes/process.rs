//! The programs: one function per hook.
//!
//! | program | hook | record |
//! |---|---|---|
//! | `sys_exit_open` | tracepoints `syscalls/sys_exit_{open,openat,openat2,creat,open_by_handle_at}` | OPEN |
//! | `sched_process_exec` | raw_tp `sched_process_exec` (task, old_pid, bprm) | EXEC |
//! | `sched_process_fork` | raw_tp `sched_process_fork` (parent, child) | FORK |
//! | `sched_process_exit` | raw_tp `sched_process_exit` (task, …) | EXIT |
//! | `cgroup_attach_task` | raw_tp `cgroup_attach_task` (dst, path, task, threadgroup) | CGROUP_MOVE, CGROUP_JOIN |
//!
//! Closes of written files and the rename epoch are in `files.rs`.

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str,
            bpf_probe_read_user,
        },
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use cilock_abi::{
    ARGS_MAX_BYTES, ExecEvent, ExitEvent, FILENAME_MAX_BYTES, ForkEvent, Header, OpenEvent, kind,
};

use crate::maps::{SEEN, SeenKey, current_step, emit, off, scratch};
use crate::moves;
use crate::path::{stamp, walk_path};
use crate::read::{rd, rd_ptr};

#[inline(always)]
pub(crate) fn fill_header(h: &mut Header, record_kind: u32, step: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    h.kind = record_kind;
    h.size = 0;
    h.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.step_cgroup = step;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

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
    let files = rd_ptr(task, off!(task_files))?;
    let fdt = rd_ptr(files, off!(files_fdt))?;
    let fds = rd_ptr(fdt, off!(fdtable_fd))?;
    let file = rd_ptr(fds, (ret as u64 & 0xf_ffff) * 8)?;
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
        leader_start: match rd_ptr(task, off!(task_group_leader)) {
            Some(l) => rd::<u64>(l + off!(task_start_time)).unwrap_or(0),
            None => 0,
        },
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
    crate::files::seen_key_names(&mut key, step);
    if unsafe { SEEN.get(&key) }.is_some() {
        return None;
    }
    let buf = scratch()?;
    let ev = unsafe { &mut *(buf as *mut OpenEvent) };
    fill_header(&mut ev.hdr, kind::OPEN, step);
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
    ev.hdr.size = size as u32;
    // Only what was delivered counts as seen: a lost record is retried at
    // the next open.
    if emit(buf, size, kind::OPEN, step) {
        let _ = SEEN.insert(&key, &1, 0);
    }
    Some(())
}

/// A successful exec: what ran (exe walk), as what (filename), with which
/// arguments, from where (cwd walk).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let _ = try_exec(&ctx);
    0
}

#[inline(always)]
fn try_exec(ctx: &RawTracePointContext) -> Option<()> {
    let step = current_step()?;
    let task: u64 = ctx.arg(0);
    let old_pid: u64 = ctx.arg(1);
    let bprm: u64 = ctx.arg(2);
    let buf = scratch()?;
    let ev = unsafe { &mut *(buf as *mut ExecEvent) };
    fill_header(&mut ev.hdr, kind::EXEC, step);
    ev.old_tid = old_pid as u32;
    ev._pad = 0;
    ev.ppid = match rd_ptr(task, off!(task_real_parent)) {
        Some(p) => rd::<u32>(p + off!(task_tgid)).unwrap_or(0),
        None => 0,
    };

    // The filename as passed to execve.
    let p0 = size_of::<ExecEvent>();
    ev.filename_len = 0;
    if let Some(fname) = rd_ptr(bprm, off!(bprm_filename)) {
        let r = unsafe {
            bpf_probe_read_kernel_str(
                buf.add(p0) as *mut c_void,
                FILENAME_MAX_BYTES as u32,
                fname as *const c_void,
            )
        };
        if r > 0 {
            ev.filename_len = ((r - 1) as u32) & (FILENAME_MAX_BYTES as u32 - 1);
        }
    }

    // argv, from the new image's stack.
    let p1 = p0 + ev.filename_len as usize;
    ev.args_len = 0;
    ev.args_truncated = 0;
    if let Some(mm) = rd_ptr(task, off!(task_mm)) {
        let start = rd::<u64>(mm + off!(mm_arg_start)).unwrap_or(0);
        let end = rd::<u64>(mm + off!(mm_arg_end)).unwrap_or(0);
        if end > start {
            let mut len = end - start;
            if len > ARGS_MAX_BYTES as u64 {
                len = ARGS_MAX_BYTES as u64;
                ev.args_truncated = 1;
            }
            let n = (((len - 1) as u32) & (ARGS_MAX_BYTES as u32 - 1)) + 1;
            let r = unsafe {
                bpf_probe_read_user(
                    buf.add(p1 & 0x3ff) as *mut c_void,
                    n,
                    start as *const c_void,
                )
            };
            if r == 0 {
                ev.args_len = n;
            }
        }
    }

    // The executed file (the interpreter for a script).
    let p2 = p1 + ev.args_len as usize;
    ev.exe_inode = Default::default();
    ev.exe = Default::default();
    if let Some(file) = rd_ptr(bprm, off!(bprm_file)) {
        if let Some(inode) = rd_ptr(file, off!(file_f_inode)) {
            stamp(inode, &mut ev.exe_inode);
        }
        let _ = walk_path(file + off!(file_f_path), task, p2 as u32, &mut ev.exe);
    }

    // The working directory.
    let p3 = p2 + (ev.exe.len as usize & 0xfff);
    ev.cwd = Default::default();
    if let Some(fs) = rd_ptr(task, off!(task_fs)) {
        let _ = walk_path(fs + off!(fs_pwd), task, p3 as u32, &mut ev.cwd);
    }
    let size = p3 + (ev.cwd.len as usize & 0xfff);
    ev.hdr.size = size as u32;
    emit(buf, size, kind::EXEC, step);
    moves::on_exec(step, task);
    Some(())
}

/// A new process (thread groups only; threads are ignored).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = try_fork(&ctx);
    0
}

#[inline(always)]
fn try_fork(ctx: &RawTracePointContext) -> Option<()> {
    let step = current_step();
    let child: u64 = ctx.arg(1);
    let tgid = rd::<u32>(child + off!(task_tgid))?;
    let pid = rd::<u32>(child + off!(task_pid))?;
    if tgid != pid {
        return None;
    }
    if let Some(step) = step {
        let buf = scratch()?;
        let ev = unsafe { &mut *(buf as *mut ForkEvent) };
        fill_header(&mut ev.hdr, kind::FORK, step);
        ev.child_tgid = tgid;
        ev._pad = 0;
        ev.hdr.size = size_of::<ForkEvent>() as u32;
        emit(buf, size_of::<ForkEvent>(), kind::FORK, step);
    }
    // Where the child was born (clone3(CLONE_INTO_CGROUP) may put it
    // outside the parent's step, or into another step).
    moves::on_fork(step, child, tgid);
    Some(())
}

/// The last thread of a thread group exits.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_exit(&ctx);
    0
}

#[inline(always)]
fn try_exit(ctx: &RawTracePointContext) -> Option<()> {
    let task: u64 = ctx.arg(0);
    let signal = rd_ptr(task, off!(task_signal))?;
    let live = rd::<i32>(signal + off!(signal_live))?;
    if live != 0 {
        return None;
    }
    moves::forget((bpf_get_current_pid_tgid() >> 32) as u32);
    let step = current_step()?;
    let code = rd::<u32>(task + off!(task_exit_code)).unwrap_or(0);
    crate::files::stamp_at_exit(step, task);
    let buf = scratch()?;
    let ev = unsafe { &mut *(buf as *mut ExitEvent) };
    fill_header(&mut ev.hdr, kind::EXIT, step);
    ev.exit_code = code;
    ev._pad = 0;
    ev.hdr.size = size_of::<ExitEvent>() as u32;
    emit(buf, size_of::<ExitEvent>(), kind::EXIT, step);
    Some(())
}

/// A task is moved into a cgroup: a step process leaving its step, or a
/// process joining one (see `moves`).
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: RawTracePointContext) -> i32 {
    let _ = try_cgroup_attach(&ctx);
    0
}

#[inline(always)]
fn try_cgroup_attach(ctx: &RawTracePointContext) -> Option<()> {
    let dst: u64 = ctx.arg(0);
    let task: u64 = ctx.arg(2);
    // The moved task's step comes from PROCS: after a self-move the current
    // task is already outside it.
    moves::on_attach(dst, task)
}
