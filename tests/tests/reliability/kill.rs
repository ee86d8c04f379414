//! Reliability: kill.
//!
//! `cilock step end --kill` from the job's own shell kills everything in the
//! step except the calling process and its ancestors, and the envelope is
//! written; `keygen` never leaves a private key beside a `.pub` that does
//! not match; `inspect` says what was alive at the end, shows secretscan
//! findings, and says "not recorded" for what another tool's envelope does
//! not record.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cilock_testkit::users::Group;
use cilock_testkit::*;
use serde_json::Value;

use cilock_testkit::step as common;

/// The state letter of /proc/PID/stat (`None`: no such process).
fn proc_state(pid: i64) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}

/// Pids whose command line is exactly `argv`.
fn pids_with_cmdline(argv: &[&str]) -> Vec<i64> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline")).unwrap_or_default() == want {
            out.push(pid);
        }
    }
    out
}

fn read_pid(dir: &Path, name: &str) -> i64 {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// A job shell in a step starts background children (a plain one, a
/// double-forked orphan, a nested one, a fork loop and a process that
/// forks a copy of itself and exits, over and over), then runs `cilock
/// step end --kill` itself. The CLI exits 0, the envelope is written and
/// says who was killed and who was spared, the children are gone, the shell
/// goes on running (back in the cgroup it came from).
fn kill_from_inside(backend: &str) {
    let d = Daemon::start(backend);
    let dir = tempdir();
    let dir = dir.path();
    // Unique arguments: the orphan is found by its command line.
    let orphan_arg = format!("3017.{}", std::process::id());
    let script = format!(
        r#"export CILOCK_SOCKET={sock}
sleep 3011 & echo $! > plain.pid
(sleep {orphan_arg} &)
sh -c 'sleep 3012 & wait' & echo $! > nested.pid
sh -c 'while :; do true & wait $!; : > looping; done' & echo $! > loop.pid
echo 'sh "$0" & : > hopping; exit' > hop.sh
sh {dir}/hop.sh
while [ ! -e looping ] || [ ! -e hopping ]; do sleep 0.01; done
{cilock} step end --step k --kill -o {att}
echo "end rc=$?"
echo "cgroup $(cat /proc/$$/cgroup)"
echo "shell $$ alive"
"#,
        sock = d.socket.display(),
        cilock = bin("cilock").display(),
        att = dir.join("k.att.json").display(),
        dir = dir.display(),
    );
    let mut job = common::begin_job(&d, "k", dir, &script, Stdio::piped());
    let shell = job.id() as i64;
    let t0 = Instant::now();
    common::release(&mut job);
    let mut stdout = String::new();
    job.stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let st = job.wait().unwrap();
    assert!(
        st.success(),
        "job shell: {st:?}\n{stdout}\n{}",
        d.log_text()
    );
    assert!(stdout.contains("end rc=0\n"), "{stdout}\n{}", d.log_text());
    assert!(stdout.contains(&format!("shell {shell} alive")), "{stdout}");
    // Back where it came from: the test's own cgroup.
    let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert!(
        stdout.contains(&format!("cgroup {}", mine.trim())),
        "{stdout} (test cgroup {mine})"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));

    let cr = common::command_run(&dir.join("k.att.json"));
    let k = &cr["trace"]["killAtEnd"];
    assert_eq!(k["requestedBy"], "step end --kill", "{k}");
    assert_eq!(k["method"], "frozen, pidfd SIGKILL", "{k}");
    assert_eq!(k["complete"], true, "{k}");
    assert_eq!(k["spared"].as_array().unwrap().len(), 2, "{k}");
    let spared: Vec<i64> = k["spared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let caller = k["caller"].as_i64().unwrap();
    assert!(spared.contains(&shell) && spared.contains(&caller), "{k}");
    let caller_p = common::by_pid(&cr, caller);
    assert!(
        caller_p["program"].as_str().unwrap().ends_with("/cilock"),
        "{caller_p}"
    );
    let killed: Vec<i64> = k["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let (plain, nested, looping) = (
        read_pid(dir, "plain.pid"),
        read_pid(dir, "nested.pid"),
        read_pid(dir, "loop.pid"),
    );
    for pid in [plain, nested, looping] {
        assert!(killed.contains(&pid), "{pid} not killed: {k}");
        let p = common::by_pid(&cr, pid);
        assert_eq!(p["aliveAtEnd"], true, "{p}");
        assert_eq!(p["exitcode"], 137, "killed with SIGKILL: {p}");
        // Dead (a zombie at most, until the shell reaps it).
        assert!(
            matches!(proc_state(pid), None | Some('Z')),
            "{pid} still runs"
        );
    }
    for pid in &spared {
        assert!(!killed.contains(pid), "{k}");
        assert_eq!(common::by_pid(&cr, *pid)["aliveAtEnd"], true);
    }
    assert!(
        pids_with_cmdline(&["sleep", &orphan_arg]).is_empty(),
        "the double-forked orphan survived"
    );
    assert!(pids_with_cmdline(&["sleep", "3012"]).is_empty());
    // The process that keeps changing its pid (fork, parent exits) is gone.
    let hop = dir.join("hop.sh");
    assert!(pids_with_cmdline(&["sh", hop.to_str().unwrap()]).is_empty());
}

#[test]
fn step_end_kill_from_the_job_shell_ebpf() {
    kill_from_inside("ebpf");
}

#[test]
fn step_end_kill_from_the_job_shell_ptrace() {
    kill_from_inside("ptrace");
}

/// From outside the step (a runner hook) `--kill` kills everything, by
/// `cgroup.kill`, and spares nothing.
#[test]
fn step_end_kill_from_outside_kills_all() {
    let d = Daemon::start("ebpf");
    let dir = tempdir();
    let dir = dir.path();
    let script = "sleep 3013 & echo $! > plain.pid\n: > ready\nwait\n";
    let mut job = common::begin_job(&d, "o", dir, script, Stdio::null());
    let shell = job.id() as i64;
    common::release(&mut job);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("ready").exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let att = dir.join("o.att.json");
    let out = d.cilock(&[
        "step",
        "end",
        "--step",
        "o",
        "--kill",
        "-o",
        att.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = job.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    let cr = common::command_run(&att);
    let k = &cr["trace"]["killAtEnd"];
    assert_eq!(k["method"], "cgroup.kill", "{k}");
    assert!(
        k.get("caller").is_none() && k.get("spared").is_none(),
        "{k}"
    );
    let killed = k["killed"].as_array().unwrap();
    assert!(killed.contains(&Value::from(shell)), "{k}");
    assert!(
        killed.contains(&Value::from(read_pid(dir, "plain.pid"))),
        "{k}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("killed 2 processes"), "{err}");
}

/// `keygen` refuses before writing anything when the `.pub` (or the key)
/// exists, and a fresh pair matches.
#[test]
fn keygen_never_leaves_a_mismatched_pair() {
    let dir = tempdir();
    let key = dir.path().join("k.pem");
    let pubk = dir.path().join("k.pem.pub");
    std::fs::write(&pubk, "old public key\n").unwrap();
    let out = Command::new(bin("cilock"))
        .args(["keygen", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(pubk.to_str().unwrap()) && err.contains("exists"),
        "{err}"
    );
    assert!(
        !key.exists(),
        "a private key was left beside a foreign .pub"
    );
    assert_eq!(std::fs::read_to_string(&pubk).unwrap(), "old public key\n");
    // Only the private key exists: refused too, nothing new written.
    std::fs::remove_file(&pubk).unwrap();
    std::fs::write(&key, "old private key\n").unwrap();
    let out = Command::new(bin("cilock"))
        .args(["keygen", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!pubk.exists());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "old private key\n");
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["k.pem".to_string()]);
    // A fresh pair: the .pub is the key's (its keyid is sha256 of the .pub).
    std::fs::remove_file(&key).unwrap();
    let out = Command::new(bin("cilock"))
        .args(["keygen", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let keyid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(sha256sum(pubk.to_str().unwrap()).unwrap(), keyid);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["k.pem".to_string(), "k.pem.pub".to_string()]);
}

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn inspect(path: &Path) -> String {
    let out = Command::new(bin("cilock"))
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Witness and CI/lock envelopes record no trace: `inspect` says "not
/// recorded", never 0; CI/lock's secretscan findings are listed (rule,
/// location, digest; never the matched text).
#[test]
fn inspect_other_tools_envelopes() {
    const NR: &str = "not recorded (no cilock trace in this attestation)";
    for f in [
        "witness/cdx-att.json",
        "witness/spdx-att.json",
        "cilock/attestation-aws-keys.json",
        "cilock/attestation-with-findings.json",
        "cilock/attestation-sarif-trivy.json",
    ] {
        let o = inspect(&fixture(f));
        for field in [
            "processes:",
            "opened files:",
            "network conns:",
            "syscall events:",
        ] {
            let line = o
                .lines()
                .find(|l| l.starts_with(field))
                .unwrap_or_else(|| panic!("{f}: no {field}\n{o}"));
            assert!(line.ends_with(NR), "{f}: {line}");
        }
        assert!(!o.contains("at end:"), "{f}\n{o}");
    }
    let o = inspect(&fixture("cilock/attestation-with-findings.json"));
    assert!(o.contains("secret findings: 4\n"), "{o}");
    assert!(
        o.contains("  - github-pat in attestation:command-run line 0 (sha256:ab1ebb50d66b…)\n"),
        "{o}"
    );
    assert!(
        o.contains("  - private-key in attestation:command-run line 5 (sha256:69ce522d7c04…)\n"),
        "{o}"
    );
    // The matched text may be the secret itself: never printed.
    assert!(!o.contains("ghp_"), "{o}");
    let o = inspect(&fixture("cilock/attestation-sarif-trivy.json"));
    assert!(o.contains("secret findings: 0\n"), "{o}");
    // Witness envelopes have no secretscan attestation.
    assert!(!inspect(&fixture("witness/cdx-att.json")).contains("secret findings"));
}

/// A cilock step that leaves a process running: `step end` and `inspect`
/// both say so (count, pid, program), and the counts are real numbers.
#[test]
fn step_end_and_inspect_say_what_was_alive() {
    let d = Daemon::start("ebpf");
    let dir = tempdir();
    let dir = dir.path();
    let mut job = common::begin_job(
        &d,
        "a",
        dir,
        "sleep 3014 & echo $! > bg.pid\n",
        Stdio::null(),
    );
    common::release(&mut job);
    assert!(job.wait().unwrap().success());
    let bg = read_pid(dir, "bg.pid");
    let att = dir.join("a.att.json");
    let out = d.cilock(&["step", "end", "--step", "a", "-o", att.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "cilock: 1 process still running when the step ended (left running, no longer traced): {bg} /usr/bin/sleep\n"
    );
    assert!(err.contains(&want), "{err}");
    let o = inspect(&att);
    assert!(
        o.contains(&format!(
            "at end:         1 process still running when the step ended (left running, no longer traced): {bg} /usr/bin/sleep\n"
        )),
        "{o}"
    );
    assert!(o.contains("network conns:  0\n"), "{o}");
    assert!(o.contains("syscall events: 0\n"), "{o}");
    // SAFETY: plain kill of the process this test started.
    unsafe { libc::kill(bg as i32, libc::SIGKILL) };
}

/// An unprivileged job (uid 65534) kills in its own step from its own
/// shell; another user of the daemon's group (65533) cannot end or kill
/// it (to him the step does not exist), and nothing of it is killed.
#[test]
fn unprivileged_kill_only_in_its_own_step() {
    let g = Group::create("clkk");
    let d = Daemon::start_with("ebpf", &format!("group = {:?}", g.name));
    let (alice, bob) = (65534u32, 65533u32);
    let w = tempdir();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(w.path(), Some(alice), Some(g.gid)).unwrap();
    let dir = w.path();
    let cilock = shared_cilock();
    let script = format!(
        r#"export CILOCK_SOCKET={sock}
{cilock} step begin --step u || exit 9
sleep 3015 & echo $! > bg.pid
: > ready
read go
{cilock} step end --step u --kill -o u.att.json
echo "end rc=$?"
echo "shell $$ alive"
"#,
        sock = d.socket.display(),
        cilock = cilock.display(),
    );
    let mut job = Command::new("setpriv")
        .arg(format!("--reuid={alice}"))
        .arg(format!("--regid={}", g.gid))
        .arg(format!("--groups={}", g.gid))
        .args(["sh", "-c", &script])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("ready").exists() {
        assert!(
            Instant::now() < deadline && matches!(job.try_wait(), Ok(None)),
            "the job did not begin its step: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let bg = read_pid(dir, "bg.pid");
    let bob_out = Command::new("setpriv")
        .arg(format!("--reuid={bob}"))
        .arg(format!("--regid={}", g.gid))
        .arg(format!("--groups={}", g.gid))
        .arg(&cilock)
        .args(["step", "end", "--step", "u", "--kill", "-o", "/dev/null"])
        .env("CILOCK_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert_eq!(bob_out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bob_out.stderr);
    assert!(err.contains("no active step named \"u\""), "{err}");
    assert!(
        matches!(proc_state(bg), Some(c) if c != 'Z'),
        "bob's --kill killed {bg}"
    );
    common::release(&mut job);
    let mut stdout = String::new();
    job.stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(job.wait().unwrap().success(), "{stdout}");
    assert!(stdout.contains("end rc=0\n"), "{stdout}\n{}", d.log_text());
    let shell = job.id() as i64;
    assert!(stdout.contains(&format!("shell {shell} alive")), "{stdout}");
    let cr = common::command_run(&dir.join("u.att.json"));
    let k = &cr["trace"]["killAtEnd"];
    assert_eq!(k["killed"], serde_json::json!([bg]), "{k}");
    assert!(
        k["spared"]
            .as_array()
            .unwrap()
            .contains(&Value::from(shell)),
        "{k}"
    );
    assert!(matches!(proc_state(bg), None | Some('Z')));
}
