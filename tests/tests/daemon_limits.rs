//! The daemon's limits with real users, the real engine and eBPF: one
//! user's connections never stop root or another user; steps are keyed by
//! owner and capped per user; failing begins leak nothing; a begin whose
//! client left is not carried out; a pid reused between the check and the
//! move is never moved into a user's step; a step's cgroup tree is
//! bounded and removed whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cilock_testkit::users::{as_user, cilock_as, Group};
use cilock_testkit::*;
use serde_json::{json, Value};

const ALICE: u32 = 65534;
const BOB: u32 = 65533;

/// Files other users can read and execute: a copy of `cilock` and the
/// Python client below, in the binary's shared directory.
fn test_files() -> &'static Path {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        shared_cilock();
        let py = shared_dir().join("cl.py");
        std::fs::write(&py, CLIENT_PY).unwrap();
        std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
    });
    shared_dir()
}

/// A raw socket client: `req JSON` (one request, prints the reply),
/// `flood IDLE KEEP` (holds IDLE idle connections and KEEP connections
/// that ask for the status every second, reconnecting when refused, until
/// stdin closes), `begin-close JSON SECONDS` (sends a request and hangs up
/// after SECONDS).
const CLIENT_PY: &str = r#"
import json, os, socket, struct, sys, threading, time
P = os.environ["CILOCK_SOCKET"]
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(P); return s
def send(s, o):
    b = json.dumps(o).encode(); s.sendall(struct.pack(">I", len(b)) + b)
def recv(s):
    h = b""
    while len(h) < 4:
        x = s.recv(4 - len(h))
        if not x: return None
        h += x
    n = struct.unpack(">I", h)[0]; d = b""
    while len(d) < n:
        x = s.recv(n - len(d))
        if not x: return None
        d += x
    return json.loads(d)
mode = sys.argv[1]
if mode == "req":
    s = conn(); send(s, json.loads(sys.argv[2])); print(json.dumps(recv(s))); sys.stdout.flush()
elif mode == "begin-close":
    s = conn(); send(s, json.loads(sys.argv[2])); time.sleep(float(sys.argv[3])); s.close()
elif mode == "flood":
    idle, keep = int(sys.argv[2]), int(sys.argv[3])
    held = []
    for _ in range(idle):
        try: held.append(conn())
        except OSError: pass
    stop = threading.Event()
    stats = {"ok": 0, "refused": 0}
    def keeper():
        s = None
        while not stop.is_set():
            try:
                if s is None: s = conn()
                send(s, {"request": "status"}); r = recv(s)
                if r is None or r.get("reply") == "error":
                    stats["refused"] += 1; s.close(); s = None; time.sleep(0.2)
                else:
                    stats["ok"] += 1; time.sleep(1)
            except OSError:
                stats["refused"] += 1; s = None; time.sleep(0.2)
    ts = [threading.Thread(target=keeper, daemon=True) for _ in range(keep)]
    for t in ts: t.start()
    time.sleep(3)
    print("flooding", len(held), json.dumps(stats)); sys.stdout.flush()
    sys.stdin.read()
    stop.set()
    print("stats", json.dumps(stats)); sys.stdout.flush()
"#;

