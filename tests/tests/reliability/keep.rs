//! Reliability: keep. The daemon keeps every envelope it signs until its
//! client has written it (`state_dir/kept/<uid>/`); `cilock step fetch`
//! retrieves what a client never wrote; envelopes of any size reach the
//! client; `step end -o` with a bad path ends nothing.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Output, Stdio};

use cilock_testkit::users::{as_user, cilock_as, Group};
use cilock_testkit::*;

use cilock_testkit::step::{begin_job, command_run, end_step, release};

/// The trace backend does not matter here; ptrace daemons start fastest.
const BACKEND: &str = "ptrace";

const ALICE: u32 = 65534;
const BOB: u32 = 65533;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the job's script (writes "go" to the shell) and waits for it.
fn run_job(mut job: std::process::Child) {
    release(&mut job);
    assert!(job.wait().unwrap().success());
}

#[test]
fn end_to_an_unwritable_output_fails_and_the_step_stays_active() {
    let d = Daemon::start(BACKEND);
    let w = tempdir();
    let job = begin_job(
        &d,
        "badout",
        w.path(),
        "cat /etc/hostname > /dev/null",
        Stdio::null(),
    );
    let o = d.cilock(&["step", "end", "--step", "badout", "-o", "/nodir/x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nodir"), "{}", stderr(&o));
    assert!(!Path::new("/nodir").exists());
    // Nothing was ended, so nothing was signed or kept.
    assert!(kept_envelopes(&d.state).is_empty());
    assert!(
        !d.log_text().contains("request=\"end-step\" step=badout"),
        "{}",
        d.log_text()
    );
    // The step is still active and traces what the job does now.
    run_job(job);
    let att = end_step(&d, "badout", w.path());
    verify_with_python(&att, &d.pubkey);
    let cr = command_run(&att);
    assert_eq!(cr["trace"]["endedBy"], "step end", "{cr}");
    assert!(
        cr["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["openedfiles"].get("/etc/hostname").is_some()),
        "{cr}"
    );
    // Written and acknowledged: the daemon's copy is gone.
    assert!(kept_envelopes(&d.state).is_empty());
}

#[test]
fn a_client_killed_before_acknowledging_leaves_a_fetchable_envelope() {
    let d = Daemon::start(BACKEND);
    let w = tempdir();
    run_job(begin_job(&d, "killed", w.path(), "true", Stdio::null()));
    // The output is a FIFO whose pipe holds 4 KiB: the client blocks
    // writing the envelope, after the daemon sent it and before the client
    // could acknowledge it.
    let fifo = w.path().join("out.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    assert!(unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    let mut end = d
        .command()
        .args(["step", "end", "--step", "killed", "-o"])
        .arg(&fifo)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let queued = || {
        let mut n: libc::c_int = 0;
        unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut n) };
        n
    };
    wait_for(60, "the client writing the envelope", || queued() >= 4096);
    // Kept before the reply was sent.
    let kept = kept_envelopes(&d.state);
    assert_eq!(kept.len(), 1, "{kept:?}");
    end.kill().unwrap();
    end.wait().unwrap();
    drop(reader);
    let kept = kept.into_iter().next().unwrap();
    let kept_bytes = std::fs::read(&kept).unwrap();
    assert!(kept_bytes.len() > 4096);
    let md = std::fs::metadata(&kept).unwrap();
    assert_eq!((md.mode() & 0o777, md.uid()), (0o600, 0));
    let dir = std::fs::metadata(kept.parent().unwrap()).unwrap();
    assert_eq!((dir.mode() & 0o777, dir.uid()), (0o700, 0));
    let id = kept.file_stem().unwrap().to_str().unwrap().to_string();
    assert!(id.starts_with("killed."), "{id}");
    // The step is ended: `step end` says so and how to fetch it.
    let o = d.cilock(&["step", "end", "--step", "killed", "-o", "/dev/null"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("never acknowledged")
            && stderr(&o).contains(&format!("cilock step fetch --id {id} -o FILE")),
        "{}",
        stderr(&o)
    );
    // Listed, then fetched byte for byte.
    let o = d.cilock(&["step", "fetch", "--list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("step end")),
        "{list}"
    );
    let out = w.path().join("fetched.json");
    let o = d.cilock(&[
        "step",
        "fetch",
        "--step",
        "killed",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains(&id), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), kept_bytes);
    verify_with_python(&out, &d.pubkey);
    assert_eq!(statement(&out)["predicate"]["name"], "killed");
    // Acknowledged: deleted; a second fetch finds nothing.
    assert!(kept_envelopes(&d.state).is_empty());
    let o = d.cilock(&["step", "fetch", "--step", "killed", "-o", "/dev/null"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no kept attestation"), "{}", stderr(&o));
}

#[test]
fn a_reaped_step_is_fetched_by_its_owner_only() {
    let g = Group::create("clkeep");
    let d = Daemon::start_with(
        BACKEND,
        &format!("group = {:?}\nstep_idle_timeout = \"1s\"", g.name),
    );
    let w = tempdir();
    std::os::unix::fs::chown(w.path(), Some(ALICE), Some(g.gid)).unwrap();
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let wd = w.path().to_str().unwrap();
    let mut job = as_user(ALICE, g.gid)
        .args(["sh", "-c", "read x; cat /etc/hostname > /dev/null"])
        .current_dir(w.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = job.id().to_string();
    let o = cilock_as(
        &d,
        ALICE,
        g.gid,
        &[g.gid],
        &[
            "step",
            "begin",
            "--step",
            "mine",
            "--pid",
            &pid,
            "--workdir",
            wd,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    drop(job.stdin.take());
    assert!(job.wait().unwrap().success());
    // Nobody ends it: the daemon does (idle), and keeps it for alice.
    wait_for(30, "the idle step's kept envelope", || {
        !kept_envelopes(&d.state).is_empty()
    });
    let kept = kept_envelopes(&d.state).remove(0);
    assert_eq!(
        kept.parent().unwrap(),
        d.state.join("kept").join(ALICE.to_string())
    );
    let kept_bytes = std::fs::read(&kept).unwrap();
    let id = kept.file_stem().unwrap().to_str().unwrap().to_string();
    // Alice's `step end` says the daemon ended it and how to fetch it.
    let o = cilock_as(
        &d,
        ALICE,
        g.gid,
        &[g.gid],
        &["step", "end", "--step", "mine", "-o", "/dev/null"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the daemon ended it itself (idle)")
            && stderr(&o).contains(&format!("cilock step fetch --id {id} -o FILE")),
        "{}",
        stderr(&o)
    );
    // Bob, in the group too, gets nothing of it.
    let o = cilock_as(
        &d,
        BOB,
        g.gid,
        &[g.gid],
        &["step", "fetch", "--step", "mine", "-o", "/dev/null"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no kept attestation"), "{}", stderr(&o));
    let alice = ALICE.to_string();
    for args in [
        &[
            "step",
            "fetch",
            "--step",
            "mine",
            "--owner",
            &alice,
            "-o",
            "/dev/null",
        ][..],
        &[
            "step",
            "fetch",
            "--id",
            &id,
            "--owner",
            &alice,
            "-o",
            "/dev/null",
        ][..],
        &["step", "fetch", "--list", "--owner", &alice][..],
    ] {
        let o = cilock_as(&d, BOB, g.gid, &[g.gid], args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("may only fetch its own"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = cilock_as(
        &d,
        BOB,
        g.gid,
        &[g.gid],
        &["step", "fetch", "--id", &id, "-o", "/dev/null"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = cilock_as(&d, BOB, g.gid, &[g.gid], &["step", "fetch", "--list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("mine"));
    let o = as_user(BOB, g.gid).arg("cat").arg(&kept).output().unwrap();
    assert!(!o.status.success(), "bob read the kept file");
    // Root sees it, with its owner.
    let o = d.cilock(&["step", "fetch", "--list"]);
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains(&alice) && l.contains("idle")),
        "{list}"
    );
    // Alice fetches it: the bytes the daemon kept, signed, in her file.
    let out = w.path().join("mine.json");
    let o = cilock_as(
        &d,
        ALICE,
        g.gid,
        &[g.gid],
        &[
            "step",
            "fetch",
            "--step",
            "mine",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the daemon ended this step itself (idle)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), kept_bytes);
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), ALICE);
    verify_with_python(&out, &d.pubkey);
    let cr = command_run(&out);
    assert_eq!(cr["trace"]["endedBy"], "idle", "{cr}");
    assert!(kept_envelopes(&d.state).is_empty());
}

#[test]
fn a_large_envelope_of_cilock_run_is_streamed_whole() {
    let d = Daemon::start(BACKEND);
    let w = tempdir();
    // 8 MiB of NUL bytes on stdout: each is 6 bytes of JSON (`\u0000`) in
    // the claimed stdout, and the payload is base64: an envelope of tens
    // of MB, larger than the default request frame (64 MiB) at this size.
    let out = w.path().join("big.json");
    let o = d
        .command()
        .args(["run", "--step", "big", "-o"])
        .arg(&out)
        .args(["--", "head", "-c", "8388608", "/dev/zero"])
        .current_dir(w.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        d.log_text().contains("request=\"end-step\" step=big"),
        "not through the daemon"
    );
    let len = std::fs::metadata(&out).unwrap().len();
    assert!(len > 8_000_000, "envelope of only {len} bytes");
    verify_with_python(&out, &d.pubkey);
    // `cilock run` acknowledged it: the daemon's copy is gone.
    assert!(kept_envelopes(&d.state).is_empty());
}
