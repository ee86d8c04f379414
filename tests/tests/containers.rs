//! Issue #15: container work is the step's evidence. A private dockerd per
//! test (`cilock_testkit::docker`: own data/exec roots, vfs, no bridge, its
//! own daemon-wide cgroup parent) behind the daemon's Docker API proxy
//! (`docker_proxy` in the test daemon's temp dir, `docker_socket` = the
//! private engine), the busybox image of `busybox-static`, and rootless
//! podman for a throw-away user. Ground truth comes from the engine
//! (`--cidfile`, `docker inspect`), from the container's own output (what
//! it read, `/proc/self/cgroup`, `readlink /proc/self/ns/mnt`) and from
//! /proc on the host; attestations are checked with an independent
//! signature check first.
//!
//! What each test proves:
//! - `private_dockerd_starts_runs_and_leaves_nothing`: the testkit engine
//!   starts, imports busybox, runs a container in its own cgroup parent and,
//!   stopped, leaves no process and no cgroup directory (v1 or v2).
//! - `a_dockerd_that_cannot_start_is_an_error_with_its_log`: an engine that
//!   cannot start is an error carrying dockerd's own log (tests fail, never
//!   skip).
//! - `a_steps_own_processes_live_in_its_shell_leaf`: the job's shell lives in
//!   `<parent>/<step>/shell`; the step cgroup itself holds no process.
//! - `docker_run_in_a_step_cli_20_10` / `docker_run_in_a_step_cli_28_2`:
//!   `docker run` through the proxy puts the container under the step
//!   (`HostConfig.CgroupParent` = the step, `0::<step>/<id>`), the
//!   attestation lists it (id = the cidfile's, imageId = inspect's, cmd,
//!   bind mount, cgroup, attribution `cgroup-parent`, createdBy = the CLI's
//!   pid), its `cat` process has `container` = that id, another mount
//!   namespace, and the file it read listed without a host digest; the CLI
//!   itself has no `container`. (28.2: only when `/usr/local/bin/docker`
//!   exists.)
//! - `docker_run_detached_and_exec_in_a_step`: `run -d` + `exec`: one
//!   container (the exec is not one), its pid-1 process (= inspect's
//!   `State.Pid`) and the exec'd `cat` with `container` = the id and
//!   `mountNamespace` = the inode of `/proc/<State.Pid>/ns/mnt`; still
//!   running at the step's end: `aliveAtEnd` on both the container and its
//!   process.
//! - `classic_build_in_a_step_records_the_build_and_its_run`: a classic
//!   `docker build` whose RUN reads a file: the build (classic,
//!   cgroup-parent, tags, dockerfile, the RUN container as printed, the
//!   image id = inspect's, createdBy) and the RUN's `cat` process in the
//!   RUN container (its full id from its own `/proc/self/cgroup`, which is
//!   under the step).
//! - `buildkit_build_in_a_step_is_attributed_by_the_engine_window`:
//!   `DOCKER_BUILDKIT=1 … --network=none` (20.10 CLI): the RUN runs in the
//!   engine's `<parent>/buildkit/<x>` (its own output says so), and the
//!   step lists the build (buildkit, engine-window, image id) and the RUN's
//!   `cat` with `container` = `buildkit:<x>`.
//! - `outside_a_step_the_proxy_passes_through_unchanged`: a client in no
//!   step: the container runs in the engine's own parent
//!   (`<engine parent>/<id>`), `CgroupParent` stays empty, a response is
//!   byte-identical through the proxy and direct, and a step running at the
//!   same time records nothing of it.
//! - `outside_a_step_a_create_or_build_naming_a_step_cgroup_is_refused`:
//!   create (absolute and relative `--cgroup-parent`) and classic build
//!   (`--cgroup-parent`) naming a live step's cgroup are refused and the
//!   engine created nothing; a parent outside the steps tree is served.
//! - `a_user_without_access_to_the_engine_gets_403_through_the_proxy`: the
//!   proxy socket is 0660 in the daemon's group; a member of that group who
//!   cannot open the engine's socket gets one HTTP 403 with a JSON
//!   `message` (and the docker CLI prints it); with the engine socket's
//!   group added, the same uid is served.
//! - `rootless_podman_in_a_step_is_traced_with_its_mount_namespace`: a
//!   throw-away user runs rootless podman inside a step: podman and the
//!   container's processes are the step's, the container's with
//!   `mountNamespace` = the inode the container printed, the file it read
//!   listed without a host digest.
//!
//! These tests run natively only (not in the kernel-matrix VMs of
//! `tests/vm`: no docker, podman or busybox there). They need root,
//! `docker.io`, `busybox-static`, `podman` and `uidmap`; a missing piece is
//! a failure, never a skip (also the 28.2 CLI, preinstalled at
//! /usr/local/bin/docker on these machines).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cilock_testkit::docker::*;
use cilock_testkit::podman::{mount_namespace, parse_ns, PodmanUser};
use cilock_testkit::step::*;
use cilock_testkit::users::{setpriv, Group};
use cilock_testkit::*;
use serde_json::{json, Value};

