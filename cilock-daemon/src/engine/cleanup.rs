//! What is left of a step's cgroup after its end: the leaf's processes go
//! back where they came from; container cgroups still populated (and the
//! step cgroup holding them) stay, as do the v1 copies runc made of the
//! step's path on hybrid hosts while a container of it runs; the reaper's
//! tick sweeps them once empty ([`Engine::sweep`]).

use std::path::{Path, PathBuf};

use super::{Engine, MAX_LEFTOVERS};
use crate::cgroup::Cgroup;

impl Engine {
    /// The path of a cgroup under the mount relative to the cgroup2 root
    /// (leading '/'), as /proc/PID/cgroup and container engines name it.
    pub(super) fn rel_of(&self, path: &Path) -> Option<PathBuf> {
        let under = path.strip_prefix(&self.mount).ok()?;
        Some(
            Path::new("/")
                .join(self.root.strip_prefix("/").unwrap_or(&self.root))
                .join(under),
        )
    }

    /// Leaves the cgroup `cgroup` of the ended step `name`, whose
    /// processes came from `origin` (see the module doc).
    pub(super) fn release(&self, name: &str, cgroup: &Cgroup, origin: &Path) {
        let r = cgroup.release(&self.return_to(origin));
        if let Some(e) = &r.error {
            tracing::warn!("step {name}: {e}");
        }
        if !r.kept.is_empty() {
            tracing::info!(step = %name, kept = ?r.kept, "container cgroups still populated at the step's end stay until they empty");
        }
        let v1_left = self
            .rel_of(cgroup.path())
            .map(|rel| self.v1.remove_empty(&rel))
            .unwrap_or_default();
        if !r.removed || !v1_left.is_empty() {
            self.keep_leftover(cgroup.path());
        }
    }

    fn keep_leftover(&self, path: &Path) {
        let mut l = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() >= MAX_LEFTOVERS {
            tracing::warn!(cgroup = %path.display(), "too many ended steps' cgroups wait to be swept: this one stays on the host");
            return;
        }
        l.push(path.to_path_buf());
    }

    /// Removes the cgroups of ended steps that are empty now (and their v1
    /// copies); returns how many still wait.
    pub fn sweep(&self) -> usize {
        let taken: Vec<PathBuf> =
            std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut left = Vec::new();
        for p in taken {
            let v2_gone = crate::cgroup::remove_empty_tree(&p, crate::cgroup::STEP_MAX_DEPTH);
            let v1_left = self
                .rel_of(&p)
                .map(|rel| self.v1.remove_empty(&rel))
                .unwrap_or_default();
            if v2_gone && v1_left.is_empty() {
                tracing::info!(cgroup = %p.display(), "swept the cgroup of an ended step");
            } else {
                left.push(p);
            }
        }
        let mut l = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        l.extend(left);
        l.len()
    }

    /// The v1 copies of the steps' parent left empty (hybrid hosts).
    pub(super) fn remove_parent_v1_copies(&self) {
        if let Some(rel) = self.rel_of(&self.parent) {
            let _ = self.v1.remove_empty(&rel);
        }
    }
}
