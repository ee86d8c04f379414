//! `cargo xtask test`: everything CI checks, from a fresh machine: setup,
//! the kernel matrix (QEMU), the benchmark smoke run, and the whole test
//! suite (unit, integration, end-to-end as root with eBPF).

use clap::Args;

use crate::util::{cargo, exec, step};

/// `cargo xtask test` options.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip `setup` (prerequisites already installed).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip the QEMU kernel matrix.
    #[arg(long)]
    pub no_vm: bool,
    /// Skip the benchmark smoke run.
    #[arg(long)]
    pub no_bench: bool,
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
    if !args.no_vm {
        step("kernel matrix (cargo xtask vm-test)");
        exec(cargo().args(["xtask", "vm-test"]))?;
    }
    if !args.no_bench {
        step("benchmark smoke run (cargo xtask bench --quick): runs and loses nothing; not timed");
        exec(cargo().args(["xtask", "bench", "--quick", "--no-setup"]))?;
    }
    step("running the test suite");
    let mut c = cargo();
    c.arg("test");
    c.args(&args.cargo_args);
    exec(&mut c)?;
    Ok(())
}
