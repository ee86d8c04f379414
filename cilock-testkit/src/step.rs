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

/// A job's shell moved into a new step before it does anything: started as
/// `sh -c "read go; SCRIPT"` in `dir`, then `step begin --step NAME --pid
/// <shell> --workdir DIR`; the script runs once the test [`release`]s it.
pub struct StepJob<'a> {
    daemon: &'a Daemon,
    name: String,
    dir: PathBuf,
    stdout: Stdio,
}

impl<'a> StepJob<'a> {
    /// A job for step `name` of `daemon`, working in `dir` (stdout
    /// inherited).
    pub fn new(daemon: &'a Daemon, name: &str, dir: &Path) -> StepJob<'a> {
        StepJob {
            daemon,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            stdout: Stdio::inherit(),
        }
    }

    /// Where the job's stdout goes.
    pub fn stdout(mut self, stdout: Stdio) -> StepJob<'a> {
        self.stdout = stdout;
        self
    }

    /// Starts the shell (`script` runs after "go" on its stdin) and begins
    /// the step on it, asserting the begin succeeds.
    pub fn begin(self, script: &str) -> Child {
        let job = Command::new("sh")
            .arg("-c")
            .arg(format!("read go; {script}"))
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(self.stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = self.daemon.cilock(&[
            "step",
            "begin",
            "--step",
            &self.name,
            "--pid",
            &job.id().to_string(),
            "--workdir",
            self.dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "begin: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        job
    }
}

/// Lets a [`StepJob`]'s shell run its script.
pub fn release(job: &mut Child) {
    job.stdin.take().unwrap().write_all(b"go\n").unwrap();
}

/// Writes `script` to `dir/<name>.sh` and starts it as a [`StepJob`] of
/// step `name` of `daemon` (`exec sh <dir>/<name>.sh`); the script runs
/// once the job is [`release`]d.
pub fn begin_job(daemon: &Daemon, name: &str, dir: &Path, script: &str, stdout: Stdio) -> Child {
    let sh = dir.join(format!("{name}.sh"));
    write_script(&sh, script);
    StepJob::new(daemon, name, dir)
        .stdout(stdout)
        .begin(&format!("exec sh {}", sh.display()))
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
    release(&mut job);
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

/// A JSON value, pretty-printed (assertion messages).
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
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

/// `sh -c SCRIPT` in `dir`; it must succeed.
pub fn sh_in(dir: &Path, script: &str) {
    let o = Command::new("sh")
        .current_dir(dir)
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{script}: {}", crate::cli::text(&o));
}

/// The work tree of the build/package chain tests: `DIR/work`, a git
/// repository with one commit of `main.c` (the git attestor's commit is
/// the chain's back-reference).
pub fn chain_work_tree(dir: &Path) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("main.c"), "int main(void) { return 0; }\n").unwrap();
    sh_in(
        &work,
        "git init -q . && git -c user.name=ci -c user.email=ci@example.com add main.c && git -c user.name=ci -c user.email=ci@example.com commit -qm init",
    );
    work
}
