//! Helpers for cilock's end-to-end tests: the built binaries, a daemon
//! started for one test, ground truth from `strace -f`, and signature
//! checks by an independent implementation (Python `cryptography`).
//!
//! These tests need root, a cgroup2 mount, tracefs and BTF: the machine
//! `cargo xtask setup` prepares. They fail (never skip) when those are
//! missing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of a workspace binary, built on demand (integration tests of this
/// package do not get other packages' binaries built for them).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let p = dir.join(name);
    static BUILD: std::sync::Once = std::sync::Once::new();
    // CILOCK_E2E_PREBUILT=1: the binaries were built beforehand (the kernel
    // matrix runs these tests in VMs, where there is no cargo).
    let prebuilt = std::env::var_os("CILOCK_E2E_PREBUILT").is_some_and(|v| v == "1");
    BUILD.call_once(|| {
        if prebuilt {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile_release = dir.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(cargo);
        c.args(["build", "-p", "cilock-cli", "-p", "cilock-daemon"]);
        if profile_release {
            c.arg("--release");
        }
        let st = c.status().expect("cargo build");
        assert!(st.success(), "building cilock binaries failed");
    });
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// A temporary directory that is removed at drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cilock-e2e.")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// The per-binary shared directory (see [`shared_dir`]).
static SHARED_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn remove_shared_dir() {
    if let Some(d) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A directory every user can traverse (0755), shared by the tests of one
/// test binary and removed when the binary exits. (A `TempDir` kept in a
/// static is never dropped: it would be left in /tmp after every run.)
pub fn shared_dir() -> &'static Path {
    SHARED_DIR.get_or_init(|| {
        let d = tempdir().keep();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod shared dir");
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(remove_shared_dir) };
        d
    })
}

/// A copy of `cilock` every user can execute, in [`shared_dir`] (the
/// checkout may sit in a directory other users cannot traverse).
pub fn shared_cilock() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let p = shared_dir().join("cilock");
        std::fs::copy(bin("cilock"), &p).expect("copy cilock");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod cilock");
        p
    })
    .clone()
}

/// A signing key pair made with `cilock keygen`.
pub fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("signing-key.pem");
    let out = Command::new(bin("cilock"))
        .args(["keygen", "-o"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key.clone(), PathBuf::from(format!("{}.pub", key.display())))
}

/// A cilock-daemon started for one test (killed at drop).
pub struct Daemon {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its public key.
    pub pubkey: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon with the given backend (`auto`, `ebpf`, `ptrace`)
    /// and waits until its socket answers.
    pub fn start(backend: &str) -> Daemon {
        Self::start_with(backend, "")
    }

    /// Like [`Daemon::start`], with extra TOML lines for its config. The
    /// daemon's directory is world-traversable (other users reach the
    /// socket; its mode and group decide); the key stays 0600.
    pub fn start_with(backend: &str, extra: &str) -> Daemon {
        let dir = tempdir();
        let state = dir.path().join("state");
        let n = std::process::id();
        let unique = format!(
            "{n}.{}",
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let d = Self::spawn_in(
            dir,
            backend,
            &format!("cilock.test.{unique}"),
            &state,
            extra,
        );
        d.wait_ready()
            .unwrap_or_else(|(st, log)| panic!("daemon exited during start ({st}): {log}"))
    }

    /// Runs `cilock ARGS` against this daemon.
    pub fn cilock(&self, args: &[&str]) -> Output {
        Command::new(bin("cilock"))
            .args(args)
            .env("CILOCK_SOCKET", &self.socket)
            .output()
            .expect("cilock")
    }

    /// A `cilock` command against this daemon.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin("cilock"));
        c.env("CILOCK_SOCKET", &self.socket);
        c
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the daemon process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM for a clean shutdown (removes its cgroups), then SIGKILL.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The decoded statement of an envelope file.
pub fn statement(envelope_path: &Path) -> Value {
    let env: Value = serde_json::from_slice(&std::fs::read(envelope_path).unwrap()).unwrap();
    let payload = env["payload"].as_str().expect("payload");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .expect("payload base64");
    serde_json::from_slice(&bytes).expect("statement JSON")
}

/// The attestation of `type_suffix` (e.g. `command-run/v0.1`) in a statement.
pub fn attestation<'a>(stmt: &'a Value, type_suffix: &str) -> &'a Value {
    stmt["predicate"]["attestations"]
        .as_array()
        .expect("attestations")
        .iter()
        .find(|a| a["type"].as_str().is_some_and(|t| t.ends_with(type_suffix)))
        .map(|a| &a["attestation"])
        .unwrap_or_else(|| panic!("no {type_suffix} attestation"))
}