/// A private engine with the busybox image, a daemon whose proxy fronts
/// it, and a work directory. At drop: the engine first (its containers
/// die), then the daemon, then the v1 copies of the daemon's steps tree
/// runc made.
struct Env {
    engine: Dockerd,
    image: String,
    d: Daemon,
    _sweep: Sweep,
    w: tempfile::TempDir,
}

struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        remove_cgroup_everywhere(&self.0);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let left = self.engine.stop();
        if !left.is_empty() {
            eprintln!("engine not clean: {left:?}");
        }
    }
}

impl Env {
    fn new(extra: &str) -> Env {
        let (engine, image) = Dockerd::with_busybox();
        let d = Daemon::start_with_docker("ebpf", &engine, extra);
        let sweep = Sweep(d.cgroup_parent.clone());
        let w = tempdir();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Env {
            engine,
            image,
            d,
            _sweep: sweep,
            w,
        }
    }

    fn w(&self) -> &Path {
        self.w.path()
    }

    fn proxy(&self) -> &Path {
        self.d.docker_proxy.as_deref().unwrap()
    }

    /// Shell lines that point docker clients at the proxy.
    fn docker_env(&self) -> String {
        format!(
            "export DOCKER_HOST=unix://{} DOCKER_CONFIG={}\nunset DOCKER_BUILDKIT\n",
            self.proxy().display(),
            self.engine.cli_config().display()
        )
    }

    /// A CLI command through the proxy (from outside any step).
    fn via_proxy(&self, cli: &str) -> Command {
        let mut c = Command::new(cli);
        c.env("DOCKER_HOST", format!("unix://{}", self.proxy().display()))
            .env("DOCKER_CONFIG", self.engine.cli_config())
            .env_remove("DOCKER_BUILDKIT");
        c
    }

    /// Writes `name` in the work directory (world-readable).
    fn file(&self, name: &str, content: &str) -> String {
        let p = self.w().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.w().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .to_string()
    }
}

/// A step's job shell, killed at drop if still running (a failed
/// assertion never leaves a shell waiting forever).
struct Job(std::process::Child);

