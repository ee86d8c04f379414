//! The ways a workload is run ([`Sc`]): untraced, in a step of the eBPF
//! daemon, outside any step while one is active, under the ptrace fallback,
//! under `strace -f`.

/// How a run is traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Sc {
    /// No tracer, no daemon.
    Base,
    /// In a step of the eBPF daemon.
    Ebpf,
    /// Outside any step while the daemon runs with another step active.
    Outside,
    /// `cilock run --no-daemon --backend ptrace`.
    Ptrace,
    /// `strace -f -o /dev/null`.
    Strace,
}

impl Sc {
    pub(super) fn name(self) -> &'static str {
        match self {
            Sc::Base => "untraced",
            Sc::Ebpf => "ebpf",
            Sc::Outside => "outside-step",
            Sc::Ptrace => "ptrace",
            Sc::Strace => "strace",
        }
    }
}

pub(super) const SCENARIOS: [Sc; 5] = [Sc::Base, Sc::Ebpf, Sc::Outside, Sc::Ptrace, Sc::Strace];
