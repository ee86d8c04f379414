//! `cargo xtask bench`: the overhead benchmark suite (issue 7).
//!
//! Five workloads (see `bench/README.md`) run untraced, in a step of the
//! eBPF daemon, under the ptrace fallback (`cilock run --no-daemon
//! --backend ptrace`) and under `strace -f`, interleaved over rounds. The
//! open storm also runs *outside* any step while the daemon has an active
//! step, to measure what the attached probes cost everyone else.
//!
//! Every workload runs under `bench/src/timeit.c`, which times only the
//! workload (wall time and `wait4` rusage); the end of a step (`cilock step
//! end`: flush, hashing, attestors, signing) is timed separately. The
//! untraced, ptrace and strace scenarios run while the bench's daemon is
//! stopped, so its attached probes do not slow the baseline.
//!
//! Each run is checked against ground truth (exit status, lost events,
//! processes and files the workload is known to create); a failed check
//! makes the whole command fail. `--quick` runs tiny sizes once: a smoke
//! test for CI that never judges timing.
//!
//! | module | what |
//! |---|---|
//! | [`workload`] | the workloads, their sizes, the prepared workspace |
//! | [`scenario`] | untraced, eBPF step, outside a step, ptrace, strace |
//! | [`daemon`] | the bench's throw-away daemon and local DNS/TLS servers |
//! | [`mod@run`] | one timed run and what it measured |
//! | [`checks`] | ground-truth checks of a run's attestation |
//! | [`stats`] | medians over rounds |
//! | [`report`] | `bench/RESULTS.md` |
//! | [`profile`] | per-program eBPF cost (`bpftool prog`) |
//!
//! This module holds the options and the driver ([`run()`]): prepare, then
//! interleave scenarios over rounds, then check and report.

mod checks;
mod daemon;
mod profile;
mod report;
mod run;
mod scenario;
mod stats;
mod workload;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use serde_json::json;

use crate::util::{self, cmd, note, output, step};

use daemon::{Daemon, Servers};
use profile::profile_pass;
use report::{machine_description, render_report, summary_table, ANALYSIS_MARKER};
use run::{run_one, Run};
use scenario::Sc;
use stats::med;
use workload::{prepare_workdir, Sizes, Wl, ALL_WORKLOADS};

/// `cargo xtask bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Smoke run for CI: tiny sizes, one round; fails if a run failed or an
    /// event was lost, never judges timing.
    #[arg(long)]
    pub quick: bool,
    /// Interleaved rounds [default: 3, or 1 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Only these workloads (comma-separated or repeated): build, open,
    /// fork, pkg, walk.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Use `cilock` and `cilock-daemon` from this directory instead of
    /// building them (`cargo build --release`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Cache (vendored crates, generated tree, compiled workloads) and
    /// scratch directory. Kept between runs.
    #[arg(long, default_value = "/var/tmp/cilock-bench")]
    pub work_dir: PathBuf,
    /// Report file [default: bench/RESULTS.md, or WORK_DIR/RESULTS-quick.md
    /// with --quick].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip the profiling pass (BPF program run-time stats, perf).
    #[arg(long)]
    pub no_profile: bool,
    /// Do not run `cargo xtask setup` and the apt installs first.
    #[arg(long)]
    pub no_setup: bool,
}

