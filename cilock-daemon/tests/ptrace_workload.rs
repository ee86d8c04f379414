//! Ground-truth comparison: the processes (exec filenames) and the
//! successfully opened absolute paths seen by `ptrace::run` must equal what
//! `strace -f -y` reports for the same workload.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use crate::ptrace_common::{compile, norm_proc, trace};
use cilock_daemon::backend::ptrace::PtraceConfig;
use cilock_trace::TraceEvent;

fn workload(dir: &Path, bin: &Path) -> String {
    format!(
        r#"set -e
cd {dir}
grep NoNewPrivs /proc/self/status
cat {dir}/data/top.txt > /dev/null
cd data
cat top.txt sub/inner.txt > /dev/null
cat ./sub/../top.txt > /dev/null
{bin}/dirfd_open {dir}/data
for i in $(seq 1 50); do ( : > /dev/null ) & done
wait
./script.sh
/bin/true
{bin}/mt_exec /bin/cat {dir}/data/mt.txt > /dev/null
setsid sh -c 'sleep 2; cat {dir}/data/late.txt > /dev/null' < /dev/null > /dev/null 2>&1 &
echo done
"#,
        dir = dir.display(),
        bin = bin.display()
    )
}

fn setup(dir: &Path) {
    let d = dir.join("data");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    for (f, c) in [
        ("top.txt", "top"),
        ("sub/inner.txt", "inner"),
        ("mt.txt", "mt"),
        ("late.txt", "late"),
    ] {
        std::fs::write(d.join(f), c).unwrap();
    }
    let _ = std::fs::remove_file(d.join("created.txt"));
    let script = d.join("script.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat ../data/sub/inner.txt > /dev/null\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Parses strace output: (exec filenames, opened paths, count of successful
/// execs whose filename strace did not print).
fn parse_strace(out: &str) -> (BTreeSet<String>, BTreeSet<String>, usize) {
    let mut execs = BTreeSet::new();
    let mut orphan_execs = 0;
    let mut opens = BTreeSet::new();
    for line in out.lines() {
        let l = line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
        if let Some(r) = l.strip_prefix("execve(\"") {
            if let Some(end) = r.find('"') {
                execs.insert(r[..end].to_string());
            }
            continue;
        }
        // With `status=successful`, strace drops the `<unfinished ...>` line
        // of an execve made by a non-leader thread and prints only
        // `<... execve resumed>) = 0` (no filename) after "superseded by
        // execve": count those.
        if l.starts_with("<... execve resumed>") && l.trim_end().ends_with("= 0") {
            orphan_execs += 1;
            continue;
        }
        let is_open = ["open(", "openat(", "openat2(", "creat("]
            .iter()
            .any(|p| l.starts_with(p))
            || [
                "<... open resumed>",
                "<... openat resumed>",
                "<... openat2 resumed>",
                "<... creat resumed>",
            ]
            .iter()
            .any(|p| l.starts_with(p));
        if !is_open {
            continue;
        }
        // ... = 3</abs/path>
        // strace pads before " = " to align columns.
        if let Some(i) = l.rfind(" = ") {
            let r = &l[i + 3..];
            if let Some(lt) = r.find('<') {
                if r[..lt].parse::<i64>().is_ok() && r.ends_with('>') {
                    opens.insert(norm_proc(&r[lt + 1..r.len() - 1]));
                }
            }
        }
    }
    (execs, opens, orphan_execs)
}

#[test]
fn workload_matches_strace_ground_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    compile("dirfd_open", &bin);
    compile("mt_exec", &bin);
    setup(dir);
    let script = dir.join("workload.sh");
    std::fs::write(&script, workload(dir, &bin)).unwrap();

    // Warm-up (page cache, any first-run side effects), untraced.
    assert!(Command::new("/bin/bash")
        .arg(&script)
        .status()
        .unwrap()
        .success());
    std::thread::sleep(std::time::Duration::from_millis(2200));

    // Ground truth.
    setup(dir);
    let st_out = dir.join("strace.out");
    let st = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2,creat,execve",
            "-e",
            "status=successful",
            "-y",
            "-o",
        ])
        .arg(&st_out)
        .arg("/bin/bash")
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let (want_execs, want_opens, orphan_execs) =
        parse_strace(&std::fs::read_to_string(&st_out).unwrap());

    // Traced.
    setup(dir);
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(&script);
    let t0 = std::time::Instant::now();
    let (code, events, stdout) = trace(cmd, &PtraceConfig::default());
    let elapsed = t0.elapsed();
    assert_eq!(code, 0);
    assert!(stdout.contains("done"));
    // Privileged tracer: no_new_privs must not be set (sudo keeps working).
    assert!(stdout.contains("NoNewPrivs:\t0"), "{stdout}");
    // run() waited for the setsid grandchild (sleep 2) to exit.
    assert!(elapsed.as_millis() >= 1900, "{elapsed:?}");

    let mut got_execs = BTreeSet::new();
    let mut got_opens = BTreeSet::new();
    let mut forks = 0;
    let mut exec_pid: HashMap<String, Vec<u32>> = HashMap::new();
    let mut exits = 0;
    for e in &events {
        match e {
            TraceEvent::Exec {
                pid,
                filename,
                exe,
                cwd,
                ..
            } => {
                got_execs.insert(filename.clone());
                exec_pid.entry(filename.clone()).or_default().push(*pid);
                assert!(exe.as_deref().is_some_and(|p| p.starts_with('/')), "{e:?}");
                assert!(cwd.as_deref().is_some_and(|p| p.starts_with('/')), "{e:?}");
            }
            TraceEvent::Open {
                path,
                unresolved,
                stamp,
                ..
            } => {
                got_opens.insert(norm_proc(path));
                if unresolved.is_none() {
                    assert!(stamp.is_some(), "{e:?}");
                }
            }
            TraceEvent::Fork { .. } => forks += 1,
            TraceEvent::Exit { .. } => exits += 1,
            _ => {}
        }
    }
    assert!(forks >= 50, "forks {forks}");
    assert_eq!(forks + 1, exits, "every process exits once");
    let missing: Vec<_> = want_opens.difference(&got_opens).collect();
    let extra: Vec<_> = got_opens.difference(&want_opens).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "opens differ: missing {missing:?} extra {extra:?}"
    );
    // Intended difference: the filename of the exec from mt_exec's worker
    // thread, which strace (with status=successful) does not print; we
    // record it from AT_EXECFN.
    assert_eq!(
        orphan_execs, 1,
        "strace shows the multithreaded exec without filename"
    );
    let missing: Vec<_> = want_execs.difference(&got_execs).collect();
    let extra: Vec<_> = got_execs.difference(&want_execs).collect();
    assert!(missing.is_empty(), "execs missing {missing:?}");
    assert_eq!(extra, vec!["/bin/cat"], "only the thread exec may be extra");

    // Specific expectations (not just agreement with strace).
    let d = dir.display();
    for p in [
        format!("{d}/data/top.txt"),
        format!("{d}/data/sub/inner.txt"),
        format!("{d}/data/created.txt"),
        format!("{d}/data/mt.txt"),
        format!("{d}/data/late.txt"),
    ] {
        assert!(got_opens.contains(&p), "missing {p}");
    }
    assert!(!got_opens.iter().any(|p| p.contains("does-not-exist")));
    // The exec from a non-leader thread keeps the process id.
    let mt = exec_pid[&format!("{}/mt_exec", bin.display())][0];
    assert!(
        exec_pid["/bin/cat"].contains(&mt),
        "cat exec'd from mt_exec's thread keeps tgid {mt}"
    );
}
