//! Observed versus claimed (security review #5) and products written by
//! outsiders (D12), on the eBPF and the ptrace daemon and the embedded
//! ptrace engine.
//!
//! - A client that sends a crafted `begin-step` (claiming `make test`) and
//!   `end-step` (claiming exit code 0 and a passing output) for a command
//!   that exits 3: command-run's `exitcode` is 3 and `cmd` the argv the
//!   kernel recorded at the root's exec; the claims are under `claimed`
//!   only; the example policy `command-succeeded.rego` denies it.
//! - `cilock step begin/end --exitcode 0` whose shell is still running at
//!   the end: `exitcode` -1 (unknown, with the reason), the 0 under
//!   `claimed`.
//! - A process outside the step writes a file into the workdir during the
//!   step: the product is listed with `writtenByStep: false`; files the
//!   step wrote (directly, and under a temporary name renamed into place)
//!   are `writtenByStep: true`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cilock_evidence::policy::rego::{CompiledRego, RegoModule};
use cilock_testkit::step::release;
use cilock_testkit::*;
use serde_json::{json, Value};

/// One request on the daemon's socket (4-byte big-endian length + JSON).
fn req(socket: &Path, v: &Value) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    let body = serde_json::to_vec(v).unwrap();
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    serde_json::from_slice(&buf).unwrap()
}

/// The statement of an envelope given as JSON.
fn statement_of(env: &Value, dir: &Path, name: &str) -> Value {
    let p = dir.join(format!("{name}.att.json"));
    std::fs::write(&p, serde_json::to_vec(env).unwrap()).unwrap();
    statement(&p)
}

/// A process outside every step writes `name` into `dir`.
fn outsider_writes(dir: &Path, name: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("echo from-outside > {name}"))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

fn check_products(stmt: &Value, ctx: &str) {
    let p = attestation(stmt, "/product/v0.1");
    assert_eq!(p["built.bin"]["writtenByStep"], true, "{ctx}: {p}");
    assert_eq!(p["renamed.bin"]["writtenByStep"], true, "{ctx}: {p}");
    assert_eq!(p["dropped.txt"]["writtenByStep"], false, "{ctx}: {p}");
    // Still a subject: listed, only marked.
    let subjects: Vec<&str> = stmt["subject"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        subjects.iter().any(|s| s.ends_with("file:dropped.txt")),
        "{ctx}: {subjects:?}"
    );
}

const STEP_SCRIPT: &str = "echo built > built.bin; echo tmp > r.tmp; mv r.tmp renamed.bin; exit 3";

