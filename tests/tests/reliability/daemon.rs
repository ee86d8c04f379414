//! Reliability: daemon. One daemon per cgroup parent (a second one refuses
//! and touches nothing), a daemon killed during a live step leaves no
//! silent loss (the next one ends the step with an attestation that says
//! the trace was interrupted), and a stop with requests in flight finishes
//! within `stop_timeout`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cilock_testkit::{kept_envelopes, statement, tempdir, verify_with_python, Daemon};
use serde_json::Value;

use cilock_testkit::step::{begin_job, command_run, end_step, processes, release};

static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A cgroup parent of its own for one test.
fn unique_parent(what: &str) -> String {
    format!(
        "cilock.rel.{what}.{}.{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn cgroup_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|p| p.starts_with("cgroup2 "))
        })
        .expect("a cgroup2 mount");
    PathBuf::from(line.split_whitespace().nth(4).unwrap())
}

/// Child cgroups of `parent` whose name starts with `prefix`.
fn children(parent: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Creates its file when dropped (a job waiting for it ends, even when
/// the test fails).
struct Touch(PathBuf);

impl Drop for Touch {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

#[test]
fn second_daemon_on_the_same_parent_refuses_and_the_first_keeps_tracing() {
    let parent = unique_parent("two");
    let cg_parent = cgroup_root().join(&parent);
    let s1 = tempdir();
    let d1 = Daemon::try_start_on("auto", &parent, &s1.path().join("state"), "")
        .unwrap_or_else(|(st, log)| panic!("first daemon: {st}: {log}"));
    let work = tempdir();
    let dir = work.path();
    std::fs::write(
        dir.join("after.txt"),
        "read after the second daemon tried\n",
    )
    .unwrap();
    let mut job = begin_job(
        &d1,
        "live",
        dir,
        "while [ ! -e go2 ]; do sleep 0.02; done\ncat after.txt > /dev/null\n",
        Stdio::null(),
    );
    release(&mut job);
    let _go2 = Touch(dir.join("go2"));
    let step_cgs = children(&cg_parent, "u0.live.");
    assert_eq!(step_cgs.len(), 1, "the live step's cgroup: {step_cgs:?}");

    // The second daemon: same parent, its own state dir and socket.
    let s2 = tempdir();
    let state2 = s2.path().join("state");
    let t0 = Instant::now();
    let refused = Daemon::try_start_on("auto", &parent, &state2, "");
    let (status, log) = match refused {
        Ok(_) => panic!("a second daemon on parent {parent} started"),
        Err(e) => e,
    };
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "refusing took {:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "cgroup parent {} is in use by another cilock daemon or `cilock run` (pid {})",
            cg_parent.display(),
            d1.pid()
        )),
        "the refusal names the parent and the holder: {log}"
    );
    // It touched nothing: the live step's cgroup and the job are where they were.
    assert_eq!(children(&cg_parent, "u0.live."), step_cgs);
    let job_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", job.id())).unwrap();
    assert!(
        job_cg.contains(&format!("/{parent}/{}", step_cgs[0])),
        "the job left its step: {job_cg}"
    );
    assert!(
        !state2.join("steps").exists(),
        "the refused daemon wrote state"
    );

    // The first daemon still traces the step: activity after the attempt.
    std::fs::write(dir.join("go2"), "").unwrap();
    assert!(job.wait().unwrap().success());
    let att = end_step(&d1, "live", dir);
    let cr = command_run(&att);
    let after = dir.join("after.txt");
    let after = after.to_str().unwrap();
    assert!(
        processes(&cr)
            .iter()
            .any(|p| p["openedfiles"].get(after).is_some()),
        "the open of after.txt (after the second daemon's attempt) is not in the trace: {}",
        serde_json::to_string_pretty(&cr["processes"]).unwrap()
    );
    verify_with_python(&att, &d1.pubkey);
}

