//! The attacker's world for the adversarial suite: a real daemon, a real
//! unprivileged user in the daemon's group (`mallory`, the CI job), a second
//! member (`bob`), an outsider (`eve`), root-only data (a 0700 directory with
//! secret files, a root process with secrets in its environment), and the
//! tools to act as those users (setpriv, a raw Python client, timeouts).
//!
//! Everything is cleaned up by Drop guards, in this order: processes the
//! test started (by process group), the daemon (SIGTERM, then SIGKILL),
//! cgroups left under the daemon's parent, users, the group.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cilock_testkit::step::daemon_pid;
use cilock_testkit::users::Group;
use cilock_testkit::*;
use serde_json::{json, Value};

/// cgroup2 mount of this machine.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A short name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("clkf{}{tag}{n}", std::process::id() % 100_000)
}

/// A random-looking token unique to this run (secrets must be unique so a
/// match in an envelope can only come from the secret).
pub fn token(tag: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}{:x}{:x}{n}", t, std::process::id())
}

/// A real user (useradd), with its own private group, optionally a member of
/// `group` (supplementary, like a CI runner user in group `cilock`).
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub fn create(tag: &str, group: Option<&Group>) -> User {
        let name = unique(tag);
        let mut c = Command::new("useradd");
        c.args(["-M", "-U", "-s", "/bin/sh", "-d", "/nonexistent"]);
        if let Some(g) = group {
            c.args(["-G", &g.name]);
        }
        let st = c.arg(&name).status().expect("useradd");
        assert!(st.success(), "useradd {name}");
        let uid = sh(&format!("id -u {name}")).trim().parse().unwrap();
        let gid = sh(&format!("id -g {name}")).trim().parse().unwrap();
        User { name, uid, gid }
    }

    /// A command run as this user, with its supplementary groups
    /// (initgroups), a clean environment and its own process group.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .env("LANG", "C.UTF-8")
            .env("C", shared_cilock())
            .current_dir("/");
        c.process_group(0);
        c
    }
}

