//! The trace model and every pure step from kernel bytes to a step's
//! process table: what `aya-obj` is to `aya`.
//!
//! - [`event`]: [`TraceEvent`], the one event type both backends (eBPF,
//!   ptrace) emit;
//! - [`syscall`]: [`SuspiciousCall`], a flagged syscall, typed, with one
//!   description for both backends (its doc lists the four files adding one
//!   touches);
//! - [`decode`]: kernel ring-buffer records (`cilock-abi`) → events, one
//!   decoder per family, and socket addresses;
//! - [`proto`]: the payload parsers (DNS, TLS ClientHello, HTTP CONNECT)
//!   and the TCP stream-start reassembly;
//! - [`fold`]: the per-step fold of events into the process table and the
//!   `CommandRun` processes.
//!
//! No aya, no ptrace, no root, no `/proc`, no hashing I/O: what the fold
//! needs of the machine (a hasher, what `/proc` shows of a live process) is
//! passed in by the daemon. Everything here is testable and fuzzable
//! without a kernel (`fuzz/fuzz_targets/{decode,dns,tls}.rs`).

pub mod container;
pub mod decode;
pub mod event;
pub mod fold;
pub mod pathname;
pub mod proto;
pub mod syscall;

pub use event::{FileStamp, NetCall, Running, SockAddr, TraceEvent};
pub use syscall::SuspiciousCall;