/// Checks the eBPF file-open hook a command-run attestation records
/// (`trace.hooks["file-open"]`): prints it as a `CILOCK-HOOK file-open=...`
/// line (collected by `cargo xtask vm-test` for its report) and, when
/// `CILOCK_E2E_EXPECT_FILE_OPEN_HOOK` is set (`fexit` or `tracepoint`),
/// asserts the hook is of that kind. The kernel matrix sets it to `fexit`
/// for kernels that allow BPF trampolines.
pub fn check_file_open_hook(command_run: &Value) {
    let hook = command_run["trace"]["hooks"]["file-open"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // The expectation is about the eBPF backend's choice; a ptrace-backend
    // attestation reports its own hook.
    if command_run["trace"]["backend"] != "ebpf" {
        return;
    }
    println!("CILOCK-HOOK file-open={hook}");
    if let Ok(want) = std::env::var("CILOCK_E2E_EXPECT_FILE_OPEN_HOOK") {
        if !want.is_empty() {
            assert!(
                hook.starts_with(&format!("{want}:")),
                "file-open hook is {hook:?}, expected {want}"
            );
        }
    }
}

/// Verifies an envelope's signature with Python `cryptography` (an
/// implementation independent of cilock's), rebuilding the DSSE PAE.
pub fn verify_with_python(envelope: &Path, pubkey: &Path) {
    let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
env = json.load(open(sys.argv[1]))
key = serialization.load_pem_public_key(open(sys.argv[2], 'rb').read())
body = base64.b64decode(env['payload'])
t = env['payloadType'].encode()
pae = b'DSSEv1 %d %s %d %s' % (len(t), t, len(body), body)
ok = 0
for s in env['signatures']:
    sig = base64.b64decode(s['sig'])
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(sig, pae, ec.ECDSA(hashes.SHA256()))
    else:
        key.verify(sig, pae)
    ok += 1
assert ok >= 1
print('verified', ok)
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(envelope)
        .arg(pubkey)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "independent signature check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Python with `cryptography` (Debian's, installed by `cargo xtask setup`).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// What `strace -f` saw a command do.
#[derive(Debug, Default)]
pub struct StraceTruth {
    /// Files successfully opened (absolute, as `-y` printed them), with
    /// `/proc/<own pid>/` written `/proc/self/`, plus exec'd files.
    pub files: BTreeSet<String>,
    /// Programs successfully exec'd (canonical), with how many times.
    pub execs: BTreeMap<String, usize>,
    /// Number of processes (thread groups) seen.
    pub processes: usize,
}

/// Runs `cmd` (in `cwd`) under `strace -f` and parses what it did.
pub fn strace_truth(cmd: &[&str], cwd: &Path) -> StraceTruth {
    let dir = tempdir();
    let out_file = dir.path().join("strace.txt");
    let st = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-s",
            "4096",
            "-e",
            "trace=open,openat,openat2,creat,execve,execveat,clone,clone3,fork,vfork",
            "-o",
        ])
        .arg(&out_file)
        .args(cmd)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace (apt-get install strace)");
    assert!(st.success(), "strace run failed");
    parse_strace(&std::fs::read_to_string(&out_file).unwrap(), cwd)
}

fn parse_strace(text: &str, cwd: &Path) -> StraceTruth {
    let mut t = StraceTruth::default();
    // A process is the traced root or a fork/vfork/clone child that is not
    // a thread. Calls interleaved by other tasks come split in an
    // "<unfinished ...>" and a "<... NAME resumed>" line: remember the
    // first half per pid.
    let mut children = 0usize;
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let mut rest = rest.trim_start().to_string();
        if rest.ends_with("<unfinished ...>") {
            pending.insert(pid.to_string(), rest);
            continue;
        }
        if rest.starts_with("<... ") {
            let Some(first) = pending.remove(pid) else {
                continue;
            };
            let tail = rest.split_once("resumed>").map(|x| x.1).unwrap_or("");
            rest = format!("{}{}", first.trim_end_matches("<unfinished ...>"), tail);
        }
        let is_fork = ["clone(", "clone3(", "fork(", "vfork("]
            .iter()
            .any(|c| rest.starts_with(c));
        if is_fork {
            let ret = rest.rsplit("= ").next().unwrap_or("").trim();
            if ret.parse::<u32>().is_ok_and(|n| n > 0) && !rest.contains("CLONE_THREAD") {
                children += 1;
            }
            continue;
        }
        if rest.starts_with("execve(") || rest.starts_with("execveat(") {
            if !rest.trim_end().ends_with("= 0") {
                continue;
            }
            let Some(path) = rest.split('"').nth(1) else {
                continue;
            };
            let p = Path::new(path);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            };
            let canon = std::fs::canonicalize(&abs)
                .unwrap_or(abs)
                .display()
                .to_string();
            *t.execs.entry(canon.clone()).or_default() += 1;
            t.files.insert(canon);
            continue;
        }
        // openat(...) = 3</abs/path> or = 3</abs/path>(deleted)
        let Some(idx) = rest.rfind(" = ") else {
            continue;
        };
        let ret = &rest[idx + 3..];
        let Some(lt) = ret.find('<') else { continue };
        let Some(gt) = ret.rfind('>') else { continue };
        if gt <= lt {
            continue;
        }
        let mut path = ret[lt + 1..gt].to_string();
        let prefix = format!("/proc/{pid}/");
        if let Some(tail) = path.strip_prefix(&prefix) {
            path = format!("/proc/self/{tail}");
        }
        t.files.insert(path);
    }
    t.processes = 1 + children;
    t
}

