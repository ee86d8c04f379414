//! The runner hooks in `dist/hooks`, run with bash (and the GitLab env file
//! with dash too) against a stand-in `cilock` that logs its arguments, and a
//! real listening Unix socket as the daemon's Docker proxy: when the step has
//! begun and the proxy is usable by the hook's user, the job's DOCKER_HOST
//! points at it (GitHub: a line in `$GITHUB_ENV`; GitLab: exported in the
//! job's own shell); otherwise the job's DOCKER_HOST is untouched.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A copy of `dist/hooks` with a stand-in `cilock`, in a directory every
/// user can read (the unprivileged cases run as nobody).
struct Hooks {
    dir: tempfile::TempDir,
}

impl Hooks {
    fn new() -> Hooks {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/hooks");
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            let to = dir.path().join(e.file_name());
            std::fs::copy(e.path(), &to).unwrap();
        }
        let fake = dir.path().join("cilock");
        std::fs::write(
            &fake,
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >>\"$FAKE_LOG\"\nexit \"${FAKE_RC:-0}\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hooks { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A world-writable file in the hooks directory (GITHUB_ENV, the log).
    fn file(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        p
    }

    /// A command with the hooks' settings and nothing of the test's
    /// DOCKER_HOST / CILOCK_* environment.
    fn cmd(&self, program: &str, proxy: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_remove("DOCKER_HOST")
            .env_remove("CILOCK_FAIL_CLOSED")
            .env_remove("CILOCK_STEP")
            .env_remove("GITHUB_ACTIONS")
            .env("CILOCK_BIN", self.path("cilock"))
            .env("CILOCK_HOOK_DIR", self.dir.path())
            .env("CILOCK_DOCKER_PROXY", proxy)
            .env("FAKE_LOG", self.path("log"))
            .env("TMPDIR", self.dir.path())
            .current_dir(self.dir.path());
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    eprintln!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The proxy socket: bound and listening, mode `mode`.
fn proxy(dir: &Path, mode: u32) -> (UnixListener, PathBuf) {
    let p = dir.join("docker.sock");
    let l = UnixListener::bind(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    (l, p)
}

fn github(h: &Hooks, proxy: &Path, env: &Path) -> Command {
    let mut c = h.cmd("bash", proxy);
    c.arg("-e")
        .arg(h.path("gha-job-started.sh"))
        .env("GITHUB_ENV", env)
        .env("GITHUB_JOB", "build")
        .env("GITHUB_WORKSPACE", h.dir.path());
    c
}

#[test]
fn github_started_hook_points_docker_host_at_a_usable_proxy() {
    let h = Hooks::new();
    let (_l, sock) = proxy(h.dir.path(), 0o666);
    let env = h.file("github_env");
    let o = run(&mut github(&h, &sock, &env));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        format!("DOCKER_HOST=unix://{}\n", sock.display())
    );
    // The step was begun first, for the hook's parent (the Worker).
    let log = h.log();
    assert!(
        log.starts_with(&format!(
            "step begin --step build --pid {} --workdir {}",
            std::process::id(),
            h.dir.path().display()
        )),
        "{log}"
    );
}

#[test]
fn github_started_hook_leaves_docker_host_alone_otherwise() {
    let h = Hooks::new();
    let env = h.file("github_env");
    // No socket at the path.
    let absent = h.dir.path().join("none.sock");
    let o = run(&mut github(&h, &absent, &env));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "");
    // A regular file, not a socket.
    let plain = h.file("plain.sock");
    let o = run(&mut github(&h, &plain, &env));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "");

    let (_l, sock) = proxy(h.dir.path(), 0o666);
    // Disabled.
    let o = run(&mut github(&h, Path::new(""), &env));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "");
    // The step did not begin (fail-open): nothing is pointed at the proxy.
    let o = run(github(&h, &sock, &env).env("FAKE_RC", "1"));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "");
    // Fail-closed: the job fails, nothing written.
    let o = run(github(&h, &sock, &env)
        .env("FAKE_RC", "3")
        .env("CILOCK_FAIL_CLOSED", "1"));
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "");
    // The job already uses another engine: left alone, and said so.
    let o = run(github(&h, &sock, &env).env("DOCKER_HOST", "tcp://192.0.2.1:2376"));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("DOCKER_HOST is already tcp://192.0.2.1:2376")
    );
    // The default engine socket is replaced by the proxy.
    let o = run(github(&h, &sock, &env).env("DOCKER_HOST", "unix:///var/run/docker.sock"));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        format!("DOCKER_HOST=unix://{}\n", sock.display())
    );
}

