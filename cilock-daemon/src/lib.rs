//! cilock's tracing engine and daemon.
//!
//! - [`attest_helper`]: the unprivileged helper process the daemon runs the
//!   attestors in (as the step owner, no capabilities, limits, timeout).
//! - [`cgroup`]: cgroup v2 discovery and per-step cgroups.
//! - [`trace`]: the backend-neutral event model, the per-step recorder that
//!   builds the process table, and the digest cache.
//! - [`backend`]: the eBPF backend (probes loaded once, filtered per step
//!   cgroup in the kernel) and the ptrace fallback (seccomp-filtered).
//! - [`engine`]: steps: begin, end, reap; turns a trace into a command-run
//!   attestation.
//! - [`service`]: the daemon's service: who may begin/end, the reaper,
//!   signing, kept envelopes.
//! - [`kept`]: the store of signed envelopes clients do not have yet
//!   (`cilock step fetch`).
//! - [`unpushed`]: pushes of signed envelopes to the configured OCI
//!   registries, and the retries of those that failed.
//! - [`server`]: the Unix-socket server with SO_PEERCRED authentication.
//! - [`config`]: the daemon's TOML configuration.
//! - [`docker`]: the Docker API proxy that puts a step's containers in
//!   the step's cgroup and records them.
//!
//! The daemon ↔ CLI contract is the `cilock-api` crate. The CLI links this
//! crate only with its `embedded` feature (the default): `cilock run` then
//! uses the same engine in-process when no daemon answers.

pub mod attest_helper;
pub mod backend;
pub mod cgroup;
pub mod config;
pub mod docker;
pub mod engine;
pub mod kept;
pub mod server;
pub mod service;
pub mod trace;
pub mod unpushed;
