//! cilock's end-to-end suite, as ONE test binary (ripgrep's `tests/tests.rs`,
//! aya's integration-test): a real daemon, real eBPF, real cgroups, run as
//! root. Helpers live in the `cilock-testkit` crate. Pick a part with a
//! libtest filter, e.g. `cargo test -p cilock-tests --test e2e traced_step::`.
//!
//! Tests of different modules run side by side: every test uses its own
//! daemon (own socket, key, cgroup parent and state directory), its own
//! temporary directories and uniquely named users and groups.

/// Every attack of the security review, replayed by an unprivileged member
/// of the daemon's group.
mod adversarial;
/// Issue #17: sbom and sarif attestors chosen by the trace (real ruff and
/// cyclonedx-py), and Rego gates on them.
mod attestor_selection;
/// Observed versus claimed: what the trace saw beats what the job says.
mod claimed;
/// Issue #15: containers a step runs (docker, BuildKit, rootless podman).
mod containers;
/// Per-user connection, step and request limits with real users.
mod daemon_limits;
/// Who may reach the daemon, own a step and trace which processes.
mod daemon_rules;
/// Digests only of the file the kernel recorded, and only if readable.
mod digest_identity;
/// `cilock doctor` as root, as a member of the daemon's group, as a stranger.
mod doctor;
/// Attestors run without root's powers.
mod helper_isolation;
/// Names that are not text (memfd, long paths, non-UTF-8), both backends.
mod names;
/// Containers and mount namespaces: `container`, `mountNamespace`, unhashed
/// opens of another namespace.
mod namespaces;
/// Network evidence: connections, DNS, TLS SNI, HTTP CONNECT.
mod network;
/// Issue #18: the Debian package installed, upgraded and purged by dpkg in
/// an overlay of this host's `/`.
mod package;
/// The eBPF and ptrace backends record the same workload the same way.
mod parity;
/// Issue #13: no typo, signal, kill, restart or second daemon loses evidence.
mod reliability;
/// `cilock run` through the daemon, embedded eBPF and embedded ptrace.
mod run;
/// `cilock run` waits for what the command left running, in all modes.
mod run_descendants;
/// CI/lock's secretscan policy applied to a stealer-style step.
mod secretscan_policy;
/// Issue #17: SLSA provenance v1 and its Statement v1 export.
mod slsa;
/// A replay of the March 2026 credential-stealer pattern.
mod stealer;
/// Processes leaving and joining a step's cgroup.
mod step_moves;
/// Issue #16: evidence pushed to a real OCI registry and found again.
mod store;
/// Every suspicious syscall recorded once, with the right pid and details.
mod suspicious;
/// Issue #18: the Debian package's unit under systemd as PID 1 (ignored
/// here; the kernel matrix's `@systemd` boot runs it).
mod systemd_unit;
/// A traced step end to end against `strace -f` and Python `cryptography`.
mod traced_step;
/// A written file gets the digest of what its writer left.
mod written_files;
