//! `cilock run` waits for what the command left running, the same way in
//! all three modes (through the daemon, embedded eBPF, embedded ptrace):
//! after the root exits, until the command's processes are gone, bounded by
//! `--wait-descendants` (D13). Those still running then are listed
//! (`aliveAtEnd`, `trace.waitDescendants`). And on ptrace a thread is never
//! a process (D11).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cilock_testkit::*;
use cilock_testkit::{programs::*, step::*};
use serde_json::Value;

const MODES: [&str; 3] = ["daemon", "ebpf", "ptrace"];

/// Runs `sh -c script` with `cilock run` in `mode` (through `daemon`, or
/// embedded with `--backend`), in `dir`. Returns the command-run and how
/// long cilock took.
fn run(
    mode: &str,
    daemon: &Daemon,
    key: &Path,
    dir: &Path,
    extra: &[&str],
    script: &str,
) -> (Value, Duration) {
    let att = dir.join(format!("{mode}.att.json"));
    let mut c = Command::new(bin("cilock"));
    c.arg("run");
    match mode {
        "daemon" => c.env("CILOCK_SOCKET", &daemon.socket),
        backend => c
            .args([
                "--backend",
                backend,
                "--no-daemon",
                "-k",
                key.to_str().unwrap(),
            ])
            .env("CILOCK_SOCKET", dir.join("none.sock")),
    };
    let t0 = Instant::now();
    let out = c
        .args(["--step", "r", "-o", att.to_str().unwrap()])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "{mode}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log_text()
    );
    let cr = command_run(&att);
    let backend = if mode == "daemon" { "ebpf" } else { mode };
    assert_eq!(cr["trace"]["backend"], backend, "{mode}");
    assert_eq!(cr["trace"]["endedBy"], "run", "{mode}");
    assert_nothing_lost(&cr);
    (cr, took)
}

/// A set of string pairs.
type Pairs = BTreeSet<(String, String)>;

