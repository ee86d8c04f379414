//! Suspicious-behaviour evidence of a traced step (eBPF backend, real
//! daemon): every suspicious syscall of `tests/programs/suspicious_all.c`
//! exactly once with the right pid (and nothing for its plain fork, nor for
//! signals aimed elsewhere than the daemon), while the same program runs
//! outside the step; reads of another process's environment and memory;
//! a step process moved out of the step's cgroup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cilock_testkit::*;
use cilock_testkit::{net::*, programs::*, step::*};
use serde_json::Value;

fn events(p: &Value) -> Vec<Value> {
    p["syscallEvents"].as_array().cloned().unwrap_or_default()
}

fn has_tracepoint(name: &str) -> bool {
    Path::new("/sys/kernel/tracing/events/syscalls")
        .join(name)
        .is_dir()
}

#[test]
fn each_suspicious_syscall_once_with_the_right_pid() {
    let work = tempdir();
    let w = work.path();
    let bin = cc("suspicious_all", w);
    let daemon = Daemon::start("ebpf");
    let dpid = daemon_pid(&daemon) as i64;

    // The same program outside the step, at the same time.
    let outside = Command::new(&bin)
        .arg(dpid.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let att = run_step(&daemon, "sus", w, &format!("{} {dpid}\n", bin.display()));
    let out = outside.wait_with_output().unwrap();
    assert!(out.status.success());
    let outside_pids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').and_then(|(_, v)| v.trim().parse().ok()))
        .collect();

    let stdout = std::fs::read_to_string(w.join("sus.stdout")).unwrap();
    let field = |k: &str| -> i64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{k} not printed: {stdout}"))
    };
    let (me, child) = (field("self"), field("child"));

    let cr = command_run(&att);
    assert_nothing_lost(&cr);
    let p = by_pid(&cr, me);
    let evs = events(&p);
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in &evs {
        by_name
            .entry(e["syscall"].as_str().unwrap().to_string())
            .or_default()
            .push(e.clone());
    }
    let one = |name: &str| -> Value {
        let v = by_name.get(name).cloned().unwrap_or_default();
        assert_eq!(
            v.len(),
            1,
            "{name}: {}",
            serde_json::to_string_pretty(&evs).unwrap()
        );
        v[0].clone()
    };
    let args = |e: &Value| -> Vec<i64> {
        e["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_i64().unwrap())
            .collect()
    };

    let mut expected = 0;
    let e = one("memfd_create");
    assert_eq!(e["path"], "cilock-test");
    expected += 1;
    let pt = by_name.get("ptrace").cloned().unwrap_or_default();
    let pt_args: Vec<Vec<i64>> = pt.iter().map(args).collect();
    assert_eq!(
        pt_args,
        vec![
            vec![libc::PTRACE_ATTACH as i64, child],
            vec![libc::PTRACE_DETACH as i64, child]
        ]
    );
    expected += 2;
    let e = one("mount");
    assert_eq!(e["path"], "/nonexistent-cilock-mnt");
    assert!(e["detail"].as_str().unwrap().contains("type=tmpfs"));
    expected += 1;
    assert!(one("fsopen")["detail"].as_str().unwrap().contains("tmpfs"));
    one("fsmount");
    assert_eq!(one("move_mount")["path"], "/nonexistent-cilock-mnt");
    assert_eq!(one("open_tree")["path"], "/tmp");
    expected += 4;
    assert!(one("unshare")["detail"]
        .as_str()
        .unwrap()
        .contains("CLONE_NEWUTS"));
    assert_eq!(args(&one("setns"))[1], libc::CLONE_NEWUTS as i64);
    expected += 2;
    assert!(one("clone")["detail"]
        .as_str()
        .unwrap()
        .contains("CLONE_NEWIPC"));
    assert!(one("clone3")["detail"]
        .as_str()
        .unwrap()
        .contains("CLONE_NEWUTS"));
    expected += 2;
    assert!(one("bpf")["detail"]
        .as_str()
        .unwrap()
        .contains("BPF_PROG_LOAD"));
    expected += 1;
    for m in ["init_module", "finit_module"] {
        // Kernels without module support have neither the syscall nor its
        // tracepoint.
        if has_tracepoint(&format!("sys_enter_{m}")) {
            one(m);
            expected += 1;
        } else {
            assert!(!by_name.contains_key(m));
        }
    }
    let io = one("io_uring_setup");
    assert!(
        io["detail"].as_str().unwrap().contains("not recorded"),
        "io_uring_setup detail must say its opens are invisible"
    );
    expected += 1;
    assert_eq!(args(&one("process_vm_readv")), vec![child]);
    assert_eq!(args(&one("process_vm_writev")), vec![child]);
    expected += 2;
    // Signals: only those aimed at the daemon.
    assert_eq!(args(&one("kill")), vec![dpid, 0]);
    assert_eq!(args(&one("tkill")), vec![dpid, 0]);
    assert_eq!(args(&one("tgkill")), vec![dpid, 0]);
    assert_eq!(args(&one("pidfd_send_signal")), vec![dpid, 0]);
    for s in ["kill", "tkill", "tgkill", "pidfd_send_signal"] {
        assert!(
            one(s)["detail"].as_str().unwrap().contains("cilock daemon"),
            "{s} detail"
        );
    }
    expected += 4;
    assert_eq!(
        evs.len(),
        expected,
        "nothing else flagged: {}",
        serde_json::to_string_pretty(&evs).unwrap()
    );

    // The children (plain fork, clone/clone3 with namespaces) did nothing
    // suspicious themselves.
    for q in processes(&cr) {
        if q["processid"].as_i64() != Some(me)
            && q["program"]
                .as_str()
                .is_some_and(|x| x.ends_with("/suspicious_all"))
        {
            assert!(
                events(&q).is_empty(),
                "pid {}: {:?}",
                q["processid"],
                events(&q)
            );
        }
    }
    // Nothing from the copy outside the step.
    for q in processes(&cr) {
        assert!(
            !outside_pids.contains(&q["processid"].as_i64().unwrap()),
            "outside pid {} in the step",
            q["processid"]
        );
    }
    assert!(cr["trace"]["hooks"]["suspicious-syscalls"]
        .as_str()
        .unwrap()
        .contains("sys_enter_{ptrace"));
    // The unreadable sockaddr reached the daemon's log through aya-log.
    let log = daemon.log_text();
    assert!(
        log.contains("cilock: reading a sockaddr of 16 bytes failed"),
        "kernel-side warning not forwarded:\n{log}"
    );
}

/// The cgroup2 mount point.
fn cgroup_root() -> PathBuf {
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

#[test]
fn environ_and_memory_reads_and_leaving_the_step() {
    let work = tempdir();
    let w = work.path();
    let daemon = Daemon::start("ebpf");
    // A process outside the step whose environment and memory are read.
    let mut victim = Bg(Command::new("sleep")
        .arg("60")
        .env("CILOCK_VICTIM_SECRET", "s3cr3t")
        .spawn()
        .unwrap());
    let vpid = victim.0.id();
    let out_cg = cgroup_root().join(format!("cilock-test-out.{}", std::process::id()));
    std::fs::create_dir_all(&out_cg).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            // Move anything left back to the root, then remove.
            if let Ok(p) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
                for pid in p.lines() {
                    let _ = Command::new("kill").arg("-9").arg(pid).status();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(out_cg.clone());
    let script = format!(
        "cat /proc/{vpid}/environ > /dev/null\n\
         cat /proc/self/environ > /dev/null\n\
         {py} -c 'f = open(\"/proc/{vpid}/mem\", \"rb\"); f.close()'\n\
         sleep 30 > /dev/null 2>&1 &\n\
         echo \"left=$!\"\n\
         echo $! > {procs}\n\
         echo \"shell=$$\"\n",
        py = python(),
        procs = out_cg.join("cgroup.procs").display()
    );
    let att = run_step(&daemon, "env", w, &script);
    let stdout = std::fs::read_to_string(w.join("env.stdout")).unwrap();
    let field = |k: &str| -> i64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let (left, shell) = (field("left"), field("shell"));
    let cr = command_run(&att);
    let procs = processes(&cr);

    let with = |detail: &str| -> Vec<(i64, String, String)> {
        procs
            .iter()
            .flat_map(|p| {
                events(p)
                    .into_iter()
                    .filter(|e| e["detail"].as_str().is_some_and(|d| d.contains(detail)))
                    .map(|e| {
                        (
                            p["processid"].as_i64().unwrap(),
                            p["program"].as_str().unwrap_or("").to_string(),
                            e["path"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let env_other = with("another process's environment");
    assert_eq!(env_other.len(), 1, "{env_other:?}");
    assert!(env_other[0].1.ends_with("/cat"));
    assert_eq!(env_other[0].2, format!("/proc/{vpid}/environ"));
    let env_own = with("its own environment");
    assert_eq!(env_own.len(), 1, "{env_own:?}");
    assert_eq!(env_own[0].2, "/proc/self/environ");
    let mem = with("another process's memory");
    assert_eq!(mem.len(), 1, "{mem:?}");
    assert_eq!(mem[0].2, format!("/proc/{vpid}/mem"));
    // The reads are also in openedfiles, as policies expect.
    assert!(procs.iter().any(|p| p["openedfiles"]
        .as_object()
        .is_some_and(|o| o.contains_key("/proc/self/environ"))));

    // Leaving the step.
    let moved = by_pid(&cr, left);
    assert_eq!(moved["leftStep"], true, "{moved}");
    let sh = by_pid(&cr, shell);
    let leave: Vec<Value> = events(&sh)
        .into_iter()
        .filter(|e| e["syscall"] == "cgroup_leave")
        .collect();
    assert_eq!(leave.len(), 1, "{:?}", events(&sh));
    assert_eq!(leave[0]["args"][0].as_i64(), Some(left));
    assert_eq!(cr["trace"]["events"]["cgroup_move"]["captured"], 1);
    victim.0.kill().ok();
}
