//! The attestor helper for real: the daemon's binary started with
//! `__attest-helper` through the same spawn path the daemon uses, as a user
//! created for the test (`groupadd`/`useradd`), reporting on itself (a
//! probe request) and seen from outside (`/proc/<pid>/status`) while it
//! runs. Needs root (changing identity): fails otherwise.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cilock_daemon::attest_helper::{
    self, BeforeSpec, HelperConfig, HelperError, Identity, MIN_REDACTION_CHARS,
};
use cilock_evidence::attestors::command_run::{CommandRun, TraceInfo};
use cilock_evidence::attestors::lifecycle::{AttestorOptions, Lifecycle};
use cilock_evidence::attestors::AttestationContext;

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A user with its own primary group and one supplementary group, removed
/// at drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    extra_gid: u32,
}

impl TestUser {
    fn create(tag: &str) -> TestUser {
        let name = format!("clh{tag}{}", std::process::id() % 100_000);
        let extra = format!("{name}x");
        let quiet = |c: &str, n: &str| {
            let _ = Command::new(c)
                .arg(n)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet("userdel", &name);
        quiet("groupdel", &name);
        quiet("groupdel", &extra);
        sh(&format!("groupadd {name} && groupadd {extra}"));
        sh(&format!(
            "useradd -M -N -g {name} -G {extra} -s /bin/false {name}"
        ));
        let uid = sh(&format!("id -u {name}")).parse().unwrap();
        let gid = sh(&format!("getent group {name} | cut -d: -f3"))
            .parse()
            .unwrap();
        let extra_gid = sh(&format!("getent group {extra} | cut -d: -f3"))
            .parse()
            .unwrap();
        TestUser {
            name,
            uid,
            gid,
            extra_gid,
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        // userdel removed the primary group already.
        let _ = Command::new("groupdel")
            .arg(&self.name)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("groupdel")
            .arg(format!("{}x", self.name))
            .status();
    }
}

fn config() -> HelperConfig {
    HelperConfig {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_cilock-daemon")),
        timeout: Duration::from_secs(60),
        cpu_seconds: 30,
        memory: 2 << 30,
        ..HelperConfig::default()
    }
}

fn open_dir(p: &Path) -> OwnedFd {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(p)
        .unwrap()
        .into()
}

/// A directory owned by `uid` holding `mine.txt` (the user's) and
/// `rootonly.txt` (root, 0600).
fn workdir(u: &TestUser) -> tempfile::TempDir {
    let w = tempfile::Builder::new()
        .prefix("cilock-helper.")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(w.path().join("mine.txt"), "mine\n").unwrap();
    std::fs::write(
        w.path().join("rootonly.txt"),
        "DB_PASSWORD=root-only-1234\n",
    )
    .unwrap();
    std::fs::set_permissions(
        w.path().join("rootonly.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(w.path().join("mine.txt"), Some(u.uid), Some(u.gid)).unwrap();
    std::os::unix::fs::chown(w.path(), Some(u.uid), Some(u.gid)).unwrap();
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    w
}

fn status_line(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn helper_runs_as_the_owner_with_nothing_else() {
    cilock_testkit::users::require_root();
    let u = TestUser::create("a");
    let who = Identity::of(u.uid, 4242);
    assert_eq!(who.gid, u.gid, "primary gid from passwd");
    let mut groups = who.groups.clone();
    groups.sort();
    let mut want = vec![u.gid, u.extra_gid];
    want.sort();
    assert_eq!(groups, want, "supplementary groups from the group database");

    let cfg = config();
    let w = workdir(&u);
    let wd = open_dir(w.path());
    // An fd without O_CLOEXEC in the daemon must not reach the helper.
    let leak = std::fs::File::open("/etc/hostname").unwrap();
    // SAFETY: dup of an fd we own; the copy is closed below.
    let leaked = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&leak)) };
    assert!(leaked > 4);

    let (tx, rx) = std::sync::mpsc::channel();
    let report = attest_helper::probe(&cfg, &who, Some(&wd), 1500, |pid| {
        // Seen from outside while it waits.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let _ = tx.send((
                pid,
                status_line(pid, "Uid:"),
                status_line(pid, "Gid:"),
                status_line(pid, "Groups:"),
                status_line(pid, "CapEff:"),
                status_line(pid, "CapBnd:"),
                status_line(pid, "NoNewPrivs:"),
                status_line(pid, "Seccomp:"),
            ));
        });
    })
    .expect("probe");
    // SAFETY: closing our own dup.
    unsafe { libc::close(leaked) };

    let (pid, uid_l, gid_l, groups_l, capeff, capbnd, nnp, seccomp) =
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(pid, report.pid);
    let u4 = format!("{0}\t{0}\t{0}\t{0}", u.uid);
    let g4 = format!("{0}\t{0}\t{0}\t{0}", u.gid);
    assert_eq!(uid_l, u4);
    assert_eq!(gid_l, g4);
    let mut seen_groups: Vec<u32> = groups_l
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    seen_groups.sort();
    assert_eq!(seen_groups, want);
    assert_eq!(capeff, "0000000000000000");
    assert_eq!(capbnd, "0000000000000000");
    assert_eq!(nnp, "1");
    assert_eq!(seccomp, "2", "the exec-denying seccomp filter is on");

    // Its own report agrees, and shows the rest.
    assert_eq!(report.uids, vec![u.uid; 4]);
    assert_eq!(report.gids, vec![u.gid; 4]);
    for (k, v) in &report.caps {
        assert_eq!(v, "0000000000000000", "{k}");
    }
    assert_eq!(report.no_new_privs, "1");
    assert_eq!(report.dumpable, 0);
    assert_eq!(
        report.env,
        vec![("PATH".to_string(), cfg.path.clone())],
        "empty environment except PATH"
    );
    assert_eq!(report.rlimits["cpu"], cfg.cpu_seconds);
    assert_eq!(report.rlimits["as"], cfg.memory);
    assert_eq!(report.rlimits["fsize"], 0);
    assert_eq!(report.rlimits["core"], 0);
    assert_eq!(
        report.rlimits["nofile"],
        attest_helper::spawn::HELPER_NOFILE
    );
    assert_eq!(report.cwd, "/");
    // No write anywhere, even where its uid could: Landlock, wherever this
    // kernel has it (asked here the same way).
    // SAFETY: the Landlock version query takes no attribute.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u64>(),
            0usize,
            1u32,
        )
    };
    assert_eq!(report.landlock_abi, abi.max(0));
    if abi > 0 {
        assert!(
            report.create_in_tmp.starts_with("denied"),
            "{}",
            report.create_in_tmp
        );
    } else {
        eprintln!("note: no Landlock on this kernel; the write check does not apply");
    }
    assert_eq!(
        report.fd3,
        w.path().canonicalize().unwrap().display().to_string()
    );
    // 0-2, the workdir (3), and the directory listing itself.
    assert!(!report.fds.contains(&leaked), "{:?}", report.fds);
    assert!(report.fds.len() <= 5, "{:?}", report.fds);
    assert!(report.fds.starts_with(&[0, 1, 2, 3]), "{:?}", report.fds);
    // Not in any step's cgroup: in the caller's.
    assert_eq!(
        report.cgroup,
        std::fs::read_to_string("/proc/self/cgroup").unwrap().trim()
    );
}

