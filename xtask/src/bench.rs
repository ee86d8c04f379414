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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use serde_json::{json, Value};

use crate::util::{self, cmd, note, output, step};

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

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wl {
    Build,
    Open,
    Fork,
    Pkg,
    Walk,
}

const ALL_WORKLOADS: [Wl; 5] = [Wl::Build, Wl::Open, Wl::Fork, Wl::Pkg, Wl::Walk];

impl Wl {
    fn name(self) -> &'static str {
        match self {
            Wl::Build => "build",
            Wl::Open => "open",
            Wl::Fork => "fork",
            Wl::Pkg => "pkg",
            Wl::Walk => "walk",
        }
    }
    fn parse(s: &str) -> Option<Wl> {
        ALL_WORKLOADS.into_iter().find(|w| w.name() == s)
    }
}

/// How a run is traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sc {
    /// No tracer, no daemon.
    Base,
    /// In a step of the eBPF daemon.
    Ebpf,
    /// Outside any step while the daemon runs with another step active.
    Outside,
    /// `cilock run --no-daemon --backend ptrace`.
    Ptrace,
    /// `strace -f -o /dev/null`.
    Strace,
}

impl Sc {
    fn name(self) -> &'static str {
        match self {
            Sc::Base => "untraced",
            Sc::Ebpf => "ebpf",
            Sc::Outside => "outside-step",
            Sc::Ptrace => "ptrace",
            Sc::Strace => "strace",
        }
    }
}

/// Sizes of one suite.
#[derive(Clone, Debug)]
struct Sizes {
    opens: u64,
    forks: u64,
    packages: u64,
    /// Tree: top dirs × sub dirs × files per sub dir.
    tree: (u64, u64, u64),
    /// `cargo build -p` selection (empty: the whole graph).
    build_packages: Vec<&'static str>,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            opens: 200_000,
            forks: 5_000,
            packages: 200,
            tree: (40, 50, 25),
            build_packages: Vec::new(),
        }
    }
    fn quick() -> Sizes {
        Sizes {
            opens: 2_000,
            forks: 50,
            packages: 5,
            tree: (2, 5, 10),
            build_packages: vec!["memchr", "itoa"],
        }
    }
    fn tree_files(&self) -> u64 {
        self.tree.0 * self.tree.1 * self.tree.2
    }
    fn tree_dirs(&self) -> u64 {
        1 + self.tree.0 + self.tree.0 * self.tree.1
    }
    fn pkg_files(&self) -> u64 {
        // 25 payload files + package.json per package, .postinstall for
        // every 10th.
        self.packages * 26 + self.packages.div_ceil(10)
    }
}

/// Everything a run needs.
struct Ctx {
    quick: bool,
    sizes: Sizes,
    work: PathBuf,
    bin: PathBuf,
    cilock: PathBuf,
    daemon_bin: PathBuf,
    key: PathBuf,
    python: PathBuf,
    servers: Option<Servers>,
    true_path: String,
    env: Vec<(String, String)>,
}

