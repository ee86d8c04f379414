//! Maps and load-time constants shared by all programs, and the two things
//! every program does: find its step, and emit a record.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_get_current_ancestor_cgroup_id,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
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
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

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
// SAFETY: all-zero is a valid Offsets (plain u32 fields); the loader
// overrides it before the programs load.
pub static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

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
/// it as emitted or lost; true when it was sent.
#[inline(always)]
pub fn emit(buf: *const u8, size: usize, record_kind: u32, step: u64) -> bool {
    let size = size & (SCRATCH_SIZE - 1);
    if size == 0 {
        return false;
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
        true
    } else {
        bump(k * 2 + 1);
        record_loss(step, k);
        false
    }
}

#[inline(always)]
pub fn record_loss(step: u64, k: u32) {
    let idx = (k as usize) % kind::COUNT;
    if let Some(l) = STEP_LOSS.get_ptr_mut(&step) {
        unsafe { (*l).lost[idx] += 1 };
    } else {
        let mut v = StepLoss {
            lost: [0; kind::COUNT],
        };
        v.lost[idx] = 1;
        let _ = STEP_LOSS.insert(&step, &v, 0);
    }
}
