//! Containers and mount namespaces in a step's evidence (issue #15): a
//! process that execs in another mount namespace than the daemon's is
//! attested with `mountNamespace`, and the files it opens are listed as
//! that namespace names them, never hashed at the daemon's path (a bind
//! mount makes the two differ here); a process moved by a process outside
//! the step into a sub-cgroup named like a container id gets that
//! `container`, and so do its children. Ground truth: `/proc/self/ns/mnt`
//! read inside the namespace, the cgroup the test itself created.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cilock_testkit::step::*;
use cilock_testkit::*;
use serde_json::Value;

/// The cgroup2 mount point.
fn cgroup_mount() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        if let Some((pre, post)) = l.split_once(" - ") {
            if post.split_whitespace().next() == Some("cgroup2") {
                return PathBuf::from(pre.split(' ').nth(4).unwrap());
            }
        }
    }
    panic!("no cgroup2 mount");
}

/// The step cgroup of the step process `pid` (its own cgroup, or the
/// parent of its `shell` leaf).
fn step_cgroup(pid: u32) -> PathBuf {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = s.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let p = cgroup_mount().join(rel.trim_start_matches('/'));
    if p.file_name().is_some_and(|n| n == "shell") {
        p.parent().unwrap().to_path_buf()
    } else {
        p
    }
}