/// Runs a shell snippet and returns its stdout (asserting success).
pub fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// sha256 of a file, by `sha256sum` (not cilock's code).
pub fn sha256sum(path: &str) -> Option<String> {
    let out = Command::new("sha256sum").arg(path).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Writes an executable script.
pub fn write_script(path: &Path, body: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(body.as_bytes()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The envelopes a daemon keeps in its state directory
/// (`<state>/kept/<uid>/<step>.<nanos>.<n>.json`), sorted by path.
pub fn kept_envelopes(state: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(state.join("kept"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|uid| {
            std::fs::read_dir(uid.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    out.sort();
    out
}

/// A daemon on a given cgroup parent and state directory (issue #13: one
/// daemon per parent; a restart finds what the previous one left).
impl Daemon {
    /// Starts `cilock-daemon` with `cgroup_parent = parent` and
    /// `state_dir = state` (plus `extra` TOML lines) without waiting for it.
    pub fn spawn_on(backend: &str, parent: &str, state: &Path, extra: &str) -> Daemon {
        Self::spawn_in(tempdir(), backend, parent, state, extra)
    }

    /// Starts `cilock-daemon` with its key, socket, config and log in
    /// `dir` (world-traversable: other users reach the socket; its mode and
    /// group decide; the key stays 0600), without waiting for it.
    fn spawn_in(
        dir: tempfile::TempDir,
        backend: &str,
        parent: &str,
        state: &Path,
        extra: &str,
    ) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (key, pubkey) = keygen(dir.path());
        let socket = dir.path().join("cilock.sock");
        let log = dir.path().join("daemon.log");
        let config = dir.path().join("cilock.toml");
        std::fs::write(
            &config,
            format!(
                "socket = {:?}\nkey = {:?}\nbackend = {backend:?}\ncgroup_parent = {parent:?}\nstate_dir = {:?}\nlog_level = \"info,cilock_daemon=debug\"\n{extra}\n",
                socket.display().to_string(),
                key.display().to_string(),
                state.display().to_string(),
            ),
        )
        .unwrap();
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin("cilock-daemon"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start cilock-daemon");
        Daemon {
            child,
            socket,
            pubkey,
            log,
            state: state.to_path_buf(),
            _dir: dir,
        }
    }

    /// [`Daemon::spawn_on`], then waits until it answers: `Err(log)` when
    /// it exits first.
    pub fn try_start_on(
        backend: &str,
        parent: &str,
        state: &Path,
        extra: &str,
    ) -> Result<Daemon, (std::process::ExitStatus, String)> {
        Self::spawn_on(backend, parent, state, extra).wait_ready()
    }

    /// Waits until the daemon answers: `Err` with its exit status and log
    /// when it exits first.
    fn wait_ready(mut self) -> Result<Daemon, (std::process::ExitStatus, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err((st, self.log_text()));
            }
            let out = self.cilock(&["step", "end", "--step", "no-such-step", "-o", "/dev/null"]);
            // A NotFound error means the daemon answered.
            if String::from_utf8_lossy(&out.stderr).contains("no active step") {
                return Ok(self);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for the daemon to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_lines() {
        let text = "100 execve(\"/bin/true\", [\"true\"], 0x7ff /* 3 vars */) = 0\n\
                    100 openat(AT_FDCWD, \"/etc/ld.so.cache\", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>\n\
                    100 openat(AT_FDCWD, \"/proc/self/environ\", O_RDONLY) = 3</proc/100/environ>\n\
                    100 clone(child_stack=NULL, flags=CLONE_CHILD_SETTID|SIGCHLD) = 101\n\
                    100 clone3({flags=CLONE_VM|CLONE_THREAD, ...}, 88) = 102\n\
                    100 vfork( <unfinished ...>\n\
                    103 execve(\"/bin/true\", [\"true\"], 0x7ff /* 3 vars */ <unfinished ...>\n\
                    100 <... vfork resumed>) = 103\n\
                    103 <... execve resumed>) = 0\n\
                    101 openat(AT_FDCWD, \"x\", O_WRONLY|O_CREAT) = 4</tmp/x (deleted)>\n\
                    102 openat(AT_FDCWD, \"y\", O_RDONLY) = 5</tmp/y>\n";
        let t = parse_strace(text, Path::new("/"));
        assert!(t.files.contains("/etc/ld.so.cache"));
        assert!(t.files.contains("/proc/self/environ"));
        assert!(t.files.contains("/tmp/y"));
        assert_eq!(t.processes, 3);
        let truep = std::fs::canonicalize("/bin/true")
            .unwrap()
            .display()
            .to_string();
        assert_eq!(t.execs[&truep], 2);
    }
}
