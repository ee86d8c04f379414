//! One timed run of a workload in a scenario ([`run_one`]) and what it
//! measured ([`Run`]): wall time and rusage from `timeit`, the step's end,
//! the daemon's CPU and memory, and the evidence checks' verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use crate::util::{cmd, output};

use super::checks::{command_run, evidence, statement};
use super::daemon::{proc_status_kib, Daemon};
use super::scenario::Sc;
use super::workload::{Ctx, Wl};

/// One measured run.
#[derive(Clone, Debug)]
pub(super) struct Run {
    pub(super) wl: Wl,
    pub(super) sc: Sc,
    pub(super) round: usize,
    pub(super) error: Option<String>,
    pub(super) wall_s: f64,
    pub(super) cpu_s: f64,
    pub(super) maxrss_kib: u64,
    /// The end of the step (eBPF: `cilock step end`; ptrace: what `cilock
    /// run` took after the workload).
    pub(super) end_s: Option<f64>,
    pub(super) att_bytes: Option<u64>,
    pub(super) events: BTreeMap<String, (u64, u64)>,
    pub(super) processes: Option<u64>,
    pub(super) opened: Option<u64>,
    pub(super) hashed: Option<u64>,
    pub(super) unhashed: BTreeMap<String, u64>,
    pub(super) dns: Option<u64>,
    pub(super) sni: Option<u64>,
    pub(super) daemon_cpu_run_s: Option<f64>,
    pub(super) daemon_cpu_end_s: Option<f64>,
    pub(super) consumer_cpu_s: Option<f64>,
    pub(super) daemon_hwm_kib: Option<u64>,
    pub(super) daemon_rss_kib: Option<u64>,
    pub(super) foreign_progs: usize,
    /// 1-minute load average when the run started.
    pub(super) load1: f64,
}

impl Run {
    pub(super) fn new(wl: Wl, sc: Sc, round: usize) -> Run {
        Run {
            wl,
            sc,
            round,
            error: None,
            wall_s: 0.0,
            cpu_s: 0.0,
            maxrss_kib: 0,
            end_s: None,
            att_bytes: None,
            events: BTreeMap::new(),
            processes: None,
            opened: None,
            hashed: None,
            unhashed: BTreeMap::new(),
            dns: None,
            sni: None,
            daemon_cpu_run_s: None,
            daemon_cpu_end_s: None,
            consumer_cpu_s: None,
            daemon_hwm_kib: None,
            daemon_rss_kib: None,
            foreign_progs: 0,
            load1: 0.0,
        }
    }
    pub(super) fn captured(&self) -> u64 {
        self.events.values().map(|c| c.0).sum()
    }
    pub(super) fn lost(&self) -> u64 {
        self.events.values().map(|c| c.1).sum()
    }
    pub(super) fn line(&self) -> String {
        let mut s = format!(
            "{:<6} {:<12} wall {:>8.3} s  cpu {:>8.3} s",
            self.wl.name(),
            self.sc.name(),
            self.wall_s,
            self.cpu_s
        );
        if let Some(e) = self.end_s {
            let _ = write!(s, "  end {e:.2} s");
        }
        if !self.events.is_empty() {
            let _ = write!(s, "  events {} lost {}", self.captured(), self.lost());
        }
        if let Some(p) = self.processes {
            let _ = write!(s, "  procs {p}");
        }
        if let Some(e) = &self.error {
            let _ = write!(s, "  FAILED: {e}");
        }
        s
    }
    pub(super) fn json(&self) -> Value {
        json!({
            "workload": self.wl.name(), "scenario": self.sc.name(), "round": self.round,
            "error": self.error, "wall_s": self.wall_s, "cpu_s": self.cpu_s, "maxrss_kib": self.maxrss_kib,
            "end_s": self.end_s, "attestation_bytes": self.att_bytes,
            "events": self.events.iter().map(|(k, v)| (k.clone(), json!({"captured": v.0, "lost": v.1}))).collect::<serde_json::Map<_, _>>(),
            "processes": self.processes, "opened_files": self.opened, "hashed_files": self.hashed,
            "unhashed": self.unhashed, "dns_lookups": self.dns, "tls_sni": self.sni,
            "daemon_cpu_run_s": self.daemon_cpu_run_s, "daemon_cpu_end_s": self.daemon_cpu_end_s,
            "consumer_cpu_s": self.consumer_cpu_s, "daemon_hwm_kib": self.daemon_hwm_kib,
            "daemon_rss_kib": self.daemon_rss_kib, "load1": self.load1, "foreign_sys_exit_open_programs": self.foreign_progs,
        })
    }
}

