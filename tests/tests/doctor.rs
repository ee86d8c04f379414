//! `cilock doctor` on this host, for real: as root it loads the daemon's
//! programs (each hook kind's status is checked against what the daemon's
//! own loader chose here); a member of the daemon's group gets the hooks
//! from the daemon's `Status`; a user outside the group is told why
//! nothing can run (exit 1). Every check's status is asserted exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use cilock_testkit::bin::{bin, shared_cilock};
use cilock_testkit::daemon::Daemon;
use cilock_testkit::users::{require_root, setpriv, Group};
use serde_json::Value;

/// A uid with no passwd entry and no groups of its own.
const STRANGER: u32 = 64_123;

/// The doctor's JSON and exit code.
fn parse(o: &Output) -> (Value, i32) {
    let json: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (json, o.status.code().expect("doctor exited by a signal"))
}

/// name → status of every check.
fn statuses(doc: &Value) -> BTreeMap<String, String> {
    doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The check called `name`.
fn check<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {doc:#}"))
}

/// The daemon's config file (next to its socket).
fn config_of(d: &Daemon) -> PathBuf {
    d.socket.parent().unwrap().join("cilock.toml")
}

/// What the host's mountinfo says about cgroup2, read here independently:
/// the cgroup2 mount point, its line, and whether v1 hierarchies exist.
fn cgroup2_truth() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (line, point) = info
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            (f[dash + 1] == "cgroup2").then(|| (i + 1, f[4].to_string()))
        })
        .expect("this host has a cgroup2 mount");
    let hybrid = info.lines().any(|l| l.contains(" - cgroup "));
    format!(
        "{point} (mountinfo line {line}), {}",
        if hybrid { "hybrid" } else { "unified" }
    )
}

/// `ok` or `warn` for hook-fexit: what the daemon's own loader chose here
/// (its log says when fexit was refused and tracepoints used instead).
fn fexit_truth(d: &Daemon) -> &'static str {
    if d.log_text().contains("fexit file-open hook unavailable") {
        "warn"
    } else {
        "ok"
    }
}

/// `service`: not-checked unless systemd is PID 1 (then cilock.service is
/// not installed by this test: missing).
fn service_truth() -> &'static str {
    if Path::new("/run/systemd/system").is_dir() {
        "missing"
    } else {
        "not-checked"
    }
}

/// `tracefs` for a user: tracefs is usually 0700 root (then the user
/// cannot look: not-checked).
fn tracefs_truth_for_a_user() -> &'static str {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata("/sys/kernel/tracing")
        .expect("tracefs mounted at /sys/kernel/tracing")
        .permissions()
        .mode();
    if mode & 0o001 == 0 {
        "not-checked"
    } else {
        "ok"
    }
}

fn as_user(uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
    setpriv(uid, gid, groups)
        .arg(shared_cilock())
        .args(args)
        .env_remove("CILOCK_SOCKET")
        .output()
        .expect("setpriv cilock doctor")
}

fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Root with no daemon: every hook kind is loaded here, the embedded
/// engine can trace, exit 0.
#[test]
fn root_loads_the_daemons_programs_and_can_trace_here() {
    require_root();
    let g = Group::create("cldoc");
    // A daemon only for the ground truth of its loader's fexit choice.
    let d = Daemon::start_with("auto", &format!("group = {:?}", g.name));
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = cilock_testkit::daemon::keygen(dir.path());
    let config = dir.path().join("cilock.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\ngroup = {:?}\nkey = {:?}\n",
            dir.path().join("none.sock").display().to_string(),
            g.name,
            key.display().to_string()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(bin("cilock"))
        .args(["doctor", "--json", "--config", config.to_str().unwrap()])
        .env_remove("CILOCK_SOCKET")
        .output()
        .unwrap();
    let (doc, code) = parse(&o);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["ready"], true);
    assert_eq!(
        doc["summary"],
        "ready: no daemon answered, but root can trace here with the embedded engine (`cilock run`, backend ebpf)"
    );
    assert_eq!(
        statuses(&doc),
        expected(&[
            ("kernel", "ok"),
            ("btf", "ok"),
            ("tracefs", "ok"),
            ("bpffs", "ok"),
            ("cgroup2", "ok"),
            ("hook-ringbuf", "ok"),
            ("hook-tracepoint", "ok"),
            ("hook-raw-tracepoint", "ok"),
            ("hook-fexit", fexit_truth(&d)),
            ("hook-cgroup-skb", "ok"),
            ("hook-cgroup-sock", "ok"),
            ("ebpf-backend", "ok"),
            ("ptrace", "ok"),
            ("seccomp", "ok"),
            ("config", "ok"),
            ("group", "ok"),
            ("socket", "missing"),
            ("daemon", "not-checked"),
            ("key", "ok"),
            ("service", service_truth()),
        ])
    );
    // The order is the contract's too.
    let names: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..5], ["kernel", "btf", "tracefs", "bpffs", "cgroup2"]);
    let cg = check(&doc, "cgroup2")["detail"].as_str().unwrap();
    assert!(
        cg.starts_with(&cgroup2_truth()),
        "{cg} vs {}",
        cgroup2_truth()
    );
    let fexit = check(&doc, "hook-fexit");
    if fexit["status"] == "warn" {
        assert!(
            fexit["detail"]
                .as_str()
                .unwrap()
                .starts_with("refused: load fexit:security_file_open: "),
            "{fexit}"
        );
        assert_eq!(
            fexit["cost"],
            "file opens come from the open-syscall tracepoints: files opened through io_uring are not recorded"
        );
    } else {
        assert_eq!(
            fexit["detail"],
            "fexit_file_open attached to security_file_open"
        );
        assert_eq!(fexit["cost"], "");
    }
    assert_eq!(
        check(&doc, "group")["detail"],
        format!(
            "root (uid 0) needs no group; socket group {} is gid {}",
            g.name, g.gid
        )
    );
    assert_eq!(
        check(&doc, "key")["detail"],
        format!("{} (mode 0600, uid 0)", key.display())
    );
    // The table says the same, with the cost under the check.
    let o = std::process::Command::new(bin("cilock"))
        .args(["doctor", "--config", config.to_str().unwrap()])
        .env_remove("CILOCK_SOCKET")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(table.starts_with("CHECK  "), "{table}");
    let socket_line = table.lines().find(|l| l.starts_with("socket ")).unwrap();
    assert!(socket_line.contains(" missing "), "{socket_line}");
    drop(d);
}