impl Drop for User {
    fn drop(&mut self) {
        // Its processes were killed by the world's guard; -f in case one is
        // left (userdel refuses a user with processes).
        let _ = Command::new("userdel")
            .arg("-f")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}

/// What a command did within its time limit.
#[derive(Debug)]
pub struct Ran {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn text(&self) -> String {
        format!(
            "status {:?}{}\nstdout: {}\nstderr: {}",
            self.status,
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `c` (which must be in its own process group) for at most `limit`;
/// on timeout its whole process group is killed.
pub fn run_timeout(mut c: Command, limit: Duration) -> Ran {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let pgid = child.id() as i32;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            timed_out = true;
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Grandchildren may hold the pipes: kill the group either way.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let stdout = String::from_utf8_lossy(&to.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&te.join().unwrap_or_default()).into_owned();
    Ran {
        status,
        stdout,
        stderr,
        timed_out,
    }
}

/// A raw client for the socket protocol (4-byte big-endian length + JSON),
/// run by `python3 -c` as any user. `req(obj, timeout)` returns the reply or
/// `{"reply": "timeout"}` / `{"reply": "closed"}`.
pub const PY_CLIENT: &str = r#"
import socket, struct, json, os, sys, time
SOCK = os.environ["CILOCK_SOCKET"]
def conn(timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(timeout); s.connect(SOCK); return s
def send(s, obj):
    b = json.dumps(obj).encode() if not isinstance(obj, (bytes, bytearray)) else bytes(obj)
    s.sendall(struct.pack(">I", len(b)) + b)
def recv(s):
    h = b""
    while len(h) < 4:
        x = s.recv(4 - len(h))
        if not x: return {"reply": "closed"}
        h += x
    n = struct.unpack(">I", h)[0]; d = b""
    while len(d) < n:
        x = s.recv(min(1 << 20, n - len(d)))
        if not x: return {"reply": "closed"}
        d += x
    return json.loads(d)
def req(obj, timeout=10):
    try:
        s = conn(timeout)
    except socket.timeout:
        return {"reply": "timeout", "where": "connect"}
    except OSError as e:
        return {"reply": "oserror", "errno": e.errno}
    try:
        send(s, obj); return recv(s)
    except socket.timeout:
        return {"reply": "timeout"}
    except OSError as e:
        return {"reply": "oserror", "errno": e.errno}
    finally:
        s.close()
def kind(r):
    return (r.get("kind") or r.get("reply") or "?") if isinstance(r, dict) else "?"
"#;

/// A Python script (prefixed with [`PY_CLIENT`]) run as `user`.
pub fn py_as(user: &User, d: &Daemon, script: &str, args: &[&str]) -> Command {
    let mut c = user.command(python());
    c.arg("-c")
        .arg(format!("{PY_CLIENT}\n{script}"))
        .args(args)
        .env("CILOCK_SOCKET", &d.socket);
    c
}

/// One request as root (in process), with a time limit covering connect,
/// send and receive. Err holds why there was no reply.
pub fn root_request(socket: &Path, req: &Value, limit: Duration) -> Result<Value, String> {
    let socket = socket.to_path_buf();
    let body = serde_json::to_vec(req).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| -> Result<Value, String> {
            let mut s = UnixStream::connect(&socket).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(limit)).ok();
            s.set_write_timeout(Some(limit)).ok();
            s.write_all(&(body.len() as u32).to_be_bytes())
                .and_then(|_| s.write_all(&body))
                .map_err(|e| format!("send: {e}"))?;
            let mut len = [0u8; 4];
            s.read_exact(&mut len).map_err(|e| format!("recv: {e}"))?;
            let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut reply).map_err(|e| format!("recv: {e}"))?;
            serde_json::from_slice(&reply).map_err(|e| format!("reply JSON: {e}"))
        })();
        let _ = tx.send(r);
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| Err(format!("no reply within {limit:?}")))
}

/// Root's `status`: Ok(list of step names) when the daemon answered.
pub fn root_status(d: &Daemon, limit: Duration) -> Result<Value, String> {
    let r = root_request(&d.socket, &json!({"request": "status"}), limit)?;
    if r["reply"] == "status" {
        Ok(r)
    } else {
        Err(format!("status reply: {r}"))
    }
}

/// The error kind of a reply (`bad-request`, `too-many`, ...), or its reply
/// tag when it is not an error.
pub fn kind(r: &Value) -> String {
    r["kind"]
        .as_str()
        .or_else(|| r["reply"].as_str())
        .unwrap_or("?")
        .to_string()
}

/// Soft assertions: every failed check is kept, and the test fails at the
/// end with all of them (an attack test shows everything that went wrong).
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            eprintln!("CHECK FAILED: {w}");
            self.failures.push(w);
        }
    }
    pub fn fail(&mut self, what: impl Into<String>) {
        let w = what.into();
        eprintln!("CHECK FAILED: {w}");
        self.failures.push(w);
    }
    pub fn finish(self, d: &Daemon) {
        if !self.failures.is_empty() {
            let log = d.log_text();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{} check(s) failed:\n- {}\n--- daemon log (tail) ---\n{tail}",
                self.failures.len(),
                self.failures.join("\n- ")
            );
        }
    }
}

/// Root-only data: a 0700 directory holding a file of fake cloud/GitHub
/// tokens and a `KEY=value` file with a password, and their digests.
pub struct RootOnly {
    pub dir: tempfile::TempDir,
    pub secret_txt: PathBuf,
    pub kv_env: PathBuf,
    pub aws: String,
    pub ghp: String,
    pub dbpass: String,
    pub sha_secret: String,
    pub sha_kv: String,
}