impl Job {
    fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the shell; asserts it succeeded.
    fn finish(&mut self) {
        assert!(self.0.wait().unwrap().success(), "the job failed");
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn list(cr: &Value, key: &str) -> Vec<Value> {
    cr[key].as_array().cloned().unwrap_or_default()
}

/// A text unique to this call (what a container reads and prints back).
fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{tag}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The step cgroup from the job shell's own cgroup (`…/<step>/shell`).
fn step_cgroup(d: &Daemon, job_cgroup: &str) -> String {
    let cg = job_cgroup.strip_suffix("/shell").unwrap_or(job_cgroup);
    assert!(
        cg.starts_with(&format!("/{}/", d.cgroup_parent)),
        "the job's cgroup {job_cgroup} is not under the daemon's {}",
        d.cgroup_parent
    );
    cg.to_string()
}

/// The processes of the step whose `container` is `id`.
fn in_container(cr: &Value, id: &str) -> Vec<Value> {
    processes(cr)
        .into_iter()
        .filter(|p| p["container"] == id)
        .collect()
}

/// The one process with this command line.
fn by_cmdline(cr: &Value, cmdline: &str) -> Value {
    let found: Vec<Value> = processes(cr)
        .into_iter()
        .filter(|p| p["cmdline"] == cmdline)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "processes with cmdline {cmdline:?}: {}",
        pretty(cr)
    );
    found[0].clone()
}

/// `p` opened `path` as its mount namespace sees it: listed, and never
/// with a digest (the daemon cannot prove a host file is that file).
fn read_without_host_digest(p: &Value, path: &str) {
    let unhashed = p["unhashedOpens"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|u| u["path"] == path);
    let u = unhashed.unwrap_or_else(|| panic!("{path} not in unhashedOpens of {}", pretty(p)));
    assert!(
        !u["reason"].as_str().unwrap_or("").is_empty(),
        "no reason for {path}: {}",
        pretty(p)
    );
    if let Some(d) = p["openedfiles"].get(path) {
        assert!(
            d.as_object().is_none_or(|o| o.is_empty()),
            "{path} in another mount namespace got a digest: {}",
            pretty(p)
        );
    }
}

/// A busybox applet's executable digest, when given, is busybox's (the
/// image's `/bin/busybox` is a copy of the host's); never the host's
/// `/bin/<applet>` at the same path.
fn exe_is_busybox(p: &Value) {
    if let Some(d) = p["exedigest"].get("sha256") {
        assert_eq!(
            d.as_str(),
            sha256sum("/bin/busybox").as_deref(),
            "exedigest of {}",
            pretty(p)
        );
    }
}

/// The inode of this (the host's) mount namespace.
fn host_mnt_ns() -> u64 {
    mount_namespace(std::process::id())
}

#[test]
fn private_dockerd_starts_runs_and_leaves_nothing() {
    let (mut engine, image) = Dockerd::with_busybox();
    assert!(image.starts_with("sha256:") && image.len() == 71, "{image}");
    let pid = engine.pid().unwrap();
    let out = engine.run(&[
        "run",
        "--network",
        "none",
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "cat /proc/self/cgroup; hostname",
    ]);
    let cg = cgroup2_line(&out).unwrap();
    let id = cg
        .strip_prefix(&format!("{}/", engine.cgroup_parent))
        .unwrap_or_else(|| panic!("container cgroup {cg} not in {}", engine.cgroup_parent));
    assert_eq!(id.len(), 64, "{cg}");
    assert!(
        out.lines().last().is_some_and(|h| id.starts_with(h)),
        "{out}"
    );
    assert_eq!(
        engine.inspect(id, "{{.HostConfig.CgroupParent}}|{{.Image}}"),
        format!("|{image}")
    );
    // A container left running: stop must kill it.
    let cid = engine.run(&[
        "run",
        "-d",
        "--network",
        "none",
        BUSYBOX_IMAGE,
        "sleep",
        "600",
    ]);
    let ctr_pid: u32 = engine.inspect(&cid, "{{.State.Pid}}").parse().unwrap();
    assert!(Path::new(&format!("/proc/{ctr_pid}")).exists());
    let dir = engine.dir.clone();
    let parent = engine.cgroup_parent.clone();
    let left = engine.stop();
    assert!(left.is_empty(), "not clean: {left:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "dockerd {pid} alive"
    );
    assert!(
        std::fs::read_to_string(format!("/proc/{ctr_pid}/status")).map_or(true, |s| s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))),
        "container process {ctr_pid} alive"
    );
    for m in cgroup_mounts() {
        let p = m.join(parent.trim_start_matches('/'));
        assert!(!p.exists(), "{} left", p.display());
    }
    // No process names the engine's directory any more.
    let want = dir.to_str().unwrap().as_bytes().to_vec();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        assert!(
            !cmd.windows(want.len()).any(|w| w == want.as_slice()),
            "process {:?} still names {}",
            e.file_name(),
            dir.display()
        );
    }
    assert!(!engine.ping());
}

#[test]
fn a_dockerd_that_cannot_start_is_an_error_with_its_log() {
    let err = match Dockerd::start_with_args(&["--storage-driver", "no-such-driver"]) {
        Ok(_) => panic!("dockerd started with an unknown storage driver"),
        Err(e) => e,
    };
    assert!(err.starts_with("dockerd exited during start"), "{err}");
    let tail = err.split_once("log tail:\n").map(|x| x.1).unwrap_or("");
    assert!(!tail.trim().is_empty(), "no log in {err:?}");
}