/// The kept envelopes of step `name` in the daemon's store
/// (`state/kept/<uid>/`).
fn kept(state: &Path, name: &str) -> Vec<PathBuf> {
    kept_envelopes(state)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.")))
        })
        .collect()
}

#[test]
fn a_step_left_by_a_killed_daemon_is_ended_with_an_interrupted_attestation() {
    let parent = unique_parent("kill");
    let cg_parent = cgroup_root().join(&parent);
    let s = tempdir();
    let state = s.path().join("state");
    let mut d1 = Daemon::try_start_on("auto", &parent, &state, "")
        .unwrap_or_else(|(st, log)| panic!("first daemon: {st}: {log}"));
    let work = tempdir();
    let dir = work.path();
    let mut job = begin_job(
        &d1,
        "victim",
        dir,
        "while [ ! -e stop ]; do sleep 0.02; done\n",
        Stdio::null(),
    );
    release(&mut job);
    let _stop = Touch(dir.join("stop"));
    assert_eq!(children(&cg_parent, "u0.victim.").len(), 1);
    let records = state.join("steps").join(&parent);
    let recs: Vec<_> = std::fs::read_dir(&records).unwrap().flatten().collect();
    assert!(
        recs.iter()
            .any(|e| e.file_name().to_string_lossy().starts_with("u0.victim.")),
        "no record of the live step in {}",
        records.display()
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let rec = recs
            .iter()
            .find(|e| e.file_name().to_string_lossy().starts_with("u0.victim."))
            .unwrap();
        assert_eq!(rec.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let m = std::fs::metadata(&records).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o700);
    }

    // A cgroup under the parent that no record proves is the daemon's.
    let foreign = cg_parent.join("foreign-not-a-step");
    std::fs::create_dir(&foreign).unwrap();

    let old_pid = d1.pid();
    unsafe { libc::kill(old_pid as i32, libc::SIGKILL) };
    assert!(d1.wait_exit(Duration::from_secs(10)).is_some());

    let d2 = Daemon::try_start_on("auto", &parent, &state, "")
        .unwrap_or_else(|(st, log)| panic!("second daemon: {st}: {log}"));
    // The step was ended at start: its cgroup is gone, the job is back
    // where it came from (outside the parent) and keeps running.
    assert!(children(&cg_parent, "u0.victim.").is_empty());
    assert!(foreign.is_dir(), "a cgroup with no record was removed");
    let job_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", job.id())).unwrap();
    assert!(
        !job_cg.contains(&parent),
        "the job is still under {parent}: {job_cg}"
    );
    assert!(
        std::fs::read_dir(&records)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".json")),
        "the record of the ended step is still there"
    );
    let log = d2.log_text();
    assert!(
        log.contains("foreign-not-a-step") && log.contains("no step record proves"),
        "{log}"
    );

    let envs = kept(&state, "victim");
    assert_eq!(envs.len(), 1, "kept envelopes: {envs:?}");
    verify_with_python(&envs[0], &d2.pubkey);
    let stmt = statement(&envs[0]);
    let cr: &Value = cilock_testkit::attestation(&stmt, "/command-run/v0.1");
    let trace = &cr["trace"];
    let ended_by = trace["endedBy"].as_str().unwrap();
    assert!(
        ended_by.starts_with(
            "daemon restart: the trace was interrupted by the death of the daemon (pid "
        ),
        "{ended_by}"
    );
    assert!(ended_by.contains(&format!("(pid {old_pid})")), "{ended_by}");
    assert!(ended_by.contains("last seen alive at "), "{ended_by}");
    assert!(
        ended_by.contains(&format!("The daemon (pid {}) started at ", d2.pid())),
        "{ended_by}"
    );
    assert_eq!(trace["reaped"], true);
    assert_eq!(cr["exitcode"], -1);
    assert!(trace["unobserved"]["processes"].is_string(), "{trace}");
    let survivors: Vec<i64> = trace["waitDescendants"]["survivors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert!(
        survivors.contains(&(job.id() as i64)),
        "the job's shell ({}) is not among the survivors {survivors:?}",
        job.id()
    );
    assert_eq!(stmt["predicate"]["name"], "victim");

    // The job's own `step end` later says what happened, and where.
    let out = d2.cilock(&["step", "end", "--step", "victim", "-o", "/dev/null"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("was ended when the daemon restarted")
            && err.contains(envs[0].to_str().unwrap()),
        "{err}"
    );

    std::fs::write(dir.join("stop"), "").unwrap();
    assert!(job.wait().unwrap().success());
    std::fs::remove_dir(&foreign).unwrap();
}

