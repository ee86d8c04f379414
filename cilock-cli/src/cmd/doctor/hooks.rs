//! Which eBPF hooks the daemon can use, one check per program kind: as
//! root with the embedded engine, by loading the daemon's real programs
//! (`cilock_daemon::backend::ebpf::probe`); otherwise from the hooks the
//! running daemon reports in its `Status` reply; otherwise not checked.
//! Also `ptrace`, the fallback backend.

use cilock_api::StatusReply;

use super::report::{Check, Status};

/// The check names, in report order.
pub const NAMES: [&str; 6] = [
    "hook-ringbuf",
    "hook-tracepoint",
    "hook-raw-tracepoint",
    "hook-fexit",
    "hook-cgroup-skb",
    "hook-cgroup-sock",
];

/// What losing each kind costs.
fn cost(name: &str) -> &'static str {
    match name {
        "hook-ringbuf" => "no eBPF backend: the daemon falls back to ptrace (every syscall of the step stops; no packet capture, no DNS answers)",
        "hook-tracepoint" => "no eBPF backend (file opens, closes and network calls come from syscall tracepoints): ptrace fallback",
        "hook-raw-tracepoint" => "no eBPF backend (fork, exec, exit and cgroup moves come from raw tracepoints): ptrace fallback",
        "hook-fexit" => "file opens come from the open-syscall tracepoints: files opened through io_uring are not recorded",
        "hook-cgroup-skb" => "no packet capture: DNS queries and answers and TLS server names are not recorded",
        _ => "no socket hooks: network connections, DNS and suspicious syscalls are not recorded (the daemon loads the network probes together)",
    }
}

fn missing(name: &'static str, detail: String) -> Check {
    Check::costs(name, Status::Missing, detail, cost(name))
}

/// The hook checks and `ebpf-backend` from the daemon's `Status` reply:
/// the hooks it attests.
pub fn from_status(s: &StatusReply) -> Vec<Check> {
    if s.backend != "ebpf" {
        let why = format!(
            "the daemon traces with {} (its status reports no eBPF hooks)",
            s.backend
        );
        let mut out: Vec<Check> = NAMES.iter().map(|&n| missing(n, why.clone())).collect();
        out.push(Check::costs(
            "ebpf-backend",
            Status::Missing,
            why,
            cost("hook-ringbuf"),
        ));
        return out;
    }
    let h = &s.hooks;
    let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
    let any = |needle: &str| h.values().any(|v| v.contains(needle));
    let says = |k: &str| format!("daemon: {k} = {}", get(k));
    let mut out = vec![Check::ok(
        "hook-ringbuf",
        "daemon: backend ebpf (its records arrive through the ring buffer)",
    )];
    out.push(if any("tracepoint:") {
        Check::ok("hook-tracepoint", says("written-files"))
    } else {
        missing(
            "hook-tracepoint",
            "daemon: no tracepoint hook in its status".into(),
        )
    });
    out.push(if any("raw_tp:") {
        Check::ok("hook-raw-tracepoint", says("process-exec"))
    } else {
        missing(
            "hook-raw-tracepoint",
            "daemon: no raw tracepoint hook in its status".into(),
        )
    });
    let open = get("file-open");
    out.push(if open.starts_with("fexit:") {
        Check::ok("hook-fexit", says("file-open"))
    } else {
        Check::costs(
            "hook-fexit",
            Status::Warn,
            says("file-open"),
            cost("hook-fexit"),
        )
    });
    out.push(if get("dns-tls").contains("cgroup_skb/") {
        Check::ok("hook-cgroup-skb", says("dns-tls"))
    } else {
        missing("hook-cgroup-skb", says("dns-tls"))
    });
    out.push(if get("network").contains("cgroup/{connect") {
        Check::ok("hook-cgroup-sock", says("network"))
    } else {
        missing("hook-cgroup-sock", says("network"))
    });
    let keys: Vec<&str> = h.keys().map(String::as_str).collect();
    out.push(Check::ok(
        "ebpf-backend",
        format!("daemon: backend ebpf, with hooks for {}", keys.join(", ")),
    ));
    out
}

/// Every hook check and `ebpf-backend` `not-checked`, saying why.
pub fn unchecked(why: &str) -> Vec<Check> {
    NAMES
        .iter()
        .chain(&["ebpf-backend"])
        .map(|&n| Check::costs(n, Status::NotChecked, why, ""))
        .collect()
}

/// What the embedded engine can do here (root only).
#[cfg(feature = "embedded")]
pub struct Local {
    /// The hook checks, then `ebpf-backend`.
    pub checks: Vec<Check>,
    /// The backend loaded.
    pub ebpf: bool,
}

