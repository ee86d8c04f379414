//! cilock-cli's integration tests, as ONE test binary: the built `cilock`
//! command line run as a user would (sign, verify, inspect, keygen, run).
//! Shared helpers live in `cilock-testkit` (`cli`, `pki`, `fixtures`).

use std::process::Output;

/// `cilock completions`: bash really completes; every shell gets a script.
mod completions_cli;
/// `cilock doctor`'s input errors.
mod doctor_cli;
/// `cilock inspect`.
mod inspect_cli;
/// `cilock keygen`.
mod keygen_cli;
/// `cilock manpages`: a clean page per command, each long flag on it.
mod manpages_cli;
/// `cilock sign --certificate` and `verify` with root functionaries and timestamps.
mod verify_cert_cli;
/// A two-step supply chain recorded with `cilock run` and checked with `verify`
/// (`cilock run` without a daemon needs the in-process engine).
#[cfg(feature = "embedded")]
mod verify_chain_run;
/// `cilock sign` + `cilock verify`.
mod verify_cli;

/// The `cilock` binary under test.
const CILOCK: &str = env!("CARGO_BIN_EXE_cilock");

/// Runs `cilock ARGS` in the current directory.
fn cilock(args: &[&str]) -> Output {
    cilock_testkit::cli::run(CILOCK, args)
}

/// Runs `cilock ARGS` in `dir` (only `cilock run` needs a directory).
#[cfg(feature = "embedded")]
fn cilock_in(dir: &std::path::Path, args: &[&str]) -> Output {
    cilock_testkit::cli::run_in(CILOCK, dir, args)
}
