//! The kernel/user contract of cilock: the records the eBPF programs in
//! `cilock-ebpf` write into the ring buffer, the maps they share with the
//! daemon, and the offsets the daemon computes from BTF and hands to them.
//!
//! One module per event family, with the same family names as the kernel
//! programs (`cilock-ebpf/src/probes/<family>.rs`) and the decoders:
//!
//! | module | records |
//! |---|---|
//! | [`header`] | [`Header`], the [`kind`] numbers, size limits, loss counters |
//! | [`process`] | [`ExecEvent`], [`ForkEvent`], [`ExitEvent`] |
//! | [`mod@file`] | [`OpenEvent`], [`CloseEvent`]; [`PathInfo`] and [`InodeStamp`], which other families reuse |
//! | [`cgroup`] | [`CgroupMoveEvent`], [`CgroupJoinEvent`], [`ProcStep`] |
//! | [`net`] | [`NetEvent`] |
//! | [`payload`] | [`PayloadEvent`] |
//! | [`syscall`] | [`SyscallRecord`], [`syscall::what`] |
//! | [`config`], [`offsets`] | what the loader writes into `.rodata`: [`SysConfig`], [`Offsets`] |
//!
//! Everything here is `#![no_std]`, `#[repr(C)]`, free of implicit padding
//! (checked by `const` assertions) and has no `bool` fields, so the same bytes
//! mean the same thing on both sides. Every such type implements
//! [`Record`] (and `aya::Pod` with the `user` feature); the ones that are
//! ring-buffer records also implement [`RingRecord`], which names their
//! [`kind`].
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod cgroup;
pub mod config;
pub mod file;
pub mod header;
pub mod net;
pub mod offsets;
pub mod payload;
pub mod process;
pub mod syscall;

pub use cgroup::{move_flags, CgroupJoinEvent, CgroupMoveEvent, ProcStep};
pub use config::SysConfig;
pub use file::{
    close_how, path_flags, CloseEvent, InodeStamp, OpenEvent, PathInfo, PATH_MAX_BYTES,
};
pub use header::{kind, Header, StepLoss, COUNTER_SLOTS, MAX_RECORD};
pub use net::{net_call, net_source, NetEvent, SOCKADDR_MAX};
pub use offsets::Offsets;
pub use payload::{payload_flags, PayloadEvent, PAYLOAD_MAX, STREAM_CAPTURE};
pub use process::{ExecEvent, ExitEvent, ForkEvent, ARGS_MAX_BYTES, FILENAME_MAX_BYTES};
pub use syscall::SyscallRecord;

/// A plain-old-data type shared by the kernel and user space: what a
/// reader may build from any bytes of the right length, and what a map may
/// hold.
///
/// # Safety
///
/// The implementor is `#[repr(C)]`, `Copy`, has no padding bytes (asserted
/// next to its definition), no references, `bool`s, enums or other types
/// with invalid bit patterns: every bit pattern of `size_of::<Self>()`
/// bytes is a valid value.
pub unsafe trait Record: Copy + 'static {}

/// A ring-buffer record: a [`Record`] that starts with a [`Header`] and is
/// sent with one [`kind`].
///
/// # Safety
///
/// `Self` has a [`Header`] at offset 0 (its first field, `hdr`).
pub unsafe trait RingRecord: Record {
    /// The [`kind`] number of this record.
    const KIND: u32;
}

/// Implements [`Record`] (and `aya::Pod` with the `user` feature) for each
/// listed type. The caller's `// SAFETY:` comment says why the types are
/// plain old data.
macro_rules! plain_old_data {
    ($($t:ty),+ $(,)?) => {$(
        unsafe impl $crate::Record for $t {}
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $t {}
    )+};
}
pub(crate) use plain_old_data;

/// Implements [`RingRecord`] for each `Type => kind` pair.
macro_rules! ring_record {
    ($($t:ty => $kind:expr),+ $(,)?) => {$(
        // SAFETY: the first field of the record is `hdr: Header`.
        unsafe impl $crate::RingRecord for $t {
            const KIND: u32 = $kind;
        }
        const _: () = assert!(core::mem::offset_of!($t, hdr) == 0);
    )+};
}
pub(crate) use ring_record;

#[cfg(test)]
mod tests {
    use super::*;

    fn ring<T: RingRecord>() -> (u32, usize) {
        (T::KIND, core::mem::size_of::<T>())
    }

    #[test]
    fn every_kind_has_one_record_with_a_name_and_fits() {
        let records = [
            ring::<ExecEvent>(),
            ring::<ForkEvent>(),
            ring::<ExitEvent>(),
            ring::<OpenEvent>(),
            ring::<CloseEvent>(),
            ring::<CgroupMoveEvent>(),
            ring::<CgroupJoinEvent>(),
            ring::<NetEvent>(),
            ring::<PayloadEvent>(),
            ring::<SyscallRecord>(),
        ];
        let mut seen = [false; kind::COUNT];
        for (k, size) in records {
            assert!((1..kind::COUNT as u32).contains(&k), "kind {k}");
            assert!(k <= kind::MASK);
            assert!(!seen[k as usize], "kind {k} twice");
            seen[k as usize] = true;
            assert_ne!(kind::name(k), "unknown");
            assert!(size <= MAX_RECORD);
        }
        assert!(seen[1..].iter().all(|&s| s), "a kind without a record");
    }

    #[test]
    fn syscall_numbers_have_names() {
        let all: [u32; 21] = core::array::from_fn(|i| i as u32 + 1);
        assert_eq!(
            syscall::what::ALL,
            all,
            "ALL lists every number once, in order"
        );
        for w in syscall::what::ALL {
            assert_ne!(syscall::what::name(w), "unknown", "what {w}");
        }
        assert_eq!(syscall::what::name(0), "unknown");
    }
}
