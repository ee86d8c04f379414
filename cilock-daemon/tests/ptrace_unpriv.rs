//! `ptrace::run` as an unprivileged user (uid 65534): this test binary
//! re-executes itself through `setpriv` in helper mode, traces a small
//! workload there and prints the events as JSON lines.

use std::process::Command;

use cilock_daemon::backend::ptrace::{self, PtraceConfig};

const HELPER_ENV: &str = "CILOCK_PTRACE_UNPRIV_HELPER";

/// Helper mode (does nothing in a normal test run).
#[test]
fn helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let mut cmd = Command::new("/bin/bash");
    cmd.args([
        "-c",
        "grep NoNewPrivs /proc/self/status; cat /etc/hostname > /dev/null; /bin/true; id -u",
    ]);
    let (code, events, out) = crate::ptrace_common::trace(cmd, &PtraceConfig::default());
    println!("STDOUT {}", serde_json::json!(out));
    println!("CODE {code}");
    for e in &events {
        println!("EVENT {}", ptrace::event_to_json(e));
    }
}

#[test]
fn run_works_unprivileged() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "ptrace_unpriv::helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .current_dir("/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut events = Vec::new();
    let mut stdout = String::new();
    for l in text.lines() {
        // The harness may print "test helper ... " before our first line.
        if let Some((_, j)) = l.split_once("EVENT {") {
            let j = format!("{{{j}");
            events.push(serde_json::from_str::<serde_json::Value>(&j).unwrap());
        } else if let Some((_, j)) = l.split_once("STDOUT ") {
            stdout = serde_json::from_str(j).unwrap();
        }
    }
    assert!(text.contains("CODE 0"), "{text}");
    assert!(stdout.contains("65534"), "{stdout}");
    // Unprivileged: the kernel requires no_new_privs for the filter.
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    let exec_true = events
        .iter()
        .any(|e| e["type"] == "exec" && e["filename"] == "/bin/true");
    let open_hostname = events
        .iter()
        .any(|e| e["type"] == "open" && e["path"] == "/etc/hostname");
    assert!(exec_true && open_hostname, "{events:?}");
}
