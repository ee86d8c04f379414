//! `step end --kill` and the reaper's kill: what runs in a step at its end
//! is killed, sparing the caller and its ancestors when it is inside.

use std::time::Duration;

use cilock_evidence::attestors::command_run::{KillAtEnd, MAX_KILLED_LISTED};

use super::step::Step;
use super::{EndedBy, Engine};
use crate::cgroup::PidFd;

/// The first [`MAX_KILLED_LISTED`] pids of `pids`.
pub(super) fn listed(pids: &[u32]) -> Vec<i64> {
    pids.iter()
        .take(MAX_KILLED_LISTED)
        .map(|&p| p as i64)
        .collect()
}

/// Ancestors of a `step end --kill` caller looked at, at most.
pub(super) const MAX_ANCESTORS: usize = 256;

impl Engine {
    /// Kills what runs in `step` (`alive`: its processes now). From outside
    /// the step (a runner hook, the reaper) everything goes, by
    /// `cgroup.kill`. When `caller` (the process asking) is inside the
    /// step, it and its ancestors are spared and the rest is killed with
    /// [`crate::cgroup::Cgroup::kill_except`] (frozen, pidfd by pidfd, until only they are
    /// left).
    pub(super) fn kill_step(
        &self,
        step: &Step,
        caller: Option<&PidFd>,
        ended_by: EndedBy,
        alive: &[u32],
    ) -> KillAtEnd {
        let requested_by = match ended_by {
            EndedBy::StepEnd => "step end --kill",
            other => other.as_str(),
        };
        let inside = caller.filter(|c| !c.exited() && step.cgroup.holds(&self.mount, c.pid()));
        let Some(caller) = inside else {
            let complete = match step.cgroup.kill_all(Duration::from_secs(10)) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("step {}: {e}", step.name);
                    false
                }
            };
            return KillAtEnd {
                requested_by: requested_by.to_string(),
                caller: None,
                method: "cgroup.kill".to_string(),
                killed: listed(alive),
                killed_not_listed: alive.len().saturating_sub(MAX_KILLED_LISTED) as u64,
                spared: Vec::new(),
                complete,
            };
        };
        // The caller and its ancestors that are in the step (bounded walk).
        let mut spare = Vec::new();
        if let Ok(me) = PidFd::open(caller.pid()) {
            let mut cur = Some(me);
            for _ in 0..MAX_ANCESTORS {
                let Some(p) = cur.take() else { break };
                if p.pid() <= 1 {
                    break;
                }
                cur = p.parent();
                if step.cgroup.holds(&self.mount, p.pid()) {
                    spare.push(p);
                }
            }
        }
        // The pidfd opened again above must still name the pinned caller.
        if caller.exited() {
            spare.clear();
        }
        let report = step
            .cgroup
            .kill_except(&self.mount, &spare, Duration::from_secs(10));
        if !report.complete {
            tracing::warn!(step = %step.name, rounds = report.rounds, "--kill: processes other than the caller's are still in the step");
        }
        let mut spared: Vec<i64> = spare
            .iter()
            .filter(|p| !p.exited())
            .map(|p| p.pid() as i64)
            .collect();
        spared.sort_unstable();
        KillAtEnd {
            requested_by: requested_by.to_string(),
            caller: Some(caller.pid() as i64),
            method: if report.frozen {
                "frozen, pidfd SIGKILL"
            } else {
                "pidfd SIGKILL"
            }
            .to_string(),
            killed: listed(&report.killed),
            killed_not_listed: report.killed.len().saturating_sub(MAX_KILLED_LISTED) as u64,
            spared,
            complete: report.complete,
        }
    }
}
