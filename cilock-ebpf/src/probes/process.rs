//! The process family: exec, fork and exit of step processes.
//!
//! | program | hook | record |
//! |---|---|---|
//! | `sched_process_exec` | raw_tp `sched_process_exec` (task, old_pid, bprm) | EXEC |
//! | `sched_process_fork` | raw_tp `sched_process_fork` (parent, child) | FORK |
//! | `sched_process_exit` | raw_tp `sched_process_exit` (task, …) | EXIT |
//!
//! Each also keeps the cgroup family's table of step processes up to date
//! (`cgroup::on_exec`, `on_fork`, `forget`), and an exit stamps the files
//! the process still has open for writing (`file::stamp_at_exit`).

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use cilock_abi::{ARGS_MAX_BYTES, ExecEvent, ExitEvent, FILENAME_MAX_BYTES, ForkEvent, Offsets};

use crate::common::maps::{current_step, off};
use crate::common::path::{stamp, walk_path};
use crate::common::read::{rd, rd_ptr};
use crate::common::record::{self, emit_fixed};
use crate::probes::{cgroup, file};

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
    let (buf, ev) = record::start::<ExecEvent>(step)?;
    ev.old_tid = old_pid as u32;
    ev.mnt_ns = mnt_ns(task);
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
    record::send::<ExecEvent>(buf, size, step);
    cgroup::on_exec(step, task);
    Some(())
}

/// Inode of `task`'s mount namespace (`task->nsproxy->mnt_ns->ns.inum`);
/// 0 when the kernel's layout lacks a member or a read fails.
#[inline(always)]
fn mnt_ns(task: u64) -> u32 {
    let (a, b, c) = (
        off!(task_nsproxy),
        off!(nsproxy_mnt_ns),
        off!(mnt_namespace_inum),
    );
    let absent = Offsets::ABSENT as u64;
    if a == absent || b == absent || c == absent {
        return 0;
    }
    rd_ptr(task, a)
        .and_then(|ns| rd_ptr(ns, b))
        .and_then(|m| rd::<u32>(m + c))
        .unwrap_or(0)
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
        emit_fixed::<ForkEvent>(step, |ev| {
            ev.child_tgid = tgid;
            ev._pad = 0;
        });
    }
    // Where the child was born (clone3(CLONE_INTO_CGROUP) may put it
    // outside the parent's step, or into another step).
    cgroup::on_fork(step, child, tgid);
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
    cgroup::forget((bpf_get_current_pid_tgid() >> 32) as u32);
    let step = current_step()?;
    let code = rd::<u32>(task + off!(task_exit_code)).unwrap_or(0);
    file::stamp_at_exit(step, task);
    emit_fixed::<ExitEvent>(step, |ev| {
        ev.exit_code = code;
        ev._pad = 0;
    });
    Some(())
}
