//! `bench/RESULTS.md`: the machine, the summary table and one section per
//! workload ([`render_report`]); the hand-written analysis after
//! [`ANALYSIS_MARKER`] is kept.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::util::{self, cmd, output};

use super::run::Run;
use super::scenario::{Sc, SCENARIOS};
use super::stats::{fmt_opt, med, med_opt, median};
use super::workload::{Ctx, Sizes, Wl};

/// The line in RESULTS.md after which the hand-written analysis starts
/// (kept when the figures are regenerated).
pub(super) const ANALYSIS_MARKER: &str =
    "<!-- analysis: everything below this line is kept by `cargo xtask bench` -->";

pub(super) fn workload_title(w: Wl, s: &Sizes) -> String {
    match w {
        Wl::Build => {
            if s.build_packages.is_empty() {
                "heavy build (cargo build -j2, 62 crates incl. zstd C sources)".into()
            } else {
                format!(
                    "build (cargo build -j2 -p {})",
                    s.build_packages.join(" -p ")
                )
            }
        }
        Wl::Open => format!("open storm ({} × open+close)", s.opens),
        Wl::Fork => format!("fork/exec storm ({} × /bin/true, 2 at a time)", s.forks),
        Wl::Pkg => format!(
            "package install ({} pkgs: {} DNS, {} TLS, {} files)",
            s.packages,
            s.packages,
            s.packages,
            s.pkg_files()
        ),
        Wl::Walk => format!(
            "tree walk (find -printf over {} files, {} dirs)",
            s.tree_files(),
            s.tree_dirs()
        ),
    }
}

pub(super) fn summary_table(runs: &[Run], workloads: &[Wl]) -> String {
    let mut s = String::new();
    s.push_str("| workload | scenario | n | median wall (s) | × untraced | median CPU (s) | × untraced | end of step (s) | events/s | lost | attestation (KiB) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for &w in workloads {
        let bw = med(runs, w, Sc::Base, |r| r.wall_s);
        let bc = med(runs, w, Sc::Base, |r| r.cpu_s);
        for sc in SCENARIOS {
            let n = runs
                .iter()
                .filter(|r| r.wl == w && r.sc == sc && r.error.is_none())
                .count();
            let failed = runs
                .iter()
                .filter(|r| r.wl == w && r.sc == sc && r.error.is_some())
                .count();
            if n == 0 && failed == 0 {
                continue;
            }
            let wall = med(runs, w, sc, |r| r.wall_s);
            let cpu = med(runs, w, sc, |r| r.cpu_s);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            let traced = matches!(sc, Sc::Ebpf);
            let evs = if traced {
                fmt_opt(
                    med(runs, w, sc, |r| r.captured() as f64 / r.wall_s.max(1e-9)),
                    0,
                )
            } else {
                "–".into()
            };
            let lost: u64 = runs
                .iter()
                .filter(|r| r.wl == w && r.sc == sc)
                .map(Run::lost)
                .sum();
            let lost = if traced {
                lost.to_string()
            } else {
                "–".into()
            };
            let n_s = if failed > 0 {
                format!("{n} (+{failed} failed)")
            } else {
                n.to_string()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w.name(),
                sc.name(),
                n_s,
                fmt_opt(wall, 3),
                ratio(wall, bw),
                fmt_opt(cpu, 3),
                ratio(cpu, bc),
                fmt_opt(med_opt(runs, w, sc, |r| r.end_s), 2),
                evs,
                lost,
                fmt_opt(
                    med_opt(runs, w, sc, |r| r.att_bytes.map(|b| b as f64 / 1024.0)),
                    0
                ),
            );
        }
    }
    s
}

/// Description of this machine and build.
pub(super) fn machine_description(bin_dir: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = output(cmd("uname").args(["-srvm"])).unwrap_or_default();
    let date = output(cmd("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let rustc = output(cmd("rustc").arg("--version")).unwrap_or_default();
    let commit = output(cmd("git").args(["-C"]).arg(util::workspace_root()).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))
    .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "| | |\n|---|---|\n| date | {} |\n| kernel | {} |\n| CPU | {} × {} |\n| memory | {} |\n| rustc (workloads) | {} |\n| cilock commit | {} (binaries from {}) |\n| load average at start | {} |\n",
        date.trim(),
        kernel.trim(),
        cores,
        cpu,
        mem,
        rustc.trim(),
        commit.trim(),
        bin_dir.display(),
        load.trim()
    )
}

