//! `cargo xtask demo`: set the machine up, start a throw-away daemon, trace
//! a small build as a CI step with `cilock step begin/end`, and print the
//! signed attestation's summary.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::util::{cargo, exec, note, require_root, step, target_dir};

/// `cargo xtask demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Skip `setup` (prerequisites already installed).
    #[arg(long)]
    pub no_setup: bool,
    /// Keep the demo directory (attestation, key, daemon log).
    #[arg(long)]
    pub keep: bool,
}

const HELLO_C: &str = r#"#include <stdio.h>
#include "greeting.h"
int main(void) { printf("%s\n", GREETING); return 0; }
"#;

const WORKLOAD: &str = r#"set -e
cc -O2 -o hello hello.c
./hello
sha256sum hello > hello.sha256
(setsid sleep 2 </dev/null >/dev/null 2>&1 &)
"#;

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    require_root("demo")?;
    if !args.no_setup {
        crate::setup::run(crate::setup::SetupArgs { check: false })?;
    }
    step("building cilock and cilock-daemon (release)");
    exec(cargo().args([
        "build",
        "--release",
        "-p",
        "cilock-cli",
        "-p",
        "cilock-daemon",
    ]))?;
    let bin = target_dir().join("release");
    let cilock = bin.join("cilock");
    let daemon_bin = bin.join("cilock-daemon");

    let dir = std::env::temp_dir().join(format!("cilock-demo.{}", std::process::id()));
    std::fs::create_dir_all(dir.join("work")).context("demo directory")?;
    let result = demo(&dir, &cilock, &daemon_bin);
    if args.keep || result.is_err() {
        note(format!("demo files kept in {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn demo(dir: &Path, cilock: &Path, daemon_bin: &Path) -> anyhow::Result<()> {
    let key = dir.join("signing-key.pem");
    let socket = dir.join("cilock.sock");
    let log = dir.join("daemon.log");
    let work = dir.join("work");
    step("generating a signing key for the demo daemon");
    exec(Command::new(cilock).arg("keygen").arg("-o").arg(&key))?;
    let config = dir.join("cilock.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nkey = {:?}\ncgroup_parent = \"cilock.demo.{}\"\n",
            socket.display().to_string(),
            key.display().to_string(),
            std::process::id()
        ),
    )?;
    step("starting cilock-daemon (eBPF probes load once)");
    let logf = std::fs::File::create(&log)?;
    let mut daemon = Command::new(daemon_bin)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .context("starting cilock-daemon")?;
    let r = (|| -> anyhow::Result<()> {
        wait_ready(cilock, &socket, &mut daemon, &log)?;
        std::fs::write(work.join("hello.c"), HELLO_C)?;
        std::fs::write(
            work.join("greeting.h"),
            "#define GREETING \"hello from a traced CI step\"\n",
        )?;

        step("a CI job's shell: `cilock step begin`, a small build, `cilock step end`");
        let mut job = Command::new("sh")
            .arg("-c")
            .arg(format!("read go\n{WORKLOAD}"))
            .current_dir(&work)
            .stdin(Stdio::piped())
            .spawn()?;
        let pid = job.id().to_string();
        let cl = |args: &[&str]| {
            let mut c = Command::new(cilock);
            c.args(args).env("CILOCK_SOCKET", &socket);
            c
        };
        exec(&mut cl(&[
            "step",
            "begin",
            "--step",
            "demo",
            "--pid",
            &pid,
            "--workdir",
            work.to_str().unwrap_or_default(),
            "-a",
            "environment,git,secretscan",
        ]))?;
        job.stdin.take().context("job stdin")?.write_all(b"go\n")?;
        if !job.wait()?.success() {
            bail!("the demo workload failed");
        }
        let att = dir.join("demo.attestation.json");
        exec(&mut cl(&[
            "step",
            "end",
            "--step",
            "demo",
            "-o",
            att.to_str().unwrap_or_default(),
        ]))?;
        step("the signed attestation (`cilock inspect`)");
        let pubkey = PathBuf::from(format!("{}.pub", key.display()));
        exec(
            Command::new(cilock)
                .arg("inspect")
                .arg("-k")
                .arg(&pubkey)
                .arg(&att),
        )?;
        note(format!(
            "full statement: {} inspect --json {}",
            cilock.display(),
            att.display()
        ));
        Ok(())
    })();
    // SIGTERM: the daemon shuts down cleanly and removes its socket.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    if r.is_err() {
        eprintln!(
            "--- daemon log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    r
}

fn wait_ready(
    cilock: &Path,
    socket: &Path,
    daemon: &mut std::process::Child,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(st)) = daemon.try_wait() {
            bail!(
                "cilock-daemon exited ({st}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let out = Command::new(cilock)
            .args([
                "step",
                "end",
                "--step",
                "readiness-probe",
                "-o",
                "/dev/null",
            ])
            .env("CILOCK_SOCKET", socket)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("no active step") || err.contains("invalid step name") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("cilock-daemon did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
