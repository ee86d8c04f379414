//! What a backend captures with, as typed values: which backend, why it was
//! chosen, its hooks per concern, its limitations and how it counts events.
//!
//! Backends decide these facts when they load (from what the kernel
//! allowed); code branches on the typed fields ([`BackendKind`],
//! [`Counting`], the backends' own flags), never on the prose. The prose
//! becomes the attestation's `trace.hooks` / `trace.limitations` strings
//! only when the attestation is assembled ([`CaptureInfo::hooks_map`],
//! [`CaptureInfo::limitation_texts`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Which backend traces the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Probes loaded once, filtered per step cgroup in the kernel.
    Ebpf,
    /// ptrace with a seccomp filter (or following a running tree).
    Ptrace,
}

impl BackendKind {
    /// The name in `trace.backend` and step records: `ebpf` or `ptrace`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Ebpf => "ebpf",
            BackendKind::Ptrace => "ptrace",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a hook captures: the keys of `trace.hooks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Concern {
    /// `cgroup-leave` (ptrace: writes to cgroup.procs).
    CgroupLeave,
    /// `cgroup-move` (eBPF: cgroup_attach_task).
    CgroupMove,
    /// `dns-tls` (eBPF: packet capture on the step cgroup).
    DnsTls,
    /// `egress` (ptrace: payload prefixes).
    Egress,
    /// `exec` (ptrace).
    Exec,
    /// `fentry` (eBPF: whether trampolines could be used).
    Fentry,
    /// `file-open`.
    FileOpen,
    /// `follow-mode` (ptrace attached to a running tree).
    FollowMode,
    /// `network`.
    Network,
    /// `open-dedup` (eBPF: the open de-duplication key).
    OpenDedup,
    /// `process-exec` (eBPF).
    ProcessExec,
    /// `process-exit` (eBPF).
    ProcessExit,
    /// `process-fork` (eBPF).
    ProcessFork,
    /// `process-tree` (ptrace).
    ProcessTree,
    /// `step-filter` (eBPF: how records are attributed to a step).
    StepFilter,
    /// `suspicious-syscalls`.
    SuspiciousSyscalls,
    /// `written-files`.
    WrittenFiles,
}

impl Concern {
    /// The key in `trace.hooks`.
    pub fn key(self) -> &'static str {
        match self {
            Concern::CgroupLeave => "cgroup-leave",
            Concern::CgroupMove => "cgroup-move",
            Concern::DnsTls => "dns-tls",
            Concern::Egress => "egress",
            Concern::Exec => "exec",
            Concern::Fentry => "fentry",
            Concern::FileOpen => "file-open",
            Concern::FollowMode => "follow-mode",
            Concern::Network => "network",
            Concern::OpenDedup => "open-dedup",
            Concern::ProcessExec => "process-exec",
            Concern::ProcessExit => "process-exit",
            Concern::ProcessFork => "process-fork",
            Concern::ProcessTree => "process-tree",
            Concern::StepFilter => "step-filter",
            Concern::SuspiciousSyscalls => "suspicious-syscalls",
            Concern::WrittenFiles => "written-files",
        }
    }
}

/// One hook: what it captures and how (the attested description).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// What it captures.
    pub concern: Concern,
    /// How, for the attestation (e.g. `raw_tp:sched_process_exec`).
    pub how: String,
}

/// Something a backend cannot see, stated in the attestation. Text only
/// for the reader of the attestation: no code reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limitation(Cow<'static, str>);

impl Limitation {
    /// A limitation stated by a constant text.
    pub const fn fixed(text: &'static str) -> Limitation {
        Limitation(Cow::Borrowed(text))
    }

    /// A limitation whose text depends on a bound or the kernel.
    pub fn text(text: String) -> Limitation {
        Limitation(Cow::Owned(text))
    }
}

/// How a backend counts the events of a step (`trace.events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counting {
    /// Captured and lost records per kind, counted by the backend as they
    /// arrive (the eBPF ring and the kernel's loss counters).
    PerKind,
    /// Nothing is lost (the tracer stops the tracee): only `process`, the
    /// number of processes in the step's process table, is counted.
    ProcessTable,
}

/// Records of one kind a backend captured for a step, and lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Delivered to the step's sink.
    pub captured: u64,
    /// Lost (the kernel could not emit them, or they were malformed).
    pub lost: u64,
}

/// A step's counts per kind (`process`, `file_open`, …, and `malformed`),
/// by the kind names of `cilock_abi::kind::name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounts(pub BTreeMap<String, Count>);

/// What a backend captures with, decided when it loaded.
#[derive(Clone, Debug)]
pub struct CaptureInfo {
    /// Which backend.
    pub kind: BackendKind,
    /// Why this backend (empty when it is the preferred one and loaded).
    pub reason: String,
    /// Hooks in use, one per concern.
    pub hooks: Vec<Hook>,
    /// What this backend cannot see.
    pub limitations: Vec<Limitation>,
    /// How it counts events.
    pub counting: Counting,
}

impl CaptureInfo {
    /// `trace.hooks`: description per concern key.
    pub fn hooks_map(&self) -> BTreeMap<String, String> {
        self.hooks
            .iter()
            .map(|h| (h.concern.key().to_string(), h.how.clone()))
            .collect()
    }

    /// `trace.limitations`, in order.
    pub fn limitation_texts(&self) -> Vec<String> {
        self.limitations.iter().map(|l| l.0.to_string()).collect()
    }

    /// Sets the hook of `concern` (replacing an earlier one).
    pub fn set_hook(&mut self, concern: Concern, how: impl Into<String>) {
        let how = how.into();
        match self.hooks.iter_mut().find(|h| h.concern == concern) {
            Some(h) => h.how = how,
            None => self.hooks.push(Hook { concern, how }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_set_again_replaces_the_first() {
        let mut info = CaptureInfo {
            kind: BackendKind::Ebpf,
            reason: String::new(),
            hooks: Vec::new(),
            limitations: vec![Limitation::fixed("a"), Limitation::text("b".into())],
            counting: Counting::PerKind,
        };
        info.set_hook(Concern::Network, "probes");
        info.set_hook(Concern::FileOpen, "fexit");
        info.set_hook(Concern::Network, "unavailable: no");
        let m = info.hooks_map();
        assert_eq!(m.len(), 2);
        assert_eq!(m["network"], "unavailable: no");
        assert_eq!(m["file-open"], "fexit");
        assert_eq!(info.limitation_texts(), ["a", "b"]);
        assert_eq!(info.kind.name(), "ebpf");
    }
}