impl Ctx {
    fn tool(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }
    fn wd(&self, w: Wl) -> PathBuf {
        match w {
            Wl::Build => self.work.join("heavy/proj"),
            _ => self.work.join(format!("wd-{}", w.name())),
        }
    }
    fn command(&self, w: Wl) -> Vec<String> {
        let s = &self.sizes;
        match w {
            Wl::Build => {
                let mut v: Vec<String> = ["cargo", "build", "-j2", "--offline", "--locked", "-q"]
                    .map(String::from)
                    .to_vec();
                for p in &s.build_packages {
                    v.push("-p".into());
                    v.push((*p).into());
                }
                v
            }
            Wl::Open => vec![
                self.tool("openstorm"),
                s.opens.to_string(),
                "/etc/hostname".into(),
            ],
            Wl::Fork => vec![
                self.tool("forkstorm"),
                s.forks.to_string(),
                "2".into(),
                self.true_path.clone(),
            ],
            Wl::Pkg => {
                let sv = self.servers.as_ref().expect("servers started for pkg");
                vec![
                    self.python.display().to_string(),
                    self.work.join("src/pkg_install.py").display().to_string(),
                    sv.dns.to_string(),
                    sv.tls.to_string(),
                    self.work.join("tls/cert.pem").display().to_string(),
                    s.packages.to_string(),
                    self.wd(Wl::Pkg).display().to_string(),
                ]
            }
            Wl::Walk => vec![
                "sh".into(),
                "-c".into(),
                "find \"$1\" -printf '%y %s %p\\n' > /dev/null".into(),
                "sh".into(),
                self.work.join("tree").display().to_string(),
            ],
        }
    }
    /// Resets the workload's outputs (not timed).
    fn prepare(&self, w: Wl) -> anyhow::Result<()> {
        let wd = self.wd(w);
        match w {
            Wl::Build => rm_rf(&wd.join("target"))?,
            Wl::Pkg => rm_rf(&wd.join("node_modules"))?,
            _ => {}
        }
        std::fs::create_dir_all(&wd)?;
        Ok(())
    }
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

/// The line in RESULTS.md after which the hand-written analysis starts
/// (kept when the figures are regenerated).
const ANALYSIS_MARKER: &str =
    "<!-- analysis: everything below this line is kept by `cargo xtask bench` -->";

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

/// Compiles the C workloads, copies the scripts, makes the key, TLS cert,
/// tree and vendored crates (each only when missing or stale).
fn prepare_workdir(args: &BenchArgs, sizes: Sizes, bin_dir: &Path) -> anyhow::Result<Ctx> {
    step(format!("bench workspace {}", args.work_dir.display()));
    let work = args.work_dir.clone();
    let src = util::workspace_root().join("bench");
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(work.join("src"))?;
    for c in ["timeit", "openstorm", "forkstorm"] {
        let from = src.join(format!("src/{c}.c"));
        let to = bin.join(c);
        let stale = match (std::fs::metadata(&from), std::fs::metadata(&to)) {
            (Ok(a), Ok(b)) => a.modified()? > b.modified()?,
            _ => true,
        };
        if stale {
            util::exec(cmd("gcc").args(["-O2", "-Wall", "-o"]).arg(&to).arg(&from))?;
        } else {
            note(format!("{} is up to date", to.display()));
        }
    }
    for f in ["pkg_install.py", "pkg_servers.py"] {
        std::fs::copy(src.join("src").join(f), work.join("src").join(f))?;
    }
    let cilock = bin_dir.join("cilock");
    let daemon_bin = bin_dir.join("cilock-daemon");
    for b in [&cilock, &daemon_bin] {
        if !b.exists() {
            bail!("{} not found", b.display());
        }
    }
    let key = work.join("signing-key.pem");
    if !key.exists() {
        util::exec(cmd(&cilock).args(["keygen", "-o"]).arg(&key))?;
    }
    let tls = work.join("tls");
    if !tls.join("cert.pem").exists() {
        std::fs::create_dir_all(&tls)?;
        util::exec(
            cmd("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "3650",
                ])
                .args([
                    "-subj",
                    "/CN=registry.bench.test",
                    "-addext",
                    "subjectAltName=DNS:*.registry.bench.test",
                ])
                .arg("-keyout")
                .arg(tls.join("key.pem"))
                .arg("-out")
                .arg(tls.join("cert.pem"))
                .stderr(Stdio::null()),
        )?;
    }
    make_tree(&work.join("tree"), sizes.tree)?;
    vendor_heavy(&src.join("heavy"), &work.join("heavy"))?;
    for w in ALL_WORKLOADS {
        std::fs::create_dir_all(work.join(format!("wd-{}", w.name())))?;
    }
    let true_path = std::fs::canonicalize("/bin/true")?.display().to_string();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("LANG".into(), "C".into()),
    ];
    for k in ["HOME", "CARGO_HOME", "RUSTUP_HOME", "USER"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.into(), v));
        }
    }
    Ok(Ctx {
        quick: args.quick,
        sizes,
        work: work.clone(),
        bin,
        cilock,
        daemon_bin,
        key,
        python: PathBuf::from("/usr/bin/python3"),
        servers: None,
        true_path,
        env,
    })
}

/// A tree of empty files: `top` dirs × `sub` dirs × `files` files.
fn make_tree(root: &Path, (top, sub, files): (u64, u64, u64)) -> anyhow::Result<()> {
    let stamp = root.join(".complete");
    let want = format!("{top} {sub} {files}\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        note(format!("tree {} is up to date", root.display()));
        return Ok(());
    }
    rm_rf(root)?;
    note(format!(
        "generating {} files in {}",
        top * sub * files,
        root.display()
    ));
    for t in 0..top {
        for s in 0..sub {
            let d = root.join(format!("d{t:03}/s{s:03}"));
            std::fs::create_dir_all(&d)?;
            for f in 0..files {
                std::fs::write(d.join(format!("f{f:03}.txt")), format!("{t} {s} {f}\n"))?;
            }
        }
    }
    std::fs::write(stamp, want)?;
    Ok(())
}

