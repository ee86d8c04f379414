//! The step cgroup layout for real (root, eBPF): the step's processes in
//! its `shell` leaf, container cgroups beside it kept while populated and
//! swept once empty, the v1 copies runc makes on hybrid hosts removed,
//! `--kill` over the whole subtree, and the cgroup alias of the BuildKit
//! engine window (a cgroup at the step level, outside the steps' tree,
//! traced as the step's while its guard lives).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;

use cilock_daemon::backend::BackendChoice;
use cilock_daemon::cgroup::Hierarchy;
use cilock_daemon::docker::StepDirectory;
use cilock_daemon::engine::{EndSpec, Engine, EngineConfig, StepSpec};
use serde_json::Value;

struct Fixture {
    engine: Arc<Engine>,
    mount: PathBuf,
    parent: String,
    dir: tempfile::TempDir,
}

fn start(parent: &str, state: &Path) -> Arc<Engine> {
    Engine::start(EngineConfig {
        backend: BackendChoice::Ebpf,
        cgroup_parent: parent.to_string(),
        state_dir: state.to_path_buf(),
        step_records: true,
        ..Default::default()
    })
    .expect("the engine starts (root, eBPF)")
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let parent = format!("cilock.itest-{tag}.{}", std::process::id());
        let engine = start(&parent, &dir.path().join("state"));
        Fixture {
            engine,
            mount: Hierarchy::find().unwrap().mount,
            parent,
            dir,
        }
    }

    fn begin(&self, name: &str, pid: u32) -> PathBuf {
        self.engine
            .begin(StepSpec {
                name: name.to_string(),
                pid,
                owner_uid: 0,
                attestations: Vec::new(),
                options: Default::default(),
                workdir: self.dir.path().to_path_buf(),
                cmd: vec!["test".into()],
                env: Vec::new(),
                owner_gid: 0,
                workdir_fd: None,
                notes: Vec::new(),
            })
            .expect("begin")
    }

    fn end(&self, name: &str, kill: bool) -> Value {
        let out = self
            .engine
            .end(
                name,
                0,
                EndSpec {
                    kill,
                    ..Default::default()
                },
            )
            .expect("end");
        serde_json::to_value(&out.statement).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.engine.shutdown();
        self.engine.remove_parent();
    }
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

/// The `0::` line of /proc/PID/cgroup.
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string()
}

fn procs(cg: &Path) -> Vec<u32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn command_run(stmt: &Value) -> &Value {
    stmt["predicate"]["attestations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"].as_str().unwrap_or("").contains("command-run"))
        .map(|a| &a["attestation"])
        .expect("a command-run attestation")
}

/// Processes of the command-run that opened `path`.
fn openers(stmt: &Value, path: &str) -> Vec<Value> {
    command_run(stmt)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["openedfiles"].get(path).is_some()
                || p["unhashedOpens"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|o| o["path"] == path))
        })
        .cloned()
        .collect()
}

#[test]
fn the_job_lives_in_the_shell_leaf_and_the_end_removes_the_step() {
    let f = Fixture::new("leaf");
    let job = sleeper();
    let pid = job.id();
    let origin = cgroup_of(pid);
    let step = f.begin("leaf", pid);
    let rel = cgroup_of(pid);
    assert!(rel.ends_with("/shell"), "{rel}");
    assert_eq!(
        f.mount.join(rel.trim_start_matches('/')),
        step.join("shell")
    );
    assert_eq!(
        procs(&step),
        Vec::<u32>::new(),
        "the step cgroup holds no process"
    );
    assert_eq!(procs(&step.join("shell")), vec![pid]);
    // The proxy's view: the job's step, from its cgroup.
    let r = f.engine.step_of(pid).expect("the job is in a step");
    assert_eq!(r.name, "leaf");
    assert_eq!(
        r.cgroup,
        format!(
            "/{}/{}",
            f.parent,
            step.file_name().unwrap().to_str().unwrap()
        )
    );
    assert_eq!(r.slice, None);
    assert!(f.engine.inside_steps(&r.cgroup));
    assert!(f.engine.inside_steps(&format!("{}/abc", r.cgroup)));
    assert!(!f.engine.inside_steps("/docker"));
    assert_eq!(f.engine.step_of(std::process::id()), None);
    f.end("leaf", false);
    assert!(!step.exists(), "the step cgroup is gone");
    assert_eq!(
        cgroup_of(pid),
        origin,
        "the survivor went back where it came from"
    );
    assert_eq!(f.engine.step_of(pid), None);
    kill(job);
}