#[test]
fn a_steps_own_processes_live_in_its_shell_leaf() {
    let d = Daemon::start("ebpf");
    let _sweep = Sweep(d.cgroup_parent.clone());
    let w = tempdir();
    let mut job = Job(StepJob::new(&d, "leaf", w.path()).begin(
        "sleep 0.3 & cat /proc/self/cgroup > child.cgroup; wait; while [ ! -e done ]; do sleep 0.02; done",
    ));
    let cg = cgroup2_of(job.id());
    let parts: Vec<&str> = cg.split('/').collect();
    assert_eq!(parts.len(), 4, "{cg}");
    assert_eq!(parts[0], "");
    assert_eq!(parts[1], d.cgroup_parent, "{cg}");
    assert_eq!(
        parts[3], "shell",
        "the job's shell is not in the step's shell leaf: {cg}"
    );
    let step_dir = cgroup2_mount().join(parts[1]).join(parts[2]);
    let procs = std::fs::read_to_string(step_dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.trim().is_empty(),
        "the step cgroup holds processes: {procs}"
    );
    let leaf = std::fs::read_to_string(step_dir.join("shell/cgroup.procs")).unwrap();
    assert!(
        leaf.lines().any(|l| l.trim() == job.id().to_string()),
        "{leaf}"
    );
    release(&mut job.0);
    fixtures::wait_for(20, "child.cgroup", || {
        w.path().join("child.cgroup").exists()
    });
    std::fs::write(w.path().join("done"), b"").unwrap();
    job.finish();
    // A child inherits the leaf.
    let child = std::fs::read_to_string(w.path().join("child.cgroup")).unwrap();
    assert_eq!(cgroup2_line(&child).as_deref(), Some(cg.as_str()));
    let att = end_step(&d, "leaf", w.path());
    verify_with_python(&att, &d.pubkey);
    by_pid(&command_run(&att), job.id() as i64);
}

/// `docker run` through the proxy in a step with the CLI at `cli`.
fn docker_run_in_a_step(cli: &str) {
    let e = Env::new("");
    let content = unique("container-read");
    let input = e.file("in.txt", &format!("{content}\n"));
    let script = format!(
        "{env}cat /proc/self/cgroup > job.cgroup\n\
         {cli} run --network none --cidfile cid -v {input}:/in.txt:ro {BUSYBOX_IMAGE} cat /in.txt /proc/self/cgroup > ctr.out &\n\
         echo $! > cli.pid\n\
         wait $! || exit 1\n",
        env = e.docker_env()
    );
    let att = run_step(&e.d, "run", e.w(), &script);
    verify_with_python(&att, &e.d.pubkey);

    // Ground truth: the engine and the container.
    let cid = e.read("cid");
    assert_eq!(cid.len(), 64, "cidfile: {cid}");
    let cli_pid: i64 = e.read("cli.pid").parse().unwrap();
    let step = step_cgroup(&e.d, &cgroup2_line(&e.read("job.cgroup")).unwrap());
    let out = e.read("ctr.out");
    assert_eq!(out.lines().next(), Some(content.as_str()), "{out}");
    assert_eq!(
        cgroup2_line(&out),
        Some(format!("{step}/{cid}")),
        "the container did not run under the step"
    );
    assert_eq!(e.engine.inspect(&cid, "{{.Image}}"), e.image);
    assert_eq!(e.engine.inspect(&cid, "{{.HostConfig.CgroupParent}}"), step);

    let cr = command_run(&att);
    let cs = list(&cr, "containers");
    assert_eq!(cs.len(), 1, "containers: {}", pretty(&cr));
    let c = &cs[0];
    assert_eq!(c["id"], cid.as_str());
    assert_eq!(c["engine"], "docker");
    assert_eq!(c["imageRef"], BUSYBOX_IMAGE);
    assert_eq!(c["imageId"], e.image.as_str());
    assert_eq!(c["cmd"], json!(["cat", "/in.txt", "/proc/self/cgroup"]));
    assert_eq!(c["cgroup"], format!("{step}/{cid}"));
    assert_eq!(c["attribution"], "cgroup-parent");
    assert_eq!(c["createdBy"], cli_pid);
    assert!(c.get("aliveAtEnd").is_none(), "{}", pretty(c));
    assert!(
        list(c, "mounts").contains(&json!({
            "type": "bind", "source": input, "destination": "/in.txt", "readOnly": true
        })),
        "mounts: {}",
        pretty(c)
    );
    assert!(list(&cr, "builds").is_empty(), "{}", pretty(&cr));

    let cat = by_cmdline(&cr, "cat /in.txt /proc/self/cgroup");
    assert_eq!(cat["container"], cid.as_str(), "{}", pretty(&cat));
    assert_eq!(cat["comm"], "cat");
    exe_is_busybox(&cat);
    read_without_host_digest(&cat, "/in.txt");
    let ns = cat["mountNamespace"].as_u64().unwrap_or(0);
    assert!(
        ns != 0 && ns != host_mnt_ns(),
        "mountNamespace: {}",
        pretty(&cat)
    );
    // Every process in the container is the container's; the client is not.
    assert!(!in_container(&cr, &cid).is_empty());
    assert!(by_pid(&cr, cli_pid).get("container").is_none());
    e.engine.run(&["rm", &cid]);
}

