//! `cilock doctor`: whether a traced step can run on this host, and what
//! each missing piece costs. Every check is a real probe: files under
//! `/proc` and `/sys` ([`host`]), the socket, group, key and service
//! ([`access`]), and the eBPF program kinds ([`hooks`]: loaded for real as
//! root with the embedded engine, else read from the daemon's `Status`).
//! [`report`] renders the table and `--json`.
//!
//! Exit 0 when a traced step can run (the daemon answers `Status` with a
//! backend, or this is root and the embedded engine can trace here), 1
//! when not; a bad `--config` is an error (2).

mod access;
mod hooks;
mod host;
mod report;

use crate::cli::DoctorArgs;
use report::{Check, Report};

/// Runs the checks, prints them, and returns the exit code.
pub fn doctor(args: DoctorArgs) -> anyhow::Result<u8> {
    let settings = access::Settings::load(args.config.as_deref(), args.socket.as_deref())?;
    let report = examine(&settings);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.ready { 0 } else { 1 })
}

fn examine(settings: &access::Settings) -> Report {
    let root = nix::unistd::geteuid().is_root();
    let (cgroup2, has_cgroup2) = host::cgroup2();
    let mut checks = vec![
        host::kernel(),
        host::btf(),
        host::tracefs(),
        host::bpffs(),
        cgroup2,
    ];
    let (socket, daemon, status) = access::socket(settings);
    let (local_checks, local_backend) = local_hooks(root, status.as_ref(), &settings.socket);
    checks.extend(local_checks);
    let (ptrace, ptrace_ok) = hooks::ptrace();
    checks.push(ptrace);
    checks.push(host::seccomp());
    checks.push(settings.check());
    checks.push(access::group(settings));
    checks.push(socket);
    checks.push(daemon);
    checks.push(access::key(settings));
    checks.push(access::service());

    let daemon_backend = status
        .as_ref()
        .map(|s| s.backend.as_str())
        .filter(|b| !b.is_empty());
    let local = if !has_cgroup2 {
        None
    } else if local_backend {
        Some("ebpf")
    } else if root && cfg!(feature = "embedded") && ptrace_ok {
        Some("ptrace")
    } else {
        None
    };
    let (ready, summary) = match (daemon_backend, local) {
        (Some(b), _) => (
            true,
            format!("ready: the daemon at {} traces steps (backend {b})", settings.socket.display()),
        ),
        (None, Some(b)) => (
            true,
            format!("ready: no daemon answered, but root can trace here with the embedded engine (`cilock run`, backend {b})"),
        ),
        (None, None) => (false, format!("not ready: {}", why_not(&checks, root))),
    };
    Report {
        ready,
        summary,
        checks,
    }
}

/// The hook checks, and whether the embedded engine's eBPF backend loaded.
fn local_hooks(
    root: bool,
    status: Option<&cilock_api::StatusReply>,
    socket: &std::path::Path,
) -> (Vec<Check>, bool) {
    #[cfg(feature = "embedded")]
    if root {
        let l = hooks::local();
        return (l.checks, l.ebpf);
    }
    if let Some(s) = status {
        return (hooks::from_status(s), false);
    }
    let why = if !root {
        format!(
            "loading eBPF programs needs root, and no daemon answered at {} to report its hooks",
            socket.display()
        )
    } else {
        format!("this cilock is built without the embedded engine (verify-only), and no daemon answered at {} to report its hooks", socket.display())
    };
    (hooks::unchecked(&why), false)
}

/// Why no traced step can run, from the checks that failed.
fn why_not(checks: &[Check], root: bool) -> String {
    let failed = |name: &str| {
        checks
            .iter()
            .find(|c| c.name == name && c.status != report::Status::Ok)
            .map(|c| format!("{name}: {}", c.detail))
    };
    let mut why: Vec<String> = ["socket", "group", "cgroup2"]
        .iter()
        .filter_map(|n| failed(n))
        .collect();
    if !root {
        why.push("only root can trace without the daemon".into());
    } else if !cfg!(feature = "embedded") {
        why.push("this cilock has no embedded engine".into());
    } else {
        why.extend(["ebpf-backend", "ptrace"].iter().filter_map(|n| failed(n)));
    }
    why.join("; ")
}