/// The inode of a `/proc/…/ns/mnt` link target `mnt:[N]`.
fn ns_inode(link: &str) -> u64 {
    link.trim()
        .strip_prefix("mnt:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a mount namespace link: {link:?}"))
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `unshare -m`, a bind mount over a file inside the new namespace, and a
/// read of it: the reader is attested in that namespace, the file unhashed
/// with a reason naming it, the host's digest of the path nowhere.
fn other_namespace(backend: &str) {
    let work = tempdir();
    let w = work.path();
    std::fs::write(w.join("seen.txt"), b"the host's file at this path\n").unwrap();
    std::fs::write(w.join("other.txt"), b"what the namespace shows there\n").unwrap();
    let daemon = Daemon::start(backend);
    let host_ns = ns_inode(
        &std::fs::read_link(format!("/proc/{}/ns/mnt", daemon_pid(&daemon)))
            .unwrap()
            .to_string_lossy(),
    );
    let script = format!(
        "cat seen.txt > /dev/null\n\
         unshare -m --propagation private sh -c '\
           readlink /proc/self/ns/mnt > ns.txt; \
           mount --bind {w}/other.txt {w}/seen.txt; \
           cat {w}/seen.txt > inside.txt; \
           echo $$ > sh.pid'\n",
        w = w.display()
    );
    let att = run_step(&daemon, "ns", w, &script);
    verify_with_python(&att, &daemon.pubkey);
    let cr = command_run(&att);
    let ns = ns_inode(&std::fs::read_to_string(w.join("ns.txt")).unwrap());
    assert_ne!(ns, host_ns, "unshare -m made no new namespace");
    // The bind mount really showed another file inside.
    assert_eq!(
        std::fs::read_to_string(w.join("inside.txt")).unwrap(),
        "what the namespace shows there\n"
    );
    let seen = w.join("seen.txt");
    let seen = seen.to_str().unwrap();
    let host_digest = sha256_hex(Path::new(seen));
    let text = pretty(&cr);
    let sh_pid: i64 = std::fs::read_to_string(w.join("sh.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sh = by_pid(&cr, sh_pid);
    assert_eq!(sh["mountNamespace"], ns, "{}", pretty(&sh));
    // The reader: a child of that shell, in the same namespace; the path as
    // the namespace names it, no digest, the reason naming the namespace.
    let readers: Vec<Value> = processes(&cr)
        .into_iter()
        .filter(|p| p["mountNamespace"] == ns && p["openedfiles"].get(seen).is_some())
        .collect();
    assert!(!readers.is_empty(), "no reader in mnt:[{ns}]:\n{text}");
    for r in &readers {
        // The host file's digest is nowhere in what that namespace did.
        assert!(!pretty(r).contains(&host_digest), "{}", pretty(r));
        assert_eq!(
            r["openedfiles"][seen],
            serde_json::json!({}),
            "{}",
            pretty(r)
        );
        let u = r["unhashedOpens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["path"] == seen)
            .unwrap_or_else(|| panic!("{seen} not in unhashedOpens: {}", pretty(r)));
        let reason = u["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("opened in another mount namespace (mnt:[{ns}])")),
            "{reason}"
        );
    }
    // The step's own first read, in the daemon's namespace: hashed, no
    // mountNamespace.
    let host_reader = processes(&cr)
        .into_iter()
        .find(|p| p.get("mountNamespace").is_none() && p["openedfiles"].get(seen).is_some())
        .unwrap_or_else(|| panic!("no host reader: {text}"));
    assert_eq!(
        host_reader["openedfiles"][seen]["sha256"],
        host_digest,
        "{}",
        pretty(&host_reader)
    );
    // Nobody is in a namespace other than the host's and the new one.
    for p in processes(&cr) {
        if let Some(n) = p.get("mountNamespace") {
            assert_eq!(*n, ns, "{}", pretty(&p));
        }
    }
}

#[test]
fn another_mount_namespace_on_ebpf() {
    other_namespace("ebpf");
}

#[test]
fn another_mount_namespace_on_ptrace() {
    other_namespace("ptrace");
}

/// A container-like cgroup under the step (what runc makes for a container
/// whose cgroup parent is the step): a process outside the step moved into
/// it by another process outside the step (this test) is attested with
/// `container` = the cgroup's name, and so are its children; the step's
/// own processes have none; the container is listed, seen only in the
/// trace.
#[test]
fn container_cgroup_under_the_step_on_ebpf() {
    let work = tempdir();
    let w = work.path();
    std::fs::write(w.join("ctr.txt"), b"read in the container\n").unwrap();
    std::fs::write(w.join("own.txt"), b"read by the step\n").unwrap();
    let daemon = Daemon::start("ebpf");
    let mut job = begin_job(
        &daemon,
        "ctr",
        w,
        "cat own.txt > /dev/null; echo $$ > job.pid\n\
         while [ ! -e job.done ]; do sleep 0.05; done\n",
        std::process::Stdio::inherit(),
    );
    release(&mut job);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.join("job.pid").exists() {
        assert!(Instant::now() < deadline, "the job did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let step = step_cgroup(job.id());
    let id: String = {
        use std::fmt::Write;
        let mut s = String::new();
        for i in 0..32u32 {
            let _ = write!(s, "{:02x}", (i * 37 + std::process::id()) & 0xff);
        }
        s
    };
    let ctr = step.join(&id);
    std::fs::create_dir(&ctr).unwrap();
    // The outsider: this test's child, in no step, waiting to be moved.
    let mut outsider = Command::new("sh")
        .arg("-c")
        .arg("read go; cat ctr.txt > /dev/null; sh -c 'cat ctr.txt > /dev/null; echo $$ > child.pid'")
        .current_dir(w)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(ctr.join("cgroup.procs"), outsider.id().to_string()).unwrap();
    // The daemon names the cgroup while it exists (a container's lives for
    // as long as it runs): give its consumer time before the rmdir below.
    std::thread::sleep(Duration::from_millis(300));
    release(&mut outsider);
    assert!(outsider.wait().unwrap().success());
    std::fs::remove_dir(&ctr).unwrap();
    std::fs::write(w.join("job.done"), b"").unwrap();
    assert!(job.wait().unwrap().success());
    let att = end_step(&daemon, "ctr", w);
    verify_with_python(&att, &daemon.pubkey);
    let cr = command_run(&att);
    let text = pretty(&cr);
    let o = by_pid(&cr, outsider.id() as i64);
    assert_eq!(o["container"], id.as_str(), "{}", pretty(&o));
    assert_eq!(o["joinedStep"], true);
    let child: i64 = std::fs::read_to_string(w.join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let c = by_pid(&cr, child);
    assert_eq!(c["container"], id.as_str(), "{}", pretty(&c));
    assert_eq!(c["parentpid"], outsider.id() as i64);
    let ctr_txt = w.join("ctr.txt");
    let readers: Vec<Value> = processes(&cr)
        .into_iter()
        .filter(|p| p["openedfiles"].get(ctr_txt.to_str().unwrap()).is_some())
        .collect();
    assert_eq!(readers.len(), 2, "{text}");
    for r in &readers {
        assert_eq!(r["container"], id.as_str(), "{}", pretty(r));
    }
    let job_pid: i64 = std::fs::read_to_string(w.join("job.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(by_pid(&cr, job_pid).get("container").is_none());
    for p in processes(&cr) {
        if p.get("container").is_some() {
            assert_eq!(p["joinedStep"], true, "{}", pretty(&p));
        }
    }
    let cs = cr["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(cs.len(), 1, "{text}");
    assert_eq!(cs[0]["id"], id.as_str());
    assert_eq!(cs[0]["attribution"], "cgroup-parent");
    assert!(cs[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("seen only in the trace"));
    assert!(cs[0].get("aliveAtEnd").is_none());
    assert_nothing_lost(&cr);
}