#[test]
fn docker_run_in_a_step_cli_20_10() {
    docker_run_in_a_step(CLI_20_10);
}

#[test]
fn docker_run_in_a_step_cli_28_2() {
    // Preinstalled on the machines this runs on (containers.md): a missing
    // CLI fails the test instead of passing it unrun.
    assert!(
        Path::new(CLI_28).exists(),
        "the docker 28.2 CLI is not at {CLI_28}"
    );
    docker_run_in_a_step(CLI_28);
}

#[test]
fn docker_run_detached_and_exec_in_a_step() {
    let e = Env::new("");
    let content = unique("exec-read");
    let input = e.file("in.txt", &format!("{content}\n"));
    let script = format!(
        "{env}{CLI_20_10} run -d --network none --cidfile cid -v {input}:/in.txt:ro {BUSYBOX_IMAGE} sleep 600 > /dev/null\n\
         {CLI_20_10} exec $(cat cid) cat /in.txt > exec.out\n",
        env = e.docker_env()
    );
    let mut truth = (0u32, 0u64);
    let att = run_step_with(&e.d, "exec", e.w(), &script, || {
        let cid = e.read("cid");
        assert_eq!(e.engine.inspect(&cid, "{{.State.Running}}"), "true");
        let pid: u32 = e.engine.inspect(&cid, "{{.State.Pid}}").parse().unwrap();
        truth = (pid, mount_namespace(pid));
    });
    verify_with_python(&att, &e.d.pubkey);
    let (ctr_pid, ns) = truth;
    let cid = e.read("cid");
    assert_eq!(e.read("exec.out"), content);
    // Still running after the step's end.
    assert_eq!(e.engine.inspect(&cid, "{{.State.Running}}"), "true");

    let cr = command_run(&att);
    let cs = list(&cr, "containers");
    assert_eq!(cs.len(), 1, "the exec is not a container: {}", pretty(&cr));
    assert_eq!(cs[0]["id"], cid.as_str());
    assert_eq!(cs[0]["cmd"], json!(["sleep", "600"]));
    assert_eq!(cs[0]["imageId"], e.image.as_str());
    assert_eq!(cs[0]["attribution"], "cgroup-parent");
    assert_eq!(cs[0]["aliveAtEnd"], true, "{}", pretty(&cs[0]));

    let sleep = by_pid(&cr, ctr_pid as i64);
    assert_eq!(sleep["container"], cid.as_str(), "{}", pretty(&sleep));
    assert_eq!(sleep["cmdline"], "sleep 600");
    assert_eq!(sleep["mountNamespace"], ns);
    assert_eq!(sleep["aliveAtEnd"], true);
    let cat = by_cmdline(&cr, "cat /in.txt");
    assert_eq!(cat["container"], cid.as_str(), "{}", pretty(&cat));
    assert_eq!(cat["mountNamespace"], ns);
    read_without_host_digest(&cat, "/in.txt");
    exe_is_busybox(&cat);
    e.engine.run(&["rm", "-f", &cid]);
}

/// A build context in `w/ctx` whose RUN reads a file of the context and
/// prints it and its own cgroup.
fn build_context(e: &Env, content: &str) {
    let ctx = e.w().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("in.txt"), format!("{content}\n")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {BUSYBOX_IMAGE}\nCOPY in.txt /in.txt\nRUN cat /in.txt /proc/self/cgroup\n"),
    )
    .unwrap();
}

/// Builds the context of [`build_context`] in step `step` with `build`
/// (the docker command line after the CLI): the verified envelope, the
/// build's output and the CLI's pid. The job's cgroup is in `job.cgroup`.
fn build_in_a_step(e: &Env, step: &str, build: &str) -> (PathBuf, String, i64) {
    let script = format!(
        "{env}cat /proc/self/cgroup > job.cgroup\n\
         {build} > build.out 2>&1 &\n\
         echo $! > cli.pid\n\
         wait $! || {{ cat build.out; exit 1; }}\n",
        env = e.docker_env()
    );
    let att = run_step(&e.d, step, e.w(), &script);
    verify_with_python(&att, &e.d.pubkey);
    let out = e.read("build.out");
    let cli_pid = e.read("cli.pid").parse().unwrap();
    (att, out, cli_pid)
}