/// Number of `sys_exit_open` programs loaded by others (other cilock
/// daemons or tests on this machine slow every syscall a little).
pub(super) fn foreign_open_programs(own: &[u64]) -> usize {
    let Some(out) = output(cmd("bpftool").args(["prog", "show", "-j"])) else {
        return 0;
    };
    let Ok(Value::Array(progs)) = serde_json::from_str::<Value>(&out) else {
        return 0;
    };
    progs
        .iter()
        .filter(|p| p["name"] == "sys_exit_open")
        .filter(|p| p["id"].as_u64().is_some_and(|id| !own.contains(&id)))
        .count()
}

pub(super) fn run_one(ctx: &Ctx, w: Wl, sc: Sc, round: usize, daemon: Option<&Daemon>) -> Run {
    let mut r = Run::new(w, sc, round);
    r.load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    r.foreign_progs = foreign_open_programs(&daemon.map(|d| d.prog_ids()).unwrap_or_default());
    if let Err(e) = run_inner(ctx, w, sc, daemon, &mut r) {
        r.error = Some(format!("{e:#}"));
    }
    r
}

pub(super) fn run_inner(
    ctx: &Ctx,
    w: Wl,
    sc: Sc,
    daemon: Option<&Daemon>,
    r: &mut Run,
) -> anyhow::Result<()> {
    ctx.prepare(w)?;
    let tmp = ctx.work.join("run");
    std::fs::create_dir_all(&tmp)?;
    let timing = tmp.join("timing.txt");
    let att = tmp.join("attestation.json");
    let log = tmp.join(format!("{}-{}.log", w.name(), sc.name()));
    let _ = std::fs::remove_file(&timing);
    let _ = std::fs::remove_file(&att);
    let wd = ctx.wd(w);
    let step_name = format!("bench-{}-{}", w.name(), r.round);
    let mut timed: Vec<String> = vec![
        ctx.tool("timeit"),
        timing.display().to_string(),
        "--".into(),
    ];
    timed.extend(ctx.command(w));
    let logf = std::fs::File::create(&log)?;
    let base_cmd = |argv: &[String]| {
        let mut c = cmd(&argv[0]);
        c.args(&argv[1..])
            .current_dir(&wd)
            .env_clear()
            .envs(ctx.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    };
    let fail_log = |what: &str| -> anyhow::Error {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = text
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        anyhow!("{what} (log {}: {tail})", log.display())
    };
    match sc {
        Sc::Base | Sc::Strace => {
            let mut argv = Vec::new();
            if sc == Sc::Strace {
                argv.extend(["strace", "-f", "-qq", "-o", "/dev/null"].map(String::from));
            }
            argv.extend(timed);
            let st = base_cmd(&argv).stderr(logf).status()?;
            if !st.success() {
                return Err(fail_log(&format!("workload exited with {st}")));
            }
        }
        Sc::Ptrace => {
            let mut argv: Vec<String> = vec![ctx.cilock.display().to_string()];
            argv.extend(["run", "--no-daemon", "--backend", "ptrace", "-k"].map(String::from));
            argv.push(ctx.key.display().to_string());
            argv.extend([
                "-s".into(),
                step_name.clone(),
                "-o".into(),
                att.display().to_string(),
            ]);
            argv.extend(["--workdir".into(), wd.display().to_string(), "--".into()]);
            argv.extend(timed);
            let t0 = Instant::now();
            let st = base_cmd(&argv).stderr(logf).status()?;
            let total = t0.elapsed().as_secs_f64();
            if !st.success() {
                return Err(fail_log(&format!("cilock run exited with {st}")));
            }
            let (wall, _) = read_timing(&timing)?;
            r.end_s = Some((total - wall).max(0.0));
        }
        Sc::Ebpf => {
            let d = daemon.ok_or_else(|| anyhow!("no daemon"))?;
            let script = format!(
                "{} step begin -s {step_name} --workdir {} 2>>{} || exit 97; exec \"$@\"",
                ctx.cilock.display(),
                wd.display(),
                log.display()
            );
            let mut argv: Vec<String> = vec!["sh".into(), "-c".into(), script, "sh".into()];
            argv.extend(timed);
            let c0 = d.cpu_s();
            let k0 = d.consumer_cpu_s();
            d.reset_hwm();
            let st = base_cmd(&argv)
                .env("CILOCK_SOCKET", &d.socket)
                .stderr(logf.try_clone()?)
                .status()?;
            let c1 = d.cpu_s();
            let t0 = Instant::now();
            let end = d
                .cilock(ctx)
                .args(["step", "end", "-s", &step_name, "-o"])
                .arg(&att)
                .stdout(Stdio::null())
                .stderr(logf)
                .status()?;
            r.end_s = Some(t0.elapsed().as_secs_f64());
            let c2 = d.cpu_s();
            r.consumer_cpu_s = Some(d.consumer_cpu_s() - k0);
            r.daemon_cpu_run_s = Some(c1 - c0);
            r.daemon_cpu_end_s = Some(c2 - c1);
            r.daemon_hwm_kib = proc_status_kib(d.pid, "VmHWM");
            r.daemon_rss_kib = proc_status_kib(d.pid, "VmRSS");
            if !st.success() {
                return Err(fail_log(&format!("traced workload exited with {st}")));
            }
            if !end.success() {
                return Err(fail_log(&format!("cilock step end exited with {end}")));
            }
        }
        Sc::Outside => {
            let d = daemon.ok_or_else(|| anyhow!("no daemon"))?;
            // Another step is active (an idle process in it) while the
            // workload runs outside any step.
            let mut idle = cmd("sleep").arg("100000").stdin(Stdio::null()).spawn()?;
            let idle_name = format!("bench-idle-{}", r.round);
            let begun = d
                .cilock(ctx)
                .args([
                    "step",
                    "begin",
                    "-s",
                    &idle_name,
                    "--pid",
                    &idle.id().to_string(),
                    "--workdir",
                ])
                .arg(ctx.wd(Wl::Open))
                .stderr(Stdio::null())
                .status();
            let res = (|| -> anyhow::Result<()> {
                if !begun?.success() {
                    bail!("could not begin the idle step");
                }
                let st = base_cmd(&timed).stderr(logf.try_clone()?).status()?;
                if !st.success() {
                    return Err(fail_log(&format!("workload exited with {st}")));
                }
                Ok(())
            })();
            let end = d
                .cilock(ctx)
                .args(["step", "end", "--kill", "-s", &idle_name, "-o"])
                .arg(tmp.join("idle-attestation.json"))
                .stderr(Stdio::null())
                .status();
            let _ = idle.kill();
            let _ = idle.wait();
            res?;
            if !end?.success() {
                bail!("could not end the idle step");
            }
            // The workload must not have been traced by the idle step.
            let stmt = statement(&tmp.join("idle-attestation.json"))?;
            let run = command_run(&stmt)?;
            let opens = run["trace"]["events"]["open"]["captured"]
                .as_u64()
                .unwrap_or(0);
            if opens >= ctx.sizes.opens {
                bail!("the idle step recorded {opens} opens: the outside workload was traced");
            }
        }
    }
    let (wall, cpu) = read_timing(&timing)?;
    r.wall_s = wall;
    r.cpu_s = cpu.0;
    r.maxrss_kib = cpu.1;
    if matches!(sc, Sc::Ebpf | Sc::Ptrace) {
        r.att_bytes = Some(std::fs::metadata(&att)?.len());
        let stmt = statement(&att)?;
        evidence(ctx, w, sc, &stmt, r)?;
    }
    Ok(())
}

/// (wall seconds, (cpu seconds, maxrss KiB)) from timeit's file.
pub(super) fn read_timing(p: &Path) -> anyhow::Result<(f64, (f64, u64))> {
    let s = std::fs::read_to_string(p).with_context(|| format!("no timing in {}", p.display()))?;
    let f: Vec<i64> = s
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 5 {
        bail!("bad timing line {s:?}");
    }
    if f[4] != 0 {
        bail!("workload exited with {}", f[4]);
    }
    Ok((f[0] as f64 / 1e9, ((f[1] + f[2]) as f64 / 1e6, f[3] as u64)))
}