/// The crafted run: the root waits, then execs `sh -c STEP_SCRIPT` (exit 3)
/// while the client claims `make test` succeeded.
fn forged_run(d: &Daemon, backend: &str) {
    let w = tempdir();
    let dir = w.path();
    let mut job = Command::new("sh")
        .arg("-c")
        .arg(format!("read go; exec /bin/sh -c '{STEP_SCRIPT}'"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let step = format!("forged-{backend}");
    let r = req(
        &d.socket,
        &json!({"request": "begin-step", "step": step, "pid": job.id(),
                "workdir": dir.to_str().unwrap(), "cmd": ["make", "test"]}),
    );
    assert_eq!(r["reply"], "begun", "{r}");
    outsider_writes(dir, "dropped.txt");
    release(&mut job);
    assert_eq!(job.wait().unwrap().code(), Some(3));
    let r = req(
        &d.socket,
        &json!({"request": "end-step", "step": step, "exitcode": 0,
                "stdout": "All 412 tests passed\n", "stderr": ""}),
    );
    assert_eq!(r["reply"], "ended", "{r}");
    let stmt = statement_of(&r["envelope"], dir, &step);
    let cr = attestation(&stmt, "/command-run/v0.1");
    assert_eq!(cr["exitcode"], 3, "{backend}: {cr}");
    assert_eq!(
        cr["cmd"],
        json!(["/bin/sh", "-c", STEP_SCRIPT]),
        "{backend}: the argv of the root's exec"
    );
    assert!(cr.get("stdout").is_none(), "{backend}: {cr}");
    assert_eq!(
        cr["claimed"],
        json!({"cmd": ["make", "test"], "stdout": "All 412 tests passed\n", "exitcode": 0}),
        "{backend}"
    );
    assert_eq!(cr["trace"]["observed"], json!(["cmd", "exitcode"]));
    assert_eq!(
        cr["trace"]["unobserved"]["stdout"],
        "the daemon does not capture output: what the client sent is in claimed"
    );
    check_products(&stmt, backend);
    // The example policy on the observed exit status: denied, whatever
    // the claim.
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/command-succeeded.rego"),
    )
    .unwrap();
    let m = CompiledRego::compile(&[RegoModule {
        name: "command-succeeded".into(),
        source: src,
    }])
    .unwrap();
    assert_eq!(
        m.deny(cr).unwrap(),
        ["The command failed: its root process exited with status 3 (claimed: 0)"]
    );
}

/// `step begin/end --exitcode 0` whose shell is still running at the end.
fn claimed_step_end(d: &Daemon, backend: &str) {
    let w = tempdir();
    let dir = w.path();
    let mut job = Command::new("sh")
        .arg("-c")
        .arg("read go; sh -c 'exit 3'; echo done; read end")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let step = format!("claimed-{backend}");
    let pid = job.id().to_string();
    let out = d.cilock(&[
        "step",
        "begin",
        "--step",
        &step,
        "--pid",
        &pid,
        "--workdir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stdin = job.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let mut line = [0u8; 5];
    job.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"done\n");
    let att = dir.join("claimed.att.json");
    let out = d.cilock(&[
        "step",
        "end",
        "--step",
        &step,
        "-o",
        att.to_str().unwrap(),
        "--exitcode",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    job.wait().unwrap();
    let stmt = statement(&att);
    let cr = attestation(&stmt, "/command-run/v0.1");
    assert_eq!(cr["exitcode"], -1, "{backend}: {cr}");
    assert_eq!(cr["cmd"], json!([]));
    assert_eq!(cr["claimed"], json!({"exitcode": 0}));
    assert!(cr["trace"].get("observed").is_none(), "{backend}: {cr}");
    assert_eq!(
        cr["trace"]["unobserved"]["exitcode"],
        format!("the step's root process (pid {pid}) was still running when the step ended")
    );
    // The inner command's exit is in the process tree, observed.
    assert!(
        cr["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["exitcode"] == 3 && p["cmdline"] == "sh -c exit 3"),
        "{backend}: {cr}"
    );
}

#[test]
fn ebpf_daemon() {
    let d = Daemon::start("ebpf");
    forged_run(&d, "ebpf");
    claimed_step_end(&d, "ebpf");
}

#[test]
fn ptrace_daemon() {
    let d = Daemon::start("ptrace");
    forged_run(&d, "ptrace");
    claimed_step_end(&d, "ptrace");
}

#[test]
fn embedded_ptrace() {
    let w = tempdir();
    let dir = w.path();
    let (key, _pubkey) = keygen(dir);
    let att = dir.join("embedded.att.json");
    let script = "echo built > built.bin; echo tmp > r.tmp; mv r.tmp renamed.bin; i=0; \
         while [ ! -e dropped.txt ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; echo out; exit 3";
    let child = Command::new(bin("cilock"))
        .args(["run", "--no-daemon", "--backend", "ptrace", "-k"])
        .arg(&key)
        .args(["--step", "embedded", "-o"])
        .arg(&att)
        .args(["--", "sh", "-c", script])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("renamed.bin").exists() {
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    outsider_writes(dir, "dropped.txt");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stmt = statement(&att);
    let cr = attestation(&stmt, "/command-run/v0.1");
    // The engine spawned, captured and waited itself: all observed.
    assert_eq!(cr["exitcode"], 3);
    assert_eq!(cr["cmd"], json!(["sh", "-c", script]));
    assert_eq!(cr["stdout"], "out\n");
    assert!(cr.get("claimed").is_none(), "{cr}");
    assert_eq!(
        cr["trace"]["observed"],
        json!(["cmd", "exitcode", "stdout", "stderr"])
    );
    check_products(&stmt, "embedded ptrace");
}