#[test]
fn a_root_owner_gets_no_capability_either_and_a_uid_without_passwd_entry_gets_the_peer_gid() {
    cilock_testkit::users::require_root();
    let cfg = config();
    let r = attest_helper::probe(
        &cfg,
        &Identity {
            uid: 0,
            gid: 0,
            groups: vec![],
        },
        None,
        0,
        |_| {},
    )
    .expect("probe as root");
    assert_eq!(r.uids, vec![0; 4]);
    for (k, v) in &r.caps {
        assert_eq!(v, "0000000000000000", "{k} of a root-owned helper");
    }
    assert!(r.groups.is_empty(), "{:?}", r.groups);
    assert_eq!(r.fds, vec![0, 1, 2, 3], "no workdir: fd 3 is the listing");

    // 64999 has no passwd entry (checked): the peer's gid, no groups.
    assert!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(64999))
            .unwrap()
            .is_none()
    );
    let who = Identity::of(64999, 64998);
    assert_eq!(
        who,
        Identity {
            uid: 64999,
            gid: 64998,
            groups: vec![]
        }
    );
    let r = attest_helper::probe(&cfg, &who, None, 0, |_| {}).expect("probe");
    assert_eq!(r.uids, vec![64999; 4]);
    assert_eq!(r.gids, vec![64998; 4]);
    assert!(r.groups.is_empty());
}

