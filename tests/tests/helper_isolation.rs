//! The daemon runs a job's attestors without root's powers (issue #11,
//! security review #0 and #1): an unprivileged member of the daemon's group
//! begins a step with git, github-action, secretscan and environment, with a
//! fake `git` first on its PATH (and as the repository's fsmonitor) that
//! would leave a marker, and `GITHUB_OUTPUT` pointing at a root-only file.
//! Nothing runs the fake git, the root-only secret never reaches the
//! envelope, and the envelope verifies.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cilock_testkit::step::release;
use cilock_testkit::users::Group;
use cilock_testkit::*;

/// A copy of `cilock` other users can execute.
fn shared_cilock(dir: &Path) -> PathBuf {
    let p = dir.join("cilock");
    std::fs::copy(bin("cilock"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn chown_r(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn job_controlled_attestor_inputs_never_run_or_read_anything_as_root() {
    let g = Group::create("clki");
    let d = Daemon::start_with("ebpf", &format!("group = {:?}", g.name));
    let user = 65534u32; // nobody: a passwd entry, not root
    let top = tempdir();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cilock = shared_cilock(top.path());

    // Where a fake git run by anyone (root or the job) would leave a mark.
    let markdir = top.path().join("mark");
    std::fs::create_dir(&markdir).unwrap();
    std::fs::set_permissions(&markdir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let marker = markdir.join("pwned");

    // Root-only data the job names as its GITHUB_OUTPUT.
    let rootdir = top.path().join("rootonly");
    std::fs::create_dir(&rootdir).unwrap();
    std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = "secret-root-only-4242";
    let out_file = rootdir.join("gh_output");
    std::fs::write(&out_file, format!("A={secret}\n")).unwrap();
    std::fs::set_permissions(&out_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The job's workdir: a real repository whose fsmonitor is the fake git,
    // and a bin/ with the fake git first on the job's PATH.
    let wd = top.path().join("ws");
    std::fs::create_dir(&wd).unwrap();
    let fake = wd.join("bin/git");
    std::fs::create_dir(wd.join("bin")).unwrap();
    write_script(
        &fake,
        &format!("#!/bin/sh\nid >> {}\nexit 1\n", marker.display()),
    );
    std::fs::write(wd.join("main.c"), "int main(void) { return 0; }\n").unwrap();
    sh(&format!(
        "cd {} && git init -q && git add main.c && git -c user.name=t -c user.email=t@example.com commit -qm init && git config core.fsmonitor {}",
        wd.display(),
        fake.display()
    ));
    chown_r(&wd, user, g.gid);

    // The job: its environment is what the daemon reads (/proc/PID/environ).
    let mut job = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={}", g.gid),
            &format!("--groups={}", g.gid),
            "env",
            "-i",
            &format!(
                "PATH={}:/usr/local/bin:/usr/bin:/bin",
                wd.join("bin").display()
            ),
            "GITHUB_ACTIONS=true",
            "GITHUB_ACTION_REPOSITORY=actions/checkout",
            "GITHUB_ACTION_REF=v4",
            &format!("GITHUB_OUTPUT={}", out_file.display()),
            "CILOCK_JOB_MARK=job-env",
            "sh",
            "-c",
            "read go; echo built > out.txt",
        ])
        .current_dir(&wd)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = job.id().to_string();
    let as_user = |args: &[&str]| -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={}", g.gid))
            .arg(format!("--groups={}", g.gid))
            .arg(&cilock)
            .args(args)
            .env("CILOCK_SOCKET", &d.socket)
            .output()
            .expect("setpriv")
    };
    let o = as_user(&[
        "step",
        "begin",
        "--step",
        "isolated",
        "--pid",
        &pid,
        "--workdir",
        wd.to_str().unwrap(),
        "-a",
        "git,github-action,secretscan,environment",
    ]);
    assert!(
        o.status.success(),
        "begin: {}\n{}",
        stderr(&o),
        d.log_text()
    );
    release(&mut job);
    assert!(job.wait().unwrap().success());
    let envelope = wd.join("isolated.json");
    let o = as_user(&[
        "step",
        "end",
        "--step",
        "isolated",
        "-o",
        envelope.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "end: {}\n{}", stderr(&o), d.log_text());

    // Nothing ran the fake git: not as root, not as the job.
    assert!(
        !marker.exists(),
        "the fake git ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    verify_with_python(&envelope, &d.pubkey);
    let stmt = statement(&envelope);
    let text = stmt.to_string();
    assert!(
        !text.contains(secret),
        "the root-only secret reached the envelope"
    );
    assert!(
        !d.log_text().contains(secret),
        "the root-only secret reached the log"
    );

    // The attestors did run, on the job's data, as the job.
    let cr = attestation(&stmt, "/command-run/v0.1");
    let skipped = cr["trace"]["skippedAttestors"].clone();
    assert!(
        skipped.as_array().is_none_or(|a| a.is_empty()),
        "attestors skipped: {skipped}"
    );
    let gha = attestation(&stmt, "/github-action/v0.1");
    assert_eq!(gha["actionref"], "actions/checkout@v4", "{gha}");
    assert!(
        gha["actionoutputs"].get("A").is_none(),
        "GITHUB_OUTPUT was read: {gha}"
    );
    let env = attestation(&stmt, "/environment/v0.1");
    assert_eq!(env["variables"]["CILOCK_JOB_MARK"], "job-env", "{env}");
    let _git = attestation(&stmt, "/git/v0.1");
    let _scan = attestation(&stmt, "/secretscan/v0.1");
    let product = attestation(&stmt, "/product/v0.1");
    assert!(product.get("out.txt").is_some(), "{product}");
    let _ = std::fs::remove_file(&envelope);
}