#[test]
fn classic_build_in_a_step_records_the_build_and_its_run() {
    let e = Env::new("");
    let content = unique("classic-run-read");
    build_context(&e, &content);
    let (att, out, cli_pid) = build_in_a_step(
        &e,
        "classic",
        &format!("DOCKER_BUILDKIT=0 {CLI_20_10} build --no-cache -t b1:classic ctx"),
    );
    let step = step_cgroup(&e.d, &cgroup2_line(&e.read("job.cgroup")).unwrap());
    assert!(out.lines().any(|l| l == content), "{out}");
    let short = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("---> Running in "))
        .unwrap_or_else(|| panic!("no 'Running in' in {out}"))
        .trim()
        .to_string();
    let run_cg = cgroup2_line(&out).unwrap();
    let full = run_cg
        .strip_prefix(&format!("{step}/"))
        .unwrap_or_else(|| panic!("RUN cgroup {run_cg} not under the step {step}"))
        .to_string();
    assert!(
        full.len() == 64 && full.starts_with(&short),
        "{full} / {short}"
    );
    let image_id = e
        .engine
        .run(&["image", "inspect", "-f", "{{.Id}}", "b1:classic"]);

    let cr = command_run(&att);
    let bs = list(&cr, "builds");
    assert_eq!(bs.len(), 1, "builds: {}", pretty(&cr));
    let b = &bs[0];
    let build_id = b["id"].as_str().unwrap_or_default().to_string();
    assert!(build_id.starts_with("build-"), "{}", pretty(b));
    assert_eq!(b["builder"], "classic");
    assert_eq!(b["attribution"], "cgroup-parent");
    assert_eq!(b["tags"], json!(["b1:classic"]));
    assert_eq!(b["dockerfile"], "Dockerfile");
    assert_eq!(b["containers"], json!([short]));
    assert_eq!(b["imageId"], image_id.as_str());
    assert_eq!(b["createdBy"], cli_pid);

    let cat = by_cmdline(&cr, "cat /in.txt /proc/self/cgroup");
    assert_eq!(cat["container"], full.as_str(), "{}", pretty(&cat));
    read_without_host_digest(&cat, "/in.txt");
    exe_is_busybox(&cat);
    let run = list(&cr, "containers")
        .into_iter()
        .find(|c| c["id"] == full.as_str())
        .unwrap_or_else(|| panic!("RUN container {full} not listed: {}", pretty(&cr)));
    assert_eq!(
        run["cgroup"],
        run_cg.as_str(),
        "{}",
        pretty(&cr["containers"])
    );
    assert_eq!(run["build"], build_id.as_str(), "{}", pretty(&run));
}

#[test]
fn buildkit_build_in_a_step_is_attributed_by_the_engine_window() {
    let e = Env::new("");
    let content = unique("buildkit-run-read");
    build_context(&e, &content);
    let (att, out, cli_pid) = build_in_a_step(
        &e,
        "buildkit",
        &format!(
            "DOCKER_BUILDKIT=1 {CLI_20_10} build --no-cache --progress=plain --network=none -t b1:bk ctx"
        ),
    );
    assert!(out.lines().any(|l| l.ends_with(&content)), "{out}");
    let run_cg = cgroup2_line(&out).unwrap_or_else(|| panic!("no cgroup line in {out}"));
    let exec_id = run_cg
        .strip_prefix(&format!("{}/buildkit/", e.engine.cgroup_parent))
        .unwrap_or_else(|| panic!("BuildKit RUN cgroup {run_cg}: not the engine's buildkit"))
        .to_string();
    let image_id = e
        .engine
        .run(&["image", "inspect", "-f", "{{.Id}}", "b1:bk"]);

    let cr = command_run(&att);
    let bs = list(&cr, "builds");
    assert_eq!(bs.len(), 1, "builds: {}", pretty(&cr));
    let b = &bs[0];
    assert_eq!(b["builder"], "buildkit");
    assert_eq!(b["attribution"], "engine-window", "{}", pretty(b));
    assert_eq!(b["tags"], json!(["b1:bk"]));
    assert_eq!(b["imageId"], image_id.as_str());
    assert_eq!(b["createdBy"], cli_pid);

    let cat = by_cmdline(&cr, "cat /in.txt /proc/self/cgroup");
    assert_eq!(
        cat["container"],
        format!("buildkit:{exec_id}"),
        "{}",
        pretty(&cat)
    );
    read_without_host_digest(&cat, "/in.txt");
}

