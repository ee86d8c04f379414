//! Trace backends: eBPF (preferred) and ptrace with a seccomp filter
//! (fallback). Both produce [`crate::trace::TraceEvent`]s.

pub mod ebpf;
pub mod ptrace;
