//! A throw-away `cilock-daemon` for one test: its own key, socket, config,
//! log, cgroup parent and state directory (all unique per daemon, so tests
//! of one binary run side by side), killed at drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bin::{bin, tempdir};

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
    /// Its `cgroup_parent` (relative to the cgroup2 root, no leading '/').
    pub cgroup_parent: String,
    /// The Docker API proxy socket it serves (`docker_proxy`), when started
    /// with [`Daemon::start_with_docker`].
    pub docker_proxy: Option<PathBuf>,
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
        Self::start_in(tempdir(), backend, extra)
    }

    /// Like [`Daemon::start_with`], with the Docker API proxy on: its
    /// config sets `docker_proxy` (a socket in the daemon's temporary
    /// directory, [`Daemon::docker_proxy`]), `docker_socket` (the private
    /// engine's socket) and `docker_buildkit_cgroup` (where that engine runs
    /// BuildKit RUNs).
    pub fn start_with_docker(
        backend: &str,
        engine: &crate::docker::Dockerd,
        extra: &str,
    ) -> Daemon {
        let dir = tempdir();
        let proxy = dir.path().join("docker-proxy.sock");
        let extra = format!(
            "docker_proxy = {:?}\ndocker_socket = {:?}\ndocker_buildkit_cgroup = {:?}\n{extra}",
            proxy.display().to_string(),
            engine.socket.display().to_string(),
            engine.buildkit_cgroup(),
        );
        let mut d = Self::start_in(dir, backend, &extra);
        d.docker_proxy = Some(proxy);
        d
    }

    fn start_in(dir: tempfile::TempDir, backend: &str, extra: &str) -> Daemon {
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
            cgroup_parent: parent.to_string(),
            docker_proxy: None,
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
