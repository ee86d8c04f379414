//! What the Docker proxy recorded for one step (shim: the `evidence`
//! helper owns this module; only the brief's signatures are copied here).
// shim: removed at merge (the whole file is the `evidence` helper's)

use std::sync::Mutex;

use cilock_evidence::attestors::command_run::ProcessInfo;

// shim: removed at merge (cilock_evidence::attestors::command_run::Container)
/// A container the step created (shim).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Where it ran.
    pub cgroup: String,
    /// How it was attributed.
    pub attribution: String,
}

// shim: removed at merge (cilock_evidence::attestors::command_run::ContainerBuild)
/// A build the step ran (shim).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerBuild {
    /// `build-<n>`.
    pub id: String,
    /// How it was attributed.
    pub attribution: String,
}

// shim: removed at merge
/// What the proxy recorded for one step (shim: unbounded here).
#[derive(Default)]
pub struct ContainerLog {
    inner: Mutex<(Vec<Container>, Vec<ContainerBuild>)>,
}

impl ContainerLog {
    /// Records a container.
    pub fn record_container(&self, c: Container) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push(c);
    }

    /// Records a build.
    pub fn record_build(&self, b: ContainerBuild) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .push(b);
    }

    /// At step end: the containers and builds, and the count dropped.
    pub fn finish(&self, _processes: &[ProcessInfo]) -> (Vec<Container>, Vec<ContainerBuild>, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.0.clone(), g.1.clone(), 0)
    }
}
