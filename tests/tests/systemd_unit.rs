//! The Debian package's unit under a real systemd as PID 1 (issue #18).
//!
//! Runs only in the kernel matrix's `@systemd` boot (`cargo xtask vm-test`:
//! the host's root under a tmpfs overlay, systemd as PID 1, eBPF with the
//! fexit hook on the Debian kernels), which sets `CILOCK_DEB` to the package
//! (`cargo xtask deb --profile dev --no-build`). One test, in order: the
//! install starts the unit (`Type=notify`: the socket answers the moment
//! `systemctl` returns), the runtime directory and socket modes, a runner
//! user's traced step with an independently checked signature and the exact
//! file it read, `cilock doctor` for that user, a restart and a stop with a step active, the unit's own
//! verification, and the purge.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cilock_testkit::*;
use serde_json::Value;

const UNIT: &str = "cilock.service";
const RUNNER: &str = "vmrunner";
const PUBKEY: &str = "/etc/cilock/signing-key.pem.pub";
const SOCKET: &str = "/run/cilock/cilock.sock";

fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `argv`, asserting it succeeds; its stdout.
fn ok(argv: &[&str]) -> String {
    let o = run(argv);
    assert!(o.status.success(), "{argv:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One property of the unit (`systemctl show -p NAME --value`).
fn prop(name: &str) -> String {
    ok(&["systemctl", "show", "-p", name, "--value", UNIT])
        .trim()
        .to_string()
}

fn journal() -> String {
    text(&run(&["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"]))
}

/// `script` (sh) run as the runner user, with its groups (cilock), no
/// capability, in `dir`.
fn as_runner(script: &str, dir: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={RUNNER}"),
        &format!("--regid={RUNNER}"),
        "--init-groups",
        "--inh-caps=-all",
        "--",
        "sh",
        "-c",
        script,
    ])
    .current_dir(dir)
    .env("HOME", dir)
    .env("CILOCK_SOCKET", SOCKET);
    c
}