/// One raw request as `uid` (root: `None`), through the Python client.
fn request_as(d: &Daemon, user: Option<(u32, u32)>, req: &Value) -> Value {
    let mut c = match user {
        Some((uid, gid)) => as_user(uid, gid),
        None => Command::new("env"),
    };
    let o = c
        .arg(python())
        .arg(test_files().join("cl.py"))
        .arg("req")
        .arg(req.to_string())
        .env("CILOCK_SOCKET", &d.socket)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory owned by `uid`.
fn workdir_for(uid: u32, gid: u32) -> tempfile::TempDir {
    let w = tempdir();
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(w.path(), Some(uid), Some(gid)).unwrap();
    w
}

/// A long-running process of `uid`.
fn sleeper(uid: u32, gid: u32, secs: u32) -> Child {
    as_user(uid, gid)
        .args(["--", "sleep", &secs.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn begin_args<'a>(step: &'a str, pid: &'a str, wd: &'a str) -> Vec<&'a str> {
    vec![
        "step",
        "begin",
        "--step",
        step,
        "--pid",
        pid,
        "--workdir",
        wd,
    ]
}

/// Begins and ends a step as root (a root `sleep` for the target).
fn root_round_trip(d: &Daemon, step: &str) {
    let w = tempdir();
    let wd = w.path().to_str().unwrap();
    let job = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = job.id().to_string();
    let o = d.cilock(&begin_args(step, &pid, wd));
    assert!(o.status.success(), "root begin: {}", stderr(&o));
    let att = w.path().join("att.json");
    let o = d.cilock(&[
        "step",
        "end",
        "--step",
        step,
        "--kill",
        "-o",
        att.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "root end: {}", stderr(&o));
    verify_with_python(&att, &d.pubkey);
    kill(job);
}

/// Begins and ends a step as `uid`.
fn user_round_trip(d: &Daemon, uid: u32, gid: u32, step: &str) {
    let w = workdir_for(uid, gid);
    let wd = w.path().to_str().unwrap();
    let job = sleeper(uid, gid, 60);
    let pid = job.id().to_string();
    let o = cilock_as(d, uid, gid, &[gid], &begin_args(step, &pid, wd));
    assert!(o.status.success(), "uid {uid} begin: {}", stderr(&o));
    let att = w.path().join("att.json");
    let o = cilock_as(
        d,
        uid,
        gid,
        &[gid],
        &[
            "step",
            "end",
            "--step",
            step,
            "--kill",
            "-o",
            att.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "uid {uid} end: {}", stderr(&o));
    verify_with_python(&att, &d.pubkey);
    kill(job);
}

fn daemon_pid(d: &Daemon) -> u32 {
    // The daemon is the cilock-daemon process started with this config.
    let config = d.socket.parent().unwrap().join("cilock.toml");
    let config = config.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("cilock-daemon") && cmd.contains(config)
        })
        .expect("daemon pid")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn subdirs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

/// The cgroup a process is in.
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// Sends frames on one connection and reads a reply for each.
fn raw_session(socket: &Path, reqs: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut out = Vec::new();
    for r in reqs {
        let b = r.to_string();
        s.write_all(&(b.len() as u32).to_be_bytes()).unwrap();
        s.write_all(b.as_bytes()).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).unwrap();
        out.push(serde_json::from_slice(&reply).unwrap());
    }
    out
}

#[test]
fn one_users_connection_flood_stops_neither_root_nor_another_user() {
    let g = Group::create("clklc");
    let d = Daemon::start_with("ebpf", &format!("group = {:?}", g.name));
    // alice: 200 idle connections and 128 keep-alive ones.
    let mut flood = as_user(ALICE, g.gid)
        .arg(python())
        .arg(test_files().join("cl.py"))
        .args(["flood", "200", "128"])
        .env("CILOCK_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(flood.stdout.take().unwrap()).lines();
    let first = lines.next().expect("flood report").unwrap();
    assert!(first.starts_with("flooding"), "{first}");
    // Meanwhile root and bob are served.
    for i in 0..3 {
        let st = request_as(&d, None, &json!({"request": "status"}));
        assert_eq!(st["reply"], "status", "{st}");
        root_round_trip(&d, &format!("root{i}"));
        let st = request_as(&d, Some((BOB, g.gid)), &json!({"request": "status"}));
        assert_eq!(st["reply"], "status", "{st}");
        user_round_trip(&d, BOB, g.gid, &format!("bob{i}"));
    }
    drop(flood.stdin.take());
    let stats = lines.next().expect("flood stats").unwrap();
    flood.wait().unwrap();
    // alice herself was refused (too-many), not just slow.
    let v: Value = serde_json::from_str(stats.strip_prefix("stats ").unwrap()).unwrap();
    assert!(v["refused"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        d.log_text().contains("max_connections_per_user"),
        "no refusal logged"
    );
}

#[test]
fn steps_are_keyed_by_owner_and_capped_per_user() {
    let g = Group::create("clkls");
    let d = Daemon::start_with(
        "ebpf",
        &format!("group = {:?}\nmax_steps_per_user = 3", g.name),
    );
    let wa = workdir_for(ALICE, g.gid);
    let wb = workdir_for(BOB, g.gid);
    let (wda, wdb) = (wa.path().to_str().unwrap(), wb.path().to_str().unwrap());
    let mut jobs = Vec::new();
    for step in ["a1", "a2", "build"] {
        let j = sleeper(ALICE, g.gid, 300);
        let o = cilock_as(
            &d,
            ALICE,
            g.gid,
            &[g.gid],
            &begin_args(step, &j.id().to_string(), wda),
        );
        assert!(o.status.success(), "{step}: {}", stderr(&o));
        jobs.push(j);
    }
    // The fourth is refused: too-many.
    let j4 = sleeper(ALICE, g.gid, 300);
    let pid4 = j4.id().to_string();
    let o = cilock_as(&d, ALICE, g.gid, &[g.gid], &begin_args("a4", &pid4, wda));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("TooMany"), "{}", stderr(&o));
    assert!(stderr(&o).contains("max_steps_per_user"), "{}", stderr(&o));
    let r = request_as(
        &d,
        Some((ALICE, g.gid)),
        &json!({"request": "begin-step", "step": "a4", "pid": j4.id(), "workdir": wda}),
    );
    assert_eq!(r["kind"], "too-many", "{r}");
    // bob may have a `build` too, and root still begins.
    let jb = sleeper(BOB, g.gid, 300);
    let o = cilock_as(
        &d,
        BOB,
        g.gid,
        &[g.gid],
        &begin_args("build", &jb.id().to_string(), wdb),
    );
    assert!(o.status.success(), "bob build: {}", stderr(&o));
    root_round_trip(&d, "build-root");
    // Each user sees only their own steps; root sees all.
    let st = request_as(&d, Some((ALICE, g.gid)), &json!({"request": "status"}));
    assert_eq!(st["steps"], json!(["a1", "a2", "build"]), "{st}");
    let st = request_as(&d, Some((BOB, g.gid)), &json!({"request": "status"}));
    assert_eq!(st["steps"], json!(["build"]), "{st}");
    let st = request_as(&d, None, &json!({"request": "status"}));
    assert_eq!(st["active"].as_array().unwrap().len(), 4, "{st}");
    // bob cannot end alice's steps, even naming her.
    let o = cilock_as(
        &d,
        BOB,
        g.gid,
        &[g.gid],
        &["step", "end", "--step", "a1", "-o", "/dev/null"],
    );
    assert!(stderr(&o).contains("no active step"), "{}", stderr(&o));
    let o = cilock_as(
        &d,
        BOB,
        g.gid,
        &[g.gid],
        &[
            "step",
            "end",
            "--step",
            "build",
            "--owner",
            &ALICE.to_string(),
            "-o",
            "/dev/null",
        ],
    );
    assert!(
        stderr(&o).contains("may only end its own"),
        "{}",
        stderr(&o)
    );
    // Root must say whose `build` it ends.
    let out = tempdir();
    let att = out.path().join("alice-build.json");
    let o = d.cilock(&[
        "step",
        "end",
        "--step",
        "build",
        "-o",
        att.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--owner"), "{}", stderr(&o));
    assert!(!att.exists());
    let o = d.cilock(&[
        "step",
        "end",
        "--step",
        "build",
        "--owner",
        &ALICE.to_string(),
        "-o",
        att.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    verify_with_python(&att, &d.pubkey);
    // alice has a free slot again; bob's `build` is still his.
    let o = cilock_as(&d, ALICE, g.gid, &[g.gid], &begin_args("a4", &pid4, wda));
    assert!(o.status.success(), "{}", stderr(&o));
    let st = request_as(&d, Some((BOB, g.gid)), &json!({"request": "status"}));
    assert_eq!(st["steps"], json!(["build"]), "{st}");
    let batt = wb.path().join("b.json");
    let o = cilock_as(
        &d,
        BOB,
        g.gid,
        &[g.gid],
        &[
            "step",
            "end",
            "--step",
            "build",
            "--kill",
            "-o",
            batt.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for step in ["a1", "a2", "a4"] {
        let att = wa.path().join(format!("{step}.json"));
        let o = cilock_as(
            &d,
            ALICE,
            g.gid,
            &[g.gid],
            &[
                "step",
                "end",
                "--step",
                step,
                "--kill",
                "-o",
                att.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{step}: {}", stderr(&o));
    }
    for j in jobs.into_iter().chain([j4, jb]) {
        kill(j);
    }
}

#[test]
fn failing_begins_leak_no_descriptor_and_no_cgroup() {
    let d = Daemon::start("ebpf");
    let w = tempdir();
    let wd = w.path().to_str().unwrap().to_string();
    // Warm up with one real step, and learn the steps' parent cgroup.
    let job = Command::new("sleep").arg("60").spawn().unwrap();
    let r = raw_session(
        &d.socket,
        [json!({"request": "begin-step", "step": "warm", "pid": job.id(), "workdir": wd})]
            .into_iter(),
    );
    let cg = PathBuf::from(
        r[0]["cgroup"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", r[0])),
    );
    let parent = cg.parent().unwrap().to_path_buf();
    let r = raw_session(
        &d.socket,
        [json!({"request": "end-step", "step": "warm", "kill": true})].into_iter(),
    );
    assert_eq!(r[0]["reply"], "ended", "{}", r[0]);
    kill(job);
    let dpid = daemon_pid(&d);
    let fds_before = fd_count(dpid);
    let cgroups_before = subdirs(&parent);
    assert_eq!(cgroups_before, 0);

    // A zombie passes the checks at the start of a begin (it exists, it is
    // root's) and fails only at the last check, after the cgroup was made
    // and registered with eBPF: the most expensive path to undo.
    let zombie = Command::new("true").spawn().unwrap();
    let zpid = zombie.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{zpid}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        assert!(Instant::now() < deadline, "no zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut gone = 4_000_000u32;
    while Path::new(&format!("/proc/{gone}")).exists() {
        gone += 1;
    }
    let reqs = (0..1500).map(|i| match i % 3 {
        0 => json!({"request": "begin-step", "step": format!("z{i}"), "pid": zpid, "workdir": wd}),
        1 => json!({"request": "begin-step", "step": format!("n{i}"), "pid": gone, "workdir": wd}),
        _ => json!({"request": "begin-step", "step": format!("w{i}"), "pid": zpid, "workdir": "/no/such/dir"}),
    });
    let replies = raw_session(&d.socket, reqs);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["reply"], "error", "begin {i} did not fail: {r}");
    }
    assert!(
        replies[0]["message"].as_str().unwrap().contains("exited"),
        "{}",
        replies[0]
    );
    drop(zombie);
    assert_eq!(subdirs(&parent), cgroups_before, "cgroups leaked");
    let fds_after = fd_count(dpid);
    assert!(
        fds_after <= fds_before + 2,
        "descriptors leaked: {fds_before} before, {fds_after} after"
    );
    // And the daemon still works.
    root_round_trip(&d, "after");
}

/// Size of each of the two sparse files of [`slow_workdir`].
const SLOW_FILE_SIZE: u64 = 512 << 20;

/// A workdir whose material walk takes a while: sparse files are hashed in
/// full.
fn slow_workdir(uid: u32, gid: u32) -> tempfile::TempDir {
    let w = workdir_for(uid, gid);
    for i in 0..2 {
        let f = w.path().join(format!("big{i}"));
        std::fs::File::create(&f).unwrap().set_len(1 << 30).unwrap();
        std::os::unix::fs::chown(&f, Some(uid), Some(gid)).unwrap();
    }
    w
}

/// Waits until the daemon's log contains `needle`.
fn wait_log(d: &Daemon, needle: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !d.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_begin_whose_client_left_leaves_no_step() {
    let d = Daemon::start("ebpf");
    let w = slow_workdir(0, 0);
    let job = Command::new("sleep").arg("300").spawn().unwrap();
    let before = cgroup_of(job.id());
    let req = json!({"request": "begin-step", "step": "left", "pid": job.id(),
                     "workdir": w.path().to_str().unwrap()});
    let st = Command::new(python())
        .arg(test_files().join("cl.py"))
        .args(["begin-close", &req.to_string(), "0.5"])
        .env("CILOCK_SOCKET", &d.socket)
        .status()
        .unwrap();
    assert!(st.success());
    wait_log(&d, "hung up before the step began", 600);
    assert_eq!(cgroup_of(job.id()), before, "the process was moved");
    let st = request_as(&d, None, &json!({"request": "status"}));
    assert_eq!(st["steps"], json!([]), "{st}");
    kill(job);
    root_round_trip(&d, "after");
}

#[test]
fn a_reused_pid_is_never_moved_into_a_users_step() {
    let g = Group::create("clklp");
    let d = Daemon::start_with("ebpf", &format!("group = {:?}", g.name));
    let w = slow_workdir(ALICE, g.gid);
    let wd = w.path().to_str().unwrap().to_string();
    let mut reused = false;
    for attempt in 0..8 {
        // alice's process is the begin's target; it is killed as soon as the
        // daemon has pinned it, while the begin's material walk (2 GiB to
        // hash) is still running.
        let mut victim = sleeper(ALICE, g.gid, 300);
        let p = victim.id();
        let req = json!({"request": "begin-step", "step": format!("pidrace{attempt}"),
                         "pid": p, "workdir": wd});
        let client = as_user(ALICE, g.gid)
            .arg(python())
            .arg(test_files().join("cl.py"))
            .arg("req")
            .arg(req.to_string())
            .env("CILOCK_SOCKET", &d.socket)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_pinned(&d, p);
        victim.kill().unwrap();
        victim.wait().unwrap();
        // As the reviewer did: make a root process take the checked pid.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (p - 1).to_string()).unwrap();
        let root_proc = Command::new("sleep").arg("300").spawn().unwrap();
        let got = root_proc.id() == p;
        reused |= got;
        let before = cgroup_of(root_proc.id());
        let out = client.wait_with_output().unwrap();
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["reply"], "error", "the begin succeeded: {reply}");
        let after = cgroup_of(root_proc.id());
        assert_eq!(after, before, "root's process was moved: {reply}");
        assert!(!after.contains("/u65534."), "{after}");
        kill(root_proc);
        if got {
            // Refused by whichever check sees the reuse first: the owner
            // check right before the move (the pid is root's now), or the
            // pinned pidfd (its process exited).
            let msg = reply["message"].as_str().unwrap();
            assert!(
                msg.contains("exited")
                    || msg.contains(&format!("pid {p} belongs to uid 0, not to uid {ALICE}")),
                "{reply}"
            );
            break;
        }
    }
    assert!(reused, "no root process ever got the checked pid");
    let st = request_as(&d, Some((ALICE, g.gid)), &json!({"request": "status"}));
    assert_eq!(st["steps"], json!([]), "{st}");
}

/// Waits until the daemon holds a pidfd for `pid` (a `Pid:` line in the
/// fdinfo of one of its descriptors).
fn wait_pinned(d: &Daemon, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let fds = format!("/proc/{}/fdinfo", d.pid());
    let want = format!("Pid:\t{pid}");
    loop {
        let pinned = std::fs::read_dir(&fds).unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|s| s.lines().any(|l| l.trim_end() == want))
        });
        if pinned {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never pinned pid {pid}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The first envelope the daemon keeps (`kept/<uid>/`) whose name starts
/// with `prefix`.
fn wait_reaped(d: &Daemon, prefix: &str, secs: u64) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(p) = kept_envelopes(&d.state).into_iter().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        }) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no kept attestation {prefix}*: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_end_whose_client_left_is_completed_and_kept() {
    let d = Daemon::start("ebpf");
    let w = tempdir();
    let wd = w.path().to_str().unwrap();
    let job = Command::new("sleep").arg("300").spawn().unwrap();
    let o = d.cilock(&begin_args("kept", &job.id().to_string(), wd));
    assert!(o.status.success(), "{}", stderr(&o));
    // Products made during the step: hashing them at the end takes a while.
    for i in 0..2 {
        std::fs::File::create(w.path().join(format!("big{i}")))
            .unwrap()
            .set_len(SLOW_FILE_SIZE)
            .unwrap();
    }
    let req = json!({"request": "end-step", "step": "kept", "kill": true});
    let st = Command::new(python())
        .arg(test_files().join("cl.py"))
        .args(["begin-close", &req.to_string(), "0.3"])
        .env("CILOCK_SOCKET", &d.socket)
        .status()
        .unwrap();
    assert!(st.success());
    let kept = wait_reaped(&d, "kept.", 600);
    // Written whole before it is looked at: wait for a valid envelope.
    let deadline = Instant::now() + Duration::from_secs(30);
    while serde_json::from_slice::<Value>(&std::fs::read(&kept).unwrap()).is_err() {
        assert!(Instant::now() < deadline, "kept file never complete");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    verify_with_python(&kept, &d.pubkey);
    assert!(d.log_text().contains("hung up"), "{}", d.log_text());
    let stmt = statement(&kept);
    assert!(stmt["subject"].to_string().contains("big0"), "{stmt}");
    let st = request_as(&d, None, &json!({"request": "status"}));
    assert_eq!(st["steps"], json!([]), "{st}");
    kill(job);
}

#[test]
fn the_daemon_stops_in_time_while_a_request_is_stuck() {
    let d = Daemon::start("ebpf");
    let dpid = daemon_pid(&d);
    let w = tempdir();
    let wd = w.path().to_str().unwrap();
    let job = Command::new("sleep").arg("300").spawn().unwrap();
    let o = d.cilock(&begin_args("stuck", &job.id().to_string(), wd));
    assert!(o.status.success(), "{}", stderr(&o));
    // Products that take minutes to hash: the end's thread is busy.
    for i in 0..16 {
        std::fs::File::create(w.path().join(format!("huge{i}")))
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
    }
    let mut end = d
        .command()
        .args(["step", "end", "--step", "stuck", "-o"])
        .arg(w.path().join("stuck.json"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_log(&d, "request=\"end-step\"", 60);
    std::thread::sleep(Duration::from_secs(2));
    // A second step, active at shutdown: it is ended and kept.
    let job2 = Command::new("sleep").arg("300").spawn().unwrap();
    let w2 = tempdir();
    let o = d.cilock(&begin_args(
        "active",
        &job2.id().to_string(),
        w2.path().to_str().unwrap(),
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let t = Instant::now();
    unsafe { libc::kill(dpid as i32, libc::SIGTERM) };
    // TimeoutStopSec of the shipped unit is 60 s.
    let exited = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    while !exited(dpid) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the daemon did not stop within 60 s:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopped after {:?}", t.elapsed());
    // The end was still running when the daemon stopped.
    assert!(!w.path().join("stuck.json").exists());
    assert!(
        d.log_text()
            .contains("still running after the shutdown grace"),
        "{}",
        d.log_text()
    );
    let kept = wait_reaped(&d, "active.", 5);
    verify_with_python(&kept, &d.pubkey);
    let _ = end.kill();
    let _ = end.wait();
    kill(job);
    kill(job2);
}

/// The job of [`a_steps_cgroup_tree_is_bounded_and_removed_whole`]: from its
/// leaf (`<step>/shell`) it makes a chain `d/d/…` beside the leaf as deep
/// as the kernel lets it, puts a sleeper in the deepest, then as many
/// cgroups in its leaf as it can; prints `step=`, `deep=`, `deep_errno=`,
/// `wide=`, `wide_errno=`, `sleeper=`.
const TREE_PY: &str = r#"
import os, subprocess
cg = open("/proc/self/cgroup").read().split("0::", 1)[1].split("\n")[0]
mount = [l.split(" ")[4] for l in open("/proc/self/mountinfo") if " - cgroup2 " in l][0]
leaf = mount + cg
step = os.path.dirname(leaf)
print("step=" + step)
def mk(p):
    try:
        os.mkdir(p)
        return 0
    except OSError as e:
        return e.errno
p, deep, err = step, 0, 0
while deep < 64:
    err = mk(os.path.join(p, "d"))
    if err:
        break
    p = os.path.join(p, "d")
    deep += 1
print("deep=%d" % deep)
print("deep_errno=%d" % err)
s = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
open(os.path.join(p, "cgroup.procs"), "w").write(str(s.pid))
print("sleeper=%d" % s.pid)
wide, err = 0, 0
while wide < 5000:
    err = mk(os.path.join(leaf, "w%d" % wide))
    if err:
        break
    wide += 1
print("wide=%d" % wide)
print("wide_errno=%d" % err)
"#;

/// `key=VALUE` from a text.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

/// A step's cgroup tree is bounded (`cgroup.max.depth` 8,
/// `cgroup.max.descendants` 1024): past either a job's mkdir fails with
/// EAGAIN. The end removes the whole tree but what is still populated; the
/// sweep removes that once empty, at the deepest level the bound allows.
#[test]
fn a_steps_cgroup_tree_is_bounded_and_removed_whole() {
    let d = Daemon::start("ebpf");
    let w = tempdir();
    std::fs::write(w.path().join("tree.py"), TREE_PY).unwrap();
    let att =
        cilock_testkit::step::run_step(&d, "tree", w.path(), &format!("{} tree.py\n", python()));
    let out = std::fs::read_to_string(w.path().join("tree.stdout")).unwrap();
    assert_eq!(field(&out, "deep"), "8", "{out}");
    assert_eq!(field(&out, "deep_errno"), libc::EAGAIN.to_string(), "{out}");
    // 1024 below the step: its leaf, the chain of 8, and these.
    assert_eq!(field(&out, "wide"), "1015", "{out}");
    assert_eq!(field(&out, "wide_errno"), libc::EAGAIN.to_string(), "{out}");
    assert!(att.exists());
    let step = PathBuf::from(field(&out, "step"));
    let sleeper: i32 = field(&out, "sleeper").parse().unwrap();
    let deepest = (0..8).fold(step.clone(), |p, _| p.join("d"));
    // The end removed the leaf and its 1015 cgroups; the populated chain
    // stays, and the step's cgroup with it.
    assert!(!step.join("shell").exists(), "{}", d.log_text());
    assert_eq!(
        std::fs::read_to_string(deepest.join("cgroup.procs"))
            .unwrap()
            .trim(),
        sleeper.to_string()
    );
    // SAFETY: plain syscall on the sleeper this test's job started.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while step.exists() {
        assert!(
            Instant::now() < deadline,
            "the sweep left {}: {}",
            step.display(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(subdirs(step.parent().unwrap()), 0);
}
