//! Fault-safe kernel memory reads.

use aya_ebpf::helpers::bpf_probe_read_kernel;

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
