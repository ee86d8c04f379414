//! Suspicious syscalls: each one performed by tests/programs/suspicious.c
//! is recorded exactly once with the right pid.

use std::process::Command;

use crate::ptrace_common::{compile, trace};
use cilock_daemon::backend::ptrace::PtraceConfig;
use cilock_trace::TraceEvent;

#[test]
fn suspicious_syscalls_recorded_once() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = compile("suspicious", tmp.path());
    let me = std::process::id();
    let cfg = PtraceConfig {
        daemon_pid: Some(me),
        ..Default::default()
    };
    let mut cmd = Command::new(&bin);
    cmd.arg(me.to_string());
    let (code, events, out) = trace(cmd, &cfg);
    assert_eq!(code, 0, "{out}");
    let child: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("child="))
        .and_then(|v| v.trim().parse().ok())
        .expect("child pid printed");
    let pid = events
        .iter()
        .find_map(|e| match e {
            TraceEvent::Exec { pid, .. } => Some(*pid),
            _ => None,
        })
        .unwrap();
    let calls: Vec<(u32, String, Vec<i64>, String)> = events
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Syscall { pid, call, .. } => Some((
                *pid,
                call.name().to_string(),
                call.args(),
                call.describe(None),
            )),
            _ => None,
        })
        .collect();
    for name in [
        "memfd_create",
        "ptrace",
        "io_uring_setup",
        "process_vm_readv",
        "bpf",
        "kill",
        "unshare",
    ] {
        let hits: Vec<_> = calls.iter().filter(|c| c.1 == name).collect();
        assert_eq!(hits.len(), 1, "{name}: {calls:?}");
        assert_eq!(hits[0].0, pid, "{name} pid");
        match name {
            "ptrace" => assert_eq!(hits[0].2, vec![libc::PTRACE_ATTACH as i64, child]),
            "process_vm_readv" => assert_eq!(hits[0].2, vec![child]),
            "kill" => assert_eq!(hits[0].2, vec![me as i64, 0]),
            "memfd_create" => assert!(hits[0].3.contains("cilock-test")),
            "bpf" => assert!(hits[0].3.contains("BPF_PROG_LOAD")),
            "unshare" => assert!(hits[0].3.contains("CLONE_NEWUSER")),
            _ => {}
        }
    }
    assert_eq!(calls.len(), 7, "nothing else flagged: {calls:?}");
}
