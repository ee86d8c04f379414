//! The daemon's side of the trace model: hashing the files a step opened
//! ([`digest_cache`], the fold's [`cilock_trace::fold::hash::Hasher`]) and
//! flagging products ([`products`]). The model itself (events, decoders,
//! parsers, the per-step fold) is the pure `cilock-trace` crate.

pub mod digest_cache;
pub mod procfs;
pub mod products;

#[cfg(test)]
mod fold_tests;
#[cfg(test)]
mod names_tests;