/// Copies the heavy-build crate to `dst/proj` and vendors its dependencies
/// into `dst/vendor` (once per Cargo.lock).
fn vendor_heavy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let proj = dst.join("proj");
    std::fs::create_dir_all(proj.join("src"))?;
    std::fs::create_dir_all(proj.join(".cargo"))?;
    for f in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        let data =
            std::fs::read(src.join(f)).with_context(|| format!("reading bench/heavy/{f}"))?;
        util::install_bytes(&data, &proj.join(f), 0o644)?;
    }
    let vendor = dst.join("vendor");
    let lock = std::fs::read(src.join("Cargo.lock"))?;
    let stamp = dst.join("vendor.stamp");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) && vendor.is_dir() {
        note(format!(
            "vendored crates in {} are up to date",
            vendor.display()
        ));
    } else {
        rm_rf(&vendor)?;
        util::exec(
            cmd("cargo")
                .args(["vendor", "--locked", "-q"])
                .arg(&vendor)
                .current_dir(&proj)
                .env_remove("CARGO_TARGET_DIR")
                .stdout(Stdio::null()),
        )?;
        std::fs::write(&stamp, &lock)?;
    }
    let config = format!(
        "[source.crates-io]\nreplace-with = \"vendored-sources\"\n\n[source.vendored-sources]\ndirectory = {:?}\n",
        vendor.display().to_string()
    );
    util::install_bytes(config.as_bytes(), &proj.join(".cargo/config.toml"), 0o644)?;
    Ok(())
}

/// The local DNS resolver and TLS registry of the package-install workload.
struct Servers {
    child: Child,
    dns: u16,
    tls: u16,
}

impl Servers {
    fn start(ctx: &Ctx) -> anyhow::Result<Servers> {
        let tls = ctx.work.join("tls");
        let mut child = cmd(&ctx.python)
            .arg(ctx.work.join("src/pkg_servers.py"))
            .arg(tls.join("cert.pem"))
            .arg(tls.join("key.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting bench/src/pkg_servers.py")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let port = |key: &str| -> Option<u16> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        match (port("dns="), port("tls=")) {
            (Some(dns), Some(tls)) => Ok(Servers { child, dns, tls }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("package servers did not start: {line:?}")
            }
        }
    }
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's own daemon: own socket, config, key and cgroup parent.
struct Daemon {
    child: Option<Child>,
    pid: u32,
    socket: PathBuf,
    idle_rss_kib: u64,
    /// Anonymous part of the idle RSS (the rest is mostly the ring buffer's
    /// mapping, which is kernel memory).
    idle_anon_kib: u64,
}

impl Daemon {
    fn start(ctx: &Ctx, round: usize) -> anyhow::Result<Daemon> {
        let dir = ctx.work.join("daemon");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = dir.join("cilock.sock");
        let _ = std::fs::remove_file(&socket);
        let config = dir.join("cilock.toml");
        std::fs::write(
            &config,
            format!(
                "socket = {:?}\nkey = {:?}\nbackend = \"ebpf\"\ncgroup_parent = \"cilock.bench.{}\"\nstep_timeout = \"2h\"\nlog_level = \"warn\"\n",
                socket.display().to_string(),
                ctx.key.display().to_string(),
                std::process::id()
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))?;
        writeln!(&log, "--- round {round}")?;
        let child = cmd(&ctx.daemon_bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting cilock-daemon")?;
        let mut d = Daemon {
            pid: child.id(),
            child: Some(child),
            socket,
            idle_rss_kib: 0,
            idle_anon_kib: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = d
                .cilock(ctx)
                .args(["step", "end", "--step", "no-such-step", "-o", "/dev/null"])
                .output()?;
            if String::from_utf8_lossy(&out.stderr).contains("no active step") {
                break;
            }
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!(
                        "cilock-daemon exited ({st}); see {}",
                        dir.join("daemon.log").display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "cilock-daemon did not answer within 60 s; see {}",
                    dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        d.idle_rss_kib = proc_status_kib(d.pid, "VmRSS").unwrap_or(0);
        d.idle_anon_kib = proc_status_kib(d.pid, "RssAnon").unwrap_or(0);
        Ok(d)
    }
    fn cilock(&self, ctx: &Ctx) -> Command {
        let mut c = cmd(&ctx.cilock);
        c.env("CILOCK_SOCKET", &self.socket);
        c
    }
    /// Process CPU time (user+sys, all threads, including exited ones).
    fn cpu_s(&self) -> f64 {
        proc_stat_cpu_s(&format!("/proc/{}/stat", self.pid)).unwrap_or(0.0)
    }
    /// CPU time of the ring-buffer consumer thread.
    fn consumer_cpu_s(&self) -> f64 {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0.0;
        };
        for t in rd.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == "cilock-ringbuf" {
                return proc_stat_cpu_s(&t.path().join("stat").display().to_string())
                    .unwrap_or(0.0);
            }
        }
        0.0
    }
    fn reset_hwm(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }
    /// The ids of the BPF programs this daemon holds.
    fn prog_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid)) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    if let Some(id) = s.lines().find_map(|l| l.strip_prefix("prog_id:")) {
                        if let Ok(id) = id.trim().parse() {
                            if !ids.contains(&id) {
                                ids.push(id);
                            }
                        }
                    }
                }
            }
        }
        ids
    }
    fn stop(mut self) {
        self.shutdown();
    }
    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM for a clean shutdown (it removes its cgroups), then SIGKILL.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The daemon removes its step cgroups but leaves their (empty)
        // parent: remove it so no cgroup is left behind.
        let parent = format!("cilock.bench.{}", std::process::id());
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let _ = std::fs::remove_dir(Path::new(root).join(&parent));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn proc_stat_cpu_s(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / hz)
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One measured run.
#[derive(Clone, Debug)]
struct Run {
    wl: Wl,
    sc: Sc,
    round: usize,
    error: Option<String>,
    wall_s: f64,
    cpu_s: f64,
    maxrss_kib: u64,
    /// The end of the step (eBPF: `cilock step end`; ptrace: what `cilock
    /// run` took after the workload).
    end_s: Option<f64>,
    att_bytes: Option<u64>,
    events: BTreeMap<String, (u64, u64)>,
    processes: Option<u64>,
    opened: Option<u64>,
    hashed: Option<u64>,
    unhashed: BTreeMap<String, u64>,
    dns: Option<u64>,
    sni: Option<u64>,
    daemon_cpu_run_s: Option<f64>,
    daemon_cpu_end_s: Option<f64>,
    consumer_cpu_s: Option<f64>,
    daemon_hwm_kib: Option<u64>,
    daemon_rss_kib: Option<u64>,
    foreign_progs: usize,
    /// 1-minute load average when the run started.
    load1: f64,
}