#[test]
fn a_populated_container_cgroup_outlives_the_end_and_is_swept_once_empty() {
    let f = Fixture::new("kept");
    let job = sleeper();
    let step = f.begin("kept", job.id());
    // What runc does with a CgroupParent of the step: a cgroup beside the
    // leaf, the container's processes in it.
    let ctr_cg = step.join("0123abcd");
    std::fs::create_dir(&ctr_cg).unwrap();
    let ctr = sleeper();
    std::fs::write(ctr_cg.join("cgroup.procs"), ctr.id().to_string()).unwrap();
    let empty_cg = step.join("4567ef");
    std::fs::create_dir(&empty_cg).unwrap();
    let stmt = f.end("kept", false);
    assert!(step.exists(), "kept while a container runs");
    assert!(!step.join("shell").exists(), "the leaf is gone");
    assert!(!empty_cg.exists(), "an empty container cgroup is gone");
    assert_eq!(
        procs(&ctr_cg),
        vec![ctr.id()],
        "the container was left where it is"
    );
    assert!(
        !cgroup_of(job.id()).contains(&f.parent),
        "the job left the step"
    );
    assert!(command_run(&stmt)["processes"].is_array());
    assert_eq!(f.engine.sweep(), 1, "still populated: it waits");
    kill(ctr);
    cilock_testkit::fixtures::wait_for(10, "the container cgroup to empty", || {
        procs(&ctr_cg).is_empty()
    });
    assert_eq!(f.engine.sweep(), 0);
    assert!(!step.exists(), "swept once empty");
    kill(job);
}

#[test]
fn a_container_cgroup_left_by_a_dead_engine_is_swept_by_the_next_once_empty() {
    let mut f = Fixture::new("restart");
    let job = sleeper();
    let step = f.begin("restart", job.id());
    let ctr_cg = step.join("00ddeeff");
    std::fs::create_dir(&ctr_cg).unwrap();
    let ctr = sleeper();
    std::fs::write(ctr_cg.join("cgroup.procs"), ctr.id().to_string()).unwrap();
    // The engine goes away without ending its step (as a killed daemon
    // would); the next one on the same parent and state recovers it.
    let state = f.dir.path().join("state");
    let dead = std::mem::replace(
        &mut f.engine,
        start(&format!("{}-unused", f.parent), &state),
    );
    drop(dead);
    let next = start(&f.parent, &state);
    assert!(
        !step.join("shell").exists(),
        "the job's leaf was emptied and removed"
    );
    assert!(
        !cgroup_of(job.id()).contains(&f.parent),
        "the job went back"
    );
    assert_eq!(
        procs(&ctr_cg),
        vec![ctr.id()],
        "the container was left where it is"
    );
    assert_eq!(next.sweep(), 1, "kept while populated");
    kill(ctr);
    cilock_testkit::fixtures::wait_for(10, "the container cgroup to empty", || {
        procs(&ctr_cg).is_empty()
    });
    assert_eq!(next.sweep(), 0);
    assert!(!step.exists(), "swept once empty");
    let interrupted = next.take_interrupted();
    assert_eq!(interrupted.len(), 1);
    // The placeholder engine's parent goes with the fixture; this one too.
    next.shutdown();
    next.remove_parent();
    kill(job);
}