/// A socket the hook's user may not connect to (no write permission): as
/// root the hook runs as nobody (root could connect to anything), else the
/// socket is made mode 0.
#[test]
fn github_started_hook_skips_a_proxy_its_user_cannot_use() {
    let h = Hooks::new();
    let env = h.file("github_env");
    let _log = h.file("log");
    let as_user = |sock: &Path| {
        let c = github(&h, sock, &env);
        if is_root() {
            let args: Vec<_> = std::iter::once(c.get_program().to_owned())
                .chain(c.get_args().map(ToOwned::to_owned))
                .collect();
            let mut s = Command::new("setpriv");
            s.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(args);
            for (k, v) in c.get_envs() {
                match v {
                    Some(v) => s.env(k, v),
                    None => s.env_remove(k),
                };
            }
            s.current_dir(h.dir.path());
            s
        } else {
            c
        }
    };
    let (_l, sock) = proxy(h.dir.path(), if is_root() { 0o660 } else { 0 });
    let o = run(&mut as_user(&sock));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("may not use the Docker proxy"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The same user, once the socket lets it in: pointed at the proxy.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = run(&mut as_user(&sock));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        format!("DOCKER_HOST=unix://{}\n", sock.display())
    );
}

/// The job's shell sourcing the GitLab env file: prints its own pid, then
/// DOCKER_HOST (or "unset"), then any `__cilock` variable left behind.
fn gitlab(h: &Hooks, shell: &str, proxy: &Path) -> Command {
    let mut c = h.cmd(shell, proxy);
    c.arg("-c")
        .arg(format!(
            "set -e; . '{}'; echo \"$$\"; echo \"${{DOCKER_HOST-unset}}\"; set | grep '^__cilock' || true",
            h.path("gitlab-pre-build-env.sh").display()
        ))
        .env("CI_JOB_NAME", "test job")
        .env("CI_PROJECT_DIR", h.dir.path());
    c
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn gitlab_env_file_exports_docker_host_in_the_jobs_shell() {
    for shell in ["bash", "sh"] {
        let h = Hooks::new();
        let (_l, sock) = proxy(h.dir.path(), 0o666);
        let o = run(&mut gitlab(&h, shell, &sock));
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let out = lines(&o);
        assert_eq!(out.len(), 2, "{shell}: {out:?}");
        // The step was begun for the job's shell itself.
        let log = h.log();
        assert!(
            log.starts_with(&format!("step begin --step test-job --pid {} ", out[0])),
            "{shell}: {log}"
        );
        assert_eq!(out[1], format!("unix://{}", sock.display()), "{shell}");
        // No temporary file left behind.
        let left: Vec<_> = std::fs::read_dir(h.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("cilock-docker-host")
            })
            .collect();
        assert!(left.is_empty(), "{shell}: {left:?}");
    }
}

#[test]
fn gitlab_env_file_leaves_docker_host_alone_otherwise() {
    for shell in ["bash", "sh"] {
        let h = Hooks::new();
        // No proxy.
        let o = run(&mut gitlab(&h, shell, &h.dir.path().join("none.sock")));
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert_eq!(lines(&o)[1..], ["unset"], "{shell}");
        let (_l, sock) = proxy(h.dir.path(), 0o666);
        // The step did not begin (fail-open): the job runs, DOCKER_HOST as it was.
        let o = run(gitlab(&h, shell, &sock).env("FAKE_RC", "1"));
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert_eq!(lines(&o)[1..], ["unset"], "{shell}");
        // Another engine already chosen by the job: kept.
        let o = run(gitlab(&h, shell, &sock).env("DOCKER_HOST", "unix:///srv/other.sock"));
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert_eq!(lines(&o)[1..], ["unix:///srv/other.sock"], "{shell}");
        // Fail-closed: the sourcing fails, so the job's shell (set -e, as
        // GitLab's) stops there.
        let o = run(gitlab(&h, shell, &sock)
            .env("FAKE_RC", "3")
            .env("CILOCK_FAIL_CLOSED", "1"));
        assert_eq!(o.status.code(), Some(3), "{shell}");
        assert!(lines(&o).is_empty(), "{shell}");
    }
}