impl Run {
    fn new(wl: Wl, sc: Sc, round: usize) -> Run {
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
    fn captured(&self) -> u64 {
        self.events.values().map(|c| c.0).sum()
    }
    fn lost(&self) -> u64 {
        self.events.values().map(|c| c.1).sum()
    }
    fn line(&self) -> String {
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
    fn json(&self) -> Value {
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
fn foreign_open_programs(own: &[u64]) -> usize {
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

fn run_one(ctx: &Ctx, w: Wl, sc: Sc, round: usize, daemon: Option<&Daemon>) -> Run {
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

fn run_inner(ctx: &Ctx, w: Wl, sc: Sc, daemon: Option<&Daemon>, r: &mut Run) -> anyhow::Result<()> {
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
fn read_timing(p: &Path) -> anyhow::Result<(f64, (f64, u64))> {
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

fn statement(env_path: &Path) -> anyhow::Result<Value> {
    use base64::Engine as _;
    let env: Value = serde_json::from_slice(&std::fs::read(env_path)?)?;
    let payload = env["payload"]
        .as_str()
        .ok_or_else(|| anyhow!("envelope without payload"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn command_run(stmt: &Value) -> anyhow::Result<&Value> {
    stmt["predicate"]["attestations"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|x| {
                x["type"]
                    .as_str()
                    .is_some_and(|t| t.contains("command-run"))
            })
        })
        .map(|a| &a["attestation"])
        .ok_or_else(|| anyhow!("no command-run attestation"))
}

/// Reads the evidence figures of an attestation and checks them against
/// what the workload is known to do.
fn evidence(ctx: &Ctx, w: Wl, sc: Sc, stmt: &Value, r: &mut Run) -> anyhow::Result<()> {
    let run = command_run(stmt)?;
    if let Some(ev) = run["trace"]["events"].as_object() {
        for (k, v) in ev {
            r.events.insert(
                k.clone(),
                (
                    v["captured"].as_u64().unwrap_or(0),
                    v["lost"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    let procs = run["processes"].as_array().cloned().unwrap_or_default();
    r.processes = Some(procs.len() as u64);
    let mut opened = std::collections::BTreeSet::new();
    let mut hashed = std::collections::BTreeSet::new();
    let (mut dns, mut sni) = (0u64, 0u64);
    for p in &procs {
        if let Some(files) = p["openedfiles"].as_object() {
            for (path, d) in files {
                opened.insert(path.clone());
                if d.as_object().is_some_and(|o| !o.is_empty()) {
                    hashed.insert(path.clone());
                }
            }
        }
        for u in p["unhashedOpens"].as_array().into_iter().flatten() {
            let reason = u["reason"].as_str().unwrap_or("").to_string();
            let reason = if reason.starts_with("not hashed: ") {
                "not hashed (error)".to_string()
            } else {
                reason
            };
            *r.unhashed.entry(reason).or_default() += 1;
        }
        dns += p["network"]["dnsLookups"]
            .as_array()
            .map_or(0, |a| a.len() as u64);
        sni += p["network"]["connections"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|c| c["hostname"].as_str().is_some_and(|h| !h.is_empty()))
                .count() as u64
        });
    }
    r.opened = Some(opened.len() as u64);
    r.hashed = Some(hashed.len() as u64);
    r.dns = Some(dns);
    r.sni = Some(sni);

    // Checks.
    if sc == Sc::Ebpf {
        if r.lost() > 0 {
            bail!("{} events lost: {:?}", r.lost(), r.events);
        }
        if r.events.contains_key("malformed") {
            bail!("malformed records: {:?}", r.events);
        }
    }
    let s = &ctx.sizes;
    match w {
        Wl::Open => {
            // Repeated opens of one file by one process are one record (the
            // kernel de-duplicates them); the file must be there.
            if !opened.contains("/etc/hostname") {
                bail!("the storm's file /etc/hostname is not in openedfiles");
            }
        }
        Wl::Fork => {
            let n = procs
                .iter()
                .filter(|p| p["program"].as_str() == Some(ctx.true_path.as_str()))
                .count() as u64;
            if n != s.forks {
                bail!(
                    "{n} processes running {} recorded, the workload ran {}",
                    ctx.true_path,
                    s.forks
                );
            }
        }
        Wl::Pkg => {
            let root = ctx.wd(Wl::Pkg).join("node_modules").display().to_string();
            let n = opened.iter().filter(|p| p.starts_with(&root)).count() as u64;
            // Written files, plus the package directories find themselves
            // are not opened: exactly the files.
            let files = opened
                .iter()
                .filter(|p| p.starts_with(&root) && Path::new(p.as_str()).is_file())
                .count() as u64;
            if files != s.pkg_files() {
                bail!("{files} written package files recorded (of {n} paths under node_modules), the workload wrote {}", s.pkg_files());
            }
            let bad: Vec<&String> = opened
                .iter()
                .filter(|p| {
                    p.starts_with(&root) && Path::new(p.as_str()).is_file() && !hashed.contains(*p)
                })
                .take(3)
                .collect();
            if !bad.is_empty() {
                bail!("written package files without a digest, e.g. {bad:?}");
            }
            // DNS queries are recorded by ptrace, and by eBPF builds that
            // capture socket payloads (they report a `payload` counter).
            let sees_dns = sc == Sc::Ptrace || r.events.contains_key("payload");
            if sees_dns && dns != s.packages {
                bail!(
                    "{dns} DNS lookups recorded, the workload made {}",
                    s.packages
                );
            }
        }
        Wl::Walk => {
            // find opens every directory of the tree once: each is recorded.
            let tree = format!("{}/", ctx.work.join("tree").display());
            let n = opened.iter().filter(|p| p.starts_with(&tree)).count() as u64;
            if n + 1 < s.tree_dirs() {
                bail!(
                    "{n} tree directories recorded, find opened {}",
                    s.tree_dirs()
                );
            }
        }
        _ => {}
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn med(runs: &[Run], w: Wl, sc: Sc, f: impl Fn(&Run) -> f64) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r.wl == w && r.sc == sc && r.error.is_none())
            .map(f)
            .collect(),
    )
}

fn med_opt(runs: &[Run], w: Wl, sc: Sc, f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r.wl == w && r.sc == sc && r.error.is_none())
            .filter_map(f)
            .collect(),
    )
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.prec$}"))
}

fn workload_title(w: Wl, s: &Sizes) -> String {
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

const SCENARIOS: [Sc; 5] = [Sc::Base, Sc::Ebpf, Sc::Outside, Sc::Ptrace, Sc::Strace];

fn summary_table(runs: &[Run], workloads: &[Wl]) -> String {
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
fn machine_description(bin_dir: &Path) -> String {
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

#[allow(clippy::too_many_arguments)]
fn render_report(
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

/// One more eBPF run per workload with `kernel.bpf_stats_enabled=1`:
/// per-program run counts and in-kernel time; `perf` on the daemon when it
/// works here.
fn profile_pass(ctx: &Ctx, workloads: &[Wl]) -> anyhow::Result<String> {
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
fn prog_stats(ids: &[u64]) -> BTreeMap<String, (u64, u64)> {
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