/// A `Status` request on the socket, as the wire protocol has it (a 4-byte
/// big-endian length, then JSON); the reply.
fn status() -> Value {
    let mut s = UnixStream::connect(SOCKET)
        .unwrap_or_else(|e| panic!("connecting to {SOCKET}: {e}\n{}", journal()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = br#"{"request":"status"}"#;
    s.write_all(&(req.len() as u32).to_be_bytes()).unwrap();
    s.write_all(req).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn sha256_hex(path: &Path) -> String {
    sha256sum(path.to_str().unwrap()).unwrap()
}

/// The runner's workspace: a file the steps read.
fn workspace() -> (PathBuf, PathBuf) {
    let w = PathBuf::from(format!("/home/{RUNNER}/work"));
    std::fs::create_dir_all(&w).unwrap();
    let data = w.join("input.txt");
    std::fs::write(&data, b"read by the step under systemd\n").unwrap();
    ok(&[
        "chown",
        "-R",
        &format!("{RUNNER}:{RUNNER}"),
        w.to_str().unwrap(),
    ]);
    (w, data)
}

/// The command-run attestation of an envelope, after checking its
/// signature with Python `cryptography` and the package's public key.
fn checked_command_run(att: &Path) -> Value {
    verify_with_python(att, Path::new(PUBKEY));
    let stmt = statement(att);
    attestation(&stmt, "/command-run/v0.1").clone()
}

/// Every opened file of a command-run attestation with its sha256.
fn opened(cr: &Value) -> Vec<(String, Option<String>)> {
    cr["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["openedfiles"].as_object().into_iter().flatten())
        .map(|(path, d)| (path.clone(), d["sha256"].as_str().map(str::to_string)))
        .collect()
}

/// `path` was recorded as opened, with exactly `sha256`.
fn assert_read(cr: &Value, path: &Path, sha256: &str) {
    let p = path.to_str().unwrap();
    let found: Vec<_> = opened(cr).into_iter().filter(|(f, _)| f == p).collect();
    assert!(!found.is_empty(), "{p} not recorded: {:?}", opened(cr));
    let why: Vec<&Value> = cr["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["unhashedOpens"].as_array().into_iter().flatten())
        .filter(|u| u["path"] == p)
        .collect();
    for (_, d) in found {
        assert_eq!(
            d.as_deref(),
            Some(sha256),
            "digest of {p} (unhashed: {why:?})"
        );
    }
}

fn wait_file(path: &Path, what: &str) {
    wait_for(120, what, || path.exists());
}

#[test]
#[ignore = "needs systemd as PID 1 and CILOCK_DEB: runs in the kernel matrix's @systemd boot (cargo xtask vm-test)"]
fn the_package_runs_under_systemd() {
    let deb = std::env::var("CILOCK_DEB").expect("CILOCK_DEB names the package to install");
    // Where the time goes (printed, never asserted: TCG is slow and shared).
    let t0 = Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "systemd_unit: {what} done at {:.1}s",
            t0.elapsed().as_secs_f64()
        )
    };
    assert!(
        Path::new("/run/systemd/system").is_dir(),
        "systemd is not PID 1 here"
    );

    // Install: postinst enables and starts the unit; `Type=notify` means
    // `dpkg -i` (deb-systemd-invoke start) returned after READY=1.
    ok(&["dpkg", "-i", &deb]);
    phase("dpkg -i");
    assert_eq!(prop("Type"), "notify");
    assert_eq!(prop("UnitFileState"), "enabled");
    assert_eq!(
        (prop("ActiveState"), prop("SubState")),
        ("active".to_string(), "running".to_string()),
        "{}",
        journal()
    );
    // Readiness: the socket answers the moment the start returned (and
    // again after the restart below).
    let st = status();
    assert_eq!(st["reply"], "status", "{st}");
    assert_eq!(st["backend"], "ebpf", "{st}");
    assert_eq!(st["steps"], serde_json::json!([]), "{st}");

    // /run/cilock 0755 root, the socket 0660 root:cilock.
    let run_dir = std::fs::metadata("/run/cilock").unwrap();
    assert_eq!(run_dir.permissions().mode() & 0o7777, 0o755);
    assert_eq!((run_dir.uid(), run_dir.gid()), (0, 0));
    let sock = std::fs::metadata(SOCKET).unwrap();
    let cilock_gid: u32 = ok(&["getent", "group", "cilock"])
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sock.permissions().mode() & 0o7777, 0o660);
    assert_eq!((sock.uid(), sock.gid()), (0, cilock_gid));

    // The unit file passes systemd's own checks.
    let v = run(&[
        "systemd-analyze",
        "verify",
        &format!("/lib/systemd/system/{UNIT}"),
    ]);
    assert!(v.status.success(), "systemd-analyze verify: {}", text(&v));
    assert!(
        !text(&v).contains(UNIT),
        "systemd-analyze verify complains about the unit: {}",
        text(&v)
    );

    phase("modes and systemd-analyze verify");
    // A runner user in the cilock group: a traced step, signed, with the
    // exact file it read.
    ok(&["useradd", "--create-home", "--groups", "cilock", RUNNER]);
    let runner_uid = ok(&["id", "-u", RUNNER]).trim().to_string();
    let (w, data) = workspace();
    let digest = sha256_hex(&data);
    let att = w.join("build.att.json");
    let o = as_runner(
        &format!(
            "cilock step begin --step build --workdir {w} && cat {data} > /dev/null && cilock step end --step build -o {att}",
            w = w.display(),
            data = data.display(),
            att = att.display()
        ),
        &w,
    )
    .output()
    .unwrap();
    assert!(
        o.status.success(),
        "runner step: {}\n{}",
        text(&o),
        journal()
    );
    let cr = checked_command_run(&att);
    assert_eq!(cr["trace"]["backend"], "ebpf", "{}", cr["trace"]);
    check_file_open_hook(&cr);
    assert_eq!(cr["trace"]["endedBy"], "step end", "{}", cr["trace"]);
    assert_read(&cr, &data, &digest);

    phase("the runner's step");
    // `cilock doctor` as the runner: ready (exit 0), the daemon and the
    // unit seen as they are.
    let o = as_runner("cilock doctor --json", &w).output().unwrap();
    let doc: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("cilock doctor --json: {e}: {}", text(&o)));
    assert_eq!(o.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["ready"], true, "{doc:#}");
    assert_eq!(
        doc["summary"],
        format!("ready: the daemon at {SOCKET} traces steps (backend ebpf)")
    );
    let check = |name: &str| -> Value {
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {doc:#}"))
    };
    for name in ["group", "socket", "daemon", "service"] {
        assert_eq!(check(name)["status"], "ok", "{name}: {doc:#}");
    }
    assert_eq!(check("service")["detail"], "cilock.service active, enabled");
    assert!(
        check("hook-fexit")["detail"]
            .as_str()
            .unwrap()
            .starts_with("daemon: file-open = fexit"),
        "{doc:#}"
    );

    phase("cilock doctor");
    // `systemctl restart` with a step active: the stopping daemon ends the
    // step itself and keeps its signed attestation; the job's own
    // `step end` then says so and `step fetch` returns it, with what the
    // step did before the restart.
    let began = w.join("began");
    let go = w.join("go");
    let log = w.join("job.log");
    let mut job = as_runner(
        &format!(
            "cilock step begin --step restarted --workdir {w} || exit 9; cat {data} > /dev/null; touch {began}; \
             while [ ! -e {go} ]; do sleep 0.1; done; \
             cilock step end --step restarted -o {w}/restarted.att.json > {log} 2>&1; echo end-rc=$? >> {log}; \
             cilock step fetch --step restarted -o {w}/fetched.att.json >> {log} 2>&1; echo fetch-rc=$? >> {log}",
            w = w.display(),
            data = data.display(),
            began = began.display(),
            go = go.display(),
            log = log.display()
        ),
        &w,
    )
    .spawn()
    .unwrap();
    wait_file(&began, "the step to begin");
    let old_pid = prop("MainPID");
    ok(&["systemctl", "restart", UNIT]);
    // Ready when `systemctl` returns: the new daemon answers at once, with
    // no step (the old one ended it).
    let st = status();
    assert_eq!(
        (st["reply"].as_str(), st["backend"].as_str()),
        (Some("status"), Some("ebpf")),
        "{st}"
    );
    assert_eq!(st["steps"], serde_json::json!([]), "{st}");
    assert_ne!(prop("MainPID"), old_pid);
    assert_eq!(prop("ActiveState"), "active");
    // The stopping daemon kept the step's envelope before it exited.
    let kept_dir = PathBuf::from(format!("/var/lib/cilock/kept/{runner_uid}"));
    let kept_now = kept_envelopes(Path::new("/var/lib/cilock"));
    assert_eq!(kept_now.len(), 1, "{kept_now:?}");
    let kept_file = kept_now[0].clone();
    assert_eq!(kept_file.parent(), Some(kept_dir.as_path()));
    let kept_bytes = std::fs::read(&kept_file).unwrap();
    std::fs::write(&go, b"").unwrap();
    assert!(job.wait().unwrap().success());
    let log_text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log_text.lines().collect();
    // The job's `step end`: an error (2) naming the kept attestation.
    let prefix = "cilock: error: step end \"restarted\": cilock-daemon: NotFound: no active step named \"restarted\": the daemon ended it itself (daemon shutdown) at ";
    let hint = "; its signed attestation is kept by the daemon: cilock step fetch --id ";
    assert_eq!(lines.len(), 5, "{log_text}");
    assert!(
        lines[0].starts_with(prefix) && lines[0].contains(hint) && lines[0].ends_with(" -o FILE"),
        "{log_text}"
    );
    let id = lines[0]
        .split(hint)
        .nth(1)
        .and_then(|t| t.strip_suffix(" -o FILE"))
        .unwrap()
        .to_string();
    assert_eq!(lines[1], "end-rc=2", "{log_text}");
    // `step fetch`: that attestation, written where the job asked, with a
    // note that the daemon ended it.
    assert!(
        lines[2].starts_with(&format!(
            "cilock: attestation of step \"restarted\" (uid {runner_uid}, ended by daemon shutdown at "
        )) && lines[2].ends_with(&format!(
            ", kept as {id}) written to {}/fetched.att.json",
            w.display()
        )),
        "{log_text}"
    );
    assert_eq!(
        lines[3],
        "cilock: note: the daemon ended this step itself (daemon shutdown), not `cilock step end`: what the job did afterwards is not in it",
        "{log_text}"
    );
    assert_eq!(lines[4], "fetch-rc=0", "{log_text}");
    assert!(!w.join("restarted.att.json").exists());
    let cr = checked_command_run(&w.join("fetched.att.json"));
    assert_eq!(cr["trace"]["endedBy"], "daemon shutdown", "{}", cr["trace"]);
    assert_eq!(cr["trace"]["backend"], "ebpf");
    assert_read(&cr, &data, &digest);
    // The very envelope the daemon kept, byte for byte; fetched and
    // acknowledged, it is no longer kept.
    assert_eq!(kept_file, kept_dir.join(format!("{id}.json")));
    assert_eq!(
        std::fs::read(w.join("fetched.att.json")).unwrap(),
        kept_bytes
    );
    assert!(!kept_file.exists(), "{} is still kept", kept_file.display());

    phase("restart with a step active");
    // `systemctl stop` with a step active: a clean stop (Result=success,
    // not timeout), the step's attestation kept.
    let _ = std::fs::remove_file(&began);
    let _ = std::fs::remove_file(&go);
    let mut job = as_runner(
        &format!(
            "cilock step begin --step stopped --workdir {w} || exit 9; cat {data} > /dev/null; touch {began}; \
             while [ ! -e {go} ]; do sleep 0.1; done",
            w = w.display(),
            data = data.display(),
            began = began.display(),
            go = go.display()
        ),
        &w,
    )
    .spawn()
    .unwrap();
    wait_file(&began, "the second step to begin");
    ok(&["systemctl", "stop", UNIT]);
    assert_eq!(prop("ActiveState"), "inactive");
    assert_eq!(prop("Result"), "success", "{}", journal());
    std::fs::write(&go, b"").unwrap();
    assert!(job.wait().unwrap().success());
    // The only envelope kept now: the stopped step's, the runner's.
    let kept = kept_envelopes(Path::new("/var/lib/cilock"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].parent(), Some(kept_dir.as_path()));
    assert!(kept[0]
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("stopped.")));
    let cr = checked_command_run(&kept[0]);
    assert_eq!(cr["trace"]["endedBy"], "daemon shutdown");
    assert_read(&cr, &data, &digest);

    phase("stop with a step active");
    // Purge: the unit is gone, and so is everything the package made.
    ok(&["systemctl", "start", UNIT]);
    ok(&["dpkg", "--purge", "cilock"]);
    assert_eq!(prop("ActiveState"), "inactive");
    assert_eq!(prop("LoadState"), "not-found");
    for gone in [
        "/lib/systemd/system/cilock.service",
        "/etc/systemd/system/multi-user.target.wants/cilock.service",
        "/etc/cilock",
        "/var/lib/cilock",
        "/run/cilock",
        "/usr/bin/cilock-daemon",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after the purge");
    }
    assert!(!run(&["getent", "group", "cilock"]).status.success());
    ok(&["userdel", "--remove", RUNNER]);
    phase("purge");
}
