//! Trace backends: eBPF (preferred) and ptrace with a seccomp filter
//! (fallback). Both produce [`crate::trace::TraceEvent`]s.

pub mod ebpf;
pub mod ptrace;

use serde::{Deserialize, Serialize};

/// Which backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// eBPF when the probes load, else ptrace (the reason is attested).
    #[default]
    Auto,
    /// eBPF only; fail when unavailable.
    Ebpf,
    /// ptrace with a seccomp filter.
    Ptrace,
}
