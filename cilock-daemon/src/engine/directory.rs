//! The engine's steps as the Docker proxy sees them: which step a client
//! process is in (from its cgroup), where the proxy's records of a step's
//! containers and builds go, the cgroup alias of the BuildKit engine
//! window, and whether a client-chosen cgroup parent names the steps' tree.
//!
//! Nothing here trusts the caller's input: a pid's step comes from the
//! kernel's /proc/PID/cgroup; a record for a step that has ended (or a
//! later step of the same name) is dropped; an alias is refused unless it
//! is a cgroup at the step level outside the steps' tree.

use std::path::{Component, Path};

use super::step::Step;
use super::Engine;
use crate::cgroup::{Cgroup, Hierarchy};
use crate::docker::{Container, ContainerBuild};
use crate::docker::{StepDirectory, StepRef};

impl Engine {
    /// A step cgroup's path relative to the cgroup2 root (leading '/'), as
    /// the engine's `CgroupParent` takes it.
    pub(super) fn step_cgroup_rel(&self, cgroup: &Cgroup) -> String {
        let dir = cgroup
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{}/{dir}", self.rel_parent)
    }

    /// The step's reference for the proxy.
    fn step_ref(&self, s: &Step) -> StepRef {
        let cgroup = self.step_cgroup_rel(&s.cgroup);
        let slice = cgroup
            .rsplit('/')
            .next()
            .filter(|d| d.ends_with(".slice"))
            .map(str::to_string);
        StepRef {
            owner_uid: s.owner_uid,
            name: s.name.clone(),
            cgroup,
            slice,
        }
    }

    /// Runs `f` on the active step `r` names (same owner, name and cgroup).
    fn with_step<T>(&self, r: &StepRef, f: impl FnOnce(&Step) -> T) -> Option<T> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let s = steps.get(&(r.owner_uid, r.name.clone()))?;
        (self.step_ref(s) == *r).then(|| f(s))
    }

    /// The step whose cgroup (relative to the cgroup2 root, leading '/')
    /// holds `rel`, or `None`.
    pub fn step_of_cgroup(&self, rel: &str) -> Option<StepRef> {
        let under = rel
            .strip_prefix(self.rel_parent.as_str())?
            .strip_prefix('/')?;
        let dir = under.split('/').next().filter(|d| !d.is_empty())?;
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps
            .values()
            .find(|s| s.cgroup.path().file_name().is_some_and(|n| n == dir))
            .map(|s| self.step_ref(s))
    }

    /// Checks that `cgroup` can alias a step: an absolute, plain path under
    /// the cgroup2 mount, at the step level, outside the steps' parent.
    fn alias_target(&self, cgroup: &Path) -> Result<(), String> {
        if !cgroup.is_absolute()
            || cgroup
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(format!(
                "cgroup {} must be an absolute path without . or ..",
                cgroup.display()
            ));
        }
        if !cgroup.starts_with(&self.mount) || cgroup == self.mount {
            return Err(format!(
                "cgroup {} is not below the cgroup2 mount {}",
                cgroup.display(),
                self.mount.display()
            ));
        }
        if cgroup.starts_with(&self.parent) {
            return Err(format!(
                "cgroup {} is inside the steps' parent {}",
                cgroup.display(),
                self.parent.display()
            ));
        }
        let h = Hierarchy {
            mount: self.mount.clone(),
            root: self.root.clone(),
        };
        match h.level_of(cgroup) {
            Some(l) if l == self.step_level => Ok(()),
            l => Err(format!(
                "cgroup {} is at level {} below the cgroup2 root; only a cgroup at the step level ({}) can be traced as a step (the kernel filter looks at each process's ancestor at that level)",
                cgroup.display(),
                l.map_or("?".to_string(), |l| l.to_string()),
                self.step_level
            )),
        }
    }
}

impl StepDirectory for Engine {
    fn step_of(&self, pid: u32) -> Option<StepRef> {
        let rel = crate::cgroup::cgroup_of(pid)?;
        self.step_of_cgroup(rel.to_str()?)
    }

    fn record_container(&self, step: &StepRef, c: Container) {
        if self
            .with_step(step, |s| s.containers.record_container(c))
            .is_none()
        {
            tracing::info!(step = %step.name, "a container record for a step no longer active was dropped");
        }
    }

    fn record_build(&self, step: &StepRef, b: ContainerBuild) {
        if self
            .with_step(step, |s| s.containers.record_build(b))
            .is_none()
        {
            tracing::info!(step = %step.name, "a build record for a step no longer active was dropped");
        }
    }

    fn attribute_cgroup(&self, step: &StepRef, cgroup: &Path) -> Result<Box<dyn Send>, String> {
        self.alias_target(cgroup)?;
        std::fs::create_dir_all(cgroup)
            .map_err(|e| format!("creating cgroup {}: {e}", cgroup.display()))?;
        let cg = Cgroup::open(cgroup).map_err(|e| e.to_string())?;
        self.with_step(step, |s| s.tap.alias(&cg).map_err(|e| e.to_string()))
            .unwrap_or_else(|| Err(format!("step {:?} is not active", step.name)))
    }

    fn inside_steps(&self, cgroup_parent: &str) -> bool {
        crate::cgroup::names_inside(cgroup_parent, &self.rel_parent)
    }
}
