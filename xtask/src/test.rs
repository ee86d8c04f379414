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
        // The debug binaries the tests use: the smoke run checks evidence,
        // not speed, and a release build would add minutes to CI.
        let bin_dir = crate::util::target_dir().join("debug");
        exec(
            cargo()
                .args(["xtask", "bench", "--quick", "--no-setup", "--bin-dir"])
                .arg(&bin_dir),
        )?;
    }
    step("running the test suite");
    let mut c = cargo();
    // Every test binary runs even after a failure, so the summary is whole.
    c.args(["test", "--no-fail-fast"]);
    c.args(&args.cargo_args);
    let (passed, failed) = run_counting(&mut c)?;
    // One closing line for the whole suite (cargo's last line belongs to
    // whichever test binary ran last, often a doc-test run of 0 tests).
    println!("Summary: {passed} passed, {failed} failed");
    if failed > 0 {
        anyhow::bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and adds up the
/// `test result:` lines of every test binary.
fn run_counting(c: &mut std::process::Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader, Write};
    crate::util::note(format!("$ {}", crate::util::show(c)));
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run cargo test: {e}"))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut stdout = std::io::stdout();
    for line in BufReader::new(out).lines() {
        let line = line?;
        let _ = writeln!(stdout, "{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let part = part
                    .trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ");
                if let Some(n) = part.strip_suffix(" passed") {
                    passed += n.trim().parse::<u64>().unwrap_or(0);
                } else if let Some(n) = part.strip_suffix(" failed") {
                    failed += n.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        anyhow::bail!("cargo test failed ({status})");
    }
    Ok((passed, failed))
}
