//! The ptrace backend's two modes:
//!
//! - follow ([`Backend::start`], daemon steps): one follower thread per step
//!   attaches to the step's root (and its existing descendants) and follows
//!   everything they start until the step ends;
//! - run ([`PtraceBackend::run`], `cilock run` without a daemon, works
//!   unprivileged): spawns the command under the seccomp filter and traces
//!   it on the calling thread until it and its descendants are done.
//!
//! Both deliver their events to the step's [`Sink`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CaptureInfo, PtraceConfig};
use crate::backend::ptrace;
use crate::backend::{Backend, BackendError, EventCounts, Sink, StepTarget, Tap};

/// The ptrace backend (no state beyond what it reports: each step gets its
/// own follower thread).
pub struct PtraceBackend {
    info: CaptureInfo,
}

impl PtraceBackend {
    /// The backend, chosen for `reason` (attested as `trace.reason`).
    pub fn new(reason: String) -> PtraceBackend {
        PtraceBackend {
            info: super::capture_info(reason),
        }
    }
}

/// How a command spawned by [`PtraceBackend::run`] ended.
#[derive(Clone, Debug)]
pub struct SpawnedRun {
    /// The command's exit code (128+signal for a signal death).
    pub code: i32,
    /// The command's pid (`None`: it never started).
    pub root: Option<u32>,
    /// Descendants still running when the wait for them ran out (killed:
    /// under the seccomp filter a process cannot run untraced).
    pub survivors: Vec<u32>,
    /// How long the descendants were waited for after the root's exit.
    pub waited: Duration,
}

impl PtraceBackend {
    /// Runs `cmd` traced, delivering its events to `sink`; after the
    /// command's root exited, its descendants are waited for at most
    /// `wait_descendants` (those left are killed and listed as survivors).
    /// `on_spawn` receives the child (to take its pipes; do not wait on it).
    pub fn run(
        &self,
        cmd: std::process::Command,
        wait_descendants: Duration,
        on_spawn: impl FnOnce(&mut std::process::Child),
        sink: &Sink,
    ) -> Result<SpawnedRun, BackendError> {
        let cfg = PtraceConfig {
            wait_descendants: Some(wait_descendants),
            ..Default::default()
        };
        let mut root = None;
        let outcome = ptrace::run_outcome(
            cmd,
            &cfg,
            |child| {
                root = Some(child.id());
                on_spawn(child)
            },
            |ev| sink.push(ev),
        )?;
        Ok(SpawnedRun {
            code: outcome.code,
            root,
            survivors: outcome.survivors,
            waited: outcome.waited,
        })
    }
}

impl Backend for PtraceBackend {
    fn info(&self) -> &CaptureInfo {
        &self.info
    }

    /// Spawns the follower; returns once it holds the process (what the
    /// process does right after, an exec or its exit, is then in the
    /// trace), or the follower gave up.
    fn start(&self, step: StepTarget<'_>, sink: Sink) -> Result<Box<dyn Tap>, BackendError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (pid, stop2) = (step.pid, stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("cilock-ptrace-{}", step.name))
            .spawn(move || {
                let cfg = PtraceConfig {
                    daemon_pid: Some(std::process::id()),
                    ..Default::default()
                };
                if let Err(e) = super::follow(pid, &cfg, stop2, |ev| sink.push(ev)) {
                    tracing::warn!("ptrace follower for pid {pid}: {e}");
                }
            })
            .map_err(BackendError::Thread)?;
        wait_traced(step.pid, &thread, Duration::from_secs(5));
        Ok(Box::new(Follower { stop, thread }))
    }
}

/// A step followed by its own thread.
struct Follower {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Tap for Follower {
    /// Detaches (the processes keep running) and joins the thread. Nothing
    /// is lost under ptrace: the counts come from the process table
    /// ([`crate::backend::Counting::ProcessTable`]).
    fn stop(self: Box<Self>) -> Result<EventCounts, BackendError> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        Ok(EventCounts::default())
    }
}

/// Waits (at most `limit`) until `pid` is ptrace-attached (`TracerPid` of
/// its status, the follower thread's tid), or its follower thread `h`
/// ended (attach failed, the process is gone).
fn wait_traced(pid: u32, h: &JoinHandle<()>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !h.is_finished() {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        if s.lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|v| v.trim() != "0")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
