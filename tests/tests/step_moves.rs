//! Leaving and joining steps (issue #12 item 3, defects D1 and D8): a
//! process that moves itself (or is moved, or is created by
//! `clone3(CLONE_INTO_CGROUP)`) out of its step's cgroup is recorded as
//! having left, with its activity up to the move and none after; a process
//! that comes into another step's cgroup is marked there as having joined
//! from elsewhere, never as one of the step's own. Real daemon, real
//! cgroups (found in /proc/self/mountinfo and /proc/PID/cgroup).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cilock_testkit::*;
use cilock_testkit::{programs::*, step::*};
use serde_json::Value;

/// The cgroup2 mount point.
fn cgroup_mount() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if let Some(sep) = f.iter().position(|x| *x == "-") {
            if f.get(sep + 1) == Some(&"cgroup2") {
                return PathBuf::from(f[4]);
            }
        }
    }
    panic!("no cgroup2 mount");
}

/// The cgroup2 directory of `pid`.
fn cgroup_of(pid: u32) -> PathBuf {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = s
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no cgroup2 line");
    cgroup_mount().join(rel.trim_start_matches('/'))
}

/// A cgroup outside every step (a sibling of the daemon's), removed at drop.
struct Sib(PathBuf);

impl Sib {
    fn new(tag: &str) -> Sib {
        let p = cgroup_mount().join(format!("cilock-moves-{tag}.{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Sib(p)
    }
    fn procs(&self) -> String {
        self.0.join("cgroup.procs").display().to_string()
    }
}

impl Drop for Sib {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            if pids.trim().is_empty() {
                break;
            }
            for pid in pids.lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn events(p: &Value, syscall: &str) -> Vec<Value> {
    p["syscallEvents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["syscall"] == syscall)
        .collect()
}

fn opened(p: &Value, path: &Path) -> bool {
    p["openedfiles"].get(path.to_str().unwrap()).is_some()
}

fn opened_by_any(cr: &Value, path: &Path) -> bool {
    processes(cr).iter().any(|p| opened(p, path))
}

/// `key=N` from a text.
fn field(text: &str, key: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

fn pid_file(w: &Path, name: &str) -> i64 {
    std::fs::read_to_string(w.join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A marker file in `w` whose name says when it is read.
fn marker(w: &Path, name: &str) -> PathBuf {
    let p = w.join(name);
    std::fs::write(&p, name.as_bytes()).unwrap();
    p
}

/// A step whose job waits for `w/<name>.done` before it ends.
struct Job {
    child: Child,
    name: String,
}

fn begin_waiting(daemon: &Daemon, name: &str, w: &Path, first: &str) -> Job {
    let mut child = begin_job(
        daemon,
        name,
        w,
        &format!("{first}\nwhile [ ! -e {name}.done ]; do sleep 0.02; done\n",),
        Stdio::inherit(),
    );
    release(&mut child);
    Job {
        child,
        name: name.to_string(),
    }
}

fn end_waiting(daemon: &Daemon, mut job: Job, w: &Path) -> Value {
    std::fs::write(w.join(format!("{}.done", job.name)), b"").unwrap();
    assert!(job.child.wait().unwrap().success());
    let att = w.join(format!("{}.att.json", job.name));
    let out = daemon.cilock(&[
        "step",
        "end",
        "--step",
        &job.name,
        "-o",
        att.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "end: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log_text()
    );
    command_run(&att)
}

/// No process of the step is marked as having come from elsewhere.
fn none_joined(cr: &Value) {
    for p in processes(cr) {
        assert!(
            p.get("joinedStep").is_none(),
            "a process of the step's own is marked joinedStep: {p}\n{}",
            pretty(cr)
        );
    }
}

/// The script of the leaving scenarios: Python moves itself into the
/// cgroup2 root (open + write), a shell moves itself with `echo $$ >`
/// into a sibling cgroup, a parent moves its child, and a child is
/// created in the sibling by clone3(CLONE_INTO_CGROUP). Every process
/// reads `pre-*` before and `after-*` after its move.
fn leave_script(w: &Path, sib: &Sib, clone_into: &Path, with_parent_move: bool) -> String {
    for m in [
        "pre.txt",
        "pre-py.txt",
        "after-py.txt",
        "after-py-exec.txt",
        "pre-sh.txt",
        "after-sh.txt",
        "after-child.txt",
        "after-clone.txt",
    ] {
        marker(w, m);
    }
    let root = cgroup_mount().join("cgroup.procs");
    let mut s = format!(
        "cat pre.txt > /dev/null\n\
         {py} -c 'import os\n\
open(\"py.pid\", \"w\").write(str(os.getpid()))\n\
open(\"pre-py.txt\").read()\n\
open(\"{root}\", \"w\").write(str(os.getpid()))\n\
open(\"after-py.txt\").read()\n\
os.system(\"cat after-py-exec.txt > /dev/null\")'\n\
         sh -c 'echo $$ > sh.pid; cat pre-sh.txt > /dev/null; echo $$ > {sib}; cat after-sh.txt > /dev/null'\n\
         {clone} {sibdir} after-clone.txt > clone.out\n",
        py = python(),
        root = root.display(),
        sib = sib.procs(),
        clone = clone_into.display(),
        sibdir = sib.0.display(),
    );
    if with_parent_move {
        s.push_str(&format!(
            "sh -c 'i=0; until grep -q cilock-moves- /proc/$$/cgroup || [ $i -ge 1000 ]; do sleep 0.01; i=$((i+1)); done; cat after-child.txt > /dev/null' > /dev/null 2>&1 &\n\
             child=$!\n\
             echo $child > {sib}\n\
             echo $child > child.pid\n\
             echo $$ > shell.pid\n\
             wait $child\n",
            sib = sib.procs()
        ));
    }
    s
}

/// D1 on eBPF (daemon and embedded): what each process did up to its
/// move is in the step, with `leftStep` and a `cgroup_leave` event;
/// nothing it did after.
fn assert_left_ebpf(cr: &Value, w: &Path, with_parent_move: bool) {
    let py = by_pid(cr, pid_file(w, "py.pid"));
    assert_eq!(py["leftStep"], true, "{py}");
    assert!(opened(&py, &w.join("pre-py.txt")), "{py}");
    assert!(opened(&py, &cgroup_mount().join("cgroup.procs")), "{py}");
    let leave = events(&py, "cgroup_leave");
    assert_eq!(leave.len(), 1, "{py}");
    assert_eq!(leave[0]["args"][0], py["processid"]);
    assert!(
        leave[0]["detail"]
            .as_str()
            .unwrap()
            .contains("moved itself"),
        "{py}"
    );
    let sh = by_pid(cr, pid_file(w, "sh.pid"));
    assert_eq!(sh["leftStep"], true, "{sh}");
    assert_eq!(events(&sh, "cgroup_leave").len(), 1, "{sh}");
    assert!(processes(cr)
        .iter()
        .any(|p| opened(p, &w.join("pre-sh.txt"))));
    let clone_out = std::fs::read_to_string(w.join("clone.out")).unwrap();
    let cloner = by_pid(cr, field(&clone_out, "cloner"));
    let clone = by_pid(cr, field(&clone_out, "clone"));
    assert_eq!(clone["leftStep"], true, "{clone}");
    assert_eq!(clone["parentpid"], cloner["processid"]);
    let born = events(&cloner, "cgroup_leave");
    assert_eq!(born.len(), 1, "{cloner}");
    assert_eq!(born[0]["args"][0], clone["processid"]);
    assert!(born[0]["detail"]
        .as_str()
        .unwrap()
        .contains("CLONE_INTO_CGROUP"));
    let mut after = vec![
        "after-py.txt",
        "after-py-exec.txt",
        "after-sh.txt",
        "after-clone.txt",
    ];
    let mut moves = 3;
    if with_parent_move {
        let child = by_pid(cr, pid_file(w, "child.pid"));
        assert_eq!(child["leftStep"], true, "{child}");
        let shell = by_pid(cr, pid_file(w, "shell.pid"));
        let moved = events(&shell, "cgroup_leave");
        assert_eq!(moved.len(), 1, "{shell}");
        assert_eq!(moved[0]["args"][0], child["processid"]);
        assert!(moved[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("moved pid"));
        after.push("after-child.txt");
        moves += 1;
    }
    for a in after {
        assert!(
            !opened_by_any(cr, &w.join(a)),
            "{a}, read after the move, is in the step: {}",
            pretty(cr)
        );
    }
    // Nor the `cat` the moved Python ran afterwards.
    assert!(
        !processes(cr).iter().any(|p| p["cmdline"]
            .as_str()
            .is_some_and(|c| c.starts_with("cat after-"))),
        "{}",
        pretty(cr)
    );
    assert_eq!(cr["trace"]["events"]["cgroup_move"]["captured"], moves);
    assert_eq!(cr["trace"]["events"]["cgroup_join"]["captured"], 0);
    assert_nothing_lost(cr);
    none_joined(cr);
    let lim = cr["trace"]["limitations"].to_string();
    assert!(lim.contains("not traced after the move"), "{lim}");
    assert!(!lim.contains("the move is recorded: leftStep)"), "{lim}");
}

#[test]
fn leaving_and_joining_steps_on_ebpf() {
    let work = tempdir();
    let w = work.path();
    let clone_into = cc("clone_into", w);
    let sib = Sib::new("out");
    let daemon = Daemon::start("ebpf");

    // D1, parent moves child, clone3 out of the step.
    let att = run_step(
        &daemon,
        "leave",
        w,
        &leave_script(w, &sib, &clone_into, true),
    );
    let cr = command_run(&att);
    assert_left_ebpf(&cr, w, true);

    // D8: step A's process moves itself into step B's cgroup; a child of
    // A is created in B's cgroup; outsiders move in and are created in.
    let bw = w.join("b");
    std::fs::create_dir(&bw).unwrap();
    marker(&bw, "b-own.txt");
    let b = begin_waiting(
        &daemon,
        "b",
        &bw,
        "cat b-own.txt > /dev/null; echo $$ > bshell.pid",
    );
    let bcg = cgroup_of(b.child.id());
    assert!(bcg.starts_with(cgroup_mount()) && bcg != cgroup_mount());
    let aw = w.join("a");
    std::fs::create_dir(&aw).unwrap();
    for m in [
        "pre-x.txt",
        "cross.txt",
        "clone-b.txt",
        "outsider.txt",
        "outsider-clone.txt",
    ] {
        marker(&aw, m);
    }
    let script = format!(
        "cat pre-x.txt > /dev/null\n\
         {py} -c 'import os\n\
open(\"x.pid\", \"w\").write(str(os.getpid()))\n\
open(\"{procs}\", \"w\").write(str(os.getpid()))\n\
open(\"cross.txt\").read()'\n\
         {clone} {bcg} clone-b.txt > clone.out\n",
        py = python(),
        procs = bcg.join("cgroup.procs").display(),
        clone = clone_into.display(),
        bcg = bcg.display(),
    );
    let a = command_run(&run_step(&daemon, "a", &aw, &script));
    // Outsiders (this test process's children, in no step).
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}; echo out=$$; cat outsider.txt > /dev/null",
            bcg.join("cgroup.procs").display()
        ))
        .current_dir(&aw)
        .output()
        .unwrap();
    assert!(out.status.success());
    let outsider = field(&String::from_utf8_lossy(&out.stdout), "out");
    let out = Command::new(&clone_into)
        .arg(&bcg)
        .arg("outsider-clone.txt")
        .current_dir(&aw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oc_text = String::from_utf8_lossy(&out.stdout).to_string();
    let b_cr = end_waiting(&daemon, b, &bw);

    // A: the process and the child left; nothing they did in B is in A.
    let x = pid_file(&aw, "x.pid");
    let clone_out = std::fs::read_to_string(aw.join("clone.out")).unwrap();
    let (cloner, clone) = (field(&clone_out, "cloner"), field(&clone_out, "clone"));
    let xa = by_pid(&a, x);
    assert_eq!(xa["leftStep"], true, "{xa}");
    assert_eq!(events(&xa, "cgroup_leave").len(), 1, "{xa}");
    assert_eq!(by_pid(&a, clone)["leftStep"], true);
    assert!(!opened_by_any(&a, &aw.join("cross.txt")), "{}", pretty(&a));
    assert!(
        !opened_by_any(&a, &aw.join("clone-b.txt")),
        "{}",
        pretty(&a)
    );
    none_joined(&a);
    assert_eq!(a["trace"]["events"]["cgroup_move"]["captured"], 2);

    // B: each of them is marked as having come from elsewhere.
    let b_pids: Vec<i64> = processes(&b_cr)
        .iter()
        .map(|p| p["processid"].as_i64().unwrap())
        .collect();
    let own = by_pid(&b_cr, pid_file(&bw, "bshell.pid"));
    assert!(own.get("joinedStep").is_none(), "{own}");
    let xb = by_pid(&b_cr, x);
    assert_eq!(xb["joinedStep"], true, "{xb}");
    assert!(
        xb["joinedFrom"]
            .as_str()
            .unwrap()
            .starts_with("another step (cgroup "),
        "{xb}"
    );
    assert!(opened(&xb, &aw.join("cross.txt")), "{xb}");
    assert!(!b_pids.contains(&xb["parentpid"].as_i64().unwrap()), "{xb}");
    let j = events(&xb, "cgroup_join");
    assert_eq!(j.len(), 1, "{xb}");
    assert!(j[0]["detail"]
        .as_str()
        .unwrap()
        .starts_with("moved itself into the step's cgroup from another step"));
    let cb = by_pid(&b_cr, clone);
    assert_eq!(cb["joinedStep"], true, "{cb}");
    assert_eq!(cb["parentpid"], cloner);
    assert!(!b_pids.contains(&cloner));
    assert!(opened(&cb, &aw.join("clone-b.txt")), "{cb}");
    assert!(events(&cb, "cgroup_join")[0]["detail"]
        .as_str()
        .unwrap()
        .contains("CLONE_INTO_CGROUP"));
    let ob = by_pid(&b_cr, outsider);
    assert_eq!(ob["joinedStep"], true, "{ob}");
    assert_eq!(ob["joinedFrom"], "outside the daemon's steps");
    // Its child (the cat) came from outside too.
    let cat = processes(&b_cr)
        .into_iter()
        .find(|p| opened(p, &aw.join("outsider.txt")))
        .unwrap_or_else(|| panic!("outsider's cat missing: {}", pretty(&b_cr)));
    assert_eq!(cat["joinedStep"], true, "{cat}");
    assert_eq!(cat["parentpid"], outsider);
    let oc = by_pid(&b_cr, field(&oc_text, "clone"));
    assert_eq!(oc["joinedStep"], true, "{oc}");
    assert_eq!(oc["joinedFrom"], "outside the daemon's steps");
    assert!(opened(&oc, &aw.join("outsider-clone.txt")));
    // Exactly these five came from elsewhere.
    let joined: Vec<i64> = processes(&b_cr)
        .iter()
        .filter(|p| p["joinedStep"] == true)
        .map(|p| p["processid"].as_i64().unwrap())
        .collect();
    assert_eq!(joined.len(), 5, "{}", pretty(&b_cr));
    assert_eq!(b_cr["trace"]["events"]["cgroup_join"]["captured"], 4);
    assert_nothing_lost(&b_cr);
}

/// Embedded runs (`cilock run --no-daemon`): eBPF behaves as through the
/// daemon; ptrace keeps tracing a process after it moves (it follows the
/// process tree), marks leftStep where it sees the write, and says what it
/// cannot see.
#[test]
fn leaving_in_embedded_runs() {
    let work = tempdir();
    let w = work.path();
    let clone_into = cc("clone_into", w);
    let sib = Sib::new("emb");
    let (key, _) = keygen(w);
    for backend in ["ebpf", "ptrace"] {
        let bw = w.join(backend);
        std::fs::create_dir(&bw).unwrap();
        let script = leave_script(&bw, &sib, &clone_into, false);
        let att = bw.join("att.json");
        let out = Command::new(bin("cilock"))
            .args([
                "run",
                "--no-daemon",
                "-k",
                key.to_str().unwrap(),
                "--backend",
                backend,
            ])
            .args([
                "--step",
                "r",
                "-o",
                att.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                &script,
            ])
            .env("CILOCK_SOCKET", w.join("none.sock"))
            .current_dir(&bw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cr = command_run(&att);
        assert_eq!(cr["trace"]["backend"], backend);
        if backend == "ebpf" {
            assert_left_ebpf(&cr, &bw, false);
            continue;
        }
        // ptrace: the open + write is seen (leftStep, one cgroup_leave with
        // the file written) and the process is still traced afterwards.
        let py = by_pid(&cr, pid_file(&bw, "py.pid"));
        assert_eq!(py["leftStep"], true, "{py}");
        let leave = events(&py, "cgroup_leave");
        assert_eq!(leave.len(), 1, "{py}");
        assert_eq!(
            leave[0]["path"],
            cgroup_mount().join("cgroup.procs").to_str().unwrap()
        );
        assert!(opened(&py, &bw.join("after-py.txt")), "{py}");
        // `echo $$ >` writes through a dup2'd fd: not seen as a move (the
        // limitations say so), but everything it did is recorded.
        let sh = by_pid(&cr, pid_file(&bw, "sh.pid"));
        assert!(sh.get("leftStep").is_none(), "{sh}");
        assert!(processes(&cr)
            .iter()
            .any(|p| opened(p, &bw.join("after-sh.txt"))));
        // clone3(CLONE_INTO_CGROUP): followed like any child, not marked.
        let clone_out = std::fs::read_to_string(bw.join("clone.out")).unwrap();
        let clone = by_pid(&cr, field(&clone_out, "clone"));
        assert!(opened(&clone, &bw.join("after-clone.txt")), "{clone}");
        assert!(clone.get("leftStep").is_none(), "{clone}");
        let lim = cr["trace"]["limitations"].to_string();
        assert!(lim.contains("shell redirections"), "{lim}");
        assert!(lim.contains("CLONE_INTO_CGROUP"), "{lim}");
        assert!(lim.contains("keeps tracing"), "{lim}");
        none_joined(&cr);
    }
}