#[test]
fn kill_at_the_end_kills_the_whole_subtree() {
    let f = Fixture::new("kill");
    let mut job = sleeper();
    let step = f.begin("kill", job.id());
    let ctr_cg = step.join("89abcdef");
    std::fs::create_dir(&ctr_cg).unwrap();
    let mut ctr = sleeper();
    std::fs::write(ctr_cg.join("cgroup.procs"), ctr.id().to_string()).unwrap();
    let stmt = f.end("kill", true);
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(job.wait().unwrap().signal(), Some(9));
    assert_eq!(ctr.wait().unwrap().signal(), Some(9));
    assert!(!step.exists());
    let k = &command_run(&stmt)["trace"]["killAtEnd"];
    let mut killed: Vec<i64> = k["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    killed.sort_unstable();
    let mut want = vec![job.id() as i64, ctr.id() as i64];
    want.sort_unstable();
    assert_eq!(killed, want, "{k}");
}

#[test]
fn the_v1_copies_runc_leaves_are_removed_when_empty() {
    let f = Fixture::new("v1");
    let v1: Vec<PathBuf> = ["memory", "pids"]
        .iter()
        .map(|c| PathBuf::from("/sys/fs/cgroup").join(c))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    assert_eq!(
        v1.len(),
        2,
        "this host mounts the v1 memory and pids hierarchies"
    );
    let job = sleeper();
    let step = f.begin("v1", job.id());
    let rel = f.engine.step_of(job.id()).unwrap().cgroup;
    // Like runc with CgroupParent=<step> on a hybrid host: the same path
    // in every hierarchy, parents created as needed; the container's
    // processes in each copy.
    let id = "fedcba9876543210";
    let v2_ctr = step.join(id);
    std::fs::create_dir(&v2_ctr).unwrap();
    let copies: Vec<PathBuf> = v1
        .iter()
        .map(|m| m.join(rel.trim_start_matches('/')).join(id))
        .collect();
    for c in &copies {
        std::fs::create_dir_all(c).unwrap();
    }
    let ctr = sleeper();
    std::fs::write(v2_ctr.join("cgroup.procs"), ctr.id().to_string()).unwrap();
    std::fs::write(copies[0].join("cgroup.procs"), ctr.id().to_string()).unwrap();
    f.end("v1", false);
    let step_copy = |i: usize| copies[i].parent().unwrap().to_path_buf();
    assert!(copies[0].exists(), "the populated v1 copy stays");
    assert!(
        !step_copy(1).exists(),
        "the empty v1 copy of the step is removed"
    );
    assert!(step.exists());
    assert_eq!(f.engine.sweep(), 1);
    kill(ctr);
    cilock_testkit::fixtures::wait_for(10, "the container cgroups to empty", || {
        procs(&v2_ctr).is_empty() && procs(&copies[0]).is_empty()
    });
    assert_eq!(f.engine.sweep(), 0);
    assert!(!step.exists());
    assert!(!step_copy(0).exists(), "the v1 copy is swept once empty");
    kill(job);
    let parent_copies: Vec<PathBuf> = v1.iter().map(|m| m.join(&f.parent)).collect();
    drop(f);
    for p in parent_copies {
        assert!(!p.exists(), "{} is removed with the parent", p.display());
    }
}

/// The error of an attribution expected to fail.
fn refused(r: Result<Box<dyn Send>, String>) -> String {
    match r {
        Ok(_) => panic!("the attribution was expected to be refused"),
        Err(e) => e,
    }
}

#[test]
fn an_alias_cgroup_is_the_steps_while_its_guard_lives() {
    let f = Fixture::new("alias");
    let job = sleeper();
    let step = f.begin("alias", job.id());
    let r = f.engine.step_of(job.id()).unwrap();
    // At the step level (the steps' parent is at level 1), outside it.
    let outer = f
        .mount
        .join(format!("cilock.itest-engine.{}", std::process::id()));
    let alias = outer.join("buildkit");
    // Refused: not at the step level; inside the steps' tree; relative.
    let e = refused(f.engine.attribute_cgroup(&r, &outer));
    assert!(e.contains("level 1") && e.contains("step level (2)"), "{e}");
    let e = refused(f.engine.attribute_cgroup(&r, &step));
    assert!(e.contains("inside the steps' parent"), "{e}");
    assert!(f
        .engine
        .attribute_cgroup(&r, Path::new("docker/buildkit"))
        .is_err());
    let e = refused(f.engine.attribute_cgroup(&r, &outer.join("../x/buildkit")));
    assert!(e.contains(".."), "{e}");
    let guard = f.engine.attribute_cgroup(&r, &alias).expect("alias");
    assert!(alias.is_dir(), "created when missing");
    // A second alias of the same cgroup is refused while the first lives.
    let e = refused(f.engine.attribute_cgroup(&r, &alias));
    assert!(e.contains("already"), "{e}");
    let files = f.dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let (during, after) = (files.join("read-during"), files.join("read-after"));
    std::fs::write(&during, b"during").unwrap();
    std::fs::write(&after, b"after").unwrap();
    // What an engine does: a process outside any step placed in a cgroup
    // below the alias, then running the work.
    let run_in = |cg: &Path, file: &Path| {
        std::fs::create_dir_all(cg).unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec cat {} >/dev/null",
                cg.display(),
                file.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
    };
    run_in(&alias.join("run1"), &during);
    drop(guard);
    run_in(&alias.join("run2"), &after);
    // A guard dropped: the alias can be taken again (and goes at the end).
    let again = f.engine.attribute_cgroup(&r, &alias).expect("alias again");
    let stmt = f.end("alias", false);
    let during = openers(&stmt, during.to_str().unwrap());
    assert_eq!(during.len(), 1, "the read under the alias is the step's");
    assert_eq!(during[0]["program"], "/usr/bin/cat");
    assert!(
        openers(&stmt, after.to_str().unwrap()).is_empty(),
        "after the guard dropped nothing under the alias is traced"
    );
    drop(again);
    for d in ["run1", "run2"] {
        let _ = std::fs::remove_dir(alias.join(d));
    }
    let _ = std::fs::remove_dir(&alias);
    let _ = std::fs::remove_dir(&outer);
    kill(job);
}
