//! What this kernel lets the eBPF backend load, asked by loading real
//! programs (`cilock doctor`): the whole backend through
//! [`EbpfBackend::load`] (the hooks it chooses), and one probe per program
//! kind it relies on, so a refusal is named by kind.
//!
//! - [`HookKind::Fexit`] loads the backend's own `fexit_file_open` and
//!   attaches it to `security_file_open` (trampolines are what kernels
//!   refuse, at attach time);
//! - the other kinds load a minimal program or map of that type
//!   (`aya::sys::is_program_supported` / `is_map_supported`: a real
//!   `BPF_PROG_LOAD` / `BPF_MAP_CREATE`).
//!
//! Everything loaded is unloaded before these functions return. Loading
//! needs root (CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN).

use std::collections::BTreeMap;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::EbpfLoader;

use super::{probes, EbpfBackend, EbpfError, OBJECT};

/// A program kind the backend relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// The `EVENTS` ring buffer (`BPF_MAP_TYPE_RINGBUF`, 5.8+).
    RingBuf,
    /// Syscall tracepoints (file open fallback, closes, network calls).
    Tracepoint,
    /// Raw tracepoints (`sched_process_{fork,exec,exit}`, `cgroup_attach_task`).
    RawTracepoint,
    /// fexit on `security_file_open` (BPF trampolines).
    Fexit,
    /// `cgroup_skb/{egress,ingress}` packet capture on step cgroups.
    CgroupSkb,
    /// `cgroup/{connect,sendmsg,bind}{4,6}` socket hooks on step cgroups.
    CgroupSock,
}

impl HookKind {
    /// Every kind, in report order.
    pub const ALL: [HookKind; 6] = [
        HookKind::RingBuf,
        HookKind::Tracepoint,
        HookKind::RawTracepoint,
        HookKind::Fexit,
        HookKind::CgroupSkb,
        HookKind::CgroupSock,
    ];

    /// Its stable check name (`hook-ringbuf`, …).
    pub fn check_name(self) -> &'static str {
        match self {
            HookKind::RingBuf => "hook-ringbuf",
            HookKind::Tracepoint => "hook-tracepoint",
            HookKind::RawTracepoint => "hook-raw-tracepoint",
            HookKind::Fexit => "hook-fexit",
            HookKind::CgroupSkb => "hook-cgroup-skb",
            HookKind::CgroupSock => "hook-cgroup-sock",
        }
    }
}

/// One kind probed: `Ok` says what loaded, `Err` why the kernel refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindProbe {
    /// Which kind.
    pub kind: HookKind,
    /// What loaded, or why not.
    pub outcome: Result<String, String>,
}

/// Loads the backend as the daemon would (steps at `step_level`) and
/// returns its `trace.hooks`, then unloads it.
pub fn backend_hooks(step_level: u32) -> Result<BTreeMap<String, String>, EbpfError> {
    Ok(EbpfBackend::load(step_level)?.info.hooks_map())
}

/// Probes every [`HookKind`].
pub fn kinds() -> Vec<KindProbe> {
    HookKind::ALL
        .into_iter()
        .map(|kind| KindProbe {
            kind,
            outcome: probe(kind),
        })
        .collect()
}

fn probe(kind: HookKind) -> Result<String, String> {
    let program = |t: ProgramType, what: &str| match aya::sys::is_program_supported(t) {
        Ok(true) => Ok(format!("a {what} program loaded")),
        Ok(false) => Err(format!("the kernel refused a {what} program")),
        Err(e) => Err(format!("loading a {what} program: {e}")),
    };
    match kind {
        HookKind::RingBuf => match aya::sys::is_map_supported(MapType::RingBuf) {
            Ok(true) => Ok("a BPF_MAP_TYPE_RINGBUF map was created".into()),
            Ok(false) => Err("the kernel has no BPF_MAP_TYPE_RINGBUF (5.8+)".into()),
            Err(e) => Err(format!("creating a ring buffer map: {e}")),
        },
        HookKind::Tracepoint => program(ProgramType::TracePoint, "tracepoint"),
        HookKind::RawTracepoint => program(ProgramType::RawTracePoint, "raw tracepoint"),
        HookKind::CgroupSkb => program(ProgramType::CgroupSkb, "cgroup_skb"),
        HookKind::CgroupSock => program(ProgramType::CgroupSockAddr, "cgroup/sock_addr"),
        HookKind::Fexit => fexit().map_err(|e| without_empty_log(&e.to_string())),
    }
}

/// aya appends the verifier's log to a load error, also when it is empty.
fn without_empty_log(msg: &str) -> String {
    let trimmed = msg.trim_end();
    match trimmed.strip_suffix("Verifier output:") {
        Some(head) => head.trim_end().trim_end_matches('.').to_string(),
        None => msg.to_string(),
    }
}

/// Loads the backend's object and attaches its `fexit_file_open` (then
/// drops it: detached and unloaded).
fn fexit() -> Result<String, EbpfError> {
    if OBJECT.is_empty() {
        return Err(EbpfError::NotBuilt);
    }
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    probes::file::attach_fexit_open(&mut ebpf)?;
    Ok("fexit_file_open attached to security_file_open".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_verifier_log_is_dropped_and_a_real_one_kept() {
        assert_eq!(
            without_empty_log("load x: returned EPERM (os error 1). Verifier output: "),
            "load x: returned EPERM (os error 1)"
        );
        assert_eq!(
            without_empty_log("load x: Verifier output: R1 invalid"),
            "load x: Verifier output: R1 invalid"
        );
    }

    #[test]
    fn check_names_are_stable_and_distinct() {
        let names: Vec<&str> = HookKind::ALL.iter().map(|k| k.check_name()).collect();
        assert_eq!(
            names,
            [
                "hook-ringbuf",
                "hook-tracepoint",
                "hook-raw-tracepoint",
                "hook-fexit",
                "hook-cgroup-skb",
                "hook-cgroup-sock"
            ]
        );
    }
}
