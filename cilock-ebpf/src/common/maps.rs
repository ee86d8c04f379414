//! Maps and load-time constants shared by all programs, and the first thing
//! every program does: find its step ([`current_step`]). Maps of one family
//! live with its probes (`probes/<family>.rs`); records are built and sent
//! by `record.rs`.

use aya_ebpf::{
    helpers::generated::bpf_get_current_ancestor_cgroup_id,
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use cilock_abi::{COUNTER_SLOTS, Offsets, StepLoss, SysConfig};

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

/// Record scratch space.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Global counters: `kind * 2 + {0 emitted, 1 lost}`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS as u32, 0);

/// Lost records per step and CPU (only written when a record is lost).
#[map]
pub static STEP_LOSS: PerCpuHashMap<u64, StepLoss> = PerCpuHashMap::with_max_entries(1024, 0);

/// Loader-set constants of the net and syscall programs.
#[unsafe(no_mangle)]
pub static SYS_CONFIG: SysConfig = SysConfig {
    tp_enter_args: 16,
    daemon_tgid: 0,
    daemon_pidfd_ino: 0,
};

/// Reads `SYS_CONFIG.$f`.
macro_rules! syscfg {
    ($f:ident) => {
        unsafe { core::ptr::read_volatile(&raw const crate::common::maps::SYS_CONFIG.$f) }
    };
}
pub(crate) use syscfg;

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
        crate::common::maps::offset(&raw const crate::common::maps::OFFSETS.$f)
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
