//! Fault-safe reads: kernel memory ([`rd`], [`rd_ptr`]), a task's open
//! files ([`fd_array`], [`file_of`]) and the arguments of a
//! `syscalls/sys_enter_*` tracepoint record ([`arg`]).

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};
use cilock_abi::Offsets;

use crate::common::maps::{off, syscfg};

/// Reads a `T` at kernel address `addr`.
#[inline(always)]
pub fn rd<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Reads a pointer-sized value at `base + off`; `None` for a null result.
#[inline(always)]
pub fn rd_ptr(base: u64, off: u64) -> Option<u64> {
    match rd::<u64>(base + off) {
        Some(0) | None => None,
        Some(p) => Some(p),
    }
}

/// The fd array of `task` and its size (`u64::MAX` when `fdtable.max_fds`
/// is unknown).
#[inline(always)]
pub fn fd_array(task: u64) -> Option<(u64, u64)> {
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

/// The `struct file` at index `fd` of the fd array `fds` (no bounds check:
/// the caller knows `fd` is below the table's size).
#[inline(always)]
pub fn file_at(fds: u64, fd: u64) -> Option<u64> {
    rd_ptr(fds, (fd & 0xf_ffff) * 8)
}

/// The `struct file` of fd `fd` of `task` (`None` for a closed fd or one
/// beyond the table).
#[inline(always)]
pub fn file_of(task: u64, fd: u64) -> Option<u64> {
    let (fds, max) = fd_array(task)?;
    if fd >= max {
        return None;
    }
    file_at(fds, fd)
}

/// Argument `i` of a `syscalls/sys_enter_*` record.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    let base = syscfg!(tp_enter_args) as usize;
    unsafe { ctx.read_at::<u64>(base + i * 8) }.unwrap_or(0)
}
