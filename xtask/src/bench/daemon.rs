//! What the traced scenarios run against: the local DNS and TLS servers of
//! the package workload ([`Servers`]) and the bench's throw-away daemon
//! ([`Daemon`]), with its CPU and memory read from `/proc`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::util::cmd;

use super::workload::Ctx;

/// The local DNS resolver and TLS registry of the package-install workload.
pub(super) struct Servers {
    pub(super) child: Child,
    pub(super) dns: u16,
    pub(super) tls: u16,
}

impl Servers {
    pub(super) fn start(ctx: &Ctx) -> anyhow::Result<Servers> {
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
    pub(super) fn stop(mut self) {
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
pub(super) struct Daemon {
    pub(super) child: Option<Child>,
    pub(super) pid: u32,
    pub(super) socket: PathBuf,
    pub(super) idle_rss_kib: u64,
    /// Anonymous part of the idle RSS (the rest is mostly the ring buffer's
    /// mapping, which is kernel memory).
    pub(super) idle_anon_kib: u64,
}

impl Daemon {
    pub(super) fn start(ctx: &Ctx, round: usize) -> anyhow::Result<Daemon> {
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
    pub(super) fn cilock(&self, ctx: &Ctx) -> Command {
        let mut c = cmd(&ctx.cilock);
        c.env("CILOCK_SOCKET", &self.socket);
        c
    }
    /// Process CPU time (user+sys, all threads, including exited ones).
    pub(super) fn cpu_s(&self) -> f64 {
        proc_stat_cpu_s(&format!("/proc/{}/stat", self.pid)).unwrap_or(0.0)
    }
    /// CPU time of the ring-buffer consumer thread.
    pub(super) fn consumer_cpu_s(&self) -> f64 {
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
    pub(super) fn reset_hwm(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }
    /// The ids of the BPF programs this daemon holds.
    pub(super) fn prog_ids(&self) -> Vec<u64> {
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
    pub(super) fn stop(mut self) {
        self.shutdown();
    }
    pub(super) fn shutdown(&mut self) {
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

pub(super) fn proc_stat_cpu_s(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / hz)
}

pub(super) fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