/// A step whose job waits for `w/<name>.done`.
fn idle_step(e: &Env, name: &str) -> Job {
    let mut job = StepJob::new(&e.d, name, e.w())
        .stdout(Stdio::null())
        .begin(&format!("while [ ! -e {name}.done ]; do sleep 0.02; done"));
    release(&mut job);
    Job(job)
}

fn end_idle(e: &Env, name: &str, mut job: Job) -> Value {
    std::fs::write(e.w().join(format!("{name}.done")), b"").unwrap();
    job.finish();
    let att = end_step(&e.d, name, e.w());
    verify_with_python(&att, &e.d.pubkey);
    command_run(&att)
}

/// Nothing of a container is in the step's evidence.
fn recorded_nothing(cr: &Value) {
    assert!(list(cr, "containers").is_empty(), "{}", pretty(cr));
    assert!(list(cr, "builds").is_empty(), "{}", pretty(cr));
    for p in processes(cr) {
        assert!(p.get("container").is_none(), "{}", pretty(&p));
    }
}

#[test]
fn outside_a_step_the_proxy_passes_through_unchanged() {
    let e = Env::new("");
    let job = idle_step(&e, "bystander");

    let cidfile = e.w().join("cid");
    let out = e
        .via_proxy(CLI_20_10)
        .args(["run", "--network", "none", "--cidfile"])
        .arg(&cidfile)
        .args([BUSYBOX_IMAGE, "cat", "/proc/self/cgroup"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cid = e.read("cid");
    assert_eq!(
        cgroup2_line(&String::from_utf8_lossy(&out.stdout)),
        Some(format!("{}/{cid}", e.engine.cgroup_parent))
    );
    assert_eq!(e.engine.inspect(&cid, "{{.HostConfig.CgroupParent}}"), "");
    // Byte for byte: the same answer through the proxy and direct.
    for args in [
        vec!["image", "inspect", BUSYBOX_IMAGE],
        vec!["inspect", cid.as_str()],
    ] {
        let direct = e.engine.docker().args(&args).output().unwrap();
        let proxied = e.via_proxy(CLI_20_10).args(&args).output().unwrap();
        assert!(direct.status.success() && proxied.status.success());
        assert_eq!(
            String::from_utf8_lossy(&proxied.stdout),
            String::from_utf8_lossy(&direct.stdout),
            "{args:?}"
        );
    }

    let cr = end_idle(&e, "bystander", job);
    recorded_nothing(&cr);
}

#[test]
fn outside_a_step_a_create_or_build_naming_a_step_cgroup_is_refused() {
    let e = Env::new("");
    let job = idle_step(&e, "victim");
    let step = step_cgroup(&e.d, &cgroup2_of(job.id()));
    let before = e.engine.run(&["ps", "-aq"]);
    assert_eq!(before, "");

    for parent in [step.clone(), step.trim_start_matches('/').to_string()] {
        let out = e
            .via_proxy(CLI_20_10)
            .args(["run", "--network", "none", "--cgroup-parent", &parent])
            .args([BUSYBOX_IMAGE, "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "create into {parent} was served");
        assert!(err.contains("Error response from daemon"), "{err}");
        assert_eq!(
            e.engine.run(&["ps", "-aq"]),
            "",
            "the engine created a container"
        );
    }
    build_context(&e, "refused");
    let out = e
        .via_proxy(CLI_20_10)
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--cgroup-parent", &step, "-t", "b1:refused"])
        .arg(e.w().join("ctx"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "build into {step} was served");
    let absent = e
        .engine
        .docker()
        .args(["image", "inspect", "b1:refused"])
        .output()
        .unwrap();
    assert!(
        !absent.status.success(),
        "the engine built the refused image"
    );
    assert_eq!(e.engine.run(&["ps", "-aq"]), "");

    // A parent outside cilock's steps tree is the client's business.
    let elsewhere = format!("/cilock-elsewhere.{}", std::process::id());
    e.engine.clean_at_stop(&elsewhere);
    let out = e
        .via_proxy(CLI_20_10)
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--cgroup-parent",
            &elsewhere,
        ])
        .args([BUSYBOX_IMAGE, "cat", "/proc/self/cgroup"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cg = cgroup2_line(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert!(cg.starts_with(&format!("{elsewhere}/")), "{cg}");

    let cr = end_idle(&e, "victim", job);
    recorded_nothing(&cr);
}

/// `GET /_ping` on `socket` as `uid` (primary `gid`, supplementary
/// `groups`) by Python: the raw response, or `EACCES` when the socket
/// cannot be opened.
fn ping_as(uid: u32, gid: u32, groups: &[u32], socket: &Path) -> String {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
s.settimeout(10)
data = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    data += c
sys.stdout.write(data.decode("utf-8", "replace"))
"#;
    let out = setpriv(uid, gid, groups)
        .arg(python())
        .arg("-c")
        .arg(script)
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_user_without_access_to_the_engine_gets_403_through_the_proxy() {
    let g = Group::create("ctk");
    let e = Env::new(&format!("group = {:?}", g.name));
    let proxy = e.proxy().to_path_buf();
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&proxy).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660, "proxy socket mode");
        assert_eq!(m.gid(), g.gid, "proxy socket group");
    }
    let engine_gid = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&e.engine.socket).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660, "engine socket mode");
        assert_ne!(m.gid(), g.gid);
        m.gid()
    };
    let uid = 65529;
    // Ground truth: this user cannot open the engine's socket itself.
    assert_eq!(
        ping_as(uid, g.gid, &[g.gid], &e.engine.socket).trim(),
        "EACCES"
    );
    let r = ping_as(uid, g.gid, &[g.gid], &proxy);
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let body =
        &r[r.find('{').unwrap_or_else(|| panic!("no JSON body: {r}"))..=r.rfind('}').unwrap()];
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let message = v["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{r}");
    // The docker CLI prints that message.
    let out = setpriv(uid, g.gid, &[g.gid])
        .args([CLI_20_10, "ps"])
        .env("DOCKER_HOST", format!("unix://{}", proxy.display()))
        .env("DOCKER_CONFIG", e.w())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&message),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the engine socket's group the same uid could open it: served.
    assert_eq!(
        ping_as(uid, g.gid, &[g.gid, engine_gid], &e.engine.socket)
            .lines()
            .next(),
        Some("HTTP/1.1 200 OK")
    );
    let r = ping_as(uid, g.gid, &[g.gid, engine_gid], &proxy);
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("OK"), "{r}");
}

