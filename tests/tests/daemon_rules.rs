//! The daemon's rules with real users and the real engine: only members of
//! its group reach it, a step belongs to the user that began it, a user can
//! only trace its own processes, bad requests get errors while the daemon
//! keeps serving, and steps nobody ends are ended and kept.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cilock_testkit::step::{release, StepJob};
use cilock_testkit::users::{cilock_as, Group};
use cilock_testkit::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A world-readable work directory owned by `uid`.
fn workdir_for(uid: u32, gid: u32) -> tempfile::TempDir {
    let w = tempdir();
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(w.path(), Some(uid), Some(gid)).unwrap();
    w
}

fn raw_request(socket: &Path, body: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    reply
}

#[test]
fn steps_belong_to_their_user_and_bad_requests_do_not_stop_the_daemon() {
    let g = Group::create("clk");
    let mut d = Daemon::start_with("ebpf", &format!("group = {:?}", g.name));
    let (alice, bob, mallory) = (65534, 65533, 65532);
    let w = workdir_for(alice, g.gid);

    // A process of alice's, waiting to be traced.
    let mut target = Command::new("setpriv")
        .args([
            &format!("--reuid={alice}"),
            &format!("--regid={}", g.gid),
            "--clear-groups",
            "sh",
            "-c",
            "read go; cat /etc/hostname",
        ])
        .current_dir(w.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id().to_string();
    let wd = w.path().to_str().unwrap();

    // bob (in the group) may not trace alice's process.
    let o = cilock_as(
        &d,
        bob,
        g.gid,
        &[g.gid],
        &[
            "step",
            "begin",
            "--step",
            "stolen",
            "--pid",
            &pid,
            "--workdir",
            wd,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("belongs to uid"), "{}", stderr(&o));

    // alice may.
    let o = cilock_as(
        &d,
        alice,
        g.gid,
        &[g.gid],
        &[
            "step",
            "begin",
            "--step",
            "owned",
            "--pid",
            &pid,
            "--workdir",
            wd,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // mallory (not in the group) cannot even talk to the daemon.
    let o = cilock_as(
        &d,
        mallory,
        mallory,
        &[],
        &["step", "end", "--step", "owned", "-o", "/tmp/never.json"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(!Path::new("/tmp/never.json").exists());

    // bob may not end alice's step (to him it does not exist). His `-o`
    // is writable by him: the refusal must come from the daemon.
    let bob_dir = tempdir();
    std::fs::set_permissions(bob_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bob_out = bob_dir.path().join("bob.json");
    let o = cilock_as(
        &d,
        bob,
        g.gid,
        &[g.gid],
        &[
            "step",
            "end",
            "--step",
            "owned",
            "-o",
            bob_out.to_str().unwrap(),
        ],
    );
    // Steps are keyed by owner: bob has no step of that name.
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no active step"), "{}", stderr(&o));
    assert!(!bob_out.exists());

    // Garbage on the socket gets an error reply, not a crash.
    for body in [
        &b"{not json"[..],
        br#"{"request":"no-such-request"}"#,
        br#"{"request":"begin-step","step":"../../etc","pid":1}"#,
    ] {
        let reply = String::from_utf8(raw_request(&d.socket, body)).unwrap();
        assert!(
            reply.contains("\"error\""),
            "reply to {:?}: {reply}",
            String::from_utf8_lossy(body)
        );
    }
    let o = d.cilock(&["step", "begin", "--step", "bad/name", "--pid", &pid]);
    assert_eq!(o.status.code(), Some(2));
    assert!(d.alive(), "the daemon died");

    // alice's step still works end to end.
    release(&mut target);
    assert!(target.wait().unwrap().success());
    let att = w.path().join("owned.json");
    let o = cilock_as(
        &d,
        alice,
        g.gid,
        &[g.gid],
        &[
            "step",
            "end",
            "--step",
            "owned",
            "-o",
            att.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    verify_with_python(&att, &d.pubkey);
    let stmt = statement(&att);
    let cr = attestation(&stmt, "/command-run/v0.1");
    assert!(cr["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["openedfiles"].get("/etc/hostname").is_some()));
}

#[test]
fn steps_nobody_ends_are_ended_and_kept_signed() {
    let d = Daemon::start_with("ebpf", "step_idle_timeout = \"1s\"");
    let w = tempdir();
    let mut job = StepJob::new(&d, "forgotten", w.path()).begin("cat /etc/hostname > /dev/null");
    release(&mut job);
    assert!(job.wait().unwrap().success());
    // Nobody calls `step end`: the daemon must end the idle step itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let file = loop {
        if let Some(f) = kept_envelopes(&d.state).into_iter().next() {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no reaped attestation: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("forgotten."));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    verify_with_python(&file, &d.pubkey);
    let stmt = statement(&file);
    let cr = attestation(&stmt, "/command-run/v0.1");
    assert_eq!(cr["trace"]["endedBy"], "idle");
    assert_eq!(cr["trace"]["reaped"], true);
    assert!(cr["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["openedfiles"].get("/etc/hostname").is_some()));
    // The step is gone; `step end` says its attestation is kept and how to
    // fetch it.
    let o = d.cilock(&["step", "end", "--step", "forgotten", "-o", "/dev/null"]);
    assert!(stderr(&o).contains("no active step"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the daemon ended it itself (idle)")
            && stderr(&o).contains("cilock step fetch --id forgotten."),
        "{}",
        stderr(&o)
    );
}

#[test]
fn end_with_kill_lists_and_kills_what_is_still_running() {
    let d = Daemon::start("ebpf");
    let w = tempdir();
    let mut job = StepJob::new(&d, "k", w.path())
        .begin("(setsid sleep 300 </dev/null >/dev/null 2>&1 &); sleep 300");
    release(&mut job);
    // Wait until both sleeps run.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleeps_here = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "sleep")
                    && std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c == w.path())
            })
            .count()
    };
    while sleeps_here() < 2 {
        assert!(Instant::now() < deadline, "sleeps did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let att = w.path().join("k.json");
    let o = d.cilock(&[
        "step",
        "end",
        "--step",
        "k",
        "--kill",
        "-o",
        att.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The job's shell was killed too.
    let st = job.wait().unwrap();
    assert!(!st.success());
    let stmt = statement(&att);
    let cr = attestation(&stmt, "/command-run/v0.1");
    let sleeps: Vec<_> = cr["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["program"].as_str().is_some_and(|x| x.ends_with("/sleep")))
        .collect();
    assert_eq!(sleeps.len(), 2, "{cr}");
    for s in sleeps {
        assert_eq!(s["aliveAtEnd"], true, "{s}");
        assert_eq!(s["exitcode"], 137, "killed with SIGKILL: {s}");
    }
}
