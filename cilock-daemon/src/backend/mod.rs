//! Trace backends: eBPF (preferred) and ptrace with a seccomp filter
//! (fallback), behind one interface.
//!
//! - A [`Backend`] is loaded once per engine ([`choose`], which falls back
//!   from eBPF to ptrace) and says what it captures with ([`CaptureInfo`]).
//! - [`Backend::start`] begins tracing one step and returns its [`Tap`];
//!   [`Tap::stop`] ends it once everything the step emitted was delivered.
//! - Both backends deliver [`TraceEvent`]s into the step's [`Sink`]; they
//!   never see the recorder behind it.
//! - [`Tap::alias`] traces another cgroup at the step level as the step's
//!   while a guard lives (the BuildKit engine window); only the eBPF
//!   backend, which filters by cgroup, can.
//!
//! The engine only talks to `dyn Backend` and `dyn Tap`: it never asks
//! which backend it has.

pub mod capture;
pub mod ebpf;
pub mod ptrace;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use capture::{
    BackendKind, CaptureInfo, Concern, Count, Counting, EventCounts, Hook, Limitation,
};

use crate::cgroup::Cgroup;
use cilock_trace::fold::Recorder;
use cilock_trace::TraceEvent;

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

/// Where a backend delivers the events of one step: the step's recorder.
/// Cloned into whatever thread produces them (the eBPF consumer, a ptrace
/// follower); pushing is the only thing a backend does with it.
#[derive(Clone)]
pub struct Sink(Arc<Mutex<Recorder>>);

impl Sink {
    /// A sink folding into `recorder`.
    pub fn new(recorder: Recorder) -> Sink {
        Sink(Arc::new(Mutex::new(recorder)))
    }

    /// Delivers one event.
    /// A recorder a panic left half-updated takes no more events.
    pub fn push(&self, ev: TraceEvent) {
        if let Ok(mut r) = self.0.lock() {
            r.push(ev);
        }
    }

    /// Runs `f` on the recorder (the engine: roots, the final take).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Recorder) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes the recorder out (the step ended: nothing pushes any more).
    pub(crate) fn take(&self) -> Recorder {
        self.with(std::mem::take)
    }
}

/// The step a backend starts tracing.
#[derive(Clone, Copy, Debug)]
pub struct StepTarget<'a> {
    /// Step name (for thread names and logs).
    pub name: &'a str,
    /// The step's cgroup (created, still empty).
    pub cgroup: &'a Cgroup,
    /// The process the step begins with (moved into `cgroup` right after).
    pub pid: u32,
}

/// A loaded backend: one per engine.
pub trait Backend: Send + Sync {
    /// What it captures with (decided at load).
    fn info(&self) -> &CaptureInfo;

    /// Starts tracing `step`, delivering its events to `sink`. On error
    /// nothing of the step is left in the backend.
    fn start(&self, step: StepTarget<'_>, sink: Sink) -> Result<Box<dyn Tap>, BackendError>;
}

/// One step being traced.
pub trait Tap: Send {
    /// Stops tracing; returns once everything the step emitted is in its
    /// sink, with the step's event counts.
    fn stop(self: Box<Self>) -> Result<EventCounts, BackendError>;

    /// Traces every process whose ancestor at the step level is `cgroup`
    /// (a cgroup at the step level, outside the steps' tree) as this
    /// step's while the returned guard lives, and until the step ends at
    /// the latest. Backends that do not filter by cgroup (ptrace follows
    /// the process tree) refuse.
    fn alias(&self, cgroup: &Cgroup) -> Result<Box<dyn Send>, BackendError> {
        Err(BackendError::Unsupported(format!(
            "attributing cgroup {} to a step needs the eBPF backend (this backend follows the step's process tree, not cgroups)",
            cgroup.path().display()
        )))
    }
}

/// Why a backend could not be loaded or a step not traced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The eBPF backend failed.
    #[error("eBPF backend: {0}")]
    Ebpf(#[from] ebpf::EbpfError),
    /// ptrace cannot work here.
    #[error("ptrace unavailable: {0}")]
    PtraceUnavailable(#[from] ptrace::ProbeError),
    /// The ptrace tracer failed.
    #[error("ptrace: {0}")]
    Ptrace(#[from] ptrace::PtraceError),
    /// A tracer thread could not start.
    #[error("starting a tracer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The backend cannot do what was asked.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Loads the backend `choice` asks for; with [`BackendChoice::Auto`], eBPF
/// when its probes load, else ptrace with the reason. Step cgroups will be
/// at `step_level` below the cgroup2 root.
pub fn choose(choice: BackendChoice, step_level: u32) -> Result<Box<dyn Backend>, BackendError> {
    let reason = match choice {
        BackendChoice::Ptrace => "ptrace selected by configuration".to_string(),
        BackendChoice::Ebpf | BackendChoice::Auto => match ebpf::EbpfBackend::load(step_level) {
            Ok(b) => return Ok(Box::new(Arc::new(b))),
            Err(e) if choice == BackendChoice::Auto => {
                tracing::warn!("eBPF unavailable, using ptrace: {e}");
                format!("eBPF unavailable: {e}")
            }
            Err(e) => return Err(e.into()),
        },
    };
    ptrace::probe()?;
    Ok(Box::new(ptrace::PtraceBackend::new(reason)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoAlias;

    impl Tap for NoAlias {
        fn stop(self: Box<Self>) -> Result<EventCounts, BackendError> {
            Ok(EventCounts::default())
        }
    }

    /// A backend that follows process trees (ptrace) refuses an alias and
    /// says why.
    #[test]
    fn a_tap_without_cgroup_filtering_refuses_an_alias() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::open(dir.path()).unwrap();
        let msg = match NoAlias.alias(&cg) {
            Ok(_) => panic!("an alias was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.starts_with("not supported: attributing cgroup"),
            "{msg}"
        );
        assert!(msg.contains("needs the eBPF backend"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
