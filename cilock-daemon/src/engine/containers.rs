//! What the Docker API proxy recorded for one step (the containers it
//! created, the builds it ran), bounded, and how it meets the trace at the
//! step's end ([`ContainerLog::finish`]).
//!
//! Everything in a record comes from the job's request or the engine's
//! answer: it is kept within bounds (records per step, list entries and
//! bytes per record), and what a bound leaves out is counted and attested
//! (`trace.truncated.containers`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use cilock_evidence::attestors::command_run::{Container, ContainerBuild, ProcessInfo};

/// Containers recorded per step (created through the proxy, and seen only
/// in the trace).
pub const MAX_CONTAINERS: usize = 1024;
/// Builds recorded per step.
pub const MAX_BUILDS: usize = 256;
/// Entries kept per list of one record (`cmd`, `mounts`, `imageDigests`,
/// `tags`, a build's `containers`).
pub const MAX_LIST: usize = 256;
/// Bytes kept per string of one record.
pub const MAX_STRING: usize = 4096;

/// `reason` of a container the proxy did not record whose processes the
/// trace saw in a cgroup named for it under the step.
pub const REASON_TRACE_ONLY: &str = "seen only in the trace: its processes ran in a cgroup named for it under the step's cgroup (or in the engine's build window); not created through the daemon's proxy, so the engine's facts (image, command, mounts) are absent";

/// What the proxy recorded for one step (bounded; what is dropped is
/// counted).
#[derive(Debug, Default)]
pub struct ContainerLog {
    /// The step's cgroup relative to the cgroup2 root (leading `/`; empty
    /// when the step has none, as in the embedded engine).
    step_cgroup: String,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    containers: Vec<Container>,
    builds: Vec<ContainerBuild>,
    dropped: u64,
}

impl ContainerLog {
    /// The log of the step whose cgroup is `step_cgroup` (relative to the
    /// cgroup2 root, leading `/`).
    pub fn for_step(step_cgroup: String) -> Self {
        ContainerLog {
            step_cgroup,
            ..Default::default()
        }
    }

    /// A container the step created (a second record of the same id
    /// replaces the first).
    pub fn record_container(&self, mut c: Container) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.dropped += bound_container(&mut c);
        if let Some(old) = g.containers.iter_mut().find(|o| o.id == c.id) {
            *old = c;
        } else if g.containers.len() >= MAX_CONTAINERS {
            g.dropped += 1;
        } else {
            g.containers.push(c);
        }
    }

    /// A build the step ran (a second record of the same id replaces the
    /// first).
    pub fn record_build(&self, mut b: ContainerBuild) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.dropped += bound_build(&mut b);
        if let Some(old) = g.builds.iter_mut().find(|o| o.id == b.id) {
            *old = b;
        } else if g.builds.len() >= MAX_BUILDS {
            g.dropped += 1;
        } else {
            g.builds.push(b);
        }
    }

    /// At step end: the containers and builds, with `aliveAtEnd` (a
    /// process the trace gave that container outlived the step) and with
    /// containers seen only in the trace (processes with a `container` the
    /// proxy did not record) added, attributed by their cgroup
    /// (`cgroup-parent`, or `engine-window` for a BuildKit RUN), with the
    /// cgroup the trace saw them in (`cgroups`: relative to the step's
    /// cgroup, from the fold); a classic build's RUN container (its id
    /// starts with one the engine named in the build's stream) is tied to
    /// that build (`build`, the build's attribution). Also the count of what
    /// the bounds left out.
    pub fn finish(
        &self,
        processes: &[ProcessInfo],
        cgroups: &BTreeMap<String, String>,
    ) -> (Vec<Container>, Vec<ContainerBuild>, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut containers = g.containers.clone();
        let mut dropped = g.dropped;
        let alive: BTreeSet<&str> = processes
            .iter()
            .filter(|p| p.alive_at_end && !p.container.is_empty())
            .map(|p| p.container.as_str())
            .collect();
        for c in &mut containers {
            c.alive_at_end = alive.contains(c.id.as_str());
        }
        let mut seen: BTreeSet<String> = containers.iter().map(|c| c.id.clone()).collect();
        for p in processes.iter().filter(|p| !p.container.is_empty()) {
            let id = p.container.as_str();
            if !seen.insert(id.to_string()) {
                continue;
            }
            if containers.len() >= MAX_CONTAINERS {
                dropped += 1;
                continue;
            }
            let buildkit = id.starts_with("buildkit:");
            // Where the trace saw it: under the step's cgroup (a BuildKit
            // RUN's cgroup is the engine's, aliased: named in the build).
            let cgroup = match cgroups.get(id) {
                Some(rel) if !buildkit && !self.step_cgroup.is_empty() => {
                    format!("{}/{rel}", self.step_cgroup)
                }
                _ => String::new(),
            };
            let build = g.builds.iter().find(|b| {
                !buildkit
                    && b.containers
                        .iter()
                        .any(|short| short.len() >= 12 && id.starts_with(short.as_str()))
            });
            containers.push(match build {
                Some(b) => Container {
                    id: id.to_string(),
                    cgroup,
                    attribution: b.attribution.clone(),
                    build: b.id.clone(),
                    alive_at_end: alive.contains(id),
                    ..Default::default()
                },
                None => Container {
                    id: id.to_string(),
                    cgroup,
                    attribution: if buildkit {
                        "engine-window"
                    } else {
                        "cgroup-parent"
                    }
                    .into(),
                    reason: REASON_TRACE_ONLY.into(),
                    alive_at_end: alive.contains(id),
                    ..Default::default()
                },
            });
        }
        (containers, g.builds.clone(), dropped)
    }
}

