//! Maps and load-time constants shared by all programs, and the two things
//! every program does: find its step, and emit a record.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_get_current_ancestor_cgroup_id,
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use cilock_abi::{COUNTER_SLOTS, Offsets, StepLoss, kind};

/// Size of the per-CPU scratch buffer records are built in (the per-CPU
/// value size limit).
pub const SCRATCH_SIZE: usize = 32 * 1024;

/// The scratch buffer.
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; SCRATCH_SIZE],
}

/// Step cgroup id → 1 for every active step.
#[map]
pub static STEPS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// Events to the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Record scratch space.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Global counters: `kind * 2 + {0 emitted, 1 lost}`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS as u32, 0);

/// Lost records per step and CPU (only written when a record is lost).
#[map]
pub static STEP_LOSS: PerCpuHashMap<u64, StepLoss> = PerCpuHashMap::with_max_entries(1024, 0);

/// Struct member offsets of the running kernel (set by the loader).
#[unsafe(no_mangle)]
pub static OFFSETS: Offsets = Offsets {
    task_files: 0,
    task_fs: 0,
    task_mm: 0,
    task_tgid: 0,
    task_pid: 0,
    task_real_parent: 0,
    task_signal: 0,
    task_exit_code: 0,
    signal_live: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    file_f_path: 0,
    file_f_flags: 0,
    file_f_inode: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    dentry_d_inode: 0,
    dentry_d_sb: 0,
    dentry_d_hash_pprev: 0,
    qstr_len: 0,
    qstr_name: 0,
    vfsmount_mnt_root: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    mount_mnt: 0,
    fs_root: 0,
    fs_pwd: 0,
    mm_exe_file: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    bprm_file: 0,
    bprm_filename: 0,
    inode_i_ino: 0,
    inode_i_mode: 0,
    inode_i_size: 0,
    inode_i_sb: 0,
    inode_mtime_sec: 0,
    inode_mtime_nsec: 0,
    inode_ctime_sec: 0,
    inode_ctime_nsec: 0,
    sb_s_dev: 0,
    sb_s_magic: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    tp_exit_nr: 0,
    tp_exit_ret: 0,
};

/// cgroup level of step cgroups (their depth below the cgroup2 root).
#[unsafe(no_mangle)]
pub static STEP_LEVEL: u32 = 0;

/// Pending bytes at which a record forces a consumer wakeup.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 256 * 1024;

/// Step budget of a path walk (components + mount crossings).
#[unsafe(no_mangle)]
pub static MAX_WALK_STEPS: u32 = 1024;

/// Reads one field of `OFFSETS` as a `u64` (volatile, so the verifier sees a
/// load from the frozen `.rodata` map instead of a folded zero).
macro_rules! off {
    ($f:ident) => {
        crate::maps::offset(&raw const crate::maps::OFFSETS.$f)
    };
}

#[inline(always)]
pub fn offset(p: *const u32) -> u64 {
    unsafe { core::ptr::read_volatile(p) as u64 }
}
pub(crate) use off;

/// Reads a `.rodata` scalar.
#[inline(always)]
pub fn ro<T: Copy>(v: &T) -> T {
    unsafe { core::ptr::read_volatile(v) }
}

/// The step the current task belongs to, if any.
#[inline(always)]
pub fn current_step() -> Option<u64> {
    let level = ro(&STEP_LEVEL);
    let cg = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    if cg == 0 {
        return None;
    }
    if unsafe { STEPS.get(&cg) }.is_some() {
        Some(cg)
    } else {
        None
    }
}

/// The scratch buffer of this CPU.
#[inline(always)]
pub fn scratch() -> Option<*mut u8> {
    SCRATCH.get_ptr_mut(0).map(|p| p as *mut u8)
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}

/// Sends `size` bytes of `buf` as one record of `kind` for `step`, counting
/// it as emitted or lost.
#[inline(always)]
pub fn emit(buf: *const u8, size: usize, record_kind: u32, step: u64) {
    let size = size & (SCRATCH_SIZE - 1);
    if size == 0 {
        return;
    }
    let pending = EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64);
    let flags = if pending >= ro(&WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    } as u64;
    let data = unsafe { core::slice::from_raw_parts(buf, size) };
    let k = record_kind & kind::MASK;
    if EVENTS.output::<[u8]>(data, flags).is_ok() {
        bump(k * 2);
    } else {
        bump(k * 2 + 1);
        record_loss(step, k);
    }
}

#[inline(always)]
fn record_loss(step: u64, k: u32) {
    let idx = (k as usize) % kind::COUNT;
    if let Some(l) = STEP_LOSS.get_ptr_mut(&step) {
        unsafe { (*l).lost[idx] += 1 };
    } else {
        let mut v = StepLoss { lost: [0; kind::COUNT] };
        v.lost[idx] = 1;
        let _ = STEP_LOSS.insert(&step, &v, 0);
    }
}
