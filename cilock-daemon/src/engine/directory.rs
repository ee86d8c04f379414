//! The engine as the Docker proxy's [`StepDirectory`]: which step a client
//! process is in, and where the proxy's container records go.
// shim: removed at merge (the `steps` helper owns the real implementation:
// it records into the step's ContainerLog and attributes the BuildKit cgroup)

use std::path::{Component, Path};

use tracing::info;

use super::Engine;
use crate::docker::{Container, ContainerBuild, StepDirectory, StepRef};

impl StepDirectory for Engine {
    fn step_of(&self, pid: u32) -> Option<StepRef> {
        let cg = crate::cgroup::cgroup_of(pid)?;
        let abs = self.mount.join(cg.strip_prefix("/").unwrap_or(&cg));
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.values().find_map(|s| {
            abs.starts_with(s.cgroup.path()).then(|| {
                let rel = s
                    .cgroup
                    .path()
                    .strip_prefix(&self.mount)
                    .unwrap_or(s.cgroup.path());
                StepRef {
                    owner_uid: s.owner_uid,
                    name: s.name.clone(),
                    cgroup: format!("/{}", rel.display()),
                    slice: None,
                }
            })
        })
    }

    fn record_container(&self, step: &StepRef, c: Container) {
        info!(step = %step.name, record = %serde_json::to_string(&c).unwrap_or_default(), "container (shim: not yet attested)");
    }

    fn record_build(&self, step: &StepRef, b: ContainerBuild) {
        info!(step = %step.name, record = %serde_json::to_string(&b).unwrap_or_default(), "build (shim: not yet attested)");
    }

    fn attribute_cgroup(&self, _step: &StepRef, _cgroup: &Path) -> Result<Box<dyn Send>, String> {
        Err("cgroup attribution is not implemented yet (shim)".into())
    }

    fn inside_steps(&self, cgroup_parent: &str) -> bool {
        // Conservative: the steps parent's components appear, in order,
        // anywhere in the (cleaned) path, however it is written.
        let parts = |p: &str| -> Vec<String> {
            let mut v: Vec<String> = Vec::new();
            for c in Path::new(p).components() {
                match c {
                    Component::Normal(n) => v.push(n.to_string_lossy().into_owned()),
                    Component::ParentDir => {
                        v.pop();
                    }
                    _ => {}
                }
            }
            v
        };
        let want = parts(&self.cfg.cgroup_parent);
        let have = parts(cgroup_parent);
        !want.is_empty() && have.windows(want.len()).any(|w| w == want.as_slice())
    }
}