/// Cuts `s` to [`MAX_STRING`] bytes (on a char boundary); 1 when cut.
fn cut(s: &mut String) -> u64 {
    if s.len() <= MAX_STRING {
        return 0;
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    1
}

/// Cuts a list to [`MAX_LIST`] entries; the number of entries left out.
fn cut_list<T>(v: &mut Vec<T>) -> u64 {
    let n = v.len().saturating_sub(MAX_LIST) as u64;
    v.truncate(MAX_LIST);
    n
}

fn cut_strings(v: &mut Vec<String>) -> u64 {
    cut_list(v) + v.iter_mut().map(cut).sum::<u64>()
}

fn bound_container(c: &mut Container) -> u64 {
    let mut n = 0;
    for s in [
        &mut c.id,
        &mut c.engine,
        &mut c.image_ref,
        &mut c.image_id,
        &mut c.cgroup,
        &mut c.attribution,
        &mut c.reason,
        &mut c.build,
    ] {
        n += cut(s);
    }
    n += cut_strings(&mut c.image_digests) + cut_strings(&mut c.cmd) + cut_list(&mut c.mounts);
    for m in &mut c.mounts {
        n += cut(&mut m.kind) + cut(&mut m.source) + cut(&mut m.destination);
    }
    n
}

fn bound_build(b: &mut ContainerBuild) -> u64 {
    let mut n = 0;
    for s in [
        &mut b.id,
        &mut b.builder,
        &mut b.attribution,
        &mut b.reason,
        &mut b.dockerfile,
        &mut b.image_id,
    ] {
        n += cut(s);
    }
    n + cut_strings(&mut b.tags) + cut_strings(&mut b.containers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilock_evidence::attestors::command_run::ContainerMount;

    fn proc(pid: i64, container: &str, alive: bool) -> ProcessInfo {
        ProcessInfo {
            processid: pid,
            container: container.into(),
            alive_at_end: alive,
            ..Default::default()
        }
    }

    #[test]
    fn finish_marks_alive_and_adds_containers_seen_only_in_the_trace() {
        let (a, b, t, r) = (
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64),
            format!("{}{}", "d".repeat(12), "e".repeat(52)),
        );
        let log = ContainerLog::for_step("/cilock.steps/u0.s.1.2".into());
        for id in [&a, &b] {
            log.record_container(Container {
                id: id.clone(),
                engine: "docker".into(),
                image_ref: "bb:local".into(),
                attribution: "cgroup-parent".into(),
                created_by: 7,
                ..Default::default()
            });
        }
        // A second record of `a` replaces the first.
        log.record_container(Container {
            id: a.clone(),
            engine: "docker".into(),
            image_ref: "bb:2".into(),
            attribution: "cgroup-parent".into(),
            ..Default::default()
        });
        log.record_build(ContainerBuild {
            id: "build-1".into(),
            builder: "buildkit".into(),
            attribution: "engine-window".into(),
            ..Default::default()
        });
        // A classic build names its RUN container by a short id.
        log.record_build(ContainerBuild {
            id: "build-2".into(),
            builder: "classic".into(),
            attribution: "cgroup-parent".into(),
            containers: vec!["d".repeat(12)],
            ..Default::default()
        });
        let cgroups: BTreeMap<String, String> = [
            (t.clone(), format!("docker-{t}.scope")),
            (r.clone(), r.clone()),
            ("buildkit:u5mr".into(), "buildkit/u5mr".into()),
        ]
        .into();
        let ps = [
            proc(1, "", true),
            proc(2, &a, false),
            proc(3, &b, true),
            proc(4, &t, false),
            proc(5, &t, false),
            proc(6, "buildkit:u5mr", false),
            proc(7, &r, true),
        ];
        let (cs, bs, dropped) = log.finish(&ps, &cgroups);
        assert_eq!(dropped, 0);
        let ids: Vec<&str> = cs.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                a.as_str(),
                b.as_str(),
                t.as_str(),
                "buildkit:u5mr",
                r.as_str()
            ]
        );
        assert_eq!(cs[0].image_ref, "bb:2");
        assert!(!cs[0].alive_at_end && cs[1].alive_at_end);
        assert_eq!(cs[1].created_by, 7);
        assert_eq!(
            (
                cs[2].attribution.as_str(),
                cs[2].reason.as_str(),
                cs[2].engine.as_str()
            ),
            ("cgroup-parent", REASON_TRACE_ONLY, "")
        );
        assert_eq!(
            cs[2].cgroup,
            format!("/cilock.steps/u0.s.1.2/docker-{t}.scope")
        );
        assert_eq!((cs[2].build.as_str(), cs[2].alive_at_end), ("", false));
        assert_eq!(cs[3].attribution, "engine-window");
        assert_eq!((cs[3].cgroup.as_str(), cs[3].build.as_str()), ("", ""));
        // The classic build's RUN: tied to its build, no trace-only reason.
        assert_eq!(
            (
                cs[4].attribution.as_str(),
                cs[4].reason.as_str(),
                cs[4].build.as_str(),
                cs[4].cgroup.clone(),
                cs[4].alive_at_end
            ),
            (
                "cgroup-parent",
                "",
                "build-2",
                format!("/cilock.steps/u0.s.1.2/{r}"),
                true
            )
        );
        assert_eq!(bs.len(), 2);
        assert_eq!(bs[0].builder, "buildkit");
    }

    #[test]
    fn bounds_count_what_they_leave_out() {
        let log = ContainerLog::default();
        for i in 0..MAX_CONTAINERS + 3 {
            log.record_container(Container {
                id: format!("{i:064x}"),
                ..Default::default()
            });
        }
        for i in 0..MAX_BUILDS + 2 {
            log.record_build(ContainerBuild {
                id: format!("build-{i}"),
                tags: vec!["x".into(); MAX_LIST + 1],
                ..Default::default()
            });
        }
        let (cs, bs, dropped) = log.finish(&[proc(1, &"f".repeat(64), false)], &BTreeMap::new());
        assert_eq!(cs.len(), MAX_CONTAINERS);
        assert_eq!(bs.len(), MAX_BUILDS);
        // 3 containers, 2 builds, one tag cut from each build recorded or
        // not, and the trace-only container over the bound.
        assert_eq!(dropped, 3 + 2 + (MAX_BUILDS as u64 + 2) + 1);
        let mut c = Container {
            cmd: vec!["é".repeat(MAX_STRING)],
            mounts: vec![ContainerMount::default(); MAX_LIST + 2],
            ..Default::default()
        };
        assert_eq!(bound_container(&mut c), 1 + 2);
        assert!(c.cmd[0].len() <= MAX_STRING && c.mounts.len() == MAX_LIST);
    }
}