impl RootOnly {
    pub fn create() -> RootOnly {
        let dir = tempdir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let tag = token("");
        let aws = format!("AKIA{}", &format!("{:0>16}", tag.to_uppercase())[..16]);
        let ghp = format!("ghp_{:0<36}", &tag[..tag.len().min(36)]);
        let dbpass = format!("SuperSecret-RootOnly-{tag}");
        let secret_txt = dir.path().join(format!("rootonly-secret-{tag}.txt"));
        let kv_env = dir.path().join(format!("rootonly-kv-{tag}.env"));
        std::fs::write(
            &secret_txt,
            format!(
                "aws_access_key_id = {aws}\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/{tag}\ngithub = {ghp}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            &kv_env,
            format!("API_URL=https://x\nDB_HOST=db.internal\nDB_PASSWORD={dbpass}\n"),
        )
        .unwrap();
        for f in [&secret_txt, &kv_env] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let sha_secret = sha256sum(secret_txt.to_str().unwrap()).unwrap();
        let sha_kv = sha256sum(kv_env.to_str().unwrap()).unwrap();
        RootOnly {
            dir,
            secret_txt,
            kv_env,
            aws,
            ghp,
            dbpass,
            sha_secret,
            sha_kv,
        }
    }

    /// Strings that must never appear in anything a user gets back.
    pub fn forbidden(&self) -> Vec<String> {
        vec![
            self.aws.clone(),
            self.ghp.clone(),
            self.dbpass.clone(),
            self.sha_secret.clone(),
            self.sha_kv.clone(),
            file_name(&self.secret_txt),
            file_name(&self.kv_env),
        ]
    }
}

pub fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// A root process with secrets in its environment (stands in for another
/// job or a service). Killed at drop.
pub struct RootProc {
    pub child: std::process::Child,
    pub secrets: Vec<String>,
}

impl RootProc {
    pub fn start() -> RootProc {
        let aws = format!("wJalrXUtnFEMI/K7MDENG/ROOTPROC{}", token("x"));
        let reg = format!("AABBCCDDROOTONLYREGTOKEN{}", token("r"));
        let child = Command::new("env")
            .arg("-i")
            .arg("PATH=/usr/bin:/bin")
            .arg("HOME=/root")
            .arg(format!("AWS_SECRET_ACCESS_KEY={aws}"))
            .arg(format!("RUNNER_REG_TOKEN={reg}"))
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        RootProc {
            child,
            secrets: vec![aws, reg],
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RootProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a signed envelope file says, as text: the raw file plus its
/// decoded payload (where the attestations are).
pub fn envelope_text(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = raw.clone();
    if let Ok(v) = serde_json::from_str::<Value>(&raw) {
        if let Some(p) = v["payload"].as_str() {
            use base64::Engine as _;
            if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(p) {
                out.push('\n');
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

/// The attestation of `type_suffix` in a statement, if any.
pub fn find_attestation<'a>(stmt: &'a Value, type_suffix: &str) -> Option<&'a Value> {
    stmt["predicate"]["attestations"]
        .as_array()?
        .iter()
        .find(|a| a["type"].as_str().is_some_and(|t| t.ends_with(type_suffix)))
        .map(|a| &a["attestation"])
}

/// Every process record of a statement's command-run attestation.
pub fn processes(stmt: &Value) -> Vec<Value> {
    find_attestation(stmt, "/command-run/v0.1")
        .and_then(|c| c["processes"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// Reads `key` (kB) from /proc/PID/status.
pub fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Number of open fds of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Every cgroup below `dir` (not `dir` itself).
pub fn cgroups_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                stack.push(e.path());
            }
        }
    }
    out
}

/// Kills every process of the cgroups below `dir` and removes them, then
/// `dir` (deepest first). For the end of a test: anything the daemon left.
pub fn sweep_cgroups(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut all = cgroups_below(dir);
    all.push(dir.to_path_buf());
    for c in &all {
        let _ = std::fs::write(c.join("cgroup.kill"), "1");
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let deadline = Instant::now() + Duration::from_secs(5);
    for c in &all {
        while std::fs::remove_dir(c).is_err() && c.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The attacker's world: a daemon whose group holds `mallory` and `bob`,
/// an outsider `eve`, root-only data.
pub struct World {
    daemon: Option<Daemon>,
    /// The daemon's group (deleted at drop).
    _group: Group,
    pub mallory: User,
    pub bob: User,
    pub eve: User,
    pub pid: u32,
    /// The daemon's cgroup parent (absolute path under the cgroup2 mount).
    pub parent: PathBuf,
    pgids: Mutex<Vec<i32>>,
    /// Root-owned children started by the test (killed at drop).
    root_children: Mutex<Vec<std::process::Child>>,
    /// Held for the whole test: the attacks of this suite run one at a
    /// time even when the harness runs tests in parallel (they measure the
    /// daemon's memory, fds and pids, and flood the machine). Last field:
    /// released after everything else is cleaned up.
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: Mutex<()> = Mutex::new(());

impl std::ops::Deref for World {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }
}

impl World {
    /// A world with an eBPF daemon and `extra` TOML lines in its config.
    pub fn new(extra: &str) -> World {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let group = Group::create("clkfg");
        let mallory = User::create("m", Some(&group));
        let bob = User::create("b", Some(&group));
        let eve = User::create("e", None);
        let d = Daemon::start_with("ebpf", &format!("group = {:?}\n{extra}", group.name));
        let config =
            std::fs::read_to_string(d.socket.parent().unwrap().join("cilock.toml")).unwrap();
        let parent_rel = config
            .lines()
            .find_map(|l| l.strip_prefix("cgroup_parent = "))
            .unwrap()
            .trim()
            .trim_matches('"')
            .to_string();
        let pid = daemon_pid(&d);
        World {
            daemon: Some(d),
            _group: group,
            mallory,
            bob,
            eve,
            pid,
            parent: Path::new(CGROUP_ROOT).join(parent_rel),
            pgids: Mutex::new(Vec::new()),
            root_children: Mutex::new(Vec::new()),
            _serial: serial,
        }
    }

    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().unwrap()
    }

    /// The daemon's signing key (0600 root).
    pub fn key_path(&self) -> PathBuf {
        self.socket.parent().unwrap().join("signing-key.pem")
    }

    /// A work directory owned by `u` (0755).
    pub fn workdir(&self, u: &User) -> tempfile::TempDir {
        let w = tempdir();
        std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(w.path(), Some(u.uid), Some(u.gid)).unwrap();
        w
    }

    /// Spawns `c` (a user command, own process group) in the background;
    /// its process group is killed at drop.
    pub fn spawn_bg(&self, mut c: Command) -> std::process::Child {
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().expect("spawn");
        self.pgids.lock().unwrap().push(child.id() as i32);
        child
    }

    /// A root process (`sleep`) to put in root's steps; killed at drop.
    pub fn root_sleeper(&self) -> u32 {
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.root_children.lock().unwrap().push(child);
        pid
    }

    /// A `sleep` of user `u` (its own process group; killed at drop).
    pub fn user_sleeper(&self, u: &User) -> u32 {
        let mut c = u.command("sleep");
        c.arg("300");
        self.spawn_bg(c).id()
    }

    /// Runs `body` (sh) as user `u` between `step begin` and `step end` of
    /// step `name` with workdir `wd` (`begin_flags` added to begin, e.g.
    /// `-a secretscan`), `env` added to the job's environment. The envelope
    /// goes to `wd/NAME.att.json`. Exit 3: begin failed; 4: end failed.
    #[expect(
        clippy::too_many_arguments,
        reason = "a test helper mirroring the step command line"
    )]
    pub fn user_step(
        &self,
        u: &User,
        name: &str,
        wd: &Path,
        begin_flags: &str,
        env: &[(&str, &str)],
        body: &str,
        limit: Duration,
    ) -> StepRun {
        let out = wd.join(format!("{name}.att.json"));
        self.user_step_full(u, name, wd, &out, "", begin_flags, env, body, limit)
    }

    /// Like [`World::user_step`] with the envelope written to `out` and
    /// `pre` (sh) run before `step begin` (so what it starts in the
    /// background stays outside the step).
    #[expect(
        clippy::too_many_arguments,
        reason = "a test helper mirroring the step command line"
    )]
    pub fn user_step_full(
        &self,
        u: &User,
        name: &str,
        wd: &Path,
        out: &Path,
        pre: &str,
        begin_flags: &str,
        env: &[(&str, &str)],
        body: &str,
        limit: Duration,
    ) -> StepRun {
        let out = out.to_path_buf();
        let script = format!(
            "cd {wd}\n{pre}\n\"$C\" step begin --step {name} --workdir {wd} {begin_flags} || {{ echo BEGIN-FAILED >&2; exit 3; }}\n{body}\n\"$C\" step end --step {name} -o {out} || {{ echo END-FAILED >&2; exit 4; }}\n",
            wd = wd.display(),
            out = out.display()
        );
        let mut c = u.command("sh");
        c.arg("-c").arg(script).env("CILOCK_SOCKET", &self.socket);
        for (k, v) in env {
            c.env(k, v);
        }
        let ran = run_timeout(c, limit);
        StepRun { ran, out }
    }

    /// Spawns `c` in the background with its stdout lines sent to the
    /// returned channel; its process group is killed at drop.
    pub fn spawn_lines(
        &self,
        mut c: Command,
    ) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("spawn");
        self.pgids.lock().unwrap().push(child.id() as i32);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    /// Root begins step `name` for a fresh root process (workdir: a root
    /// temporary directory). Returns the CLI's output.
    pub fn root_begin(&self, name: &str, wd: &Path, limit: Duration) -> Ran {
        let pid = self.root_sleeper();
        let mut c = self.command();
        c.args([
            "step",
            "begin",
            "--step",
            name,
            "--pid",
            &pid.to_string(),
            "--workdir",
        ])
        .arg(wd)
        .process_group(0);
        run_timeout(c, limit)
    }

    /// Root ends step `name` (envelope to `out`).
    pub fn root_end(&self, name: &str, out: &Path, limit: Duration) -> Ran {
        let mut c = self.command();
        c.args(["step", "end", "--step", name, "-o"])
            .arg(out)
            .process_group(0);
        run_timeout(c, limit)
    }

    /// Root begins and ends a step: Ok when both worked within `limit` each.
    pub fn root_round_trip(&self, name: &str, limit: Duration) -> Result<(), String> {
        let wd = tempdir();
        let b = self.root_begin(name, wd.path(), limit);
        if !b.ok() {
            return Err(format!("root's begin of {name}: {}", b.text()));
        }
        let out = wd.path().join("out.json");
        let e = self.root_end(name, &out, limit);
        if !e.ok() || !out.exists() {
            return Err(format!("root's end of {name}: {}", e.text()));
        }
        Ok(())
    }

    /// User `u` begins and ends a step (pid: a shell of `u`).
    pub fn user_round_trip(&self, u: &User, name: &str, limit: Duration) -> Result<(), String> {
        let wd = self.workdir(u);
        let r = self.user_step(u, name, wd.path(), "", &[], "true", limit);
        if r.ran.ok() && r.out.exists() {
            Ok(())
        } else {
            Err(format!("{}'s step {name}: {}", u.name, r.ran.text()))
        }
    }

    pub fn fds(&self) -> usize {
        fd_count(self.pid)
    }

    pub fn cgroups(&self) -> Vec<PathBuf> {
        cgroups_below(&self.parent)
    }

    /// True when the daemon process runs now and a second later (a
    /// process that aborted may still be writing its core for a moment).
    pub fn alive(&mut self) -> bool {
        for _ in 0..10 {
            if !self.daemon_mut().alive() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.daemon_mut().alive()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for pg in self.pgids.lock().unwrap().drain(..) {
            unsafe { libc::kill(-pg, libc::SIGKILL) };
        }
        for mut c in self.root_children.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The daemon: SIGTERM (it removes its cgroups), SIGKILL after 10 s.
        drop(self.daemon.take());
        sweep_cgroups(&self.parent);
        // Users and the group drop after this (field order: group first is
        // fine: a supplementary membership does not stop groupdel, and the
        // users' private groups go with userdel).
        // Whatever the test's users still run (every process of these uids
        // was started by this test), killed one by one by pid.
        let uids = [self.mallory.uid, self.bob.uid, self.eve.uid];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let uid = st
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if uid.is_some_and(|u| uids.contains(&u)) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A user's step run by [`World::user_step`].
pub struct StepRun {
    pub ran: Ran,
    pub out: PathBuf,
}

impl StepRun {
    /// The envelope, when the step ended with one.
    pub fn envelope(&self) -> Option<String> {
        (self.ran.ok() && self.out.exists()).then(|| envelope_text(&self.out))
    }
    pub fn statement(&self) -> Option<Value> {
        (self.ran.ok() && self.out.exists()).then(|| statement(&self.out))
    }
    /// Everything the user got back: envelope (raw and decoded) and the
    /// CLI's output.
    pub fn all_text(&self) -> String {
        let mut s = envelope_text(&self.out);
        s.push_str(&self.ran.stdout);
        s.push_str(&self.ran.stderr);
        s
    }
}

/// Which of `needles` occur in `hay`.
pub fn leaked<'a>(hay: &str, needles: &'a [String]) -> Vec<&'a String> {
    needles
        .iter()
        .filter(|n| !n.is_empty() && hay.contains(n.as_str()))
        .collect()
}

/// The set of keys of a JSON object.
pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// chown -R to `u`.
pub fn chown_r(u: &User, p: &Path) {
    sh(&format!("chown -R {}:{} '{}'", u.uid, u.gid, p.display()));
}
