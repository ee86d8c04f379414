//! `cilock run`: through the daemon, with the embedded eBPF engine, with
//! the ptrace fallback (also unprivileged). Output passes through and is
//! captured; the command's exit status becomes cilock's.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use cilock_testkit::*;
use serde_json::Value;

const SCRIPT: &str = "echo to-stdout; echo to-stderr >&2; cat /etc/hostname > /dev/null; exit 3";

fn check(
    out: &Output,
    att: &std::path::Path,
    pubkey: &std::path::Path,
    backend: &str,
    via_daemon: bool,
) -> Value {
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("to-stdout"),
        "stdout not passed through"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("to-stderr"),
        "stderr not passed through"
    );
    verify_with_python(att, pubkey);
    let stmt = statement(att);
    let cr = attestation(&stmt, "/command-run/v0.1").clone();
    // exitcode and cmd are observed in every mode (through the daemon: the
    // root's exit and exec argv from the trace).
    assert_eq!(cr["exitcode"], 3);
    assert_eq!(cr["cmd"], serde_json::json!(["sh", "-c", SCRIPT]));
    if via_daemon {
        // The output is the client's capture: a claim, kept apart.
        assert!(cr.get("stdout").is_none(), "{cr}");
        assert_eq!(cr["claimed"]["stdout"], "to-stdout\n");
        assert_eq!(cr["claimed"]["stderr"], "to-stderr\n");
        assert_eq!(cr["claimed"]["exitcode"], 3);
        assert_eq!(
            cr["claimed"]["cmd"],
            serde_json::json!(["sh", "-c", SCRIPT])
        );
        assert_eq!(
            cr["trace"]["observed"],
            serde_json::json!(["cmd", "exitcode"])
        );
    } else {
        assert_eq!(cr["stdout"], "to-stdout\n");
        assert_eq!(cr["stderr"], "to-stderr\n");
        assert!(cr.get("claimed").is_none(), "{cr}");
        assert_eq!(
            cr["trace"]["observed"],
            serde_json::json!(["cmd", "exitcode", "stdout", "stderr"])
        );
    }
    assert_eq!(cr["trace"]["backend"], backend);
    let procs = cr["processes"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["openedfiles"].get("/etc/hostname").is_some()),
        "the traced open is missing: {procs:?}"
    );
    cr
}

#[test]
fn through_the_daemon() {
    let d = Daemon::start("ebpf");
    let w = tempdir();
    let att = w.path().join("a.json");
    let out = d
        .command()
        .args([
            "run",
            "--step",
            "r",
            "-o",
            att.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            SCRIPT,
        ])
        .current_dir(w.path())
        .output()
        .unwrap();
    check(&out, &att, &d.pubkey, "ebpf", true);
}

#[test]
fn embedded_ebpf_and_ptrace() {
    let w = tempdir();
    let (key, pubkey) = keygen(w.path());
    for backend in ["ebpf", "ptrace"] {
        let att = w.path().join(format!("{backend}.json"));
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
                SCRIPT,
            ])
            .env("CILOCK_SOCKET", w.path().join("none.sock"))
            .current_dir(w.path())
            .output()
            .unwrap();
        check(&out, &att, &pubkey, backend, false);
    }
}

#[test]
fn unprivileged_uses_ptrace() {
    let w = tempdir();
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (key, pubkey) = keygen(w.path());
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    let exe = w.path().join("cilock");
    std::fs::copy(bin("cilock"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let att = w.path().join("u.json");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "run",
            "-k",
            key.to_str().unwrap(),
            "--step",
            "r",
            "-o",
            att.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            SCRIPT,
        ])
        .env("CILOCK_SOCKET", w.path().join("none.sock"))
        .current_dir(w.path())
        .output()
        .unwrap();
    let cr = check(&out, &att, &pubkey, "ptrace", false);
    assert!(
        cr["trace"]["reason"]
            .as_str()
            .unwrap()
            .contains("not privileged"),
        "{}",
        cr["trace"]
    );
}

#[test]
fn signal_deaths_and_missing_keys() {
    let w = tempdir();
    let (key, _) = keygen(w.path());
    let att = w.path().join("k.json");
    let out = Command::new(bin("cilock"))
        .args([
            "run",
            "--no-daemon",
            "-k",
            key.to_str().unwrap(),
            "--step",
            "k",
            "-o",
            att.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "kill -9 $$",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(
        attestation(&statement(&att), "/command-run/v0.1")["exitcode"],
        137
    );

    // No daemon and no key: a clear usage error, nothing run.
    let marker = w.path().join("ran");
    let out = Command::new(bin("cilock"))
        .args([
            "run",
            "--step",
            "k",
            "-o",
            "/dev/null",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ])
        .env("CILOCK_SOCKET", w.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-k KEY"));
    assert!(
        !marker.exists(),
        "the command ran without a way to attest it"
    );

    // A command that does not exist: cilock says so and fails.
    let out = Command::new(bin("cilock"))
        .args([
            "run",
            "--no-daemon",
            "-k",
            key.to_str().unwrap(),
            "--step",
            "k",
            "-o",
            att.to_str().unwrap(),
            "--",
            "/nonexistent/cmd",
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}
