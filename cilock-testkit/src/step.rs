//! One traced step through a real daemon — the choreography every e2e test
//! repeats: start the job's shell (waiting on stdin), `step begin --pid` it
//! into a new step, release it, wait, `step end` — and reading the
//! command-run attestation that comes out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::envelope::{attestation, statement};
use crate::fixtures::write_script;

/// Starts `sh -c 'read go; exec sh <dir>/<name>.sh'` in `dir` (the job's
/// shell) and moves it into a new step named `name` of `daemon`; the script
/// runs once "go" is written to its stdin.
pub fn begin_job(daemon: &Daemon, name: &str, dir: &Path, script: &str, stdout: Stdio) -> Child {
    let sh = dir.join(format!("{name}.sh"));
    write_script(&sh, script);
    let job = Command::new("sh")
        .arg("-c")
        .arg(format!("read go; exec sh {}", sh.display()))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = daemon.cilock(&[
        "step",
        "begin",
        "--step",
        name,
        "--pid",
        &job.id().to_string(),
        "--workdir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "begin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    job
}

/// Ends step `name` of `daemon`, writing its envelope to
/// `dir/<name>.att.json`; returns that path.
pub fn end_step(daemon: &Daemon, name: &str, dir: &Path) -> PathBuf {
    let att = dir.join(format!("{name}.att.json"));
    let out = daemon.cilock(&["step", "end", "--step", name, "-o", att.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "end: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log_text()
    );
    att
}

/// Runs `script` (sh) as a step named `name` of `daemon` in `dir`: the
/// job's shell is moved into the step before it starts the script;
/// `before_end` runs after the script and before `step end` (a process
/// outside the step). Returns the attestation envelope's path.
pub fn run_step_with(
    daemon: &Daemon,
    name: &str,
    dir: &Path,
    script: &str,
    before_end: impl FnOnce(),
) -> PathBuf {
    let mut job = begin_job(daemon, name, dir, script, Stdio::piped());
    job.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(job.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let st = job.wait().unwrap();
    assert!(st.success(), "step script failed: {stdout}");
    std::fs::write(dir.join(format!("{name}.stdout")), &stdout).unwrap();
    before_end();
    end_step(daemon, name, dir)
}

/// [`run_step_with`] with nothing before the end.
pub fn run_step(daemon: &Daemon, name: &str, dir: &Path, script: &str) -> PathBuf {
    run_step_with(daemon, name, dir, script, || {})
}

/// The command-run attestation of an envelope.
pub fn command_run(att: &Path) -> Value {
    let stmt = statement(att);
    attestation(&stmt, "/command-run/v0.1").clone()
}

/// The processes of a command-run attestation.
pub fn processes(cr: &Value) -> Vec<Value> {
    cr["processes"].as_array().cloned().unwrap_or_default()
}

/// The process with this pid.
pub fn by_pid(cr: &Value, pid: i64) -> Value {
    processes(cr)
        .into_iter()
        .find(|p| p["processid"].as_i64() == Some(pid))
        .unwrap_or_else(|| {
            panic!(
                "no process {pid} in {}",
                serde_json::to_string_pretty(cr).unwrap()
            )
        })
}

/// No event of the trace was lost.
pub fn assert_nothing_lost(cr: &Value) {
    for (kind, c) in cr["trace"]["events"].as_object().unwrap() {
        assert_eq!(c["lost"], 0, "lost {kind} events");
    }
}

/// The pid of the daemon serving `daemon.socket` (found through /proc: its
/// config file sits next to the socket).
pub fn daemon_pid(daemon: &Daemon) -> u32 {
    let config = daemon.socket.parent().unwrap().join("cilock.toml");
    let want = config.to_str().unwrap().as_bytes().to_vec();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|&b| b == 0).any(|a| a == want.as_slice()) {
            return pid;
        }
    }
    panic!("daemon process not found");
}