/// Loads the daemon's programs: per kind, then the whole backend.
#[cfg(feature = "embedded")]
pub fn local() -> Local {
    use cilock_daemon::backend::ebpf::probe;
    let mut checks: Vec<Check> = probe::kinds()
        .into_iter()
        .map(|p| {
            let name = p.kind.check_name();
            match (p.outcome, p.kind) {
                (Ok(what), _) => Check::ok(name, what),
                (Err(why), probe::HookKind::Fexit) => {
                    Check::costs(name, Status::Warn, format!("refused: {why}"), cost(name))
                }
                (Err(why), _) => missing(name, why),
            }
        })
        .collect();
    // Steps sit at level 2 below the cgroup2 root (`cilock.steps/<step>`);
    // the level only parametrises the programs, it does not change what loads.
    let ebpf = match probe::backend_hooks(2) {
        Ok(hooks) => {
            let keys: Vec<&str> = hooks.keys().map(String::as_str).collect();
            checks.push(Check::ok(
                "ebpf-backend",
                format!(
                    "the daemon's backend loaded, with hooks for {}",
                    keys.join(", ")
                ),
            ));
            true
        }
        Err(e) => {
            checks.push(Check::costs(
                "ebpf-backend",
                Status::Missing,
                format!("the daemon's backend did not load: {e}"),
                cost("hook-ringbuf"),
            ));
            false
        }
    };
    Local { checks, ebpf }
}

/// `ptrace`: a traced run of /bin/true under the ptrace backend's seccomp
/// filter. Returns the check and whether it worked.
#[cfg(feature = "embedded")]
pub fn ptrace() -> (Check, bool) {
    match cilock_daemon::backend::ptrace::probe() {
        Ok(()) => (
            Check::ok("ptrace", "a traced /bin/true ran under the seccomp filter"),
            true,
        ),
        Err(e) => (
            Check::costs(
                "ptrace",
                Status::Missing,
                e.to_string(),
                "no fallback: where eBPF is unavailable no step can be traced",
            ),
            false,
        ),
    }
}

/// `ptrace` without the embedded engine: nothing to trace with.
#[cfg(not(feature = "embedded"))]
pub fn ptrace() -> (Check, bool) {
    (
        Check::costs("ptrace", Status::NotChecked, "this cilock is built without the embedded engine (verify-only): no tracer to probe with", ""),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(backend: &str, hooks: &[(&str, &str)]) -> StatusReply {
        StatusReply {
            version: "0.1.0".into(),
            backend: backend.into(),
            hooks: hooks
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            steps: vec![],
            active: vec![],
            keyid: "k".into(),
        }
    }

    #[test]
    fn a_daemon_on_tracepoints_warns_about_fexit_with_its_reason() {
        let s = status(
            "ebpf",
            &[
                ("file-open", "tracepoint:syscalls/sys_exit_{openat} + dentry walk (fexit:security_file_open refused: EPERM)"),
                ("process-exec", "raw_tp:sched_process_exec"),
                ("dns-tls", "cgroup_skb/egress on the step cgroup"),
                ("network", "cgroup/{connect,sendmsg,bind}{4,6} on the step cgroup"),
            ],
        );
        let got: Vec<(&str, &str)> = from_status(&s)
            .iter()
            .map(|c| (c.name, c.status.name()))
            .collect();
        assert_eq!(
            got,
            [
                ("hook-ringbuf", "ok"),
                ("hook-tracepoint", "ok"),
                ("hook-raw-tracepoint", "ok"),
                ("hook-fexit", "warn"),
                ("hook-cgroup-skb", "ok"),
                ("hook-cgroup-sock", "ok"),
                ("ebpf-backend", "ok"),
            ]
        );
        assert!(from_status(&s)[3]
            .detail
            .ends_with("(fexit:security_file_open refused: EPERM)"));
    }

    #[test]
    fn a_daemon_without_packet_capture_names_its_dns_tls_hook() {
        let s = status(
            "ebpf",
            &[
                ("file-open", "fexit:security_file_open"),
                ("process-exec", "raw_tp:sched_process_exec"),
                ("written-files", "tracepoint:syscalls/sys_enter_close"),
                ("dns-tls", "unavailable: EPERM"),
                (
                    "network",
                    "cgroup/{connect,sendmsg,bind}{4,6} on the step cgroup",
                ),
            ],
        );
        let checks = from_status(&s);
        let skb = checks.iter().find(|c| c.name == "hook-cgroup-skb").unwrap();
        assert_eq!(
            (skb.status, skb.detail.as_str(), skb.cost.as_str()),
            (
                Status::Missing,
                "daemon: dns-tls = unavailable: EPERM",
                cost("hook-cgroup-skb")
            )
        );
        let sock = checks
            .iter()
            .find(|c| c.name == "hook-cgroup-sock")
            .unwrap();
        assert_eq!(sock.status, Status::Ok);
    }

    /// The names reported without the embedded engine are those of the
    /// daemon's probe kinds, in the same order.
    #[cfg(feature = "embedded")]
    #[test]
    fn the_names_are_the_daemons_probe_kinds() {
        use cilock_daemon::backend::ebpf::probe::HookKind;
        let kinds: Vec<&str> = HookKind::ALL.iter().map(|k| k.check_name()).collect();
        assert_eq!(kinds, NAMES);
    }

    #[test]
    fn a_ptrace_daemon_has_no_hooks() {
        let checks = from_status(&status("ptrace", &[]));
        assert!(
            checks.iter().all(|c| c.status == Status::Missing),
            "{checks:?}"
        );
        assert_eq!(
            checks[0].detail,
            "the daemon traces with ptrace (its status reports no eBPF hooks)"
        );
    }
}
