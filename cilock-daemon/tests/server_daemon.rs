//! The `cilock-daemon` binary: config and key checks (`--check-config`),
//! and, as root, a full start (engine with the ptrace backend), readiness
//! and watchdog notifications to a fake `NOTIFY_SOCKET`, a request over the
//! socket, and a graceful SIGTERM shutdown.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cilock_api::{Reply, Request};
use cilock_evidence::keys::{KeyAlgorithm, Signer};

const BIN: &str = env!("CARGO_BIN_EXE_cilock-daemon");

fn is_root() -> bool {
    unsafe { libc::getuid() == 0 }
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    key: PathBuf,
    socket: PathBuf,
    keyid: String,
}

fn setup(key_mode: u32, extra: &str) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("cilock-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    let (signer, pem) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let key = dir.path().join("signing-key.pem");
    std::fs::write(&key, pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).unwrap();
    let socket = dir.path().join("run/cilock.sock");
    let config = dir.path().join("cilock.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nkey = {:?}\ngroup = \"cilock-test-no-such-group\"\n{extra}",
            socket.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    Setup {
        keyid: signer.key_id().to_string(),
        dir,
        config,
        key,
        socket,
    }
}

fn daemon(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("CILOCK_SOCKET")
        .env_remove("CILOCK_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG");
    c
}

fn check(config: &Path) -> std::process::Output {
    daemon(&["--check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_a_good_setup() {
    cilock_testkit::users::require_root();
    let s = setup(0o600, "step_timeout = \"2h\"\n");
    let out = check(&s.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains(&s.keyid), "{stdout}");
    assert!(stdout.contains("7200 s"), "{stdout}");
    assert!(stdout.contains("root only"), "{stdout}");
    // --socket and --key override the file.
    let other = s.dir.path().join("other.sock");
    let out = daemon(&[
        "--check-config",
        "--config",
        s.config.to_str().unwrap(),
        "--socket",
        other.to_str().unwrap(),
        "--key",
        s.key.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("other.sock"));
}

#[test]
fn group_or_world_accessible_key_is_refused() {
    for mode in [0o644, 0o640, 0o660] {
        let s = setup(mode, "");
        let out = check(&s.config);
        assert!(!out.status.success(), "mode {mode:o} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if is_root() {
            assert!(stderr.contains("chmod 600"), "{stderr}");
        }
        assert!(stderr.contains("signing-key.pem"), "{stderr}");
    }
}

#[test]
fn key_not_owned_by_root_is_refused() {
    cilock_testkit::users::require_root();
    let s = setup(0o600, "");
    std::os::unix::fs::chown(&s.key, Some(65534), Some(65534)).unwrap();
    let out = check(&s.config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not root"), "{stderr}");
}

#[test]
fn missing_key_is_a_clear_error() {
    let s = setup(0o600, "");
    std::fs::remove_file(&s.key).unwrap();
    let out = check(&s.config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("cilock keygen"), "{stderr}");
}

#[test]
fn config_errors_stop_the_daemon() {
    let s = setup(0o600, "backend = \"ptrace\"\ncolour = true\n");
    let out = check(&s.config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("colour"), "{stderr}");

    let out = check(&s.dir.path().join("absent.toml"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
}

/// Kills (and reaps) the daemon when dropped while still held.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for a datagram containing `needle` on the fake notify socket.
fn wait_notify(sock: &UnixDatagram, needle: &str, timeout: Duration, seen: &mut Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.push(msg.clone());
            if msg.lines().any(|l| l == needle) {
                return;
            }
        }
    }
    panic!("no {needle} notification within {timeout:?}; got {seen:?}");
}

#[test]
fn daemon_starts_notifies_serves_and_stops_on_sigterm() {
    cilock_testkit::users::require_root();
    let parent = format!("cilock-test-{}.steps", std::process::id());
    let s = setup(
        0o600,
        &format!("backend = \"ptrace\"\ncgroup_parent = \"{parent}\"\n"),
    );
    let notify_path = s.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let child = daemon(&["--config", s.config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if the test fails before it exits.
    let mut guard = KillOnDrop(Some(child));
    let child = guard.0.as_mut().unwrap();
    let mut seen = Vec::new();
    wait_notify(&notify, "READY=1", Duration::from_secs(60), &mut seen);
    // The socket listens before READY=1.
    match cilock_api::client::request_at(&s.socket, &Request::Status) {
        Ok(Reply::Status(st)) => assert_eq!(st.keyid, s.keyid),
        other => {
            let _ = child.kill();
            panic!("status failed: {other:?}");
        }
    }
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root-only socket when the group is missing");
    wait_notify(&notify, "WATCHDOG=1", Duration::from_secs(5), &mut seen);

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_notify(&notify, "STOPPING=1", Duration::from_secs(10), &mut seen);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("daemon did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = guard.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        status.success(),
        "exit {status}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.socket.exists(), "socket removed on shutdown");
    remove_empty_cgroup(&parent);
}

/// Removes the (empty) step-parent cgroup the engine may have created.
fn remove_empty_cgroup(name: &str) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.get(sep + 1) == Some(&"cgroup2") {
            if let Some(mp) = f.get(4) {
                let _ = std::fs::remove_dir(Path::new(mp).join(name));
            }
        }
    }
}
