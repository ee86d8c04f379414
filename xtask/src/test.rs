//! `cargo xtask test`: everything CI checks, from a fresh machine: setup,
//! the Debian package of the debug binaries (`cargo xtask deb --profile dev
//! --no-build`), the fuzz smoke run (every cargo-fuzz target for a bounded time), the
//! kernel matrix (QEMU), the benchmark smoke run, and the whole test suite
//! (unit, integration, end-to-end as root with eBPF).

use clap::Args;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::util::{cargo, cmd, exec, note, output, step};

/// The toolchain cargo-fuzz runs with (the pinned nightly the eBPF build
/// uses; `-Zsanitizer`/coverage flags need a nightly).
pub const FUZZ_TOOLCHAIN: &str = "+nightly";

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
    /// Skip the fuzz smoke run.
    #[arg(long)]
    pub no_fuzz: bool,
    /// Seconds each fuzz target runs in the fuzz smoke run.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub fuzz_time: u64,
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

/// `cargo xtask fuzz` options.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds each fuzz target runs.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub time: u64,
}

/// Runs the suite.
pub fn run(args: TestArgs) -> anyhow::Result<()> {
    if !args.no_setup {
        crate::setup::run(crate::setup::SetupArgs { check: false })?;
    }
    crate::lint::run(crate::lint::LintArgs {})?;
    step("building");
    exec(cargo().args(["build", "--all-targets"]))?;
    // The Debian package of those debug binaries, once: the kernel
    // matrix's systemd boots and the suite's `package::` test install it
    // (they find it through CILOCK_DEB).
    let deb = crate::deb::build(crate::deb::Profile::Dev, true)?;
    if !args.no_fuzz {
        fuzz_smoke(args.fuzz_time)?;
    }
    if !args.no_vm {
        step("kernel matrix (cargo xtask vm-test)");
        // The guest kernels only: the suite below runs the host column's
        // tests natively anyway.
        exec(
            cargo()
                .args([
                    "xtask",
                    "vm-test",
                    "--kernel",
                    "debian-6.1",
                    "--kernel",
                    "debian-6.12",
                ])
                .env("CILOCK_DEB", &deb),
        )?;
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
    c.args(["test", "--no-fail-fast"]).env("CILOCK_DEB", &deb);
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

/// The fuzz workspace (`fuzz/`).
fn fuzz_dir() -> PathBuf {
    crate::util::workspace_root().join("fuzz")
}

/// `cargo +nightly fuzz …` in `fuzz/`.
fn cargo_fuzz() -> std::process::Command {
    let mut c = cmd("cargo");
    c.arg(FUZZ_TOOLCHAIN).arg("fuzz").current_dir(fuzz_dir());
    // Drop what `cargo run` set for xtask itself: cargo fingerprints the
    // variables a crate reads with `env!` (CARGO_PKG_VERSION, …) from its
    // own environment, so leaving them would rebuild the fuzz workspace
    // whenever it is built once from a shell and once from here.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k == "CARGO"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "CARGO_PRIMARY_PACKAGE"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        {
            c.env_remove(k.as_ref());
        }
    }
    c
}

/// The fuzz targets (`cargo fuzz list`).
fn fuzz_targets() -> anyhow::Result<Vec<String>> {
    let out = output(cargo_fuzz().arg("list")).context(
        "`cargo +nightly fuzz list` failed: is cargo-fuzz installed (`cargo xtask setup`)?",
    )?;
    let targets: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if targets.is_empty() {
        anyhow::bail!(
            "`cargo fuzz list` found no fuzz target in {}",
            fuzz_dir().display()
        );
    }
    Ok(targets)
}

/// Runs every fuzz target for `secs` seconds (no sanitizer: libFuzzer's
/// coverage and Rust's own checks; a dev build, so debug assertions and
/// overflow checks are on and CI does not spend minutes optimising). The seeds in
/// `fuzz/seeds/<target>/` are read, new inputs go to a corpus under the
/// target dir (so the seeds in git stay as they are), and a crash, leak,
/// timeout or out-of-memory fails the run with the reproducer's path.
pub fn fuzz_smoke(secs: u64) -> anyhow::Result<()> {
    step(format!(
        "fuzz smoke run: every fuzz target for {secs} s (cargo-fuzz, no sanitizer)"
    ));
    let targets = fuzz_targets()?;
    note(format!("targets: {}", targets.join(" ")));
    exec(cargo_fuzz().args(["build", "--dev", "--sanitizer", "none"]))?;
    let work = crate::util::target_dir().join("fuzz-smoke");
    let mut failed = Vec::new();
    for t in &targets {
        let corpus = work.join("corpus").join(t);
        let artifacts = work.join("artifacts").join(t);
        for d in [&corpus, &artifacts] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let started = std::time::SystemTime::now();
        let seeds = fuzz_dir().join("seeds").join(t);
        let mut c = cargo_fuzz();
        c.args(["run", "--dev", "--sanitizer", "none", t])
            .arg(&corpus);
        if seeds.is_dir() {
            c.arg(&seeds);
        }
        c.arg("--")
            .arg(format!("-max_total_time={secs}"))
            // One input taking a minute is a finding (a job could stall
            // the daemon with it), not a slow machine.
            .arg("-timeout=60")
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        if let Err(e) = exec(&mut c) {
            // libFuzzer names a reproducer after its content: the same
            // finding again rewrites the same file, so look at the times.
            let new = artifact_files(&artifacts, started);
            if new.is_empty() {
                failed.push(format!("{t}: {e:#}"));
            }
            for p in new {
                failed.push(format!(
                    "{t}: reproducer {} (reproduce: cd fuzz && cargo {FUZZ_TOOLCHAIN} fuzz run --dev --sanitizer none {t} {})",
                    p.display(),
                    p.display()
                ));
            }
        }
    }
    if !failed.is_empty() {
        step("fuzz smoke run failed:");
        for f in &failed {
            note(f);
        }
        anyhow::bail!("{} fuzz target(s) failed", failed.len());
    }
    note(format!(
        "{} fuzz targets ran {secs} s each without a finding",
        targets.len()
    ));
    Ok(())
}

/// Files in a libFuzzer artifact directory written since `since`.
fn artifact_files(dir: &Path, since: std::time::SystemTime) -> Vec<PathBuf> {
    let Ok(d) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    d.flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect()
}
