//! The Docker API proxy's contract with the engine (shim: the `proxy`
//! helper owns this module; only the brief's definitions are copied here).
// shim: removed at merge (the whole file is the `proxy` helper's)

// shim: removed at merge
pub use crate::engine::containers::{Container, ContainerBuild};

// shim: removed at merge
/// What the proxy asks of the engine about steps.
pub trait StepDirectory: Send + Sync + 'static {
    /// The step `pid` belongs to, from its cgroup (None: not in any step).
    fn step_of(&self, pid: u32) -> Option<StepRef>;
    /// A container the step created (what the request asked and the engine answered).
    fn record_container(&self, step: &StepRef, c: Container);
    /// A build the step ran.
    fn record_build(&self, step: &StepRef, b: ContainerBuild);
    /// While the guard lives, every process whose step-level ancestor is `cgroup` (an absolute
    /// path under the cgroup2 mount, created when missing) is traced as `step`'s.
    fn attribute_cgroup(
        &self,
        step: &StepRef,
        cgroup: &std::path::Path,
    ) -> Result<Box<dyn Send>, String>;
    /// `cgroup_parent` as a client wrote it (absolute, relative, or a systemd slice name)
    /// names a cgroup inside cilock's steps tree.
    fn inside_steps(&self, cgroup_parent: &str) -> bool;
}

// shim: removed at merge
/// A step, as the proxy knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRef {
    /// The step's owner.
    pub owner_uid: u32,
    /// The step's name.
    pub name: String,
    /// The step cgroup relative to the cgroup2 root, with a leading '/' (`/cilock.steps/u0.x.12.3`):
    /// the `CgroupParent` for an engine on the cgroupfs driver.
    pub cgroup: String,
    /// The step's systemd slice name when steps are slices (see `steps`), for the systemd driver.
    pub slice: Option<String>,
}
