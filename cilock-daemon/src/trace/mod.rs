//! The trace model shared by all backends, and what is built from it.

pub mod digest_cache;
pub mod event;
pub mod net;
pub mod pathname;
pub mod products;
pub mod recorder;

#[cfg(test)]
mod names_tests;

pub use event::{FileStamp, NetCall, SockAddr, TraceEvent};
