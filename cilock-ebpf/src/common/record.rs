//! Building and sending records: every record is built in this CPU's
//! scratch buffer ([`start`]), its header filled from the current task
//! ([`fill_header`]), and sent with its size ([`send`]), which counts it as
//! emitted or lost, globally and per step. A fixed-size record does all
//! three in one call ([`emit_fixed`]).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns},
};
use cilock_abi::{Header, RingRecord, StepLoss, kind};

use crate::common::maps::{COUNTERS, EVENTS, SCRATCH, SCRATCH_SIZE, STEP_LOSS, WAKEUP_BYTES, ro};

/// Fills a record header for the current task.
#[inline(always)]
pub fn fill_header(h: &mut Header, record_kind: u32, step: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    h.kind = record_kind;
    h.size = 0;
    h.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.step_cgroup = step;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The scratch buffer of this CPU.
#[inline(always)]
pub fn scratch() -> Option<*mut u8> {
    SCRATCH.get_ptr_mut(0).map(|p| p as *mut u8)
}

/// The scratch buffer as a `T` whose header is filled for `step`; the
/// buffer's address is returned for variable-length bytes after `T`.
#[inline(always)]
pub fn start<T: RingRecord>(step: u64) -> Option<(*mut u8, &'static mut T)> {
    let buf = scratch()?;
    // SAFETY: a RingRecord starts with its Header; the scratch buffer is
    // larger than any record's fixed part.
    fill_header(unsafe { &mut *(buf as *mut Header) }, T::KIND, step);
    // SAFETY: as above, and any bit pattern is a valid T (Record); this
    // program is the buffer's only user on this CPU until it returns.
    let ev = unsafe { &mut *(buf as *mut T) };
    Some((buf, ev))
}

/// Sets the record's size to `size` and sends it; true when it was sent.
#[inline(always)]
pub fn send<T: RingRecord>(buf: *mut u8, size: usize, step: u64) -> bool {
    // SAFETY: `buf` holds a T (see `start`), which starts with its Header.
    unsafe { (*(buf as *mut Header)).size = size as u32 };
    emit(buf, size, T::KIND, step)
}

/// Sends one fixed-size record `T` for `step`, its body filled by `fill`
/// (the header is already filled); true when it was sent.
#[inline(always)]
pub fn emit_fixed<T: RingRecord>(step: u64, fill: impl FnOnce(&mut T)) -> bool {
    let Some((buf, ev)) = start::<T>(step) else {
        return false;
    };
    fill(ev);
    send::<T>(buf, size_of::<T>(), step)
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

/// Counts one lost record of kind `k` for `step` (`STEP_LOSS`).
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