#[allow(
    clippy::too_many_arguments,
    reason = "one argument per piece of the run; a struct would only rename them"
)]
pub(super) fn render_report(
    ctx: &Ctx,
    machine: &str,
    runs: &[Run],
    idle_rss: &[(u64, u64)],
    rounds: usize,
    workloads: &[Wl],
    profile: Option<&str>,
    heavy_strace: bool,
    took: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# cilock overhead benchmark{}\n",
        if ctx.quick {
            " (quick smoke run: sizes are tiny, timings mean nothing)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "Generated by `cargo xtask bench{}` ({} round(s), interleaved; {:.0} min). Method and workloads: `bench/README.md`. Raw runs: `{}`.\n", if ctx.quick { " --quick" } else { "" }, rounds, took.as_secs_f64() / 60.0, ctx.work.join("raw.jsonl").display());
    let _ = writeln!(s, "## Machine\n\n{machine}");
    let _ = writeln!(s, "## Workloads\n");
    for &w in workloads {
        let _ = writeln!(s, "* `{}`: {}", w.name(), workload_title(w, &ctx.sizes));
    }
    if !heavy_strace {
        let _ = writeln!(s, "\nstrace on the heavy build ran in round 1 only: it took more than 5× the untraced build.");
    }
    let _ = writeln!(s, "\n## Medians\n\nWall and CPU are the workload's own (timeit: wait4 rusage, includes in-kernel BPF time charged to it). `end of step` is `cilock step end` for eBPF (ring flush, hashing, attestors, signing) and, for ptrace, what `cilock run` took beyond the workload. `outside-step` is the workload run outside any step while the daemon has another step active. events/s = events captured / workload wall time.\n");
    s.push_str(&summary_table(runs, workloads));

    // Evidence.
    let _ = writeln!(s, "\n## Evidence per traced run (medians)\n");
    s.push_str("| workload | scenario | processes | opened files | with digest | unhashed (reasons) | DNS lookups | TLS SNI | events (captured/lost) |\n|---|---|---|---|---|---|---|---|---|\n");
    for &w in workloads {
        for sc in [Sc::Ebpf, Sc::Ptrace] {
            let Some(r) = runs
                .iter()
                .rev()
                .find(|r| r.wl == w && r.sc == sc && r.error.is_none())
            else {
                continue;
            };
            let reasons: Vec<String> = r.unhashed.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let evs: Vec<String> = r
                .events
                .iter()
                .filter(|(_, v)| v.0 > 0 || v.1 > 0)
                .map(|(k, v)| format!("{k} {}/{}", v.0, v.1))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w.name(),
                sc.name(),
                fmt_opt(med_opt(runs, w, sc, |r| r.processes.map(|x| x as f64)), 0),
                fmt_opt(med_opt(runs, w, sc, |r| r.opened.map(|x| x as f64)), 0),
                fmt_opt(med_opt(runs, w, sc, |r| r.hashed.map(|x| x as f64)), 0),
                if reasons.is_empty() {
                    "0".into()
                } else {
                    reasons.join("; ")
                },
                fmt_opt(r.dns.map(|x| x as f64), 0),
                fmt_opt(r.sni.map(|x| x as f64), 0),
                if evs.is_empty() {
                    "–".into()
                } else {
                    evs.join(", ")
                },
            );
        }
    }

    // Daemon.
    let _ = writeln!(s, "\n## Daemon CPU and memory (eBPF step runs, medians)\n");
    s.push_str("| workload | daemon CPU during the workload (s) | of which ring-buffer consumer (s) | daemon CPU at step end (s) | peak RSS during step (MiB) | RSS after step end (MiB) |\n|---|---|---|---|---|---|\n");
    for &w in workloads {
        let mib = |v: Option<u64>| v.map(|k| k as f64 / 1024.0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.name(),
            fmt_opt(med_opt(runs, w, Sc::Ebpf, |r| r.daemon_cpu_run_s), 2),
            fmt_opt(med_opt(runs, w, Sc::Ebpf, |r| r.consumer_cpu_s), 2),
            fmt_opt(med_opt(runs, w, Sc::Ebpf, |r| r.daemon_cpu_end_s), 2),
            fmt_opt(
                runs.iter()
                    .filter(|r| r.wl == w && r.sc == Sc::Ebpf)
                    .filter_map(|r| mib(r.daemon_hwm_kib))
                    .reduce(f64::max),
                1
            ),
            fmt_opt(med_opt(runs, w, Sc::Ebpf, |r| mib(r.daemon_rss_kib)), 1),
        );
    }
    let idle: Vec<f64> = idle_rss.iter().map(|&(k, _)| k as f64 / 1024.0).collect();
    let _ = writeln!(
        s,
        "\nIdle daemon RSS (after start, before any step), per daemon start: {} MiB; of which anonymous memory: {} MiB (the rest is file-backed: mostly the 16 MiB ring buffer, mapped twice by the consumer, and the binary).",
        idle.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        idle_rss
            .iter()
            .map(|&(_, a)| format!("{:.1}", a as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let loads: Vec<f64> = runs.iter().map(|r| r.load1).collect();
    let _ = writeln!(
        s,
        "\n1-minute load average at the start of the runs (2 vCPUs; the machine is shared): median {}, max {}.",
        fmt_opt(median(loads.clone()), 1),
        fmt_opt(loads.iter().copied().reduce(f64::max), 1)
    );
    let foreign = runs.iter().map(|r| r.foreign_progs).max().unwrap_or(0);
    let _ = writeln!(s, "\nOther `sys_exit_open` programs loaded on the machine during runs (other engineers' daemons/tests; they slow every syscall, including the baseline's): max {foreign}.");

    // Goals.
    let _ = writeln!(s, "\n## Goals\n");
    s.push_str("| goal | target | measured | met |\n|---|---|---|---|\n");
    let ratio = |w: Wl, sc: Sc| match (
        med(runs, w, sc, |r| r.wall_s),
        med(runs, w, Sc::Base, |r| r.wall_s),
    ) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let goal = |s: &mut String,
                name: &str,
                target: &str,
                v: Option<f64>,
                limit: f64,
                fmt: &dyn Fn(f64) -> String| {
        let met = match v {
            Some(x) if x <= limit => "yes",
            Some(_) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "| {name} | {target} | {} | {met} |",
            v.map_or("–".into(), fmt)
        );
    };
    let cpu_ratio = |w: Wl, sc: Sc| match (
        med(runs, w, sc, |r| r.cpu_s),
        med(runs, w, Sc::Base, |r| r.cpu_s),
    ) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    // Ratio goals: judged on wall time; the CPU ratio (less sensitive to
    // other load on a shared machine) is shown beside it.
    let goal_ratio = |s: &mut String, name: &str, target: &str, w: Wl, sc: Sc, limit: f64| {
        let (wall, cpu) = (ratio(w, sc), cpu_ratio(w, sc));
        let met = |v: Option<f64>| match v {
            Some(x) if x <= limit => "yes",
            Some(_) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "| {name} | {target} | wall ×{} (CPU ×{}) | {} (CPU: {}) |",
            fmt_opt(wall, 3),
            fmt_opt(cpu, 3),
            met(wall),
            met(cpu)
        );
    };
    goal_ratio(
        &mut s,
        "heavy build, eBPF",
        "≤ ×1.03",
        Wl::Build,
        Sc::Ebpf,
        1.03,
    );
    goal_ratio(
        &mut s,
        "heavy build, ptrace",
        "≤ ×1.15",
        Wl::Build,
        Sc::Ptrace,
        1.15,
    );
    if let Some(r) = runs
        .iter()
        .rev()
        .find(|r| r.wl == Wl::Build && r.sc == Sc::Ebpf && r.error.is_none())
    {
        let unh: u64 = r.unhashed.values().sum();
        let _ = writeln!(s, "| heavy build, full evidence | every opened regular file hashed | {} of {} opened paths have a digest; {} unhashed ({}) | see analysis |", r.hashed.unwrap_or(0), r.opened.unwrap_or(0), unh, r.unhashed.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join("; "));
    }
    goal_ratio(
        &mut s,
        "open storm in a step, eBPF",
        "≤ ×1.25",
        Wl::Open,
        Sc::Ebpf,
        1.25,
    );
    let lost: u64 = runs
        .iter()
        .filter(|r| r.sc == Sc::Ebpf)
        .map(Run::lost)
        .sum();
    let _ = writeln!(
        s,
        "| events lost (all eBPF runs) | 0 | {lost} | {} |",
        if lost == 0 { "yes" } else { "**no**" }
    );
    goal_ratio(
        &mut s,
        "fork/exec storm, eBPF",
        "≤ ×1.15",
        Wl::Fork,
        Sc::Ebpf,
        1.15,
    );
    let fork_ok = runs
        .iter()
        .filter(|r| r.wl == Wl::Fork && r.sc == Sc::Ebpf)
        .all(|r| r.error.is_none());
    let fork_n = runs
        .iter()
        .filter(|r| r.wl == Wl::Fork && r.sc == Sc::Ebpf)
        .count();
    if fork_n > 0 {
        let _ = writeln!(
            s,
            "| fork/exec storm, processes recorded | 100 % | {} | {} |",
            if fork_ok {
                format!("{} of {} in every run", ctx.sizes.forks, ctx.sizes.forks)
            } else {
                "missing in some runs (see failures)".into()
            },
            if fork_ok { "yes" } else { "**no**" }
        );
    }
    goal_ratio(
        &mut s,
        "open storm outside any step, daemon loaded",
        "≤ ×1.10",
        Wl::Open,
        Sc::Outside,
        1.10,
    );
    let mb = |v: f64| format!("{v:.1} MiB");
    goal(
        &mut s,
        "daemon idle RSS",
        "≤ 40 MiB",
        idle.iter().copied().reduce(f64::max),
        40.0,
        &mb,
    );
    goal(
        &mut s,
        "daemon RSS at the end of the heavy build's step",
        "≤ 256 MiB",
        runs.iter()
            .filter(|r| r.wl == Wl::Build && r.sc == Sc::Ebpf)
            .filter_map(|r| r.daemon_hwm_kib.map(|k| k as f64 / 1024.0))
            .reduce(f64::max),
        256.0,
        &mb,
    );
    let failures: Vec<&Run> = runs.iter().filter(|r| r.error.is_some()).collect();
    if !failures.is_empty() {
        let _ = writeln!(s, "\n## Failed runs\n");
        for f in failures {
            let _ = writeln!(
                s,
                "* {} / {} round {}: {}",
                f.wl.name(),
                f.sc.name(),
                f.round,
                f.error.as_deref().unwrap_or("")
            );
        }
    }
    if let Some(p) = profile {
        let _ = writeln!(s, "\n## Profile\n\n{p}");
    }
    s
}
