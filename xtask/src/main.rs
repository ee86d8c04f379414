//! `cargo xtask <task>`: development and deployment tasks for cilock.
//!
//! One module per task:
//!
//! | task | module | what |
//! |---|---|---|
//! | `setup` | [`setup`] | build prerequisites (apt, nightly rust-src, bpf-linker) and kernel filesystems |
//! | `deb` | [`deb`] | the Debian package `cilock` (cargo-deb): binaries, unit, config, hooks, man pages, completions |
//! | `install` | [`install`] | release binaries, the daemon as a systemd service, config, key, group, runner hooks |
//! | `uninstall` | [`uninstall`] | remove what `install` installed |
//! | `demo` | [`demo`] | a throw-away daemon traces a small build and prints its attestation |
//! | `test` | [`mod@test`] | set up, then every test (root: eBPF, cgroups) |
//! | `fuzz` | [`mod@test`] | the fuzz smoke run alone |
//! | `bench` | [`mod@bench`] (folder) | the overhead benchmark suite, `bench/RESULTS.md` |
//! | `vm-test` | [`vm_test`] (folder) | the capture tests on distribution kernels under QEMU and on this host |
//!
//! Shared helpers (commands, cargo, paths, output) live in [`util`].

mod bench;
mod deb;
mod demo;
mod install;
mod lint;
mod setup;
mod test;
mod uninstall;
mod util;
mod vm_test;

use clap::{Parser, Subcommand};

/// cilock development tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install build prerequisites (apt packages, nightly rust-src,
    /// bpf-linker) and mount tracefs, bpffs and cgroup2 when missing.
    /// Idempotent: every step is skipped when already done.
    Setup(setup::SetupArgs),
    /// Build release binaries and install cilock + cilock-daemon, the
    /// systemd unit, config, signing key, `cilock` group and runner hooks.
    Install(install::InstallArgs),
    /// Build the Debian package target/debian/cilock_VERSION_ARCH.deb
    /// (cargo-deb; `--profile dev`: the debug binaries, into
    /// target/debian/dev/) and print its path.
    Deb(deb::DebArgs),
    /// Set up, start a throw-away daemon, trace a small build as a CI
    /// step and print its signed attestation (needs root).
    Demo(demo::DemoArgs),
    /// Set up, then run every test (needs root: eBPF, cgroups).
    Test(test::TestArgs),
    /// fmt --check, clippy -D warnings (also of the verify-only CLI, which
    /// must link no aya), doc -D warnings: what `test` runs first.
    Lint(lint::LintArgs),
    /// The fuzz smoke run alone: every cargo-fuzz target for a bounded
    /// time (what `test` runs before the suite).
    Fuzz(test::FuzzArgs),
    /// Remove what `install` installed (config and key are kept unless
    /// --purge).
    Uninstall(uninstall::UninstallArgs),
    /// Overhead benchmark suite: workloads untraced, under eBPF, ptrace and
    /// strace, interleaved; writes bench/RESULTS.md (`--quick`: CI smoke run).
    Bench(bench::BenchArgs),
    /// Run the capture tests on real distribution kernels under QEMU
    /// (Debian 12's 6.1 and 6.12) and natively on this host's kernel.
    VmTest(vm_test::VmTestArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(a) => setup::run(a),
        Task::Install(a) => install::run(a),
        Task::Deb(a) => deb::run(a),
        Task::Demo(a) => demo::run(a),
        Task::Test(a) => test::run(a),
        Task::Lint(a) => lint::run(a),
        Task::Fuzz(a) => test::fuzz_smoke(a.time),
        Task::Uninstall(a) => uninstall::run(a),
        Task::Bench(a) => bench::run(a),
        Task::VmTest(a) => vm_test::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