#[test]
fn rootless_podman_in_a_step_is_traced_with_its_mount_namespace() {
    let d = Daemon::start("ebpf");
    let _sweep = Sweep(d.cgroup_parent.clone());
    let user = PodmanUser::create();
    user.import_busybox();
    let content = unique("podman-read");
    let input = user.shared_file("in.txt", &format!("{content}\n"));
    let w = tempdir();
    let script = format!(
        "(cd {home} && {podman} run --rm --network none -v {input}:/in.txt:ro {BUSYBOX_IMAGE} sh -c 'readlink /proc/self/ns/mnt; cat /in.txt') > {out} || exit 1\n",
        home = user.home.display(),
        podman = user.shell_podman(),
        input = input.display(),
        out = w.path().join("pod.out").display(),
    );
    let att = run_step(&d, "podman", w.path(), &script);
    verify_with_python(&att, &d.pubkey);

    let out = std::fs::read_to_string(w.path().join("pod.out")).unwrap();
    let mut lines = out.lines();
    let ns = lines
        .next()
        .and_then(parse_ns)
        .unwrap_or_else(|| panic!("no mnt:[N] in {out:?}"));
    assert_ne!(ns, host_mnt_ns());
    assert_eq!(lines.next(), Some(content.as_str()), "{out}");

    let cr = command_run(&att);
    assert!(
        processes(&cr)
            .iter()
            .any(|p| p["program"] == "/usr/bin/podman"),
        "no podman process: {}",
        pretty(&cr)
    );
    // busybox sh runs `readlink` in a fork without exec and execs its last
    // command in place: the container's `cat` is the process that ran
    // `sh -c`, and its forked child is the readlink.
    let cat = by_cmdline(&cr, "cat /in.txt");
    assert_eq!(cat["program"], "/bin/busybox", "{}", pretty(&cat));
    exe_is_busybox(&cat);
    assert_eq!(cat["mountNamespace"], ns, "{}", pretty(&cat));
    read_without_host_digest(&cat, "/in.txt");
    for p in processes(&cr) {
        if p["parentpid"] == cat["processid"] {
            assert_eq!(p["mountNamespace"], ns, "{}", pretty(&p));
        }
    }
}
