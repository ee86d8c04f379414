//! Cgroup aliases: a cgroup outside the steps' tree traced as one step's
//! while a guard lives (the BuildKit engine window: the engine runs a
//! step's `RUN`s under its own cgroup, not under the step's).
//!
//! The alias cgroup's id goes into the kernel's `STEPS` map next to the
//! step's, so the in-kernel filter (the ancestor at the step level) passes
//! the alias's processes; their records carry the alias id, and the
//! consumer finds a route for it that delivers into the step's sink and
//! counts into the step's counts. Removing an alias takes it out of
//! `STEPS` first, drains the ring (what was emitted reaches the step),
//! then drops the route and folds the alias's kernel loss into the step's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{map_err, probes, EbpfBackend, EbpfError, Route};
use crate::cgroup::Cgroup;
use cilock_abi::kind;

/// The aliases in force: alias cgroup id → (step cgroup id, token).
#[derive(Default)]
pub(super) struct Aliases {
    by_alias: Mutex<HashMap<u64, (u64, u64)>>,
    serial: AtomicU64,
}

impl Aliases {
    /// Takes out every alias of step `step` (its end); returns their ids.
    pub(super) fn take_step(&self, step: u64) -> Vec<u64> {
        let mut m = self.by_alias.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<u64> = m
            .iter()
            .filter(|(_, (s, _))| *s == step)
            .map(|(a, _)| *a)
            .collect();
        for a in &ids {
            m.remove(a);
        }
        ids
    }
}

/// While it lives, the alias cgroup is traced as its step's; dropping it
/// removes the alias (blocking for one drain of the ring, tens of ms).
pub struct AliasGuard {
    backend: Arc<EbpfBackend>,
    alias: u64,
    token: u64,
}

impl std::fmt::Debug for AliasGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AliasGuard")
            .field("alias", &self.alias)
            .finish()
    }
}

impl Drop for AliasGuard {
    fn drop(&mut self) {
        let mine = {
            let mut m = self
                .backend
                .aliases
                .by_alias
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Gone already when the step ended first.
            match m.get(&self.alias) {
                Some(&(_, t)) if t == self.token => m.remove(&self.alias).is_some(),
                _ => false,
            }
        };
        if mine {
            self.backend.remove_from_kernel(&[self.alias]);
            std::thread::sleep(Duration::from_millis(20));
            self.backend.flush();
            self.backend.drop_alias_routes(&[self.alias]);
        }
    }
}

impl EbpfBackend {
    /// Traces `alias` as the step whose cgroup id is `step` until the guard
    /// drops (or the step ends). Refused when `alias` is a step or already
    /// an alias, or when the step is not registered.
    pub fn add_alias(self: &Arc<Self>, step: u64, alias: &Cgroup) -> Result<AliasGuard, EbpfError> {
        let id = alias.id();
        let mut m = self
            .aliases
            .by_alias
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (sink, counts) = {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            if routes.contains_key(&id) || m.contains_key(&id) {
                return Err(EbpfError::Alias(format!(
                    "cgroup {} is already traced as a step (or attributed to one)",
                    alias.path().display()
                )));
            }
            let r = routes.get(&step).ok_or(EbpfError::UnknownStep(step))?;
            (r.sink.clone(), r.counts.clone())
        };
        let links = if self.net {
            let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
            Some(probes::net::attach_step(&mut ebpf, alias.path())?)
        } else {
            None
        };
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Route {
                    sink,
                    cgroup: alias.path().to_path_buf(),
                    alias: true,
                    counts,
                    streams: Mutex::default(),
                    _links: links,
                },
            );
        let inserted = {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let _ = maps.loss.remove(&id);
            maps.steps
                .insert(id, 1, 0)
                .map_err(map_err("STEPS insert (alias)"))
        };
        if let Err(e) = inserted {
            self.routes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e);
        }
        let token = self.aliases.serial.fetch_add(1, Ordering::Relaxed);
        m.insert(id, (step, token));
        tracing::info!(alias = %alias.path().display(), step, "cgroup attributed to a step");
        Ok(AliasGuard {
            backend: self.clone(),
            alias: id,
            token,
        })
    }

    /// Takes `ids` out of the kernel's `STEPS` map (the filter stops
    /// passing them).
    pub(super) fn remove_from_kernel(&self, ids: &[u64]) {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let _ = maps.steps.remove(id);
        }
    }

    /// After a drain: drops the routes of `ids` and folds each one's kernel
    /// loss into its step's counts.
    pub(super) fn drop_alias_routes(&self, ids: &[u64]) {
        for id in ids {
            let route = self
                .routes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(r), Ok(per_cpu)) = (&route, maps.loss.get(id, 0)) {
                for l in per_cpu.iter() {
                    for (k, v) in l.lost.iter().enumerate().take(kind::COUNT) {
                        r.counts.alias_lost[k].fetch_add(*v, Ordering::Relaxed);
                    }
                }
            }
            let _ = maps.loss.remove(id);
        }
    }
}