#[test]
fn stop_with_requests_in_flight_finishes_within_stop_timeout() {
    use std::os::unix::net::UnixStream;
    let stop_timeout = Duration::from_secs(6);
    let parent = unique_parent("stop");
    let s = tempdir();
    let state = s.path().join("state");
    let extra = "stop_timeout = \"6s\"\nrun_wait_descendants = \"5m\"";
    let mut d = Daemon::try_start_on("auto", &parent, &state, extra)
        .unwrap_or_else(|(st, log)| panic!("daemon: {st}: {log}"));
    let work = tempdir();
    // A `cilock run` whose end waits for a descendant that never exits: the
    // end request blocks a daemon thread (up to run_wait_descendants).
    // The command's background `sleep` keeps whatever it inherits open:
    // no pipes.
    let run_err = work.path().join("run.stderr");
    let mut run = d
        .command()
        .args(["run", "--step", "hang", "-o"])
        .arg(work.path().join("hang.json"))
        .args(["--", "sh", "-c", "sleep 300 & echo started"])
        .current_dir(work.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&run_err).unwrap())
        .spawn()
        .unwrap();
    // A client that connects and sends nothing, and one that sends half a
    // frame header.
    let _idle = UnixStream::connect(&d.socket).unwrap();
    let mut half = UnixStream::connect(&d.socket).unwrap();
    half.write_all(&[0, 0]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log_text().contains("request=\"end-step\" step=hang") {
        assert!(
            Instant::now() < deadline && run.try_wait().unwrap().is_none(),
            "no end request in flight: {}\n{}",
            std::fs::read_to_string(&run_err).unwrap_or_default(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) };
    let st = d.wait_exit(stop_timeout + Duration::from_secs(3));
    assert!(
        st.is_some(),
        "the daemon did not stop within {stop_timeout:?} (+3 s slack for a loaded machine): {}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("stop: request cut short: end-step step \"hang\""),
        "{log}"
    );
    // The client learns it got no attestation (never a silent success).
    let st = run.wait().unwrap();
    let err = std::fs::read_to_string(&run_err).unwrap_or_default();
    assert!(!st.success(), "{err}");

    // The step whose end was cut short is not lost: the next daemon on the
    // parent ends it, saying the trace was interrupted, and cleans up.
    let d2 = Daemon::try_start_on("auto", &parent, &state, extra)
        .unwrap_or_else(|(st, log)| panic!("next daemon: {st}: {log}"));
    let envs = kept(&state, "hang");
    assert_eq!(envs.len(), 1, "{}", d2.log_text());
    let stmt = statement(&envs[0]);
    let cr = cilock_testkit::attestation(&stmt, "/command-run/v0.1");
    assert!(
        cr["trace"]["endedBy"]
            .as_str()
            .unwrap()
            .contains(&format!("death of the daemon (pid {})", d.pid())),
        "{}",
        cr["trace"]
    );
    assert!(children(&cgroup_root().join(&parent), "u0.hang.").is_empty());
    assert_eq!(run_kill_sleep(work.path()), 1);
}

/// Kills the test's leftover `sleep 300` (found by its cwd).
fn run_kill_sleep(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c == dir)
            && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x00300"))
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}
