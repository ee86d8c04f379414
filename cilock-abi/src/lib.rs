//! The kernel/user contract of cilock: the records the eBPF programs in
//! `cilock-ebpf` write into the ring buffer, the maps they share with the
//! daemon, and the offsets the daemon computes from BTF and hands to them.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]`, free of implicit padding
//! (checked by `const` assertions) and has no `bool` fields, so the same bytes
//! mean the same thing on both sides. The daemon's decoder lives in
//! `cilock-daemon::backend::ebpf::decode`.
#![no_std]
#![deny(missing_docs)]

pub mod event;
pub mod offsets;

pub use event::*;
pub use offsets::Offsets;
