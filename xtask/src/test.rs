//! `cargo xtask test`: everything CI checks, from a fresh machine: setup,
//! the whole test suite (unit, integration, end-to-end as root with eBPF),
//! the kernel matrix, and the benchmark smoke run.

use clap::Args;

use crate::util::{cargo, exec, step};

/// `cargo xtask test` options.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip `setup` (prerequisites already installed).
    #[arg(long)]
    pub no_setup: bool,
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

/// Runs the suite.
pub fn run(args: TestArgs) -> anyhow::Result<()> {
    if !args.no_setup {
        crate::setup::run(crate::setup::SetupArgs { check: false })?;
    }
    step("building");
    exec(cargo().args(["build", "--all-targets"]))?;
    step("running the test suite");
    let mut c = cargo();
    c.arg("test");
    c.args(&args.cargo_args);
    exec(&mut c)?;
    Ok(())
}
