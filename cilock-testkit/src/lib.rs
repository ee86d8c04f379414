//! Shared helpers of cilock's tests (rustls-test / ripgrep `tests/util.rs`
//! style): every crate's integration-test binary dev-depends on this crate,
//! which depends on no cilock crate, so it sees cilock only from outside —
//! its binaries, its files and its wire bytes.
//!
//! - [`mod@bin`]: paths of the built binaries, temporary directories.
//! - [`deb`]: the Debian package of the debug binaries.
//! - [`daemon`]: a throw-away `cilock-daemon` ([`Daemon`]).
//! - [`step`]: one traced step through a daemon ([`step::StepJob`]).
//! - [`envelope`]: reading envelopes and statements; an independent
//!   signature check.
//! - [`strace`]: ground truth from `strace -f`.
//! - [`net`]: local DNS and TLS peers for the network tests.
//! - [`programs`]: compiling the C test programs.
//! - [`fixtures`]: shell snippets, scripts, checked-in fixtures.
//! - [`cli`]: running the `cilock` command line and reading its output.
//! - [`manpage`]: man pages rendered by groff, their sections and flags.
//! - [`pki`]: a PKI and an RFC 3161 TSA made by the `openssl` CLI.
//! - [`users`]: throw-away users and groups (`useradd`/`groupadd`).
//! - [`docker`]: a private `dockerd` per test, its busybox image, cgroups.
//! - [`podman`]: a throw-away user running rootless podman.
//! - [`registry`]: a throw-away OCI registry (`docker-registry`).
//! - [`pytools`]: PyPI tools (cyclonedx-py, ruff, in-toto-attestation) in a venv.
//!
//! The end-to-end tests need root, a cgroup2 mount, tracefs and BTF: the
//! machine `cargo xtask setup` prepares. They fail (never skip) when those
//! are missing.

pub mod bin;
pub mod cli;
pub mod daemon;
pub mod deb;
pub mod docker;
pub mod envelope;
pub mod fixtures;
pub mod manpage;
pub mod net;
pub mod pki;
pub mod podman;
pub mod programs;
pub mod pytools;
pub mod registry;
pub mod step;
pub mod strace;
pub mod users;

pub use bin::{bin, shared_cilock, shared_dir, tempdir};
pub use daemon::{kept_envelopes, keygen, Daemon};
pub use envelope::{attestation, check_file_open_hook, python, statement, verify_with_python};
pub use fixtures::{sh, sha256sum, wait_for, write_script};
pub use strace::{strace_truth, StraceTruth};
