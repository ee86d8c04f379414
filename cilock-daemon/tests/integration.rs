//! cilock-daemon's integration tests, as ONE test binary: the ptrace
//! backend on real processes, the socket server with an in-test stand-in
//! service, the daemon binary, and the attestor helper. Some tests re-run
//! this binary as another user (`setpriv … --exact <module>::<test>`).
//! Shared helpers live here (`ptrace_common`, `server_support`) when they
//! use the daemon's library, else in `cilock-testkit`.

/// Helpers of the ptrace tests: compile a C program, trace a command.
mod ptrace_common;
/// Helpers of the server tests: stand-in service, framing, peers as other users.
mod server_support;

/// The attestor helper for real, as a user created for the test.
mod attest_helper;
/// `cilock-daemon --manpage`: the section-8 page.
mod manpage;
/// `ptrace::follow` on a running shell loop.
mod ptrace_follow;
/// Network evidence of the ptrace backend against local listeners.
mod ptrace_net;
/// Every suspicious syscall of `programs/suspicious.c` recorded exactly once.
mod ptrace_syscalls;
/// `ptrace::run` as an unprivileged user.
mod ptrace_unpriv;
/// The ptrace backend against `strace -f` ground truth.
mod ptrace_workload;
/// Socket permissions and SO_PEERCRED authentication.
mod server_auth;
/// The TOML configuration and the signing-key permission check.
mod server_config;
/// The `cilock-daemon` binary: config checks, start, readiness, shutdown.
mod server_daemon;
/// Envelopes larger than one frame go through whole.
mod server_envelope;
/// Framing, limits, timeouts, error replies and lifecycle of the server.
mod server_framing;
/// Connection limits with real users.
mod server_limits;
/// The step cgroup layout: shell leaf, kept and swept container cgroups,
/// v1 copies, `--kill`, the cgroup alias (root, eBPF).
mod steps_layout;

/// Not a test: the client side that `server_support::run_as` re-runs as
/// another user (does nothing unless its environment variable is set).
#[test]
fn peer_client_helper() {
    server_support::peer_client_helper();
}