/// (program, cmdline) of every process, and the workdir files opened with
/// their digests: what must be the same in every mode.
fn facts(cr: &Value, dir: &Path) -> (Pairs, Pairs) {
    let mut procs = BTreeSet::new();
    let mut files = BTreeSet::new();
    let d = format!("{}/", dir.display());
    for p in processes(cr) {
        procs.insert((
            p["program"].as_str().unwrap_or("").to_string(),
            p["cmdline"].as_str().unwrap_or("").to_string(),
        ));
        for (path, f) in p["openedfiles"].as_object().into_iter().flatten() {
            if let Some(rel) = path.strip_prefix(&d) {
                files.insert((
                    rel.to_string(),
                    f["sha256"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    (procs, files)
}

fn sha(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn setup(w: &Path, mode: &str) -> std::path::PathBuf {
    let d = w.join(mode);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("in1.txt"), "one\n").unwrap();
    std::fs::write(d.join("in2.txt"), "two\n").unwrap();
    d
}

/// Double-forked daemons (setsid; the intermediate exits at once) that work
/// 0.5 s and 1.5 s after the command exited: recorded in every mode, and
/// nothing is left running.
#[test]
fn descendants_are_waited_for_in_every_mode() {
    let daemon = Daemon::start("ebpf");
    let w = tempdir();
    let (key, _) = keygen(w.path());
    let script = "setsid sh -c '(sleep 0.5; cat in1.txt > /dev/null; echo early > early.txt) & \
                  (sleep 1.5; cat in2.txt > /dev/null; echo late > late.txt) &' \
                  < /dev/null > /dev/null 2>&1; echo root done";
    let mut all = Vec::new();
    for mode in MODES {
        let dir = setup(w.path(), mode);
        let (cr, took) = run(mode, &daemon, &key, &dir, &[], script);
        assert!(
            took >= Duration::from_millis(1400),
            "{mode}: returned after {took:?}"
        );
        assert!(
            took < Duration::from_secs(20),
            "{mode}: returned after {took:?}"
        );
        let wd = &cr["trace"]["waitDescendants"];
        assert_eq!(wd["allExited"], true, "{mode}: {wd}");
        assert_eq!(wd["timeoutSeconds"], 30.0, "{mode}: {wd}");
        assert!(wd.get("survivors").is_none(), "{mode}: {wd}");
        assert!(wd["waitedSeconds"].as_f64().unwrap() >= 1.0, "{mode}: {wd}");
        for p in processes(&cr) {
            assert!(p.get("aliveAtEnd").is_none(), "{mode}: alive {p}");
            assert!(p["exitcode"].is_i64(), "{mode}: no exit code {p}");
        }
        let (procs, files) = facts(&cr, &dir);
        let want: BTreeSet<(String, String)> = [
            ("in1.txt", sha("one\n")),
            ("in2.txt", sha("two\n")),
            ("early.txt", sha("early\n")),
            ("late.txt", sha("late\n")),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b))
        .collect();
        assert_eq!(files, want, "{mode}");
        let cmdlines: Vec<&str> = procs.iter().map(|p| p.1.as_str()).collect();
        for c in ["sleep 0.5", "sleep 1.5", "cat in1.txt", "cat in2.txt"] {
            assert!(cmdlines.contains(&c), "{mode}: {c} missing in {cmdlines:?}");
        }
        all.push((mode, procs, files));
    }
    for (mode, procs, files) in &all[1..] {
        assert_eq!(
            procs, &all[0].1,
            "processes of {mode} differ from the daemon's"
        );
        assert_eq!(files, &all[0].2, "files of {mode} differ from the daemon's");
    }
}

/// A daemonized `sleep 120` outlives a 1 s wait: listed as alive at the end
/// in every mode, and `cilock run` returns promptly.
#[test]
fn survivors_are_listed_and_the_wait_is_bounded() {
    let daemon = Daemon::start("ebpf");
    let w = tempdir();
    let (key, _) = keygen(w.path());
    // (The embedded eBPF engine's start, on a loaded machine, is part of
    // the time cilock takes; `waitedSeconds` is the wait itself.)
    let script = "setsid sh -c 'cat in1.txt > /dev/null; exec sleep 120' < /dev/null > /dev/null 2>&1 & exit 0";
    let mut all = Vec::new();
    for mode in MODES {
        let dir = setup(w.path(), mode);
        let (cr, took) = run(
            mode,
            &daemon,
            &key,
            &dir,
            &["--wait-descendants", "1"],
            script,
        );
        assert!(
            took >= Duration::from_millis(900),
            "{mode}: returned after {took:?}"
        );
        assert!(
            took < Duration::from_secs(60),
            "{mode}: returned after {took:?}"
        );
        let wd = &cr["trace"]["waitDescendants"];
        assert_eq!(wd["allExited"], false, "{mode}: {wd}");
        assert_eq!(wd["timeoutSeconds"], 1.0, "{mode}: {wd}");
        let waited = wd["waitedSeconds"].as_f64().unwrap();
        assert!((0.9..30.0).contains(&waited), "{mode}: {wd}");
        let sleeper: Vec<Value> = processes(&cr)
            .into_iter()
            .filter(|p| p["cmdline"] == "sleep 120")
            .collect();
        assert_eq!(sleeper.len(), 1, "{mode}: {}", cr["processes"]);
        let pid = sleeper[0]["processid"].as_i64().unwrap();
        assert_eq!(sleeper[0]["aliveAtEnd"], true, "{mode}");
        assert_eq!(wd["survivors"], serde_json::json!([pid]), "{mode}: {wd}");
        let fate = wd["survivorsFate"].as_str().unwrap();
        if mode == "ptrace" {
            assert!(fate.starts_with("killed"), "{fate}");
            assert_eq!(sleeper[0]["exitcode"], 137, "{mode}");
        } else {
            assert_eq!(fate, "left running, no longer traced");
            // Still running: end it.
            // SAFETY: plain kill of the test's own leftover process.
            assert_eq!(
                unsafe { libc::kill(pid as i32, libc::SIGKILL) },
                0,
                "{mode}"
            );
        }
        for p in processes(&cr) {
            if p["processid"] != pid {
                assert!(p.get("aliveAtEnd").is_none(), "{mode}: {p}");
            }
        }
        let (procs, files) = facts(&cr, &dir);
        assert_eq!(
            files,
            BTreeSet::from([("in1.txt".to_string(), sha("one\n"))]),
            "{mode}"
        );
        all.push((mode, procs, files));
    }
    for (mode, procs, files) in &all[1..] {
        assert_eq!(
            procs, &all[0].1,
            "processes of {mode} differ from the daemon's"
        );
        assert_eq!(files, &all[0].2, "files of {mode} differ from the daemon's");
    }
}

/// D11: a program with 8 short-lived threads × 4 files, run 20 times in
/// one command: exactly 21 processes (the shell and the 20 runs) in every
/// mode and on a ptrace daemon, each run with its 32 files.
#[test]
fn threads_are_not_processes() {
    let ebpf = Daemon::start("ebpf");
    let ptrace_daemon = Daemon::start("ptrace");
    let w = tempdir();
    let (key, _) = keygen(w.path());
    let prog = cc("threads_files", w.path());
    let script = format!(
        "for i in {}; do {} 4 || exit 1; done",
        (1..=20)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        prog.display()
    );
    for mode in ["daemon", "ebpf", "ptrace", "ptrace-daemon"] {
        let dir = w.path().join(mode);
        std::fs::create_dir_all(&dir).unwrap();
        let mut want = BTreeSet::new();
        for t in 0..8 {
            for n in 0..4 {
                let name = format!("tf_{t}_{n}.txt");
                std::fs::write(dir.join(&name), format!("{t} {n}\n")).unwrap();
                want.insert((name, sha(&format!("{t} {n}\n"))));
            }
        }
        let (m, d) = match mode {
            "ptrace-daemon" => ("daemon", &ptrace_daemon),
            m => (m, &ebpf),
        };
        let cr = if mode == "ptrace-daemon" {
            // The ptrace daemon: the backend check in `run` expects eBPF.
            let att = dir.join("pd.att.json");
            let out = d
                .command()
                .args([
                    "run",
                    "--step",
                    "t",
                    "-o",
                    att.to_str().unwrap(),
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let cr = command_run(&att);
            assert_eq!(cr["trace"]["backend"], "ptrace");
            cr
        } else {
            run(m, d, &key, &dir, &[], &script).0
        };
        let procs = processes(&cr);
        let runs: Vec<&Value> = procs
            .iter()
            .filter(|p| p["program"] == prog.to_str().unwrap())
            .collect();
        assert_eq!(
            procs.len(),
            21,
            "{mode}: {}",
            serde_json::to_string_pretty(
                &procs
                    .iter()
                    .map(|p| (
                        &p["processid"],
                        &p["parentpid"],
                        &p["cmdline"],
                        &p["program"]
                    ))
                    .collect::<Vec<_>>()
            )
            .unwrap()
        );
        assert_eq!(runs.len(), 20, "{mode}");
        for r in runs {
            assert_eq!(r["exitcode"], 0, "{mode}: {r}");
            let files: BTreeSet<(String, String)> = r["openedfiles"]
                .as_object()
                .unwrap()
                .iter()
                .filter_map(|(p, f)| {
                    let name = Path::new(p).file_name()?.to_str()?;
                    name.starts_with("tf_").then(|| {
                        (
                            name.to_string(),
                            f["sha256"].as_str().unwrap_or("").to_string(),
                        )
                    })
                })
                .collect();
            assert_eq!(files, want, "{mode}: files of {}", r["processid"]);
        }
    }
}