#[test]
fn a_helper_past_its_timeout_is_killed_and_reported() {
    cilock_testkit::users::require_root();
    let cfg = HelperConfig {
        timeout: Duration::from_millis(700),
        ..config()
    };
    let who = Identity::of(65534, 65534);
    let mut pid = 0;
    let t = Instant::now();
    let e = attest_helper::probe(&cfg, &who, None, 30_000, |p| pid = p).unwrap_err();
    assert!(matches!(e, HelperError::Timeout(_)), "{e}");
    assert!(e.to_string().contains("was killed"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Killed and reaped: the pid is gone.
    assert!(pid > 0);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the helper still exists"
    );
}

#[test]
fn stages_read_only_what_the_owner_can_and_report_failures() {
    cilock_testkit::users::require_root();
    let u = TestUser::create("b");
    let w = workdir(&u);
    let names = vec!["environment".to_string(), "secretscan".to_string()];
    let env = vec![
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
        ("CILOCK_TEST_VAR".to_string(), "visible".to_string()),
        (
            "MY_TOKEN".to_string(),
            "ghp_R4nd0mT0k3nV4lu3Th4tL00ksR34lEnough1".to_string(),
        ),
    ];

    // The same lifecycle in this (root) process reads the root-only file:
    // the check below can fail.
    let mut lc = Lifecycle::new(&names, AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(w.path().to_path_buf(), env.clone());
    lc.before(&mut ctx).unwrap();
    let as_root = ctx.completed_json("material").unwrap().clone();
    assert!(as_root.get("rootonly.txt").is_some(), "{as_root}");

    let cfg = config();
    let step = attest_helper::before(BeforeSpec {
        cfg: &cfg,
        who: Identity::of(u.uid, u.gid),
        workdir: w.path(),
        workdir_fd: Arc::new(open_dir(w.path())),
        names: &names,
        options: AttestorOptions::default(),
        env: env.clone(),
        notes: vec![],
    })
    .expect("before");
    let material = step
        .before_attestations()
        .iter()
        .find(|a| a.name == "material")
        .unwrap();
    assert!(material.json.get("mine.txt").is_some(), "{}", material.json);
    assert!(
        material.json.get("rootonly.txt").is_none(),
        "the helper read a root-only file: {}",
        material.json
    );
    let snap = step.state().materials.as_ref().unwrap();
    assert!(snap.contains_key("mine.txt") && !snap.contains_key("rootonly.txt"));
    // The job's environment arrived in the request, not as the helper's.
    let envatt = step
        .before_attestations()
        .iter()
        .find(|a| a.name == "environment")
        .unwrap();
    assert_eq!(
        envatt.json["variables"]["CILOCK_TEST_VAR"], "visible",
        "{}",
        envatt.json
    );

    // A second step over the same workdir, begun now too.
    let step2 = attest_helper::before(BeforeSpec {
        cfg: &cfg,
        who: Identity::of(u.uid, u.gid),
        workdir: w.path(),
        workdir_fd: Arc::new(open_dir(w.path())),
        names: &names,
        options: AttestorOptions::default(),
        env: env.clone(),
        notes: vec![],
    })
    .expect("before");

    // After: a product, a secret in the command-run's output.
    std::fs::write(w.path().join("out.txt"), "built\n").unwrap();
    std::os::unix::fs::chown(w.path().join("out.txt"), Some(u.uid), Some(u.gid)).unwrap();
    let secret = "ghp_R4nd0mT0k3nV4lu3Th4tL00ksR34lEnough1";
    assert!(secret.len() >= MIN_REDACTION_CHARS);
    let run = CommandRun {
        stdout: format!("token {secret}\n"),
        trace: Some(TraceInfo {
            backend: "test".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (ctx, failure) = step2.after(run.clone(), Default::default());
    assert!(failure.is_none());
    let names_out: Vec<&str> = ctx.completed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names_out,
        [
            "environment",
            "material",
            "command-run",
            "product",
            "secretscan"
        ]
    );
    let product = ctx.completed_json("product").unwrap();
    assert!(product.get("out.txt").is_some(), "{product}");
    assert!(product.get("mine.txt").is_none(), "unchanged: {product}");
    let cr = ctx.completed_json("command-run").unwrap().to_string();
    assert!(!cr.contains(secret), "masked by the daemon: {cr}");
    assert!(cr.contains("[REDACTED:"), "{cr}");

    // A helper killed at the end: the step still has its evidence, and the
    // after-stage attestors are listed as skipped with the reason.
    let mut step = step;
    step.config_mut().timeout = Duration::from_millis(1);
    let (ctx, failure) = step.after(run, Default::default());
    assert!(failure.is_none());
    let names_out: Vec<&str> = ctx.completed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names_out, ["environment", "material", "command-run"]);
    let skipped = &ctx.completed_json("command-run").unwrap()["trace"]["skippedAttestors"];
    let skipped: Vec<(String, String)> = skipped
        .as_array()
        .unwrap_or_else(|| panic!("no skippedAttestors: {skipped}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        skipped.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["product", "secretscan"]
    );
    assert!(skipped[0].1.contains("was killed"), "{skipped:?}");
}

#[test]
fn a_failed_before_stage_is_a_clear_error() {
    cilock_testkit::users::require_root();
    let u = TestUser::create("c");
    let w = workdir(&u);
    let names = vec!["environment".to_string()];
    let run = |cfg: &HelperConfig| {
        attest_helper::before(BeforeSpec {
            cfg,
            who: Identity::of(u.uid, u.gid),
            workdir: w.path(),
            workdir_fd: Arc::new(open_dir(w.path())),
            names: &names,
            options: AttestorOptions::default(),
            env: vec![],
            notes: vec![],
        })
    };
    let e = run(&HelperConfig {
        timeout: Duration::from_millis(1),
        ..config()
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            attest_helper::BeforeError::Helper(HelperError::Timeout(_))
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("attestors before the step: the attestor helper ran longer than"),
        "{e}"
    );

    let e = run(&HelperConfig {
        exe: PathBuf::from("/nonexistent/cilock-daemon"),
        ..config()
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("cannot start the attestor helper"),
        "{e}"
    );

    // An unknown attestor is the client's error, found before any helper.
    let e = attest_helper::before(BeforeSpec {
        cfg: &config(),
        who: Identity::of(u.uid, u.gid),
        workdir: w.path(),
        workdir_fd: Arc::new(open_dir(w.path())),
        names: &["no-such".to_string()],
        options: AttestorOptions::default(),
        env: vec![],
        notes: vec![],
    })
    .unwrap_err();
    assert!(matches!(e, attest_helper::BeforeError::Invalid(_)), "{e}");

    // A memory limit the helper cannot live with: it dies, the error says so.
    let e = run(&HelperConfig {
        memory: 8 << 20,
        ..config()
    })
    .unwrap_err();
    assert!(matches!(e, attest_helper::BeforeError::Helper(_)), "{e}");
}
