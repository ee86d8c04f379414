//! The profiling pass ([`profile_pass`]): per-program run time and counts
//! of the attached eBPF programs (`bpftool prog`, [`prog_stats`]) while the
//! workloads run in a step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Stdio;

use anyhow::Context as _;
use serde_json::Value;

use crate::util::{cmd, output};

use super::daemon::Daemon;
use super::run::run_one;
use super::scenario::Sc;
use super::workload::{Ctx, Wl};

/// One more eBPF run per workload with `kernel.bpf_stats_enabled=1`:
/// per-program run counts and in-kernel time; `perf` on the daemon when it
/// works here.
pub(super) fn profile_pass(ctx: &Ctx, workloads: &[Wl]) -> anyhow::Result<String> {
    let mut s = String::new();
    let perf_ok = output(
        cmd("perf")
            .args(["stat", "-e", "task-clock", "true"])
            .stderr(Stdio::piped()),
    )
    .is_some();
    let hw = cmd("perf")
        .args(["stat", "-e", "instructions", "true"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).contains("<not supported>"))
        .unwrap_or(true);
    let _ = writeln!(
        s,
        "`perf stat -e instructions true`: {}; software events (cpu-clock) {}.\n",
        if hw {
            "hardware counters `<not supported>` in this VM"
        } else {
            "hardware counters work"
        },
        if perf_ok {
            "work, so the daemon is sampled with `perf record -e cpu-clock`"
        } else {
            "do not work either"
        }
    );
    let old = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling kernel.bpf_stats_enabled")?;
    let res = (|| -> anyhow::Result<()> {
        let d = Daemon::start(ctx, 0)?;
        let ids = d.prog_ids();
        let _ = writeln!(s, "BPF programs (kernel.bpf_stats_enabled=1, one extra eBPF run per workload; `run_cnt` counts every invocation, inside steps or not):\n");
        s.push_str("| workload | program | runs | avg ns/run | total ms | workload CPU (s) | share of workload CPU |\n|---|---|---|---|---|---|---|\n");
        let mut perf_out = String::new();
        for &w in workloads {
            let before = prog_stats(&ids);
            let perf_file = ctx.work.join(format!("run/perf-{}.data", w.name()));
            let perf = if perf_ok {
                cmd("perf")
                    .args([
                        "record",
                        "-q",
                        "-e",
                        "cpu-clock",
                        "-F",
                        "999",
                        "-g",
                        "-p",
                        &d.pid.to_string(),
                        "-o",
                    ])
                    .arg(&perf_file)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            } else {
                None
            };
            let r = run_one(ctx, w, Sc::Ebpf, 0, Some(&d));
            if let Some(mut p) = perf {
                unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
                let _ = p.wait();
                if let Some(rep) = output(
                    cmd("perf")
                        .args([
                            "report",
                            "--stdio",
                            "--no-children",
                            "-q",
                            "--sort",
                            "comm,dso,sym",
                            "-i",
                        ])
                        .arg(&perf_file)
                        .stderr(Stdio::null()),
                ) {
                    let top: Vec<&str> = rep
                        .lines()
                        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
                        .take(12)
                        .collect();
                    let _ = writeln!(perf_out, "\n`{}` — daemon samples (comm, dso, symbol), top 12, workload + step end:\n\n```\n{}\n```", w.name(), top.join("\n"));
                }
                let _ = std::fs::remove_file(&perf_file);
            }
            println!("    profile {}", r.line());
            let after = prog_stats(&ids);
            for (name, (c1, t1)) in &after {
                let (c0, t0) = before.get(name).copied().unwrap_or((0, 0));
                let (dc, dt) = (c1 - c0, t1 - t0);
                if dc == 0 {
                    continue;
                }
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.0} | {:.1} | {:.3} | {:.1} % |",
                    w.name(),
                    name,
                    dc,
                    dt as f64 / dc as f64,
                    dt as f64 / 1e6,
                    r.cpu_s,
                    if r.cpu_s > 0.0 {
                        dt as f64 / 1e9 / r.cpu_s * 100.0
                    } else {
                        0.0
                    }
                );
            }
            if let (Some(a), Some(b), Some(c)) =
                (r.daemon_cpu_run_s, r.consumer_cpu_s, r.daemon_cpu_end_s)
            {
                let _ = writeln!(s, "| {} | (daemon: {a:.2} s CPU during the workload, {b:.2} s of it in the consumer thread; {c:.2} s at step end) | | | | | |", w.name());
            }
        }
        s.push_str(&perf_out);
        d.stop();
        Ok(())
    })();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", old.trim());
    res?;
    Ok(s)
}

/// name → (run_cnt, run_time_ns) for the given program ids.
pub(super) fn prog_stats(ids: &[u64]) -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    let Some(out) = output(cmd("bpftool").args(["prog", "show", "-j"])) else {
        return m;
    };
    if let Ok(Value::Array(progs)) = serde_json::from_str::<Value>(&out) {
        for p in progs {
            if !p["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
                continue;
            }
            let name = p["name"].as_str().unwrap_or("?").to_string();
            let e = m.entry(name).or_insert((0, 0));
            e.0 += p["run_cnt"].as_u64().unwrap_or(0);
            e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
        }
    }
    m
}