/// A member of the daemon's group: the hooks come from the daemon's
/// `Status`; the daemon answers, so a traced step can run (exit 0).
#[test]
fn a_member_of_the_group_gets_the_hooks_from_the_daemons_status() {
    require_root();
    let g = Group::create("cldoc");
    let d = Daemon::start_with("auto", &format!("group = {:?}", g.name));
    let o = as_user(
        STRANGER,
        STRANGER,
        &[g.gid],
        &[
            "doctor",
            "--json",
            "--config",
            config_of(&d).to_str().unwrap(),
        ],
    );
    let (doc, code) = parse(&o);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(
        doc["summary"],
        format!(
            "ready: the daemon at {} traces steps (backend ebpf)",
            d.socket.display()
        )
    );
    assert_eq!(
        statuses(&doc),
        expected(&[
            ("kernel", "ok"),
            ("btf", "ok"),
            ("tracefs", tracefs_truth_for_a_user()),
            ("bpffs", "ok"),
            ("cgroup2", "ok"),
            ("hook-ringbuf", "ok"),
            ("hook-tracepoint", "ok"),
            ("hook-raw-tracepoint", "ok"),
            ("hook-fexit", fexit_truth(&d)),
            ("hook-cgroup-skb", "ok"),
            ("hook-cgroup-sock", "ok"),
            ("ptrace", "ok"),
            ("seccomp", "ok"),
            ("config", "ok"),
            ("group", "ok"),
            ("socket", "ok"),
            ("daemon", "ok"),
            ("key", "ok"),
            ("service", service_truth()),
        ])
    );
    assert!(check(&doc, "hook-fexit")["detail"]
        .as_str()
        .unwrap()
        .starts_with("daemon: file-open = "));
    // tracefs is 0700 root here: the user is told it cannot look.
    assert_eq!(
        check(&doc, "tracefs")["detail"],
        format!(
            "/sys/kernel/tracing: uid {STRANGER} may not look inside (the daemon reads it as root)"
        )
    );
    assert_eq!(
        check(&doc, "hook-ringbuf")["detail"],
        "daemon: backend ebpf (its records arrive through the ring buffer)"
    );
    assert_eq!(
        check(&doc, "group")["detail"],
        format!("uid {STRANGER} is in group {} (gid {})", g.name, g.gid)
    );
    let daemon = check(&doc, "daemon")["detail"].as_str().unwrap();
    assert!(
        daemon.starts_with(&format!(
            "cilock-daemon {}, backend ebpf, key ",
            env!("CARGO_PKG_VERSION")
        )),
        "{daemon}"
    );
}

/// A user outside the group cannot reach the daemon and cannot load
/// programs: exit 1, and `group` and `socket` say why.
#[test]
fn a_user_outside_the_group_is_told_why_nothing_can_run() {
    require_root();
    let g = Group::create("cldoc");
    let d = Daemon::start_with("auto", &format!("group = {:?}", g.name));
    let o = as_user(
        STRANGER,
        STRANGER,
        &[],
        &[
            "doctor",
            "--json",
            "--config",
            config_of(&d).to_str().unwrap(),
        ],
    );
    let (doc, code) = parse(&o);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(doc["ready"], false);
    let hooks_why = format!(
        "loading eBPF programs needs root, and no daemon answered at {} to report its hooks",
        d.socket.display()
    );
    for name in [
        "hook-ringbuf",
        "hook-tracepoint",
        "hook-raw-tracepoint",
        "hook-fexit",
        "hook-cgroup-skb",
        "hook-cgroup-sock",
    ] {
        assert_eq!(check(&doc, name)["status"], "not-checked", "{name}");
        assert_eq!(check(&doc, name)["detail"], hooks_why.as_str(), "{name}");
    }
    let group = check(&doc, "group");
    assert_eq!(group["status"], "missing");
    assert_eq!(
        group["detail"],
        format!(
            "uid {STRANGER} is not in group {} (gid {}); this process's groups: {STRANGER} (after usermod -aG, log in again)",
            g.name, g.gid
        )
    );
    assert_eq!(
        group["cost"],
        "this user cannot open the daemon's socket: `cilock step` and `cilock run` through the daemon fail"
    );
    let socket = check(&doc, "socket");
    assert_eq!(socket["status"], "missing");
    let detail = socket["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "{} (mode 0660, group {})",
            d.socket.display(),
            g.name
        )) && detail.contains("Permission denied"),
        "{detail}"
    );
    assert_eq!(check(&doc, "daemon")["status"], "not-checked");
    assert_eq!(check(&doc, "ptrace")["status"], "ok");
    assert_eq!(
        doc["summary"],
        format!(
            "not ready: socket: {detail}; group: {}; only root can trace without the daemon",
            group["detail"].as_str().unwrap()
        )
    );
}
