//! `ptrace::follow` on a running shell loop: later children are picked up,
//! and after `stop` the loop keeps running untraced.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cilock_daemon::backend::ptrace::{self, PtraceConfig};
use cilock_trace::TraceEvent;

fn status_field(pid: u32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

#[test]
fn follow_picks_up_children_and_detaches() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker.txt");
    std::fs::write(&marker, "x").unwrap();
    let mut child = Command::new("/bin/bash")
        .arg("-c")
        .arg(format!(
            "while true; do cat {} > /dev/null; sleep 0.1; done",
            marker.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));

    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        s2.store(true, Ordering::Relaxed);
    });
    let mut events = Vec::new();
    ptrace::follow(pid, &PtraceConfig::default(), stop, |e| events.push(e)).unwrap();
    t.join().unwrap();

    let forks = events
        .iter()
        .filter(|e| matches!(e, TraceEvent::Fork { parent, .. } if *parent == pid))
        .count();
    let cats = events
        .iter()
        .filter(|e| matches!(e, TraceEvent::Exec { exe: Some(x), .. } if x.ends_with("/cat")))
        .count();
    let opens = events
        .iter()
        .filter(
            |e| matches!(e, TraceEvent::Open { path, .. } if *path == marker.display().to_string()),
        )
        .count();
    assert!(forks >= 3, "forks {forks}");
    assert!(cats >= 3 && opens >= 3, "cats {cats} opens {opens}");

    // Detached and still running (not stopped, not traced).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_field(pid, "TracerPid:").as_deref(), Some("0"));
    let state = status_field(pid, "State:").unwrap();
    assert!(state.starts_with('S') || state.starts_with('R'), "{state}");
    assert!(child.try_wait().unwrap().is_none(), "loop still running");
    // Its children are not traced either.
    std::thread::sleep(Duration::from_millis(300));
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for k in kids.split_whitespace() {
        let k: u32 = k.parse().unwrap();
        if let Some(tp) = status_field(k, "TracerPid:") {
            assert_eq!(tp, "0", "child {k} still traced");
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