fn rm_rf(p: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

/// Runs the suite.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    util::require_root("bench")?;
    let started = Instant::now();
    let workloads: Vec<Wl> = if args.only.is_empty() {
        ALL_WORKLOADS.to_vec()
    } else {
        args.only
            .iter()
            .map(|s| {
                Wl::parse(s)
                    .ok_or_else(|| anyhow!("unknown workload {s:?} (build, open, fork, pkg, walk)"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };

    if !args.no_setup {
        step("prerequisites (cargo xtask setup)");
        crate::setup::run(crate::setup::SetupArgs { check: false })?;
        tools()?;
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => build_binaries()?,
    };
    let mut ctx = prepare_workdir(&args, sizes, &bin_dir)?;
    let machine = machine_description(&bin_dir);
    if workloads.contains(&Wl::Pkg) {
        ctx.servers = Some(Servers::start(&ctx)?);
        let s = ctx
            .servers
            .as_ref()
            .map(|s| (s.dns, s.tls))
            .unwrap_or_default();
        note(format!(
            "local DNS resolver on 127.0.0.1:{} (udp), TLS registry on 127.0.0.1:{}",
            s.0, s.1
        ));
    }

    let mut runs: Vec<Run> = Vec::new();
    let mut idle_rss: Vec<(u64, u64)> = Vec::new();
    let mut heavy_strace = true;
    let raw_path = ctx.work.join(if args.quick {
        "raw-quick.jsonl"
    } else {
        "raw.jsonl"
    });
    let mut raw = std::fs::File::create(&raw_path)?;
    for round in 1..=rounds {
        step(format!("round {round}/{rounds}"));
        // Alternate which half (daemon loaded or not) runs first.
        let daemon_first = round % 2 == 0;
        for half in 0..2 {
            let with_daemon = (half == 0) == daemon_first;
            let daemon = if with_daemon {
                let d = Daemon::start(&ctx, round)?;
                idle_rss.push((d.idle_rss_kib, d.idle_anon_kib));
                note(format!(
                    "daemon pid {} up (idle RSS {} KiB, anonymous {} KiB)",
                    d.pid, d.idle_rss_kib, d.idle_anon_kib
                ));
                writeln!(
                    raw,
                    "{}",
                    json!({"daemon_idle_rss_kib": d.idle_rss_kib, "daemon_idle_anon_kib": d.idle_anon_kib, "round": round})
                )?;
                Some(d)
            } else {
                None
            };
            for (i, &w) in workloads.iter().enumerate() {
                let mut scs: Vec<Sc> = if with_daemon {
                    let mut v = vec![Sc::Ebpf];
                    if w == Wl::Open {
                        v.push(Sc::Outside);
                    }
                    v
                } else {
                    vec![Sc::Base, Sc::Ptrace, Sc::Strace]
                };
                let k = (round + i) % scs.len();
                scs.rotate_left(k);
                for sc in scs {
                    if sc == Sc::Strace && w == Wl::Build && !heavy_strace {
                        continue;
                    }
                    let r = run_one(&ctx, w, sc, round, daemon.as_ref());
                    println!("    {}", r.line());
                    writeln!(raw, "{}", r.json())?;
                    runs.push(r);
                }
            }
            if let Some(d) = daemon {
                d.stop();
            }
        }
        // strace on the heavy build: dropped after round 1 if it takes more
        // than 5× the untraced build (it is a reference, not a goal).
        if heavy_strace && !args.quick {
            let b = med(&runs, Wl::Build, Sc::Base, |r| r.wall_s);
            let s = med(&runs, Wl::Build, Sc::Strace, |r| r.wall_s);
            if let (Some(b), Some(s)) = (b, s) {
                if s > 5.0 * b {
                    note(format!("strace on the heavy build took {s:.0} s (×{:.1}): not repeated in later rounds", s / b));
                    heavy_strace = false;
                }
            }
        }
    }

    let profile = if args.no_profile || args.quick {
        None
    } else {
        step("profiling pass (BPF run-time stats, perf)");
        Some(profile_pass(&ctx, &workloads)?)
    };
    if let Some(s) = ctx.servers.take() {
        s.stop();
    }

    let failures: Vec<&Run> = runs.iter().filter(|r| r.error.is_some()).collect();
    let report = render_report(
        &ctx,
        &machine,
        &runs,
        &idle_rss,
        rounds,
        &workloads,
        profile.as_deref(),
        heavy_strace,
        started.elapsed(),
    );
    let out = match &args.out {
        Some(o) => o.clone(),
        None if args.quick => ctx.work.join("RESULTS-quick.md"),
        None => util::workspace_root().join("bench/RESULTS.md"),
    };
    let kept = std::fs::read_to_string(&out)
        .ok()
        .and_then(|old| old.find(ANALYSIS_MARKER).map(|i| old[i..].to_string()))
        .unwrap_or_else(|| format!("{ANALYSIS_MARKER}\n\n## Analysis\n\n(to be written)\n"));
    std::fs::write(&out, format!("{report}\n{kept}"))?;
    step(format!(
        "report written to {} (raw runs: {})",
        out.display(),
        raw_path.display()
    ));
    println!("{}", summary_table(&runs, &workloads));
    if !failures.is_empty() {
        for f in &failures {
            eprintln!(
                "FAILED: {} / {} round {}: {}",
                f.wl.name(),
                f.sc.name(),
                f.round,
                f.error.as_deref().unwrap_or("")
            );
        }
        bail!(
            "{} of {} runs failed their checks",
            failures.len(),
            runs.len()
        );
    }
    step(format!(
        "all {} runs passed their checks ({:.0} s)",
        runs.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Installs the tools the workloads use when missing.
fn tools() -> anyhow::Result<()> {
    step("bench tools (apt)");
    let want = [
        ("gcc", "build-essential"),
        ("strace", "strace"),
        ("/usr/bin/python3", "python3"),
        ("openssl", "openssl"),
        ("bpftool", "bpftool"),
        ("find", "findutils"),
    ];
    let mut missing = Vec::new();
    for (bin, pkg) in want {
        let found = if bin.starts_with('/') {
            Path::new(bin).exists()
        } else {
            output(cmd("sh").args(["-c", &format!("command -v {bin}")])).is_some()
        };
        if found {
            note(format!("{bin}: present"));
        } else {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() {
        util::exec(cmd("apt-get").arg("update"))?;
        util::exec(
            cmd("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

fn build_binaries() -> anyhow::Result<PathBuf> {
    step("release binaries");
    util::exec(
        util::cargo()
            .args([
                "build",
                "--release",
                "-p",
                "cilock-cli",
                "-p",
                "cilock-daemon",
            ])
            .current_dir(util::workspace_root()),
    )?;
    Ok(util::target_dir().join("release"))
}
