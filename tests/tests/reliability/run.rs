//! Reliability: `cilock run` — signals forwarded and recorded, output
//! capture bounded by its encoded size, `-k` honoured through the daemon,
//! bad `--hashes` refused before anything loads, `-o -` alone on stdout.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cilock_testkit::{attestation, bin, keygen, statement, tempdir, wait_for, Daemon};
use serde_json::Value;

/// The cgroup2 mount, from /proc/self/mountinfo.
fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split(' ').next()? != "cgroup2" {
                return None;
            }
            pre.split(' ').nth(4).map(PathBuf::from)
        })
        .expect("a cgroup2 mount")
}

/// The cgroup2 directory of `pid` (None when it has no cgroup2 line).
fn cgroup_dir(pid: i32) -> Option<PathBuf> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = s.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup2_mount().join(rel.trim_start_matches('/')))
}

/// Waits (bounded) for `child` to exit.
fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cilock did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// A command that records its pid, traps `sig` (writes `got` and exits 7)
/// and otherwise runs until killed.
fn trapping(dir: &Path, sig: &str) -> String {
    format!(
        "trap 'echo {sig} > {d}/got; exit 7' {short}; echo $$ > {d}/pid.tmp; mv {d}/pid.tmp {d}/pid; while :; do sleep 0.05; done",
        d = dir.display(),
        short = sig.trim_start_matches("SIG")
    )
}

fn read_pid(dir: &Path) -> i32 {
    wait_for(30, "the command to start", || dir.join("pid").exists());
    std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Spawns `cilock ARGS` (stdout and stderr in files of `dir`).
fn spawn(mut c: Command, dir: &Path) -> Child {
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("cilock.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("cilock.err")).unwrap())
        .spawn()
        .expect("cilock run")
}

fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cilock.err")).unwrap_or_default()
}

/// The signal case shared by every mode: `sig` sent to cilock alone is
/// forwarded, the command's trap runs, the attestation says so, cilock
/// exits 128+sig and the command's cgroup is gone.
fn forwarded(mode: &str, sig: i32, name: &str) {
    let dir = tempdir();
    let d = dir.path();
    let (key, _) = keygen(d);
    let daemon = (mode == "daemon").then(|| Daemon::start("ebpf"));
    let mut c = match &daemon {
        Some(dm) => dm.command(),
        None => {
            let mut c = Command::new(bin("cilock"));
            c.env("CILOCK_SOCKET", d.join("no-daemon.sock"));
            c
        }
    };
    let out = d.join("att.json");
    c.args(["run", "-s", "sig", "-o"])
        .arg(&out)
        .arg("-k")
        .arg(&key);
    if mode == "ptrace" {
        c.args(["--backend", "ptrace"]);
    }
    // A stale cgroup of a dead (SIGKILLed) cilock run, with an empty step
    // cgroup: an embedded eBPF run removes it when it starts.
    let stale = {
        let mut dead = Command::new("true").spawn().unwrap();
        let pid = dead.id();
        dead.wait().unwrap();
        cgroup2_mount().join(format!("cilock.run.{pid}"))
    };
    if mode == "ebpf" {
        std::fs::create_dir_all(stale.join("old-step")).unwrap();
    }
    c.args(["--", "sh", "-c", &trapping(d, name)]);
    let mut child = spawn(c, d);
    let pid = read_pid(d);
    let cg = cgroup_dir(pid).unwrap();
    // The command runs in its step's `shell` leaf; the step cgroup is the
    // leaf's parent.
    let cg = if mode != "ptrace" {
        assert_eq!(cg.file_name().unwrap(), "shell", "{}", cg.display());
        cg.parent().unwrap().to_path_buf()
    } else {
        cg
    };
    if mode != "ptrace" {
        assert!(
            cg.file_name().unwrap().to_string_lossy().contains(".sig."),
            "the command runs in its step cgroup: {}",
            cg.display()
        );
    }
    signal(child.id(), sig);
    let st = wait_exit(&mut child, 30);
    let err = stderr_of(d);
    assert_eq!(st.code(), Some(128 + sig), "exit of cilock; stderr: {err}");
    assert_eq!(
        std::fs::read_to_string(d.join("got")).unwrap().trim(),
        name,
        "the command received the signal"
    );
    assert!(
        err.contains(&format!("{name} received: forwarding it to the command")),
        "{err}"
    );
    assert!(err.contains("attestation written to"), "{err}");
    let stmt = statement(&out);
    let cr = attestation(&stmt, "command-run/v0.1");
    let want = serde_json::json!({"signal": name, "number": sig, "forwarded": true});
    if mode == "daemon" {
        // The daemon cannot see what signal its client got: a claim.
        assert_eq!(cr["claimed"]["interrupted"], want, "{cr}");
        assert!(cr["trace"].get("interrupted").is_none());
        assert!(err.contains("backend: daemon, ebpf"), "{err}");
    } else {
        assert_eq!(cr["trace"]["interrupted"], want, "{cr}");
        assert!(cr["trace"]["observed"]
            .as_array()
            .unwrap()
            .contains(&Value::from("exitcode")));
        assert!(
            err.contains(&format!("backend: {mode}, in-process")),
            "{err}"
        );
    }
    // The command's own exit, observed by the trace.
    assert_eq!(cr["exitcode"], 7, "{cr}");
    if mode != "ptrace" {
        assert!(!cg.exists(), "step cgroup {} left behind", cg.display());
    }
    let run_cg = cgroup2_mount().join(format!("cilock.run.{}", child.id()));
    assert!(!run_cg.exists(), "{} left behind", run_cg.display());
    if mode == "ebpf" {
        assert!(!stale.exists(), "stale {} not removed", stale.display());
    }
}

#[test]
fn sigterm_through_the_daemon_is_forwarded_and_recorded_as_claimed() {
    forwarded("daemon", libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_in_process_ebpf_is_forwarded_and_observed_and_stale_run_cgroups_go() {
    forwarded("ebpf", libc::SIGINT, "SIGINT");
}

#[test]
fn sighup_in_process_ptrace_is_forwarded_and_observed() {
    forwarded("ptrace", libc::SIGHUP, "SIGHUP");
}

/// A command that ignores the signal: a second signal kills it and every
/// process of its step; `--kill-after` kills it when nobody sends one.
#[test]
fn a_second_signal_or_kill_after_kills_the_step() {
    for (mode, second) in [("ebpf", true), ("ptrace", false)] {
        let dir = tempdir();
        let d = dir.path();
        let (key, _) = keygen(d);
        let out = d.join("att.json");
        let mut c = Command::new(bin("cilock"));
        c.env("CILOCK_SOCKET", d.join("no-daemon.sock"))
            .args(["run", "-s", "stubborn", "-o"])
            .arg(&out)
            .arg("-k")
            .arg(&key)
            .args(["--kill-after", if second { "60s" } else { "1s" }]);
        if mode == "ptrace" {
            c.args(["--backend", "ptrace"]);
        }
        // The root and a background child both ignore SIGTERM.
        let script = format!(
            "trap '' TERM; sleep 1000 & echo $! > {d}/bg; echo $$ > {d}/pid.tmp; mv {d}/pid.tmp {d}/pid; while :; do sleep 0.05; done",
            d = d.display()
        );
        c.args(["--", "sh", "-c", &script]);
        let t0 = Instant::now();
        let mut child = spawn(c, d);
        let _ = read_pid(d);
        let bg: i32 = std::fs::read_to_string(d.join("bg"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        signal(child.id(), libc::SIGTERM);
        if second {
            wait_for(10, "the first signal to be taken", || {
                stderr_of(d).contains("SIGTERM received")
            });
            signal(child.id(), libc::SIGINT);
        }
        let st = wait_exit(&mut child, 30);
        let err = stderr_of(d);
        assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{mode}: {err}");
        if second {
            assert!(
                err.contains("SIGINT received again: killing the command"),
                "{err}"
            );
            assert!(t0.elapsed() < Duration::from_secs(30));
        } else {
            assert!(err.contains("did not exit within 1s"), "{err}");
        }
        let stmt = statement(&out);
        let cr = attestation(&stmt, "command-run/v0.1");
        assert_eq!(
            cr["trace"]["interrupted"],
            serde_json::json!({"signal": "SIGTERM", "number": 15, "forwarded": true, "killed": true}),
            "{mode}"
        );
        assert_eq!(
            cr["exitcode"],
            128 + libc::SIGKILL,
            "{mode}: the root was killed"
        );
        // The background child is gone too (killed with the step).
        wait_for(10, "the background child to be gone", || {
            !Path::new(&format!("/proc/{bg}")).exists()
                || std::fs::read_to_string(format!("/proc/{bg}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
        });
    }
}

/// 100 MB of NUL on stdout and on stderr: the output passes through, the
/// capture is bounded by its encoded size (each NUL costs 6 bytes as
/// `\u0000`), the truncation is machine-readable, the exit is the
/// command's.
fn nul_output(daemon: Option<&Daemon>) {
    const N: u64 = 100_000_000;
    let dir = tempdir();
    let d = dir.path();
    let (key, _) = keygen(d);
    let out = d.join("att.json");
    let mut c2 = match daemon {
        Some(dm) => dm.command(),
        None => {
            let mut c = Command::new(bin("cilock"));
            c.env("CILOCK_SOCKET", d.join("no-daemon.sock"));
            c
        }
    };
    c2.args(["run", "-s", "nul", "-o"]).arg(&out);
    if daemon.is_none() {
        c2.arg("-k").arg(&key).args(["--backend", "ptrace"]);
    }
    c2.args([
        "--",
        "sh",
        "-c",
        &format!("head -c {N} /dev/zero; head -c {N} /dev/zero >&2; exit 3"),
    ]);
    // The pass-through: counted by wc.
    c2.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c2.spawn().unwrap();
    let so = child.stdout.take().unwrap();
    let se = child.stderr.take().unwrap();
    let count = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let (mut n, mut tail) = (0u64, Vec::new());
            loop {
                let k = r.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                n += k as u64;
                tail.extend_from_slice(&buf[..k]);
                if tail.len() > 1 << 20 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            (n, String::from_utf8_lossy(&tail).into_owned())
        })
    };
    let (to, te) = (count(Box::new(so)), count(Box::new(se)));
    let st = wait_exit(&mut child, 80);
    let (no, _) = to.join().unwrap();
    let (ne, etail) = te.join().unwrap();
    assert_eq!(st.code(), Some(3), "the command's exit: {etail}");
    assert_eq!(no, N, "stdout passed through");
    assert!(ne >= N, "stderr passed through");
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size < 40 << 20, "envelope of {size} bytes");
    let stmt = statement(&out);
    let cr = attestation(&stmt, "command-run/v0.1");
    let (text, truncated) = if daemon.is_some() {
        (&cr["claimed"], &cr["claimed"]["truncated"])
    } else {
        (cr, &cr["trace"]["truncated"])
    };
    for stream in ["stdout", "stderr"] {
        let s = text[stream].as_str().unwrap();
        let kept = s.bytes().filter(|&b| b == 0).count() as u64;
        let encoded = serde_json::to_string(s).unwrap().len();
        assert!(encoded <= 12 << 20, "{stream}: {encoded} bytes encoded");
        assert!(kept > (12 << 20) / 6 - 1000, "{stream}: {kept} NULs kept");
        assert_eq!(
            truncated[stream].as_u64(),
            Some(N - kept),
            "{stream}: {truncated}"
        );
        assert!(s.ends_with(&format!(
            "[cilock: {} more bytes of output not captured]\n",
            N - kept
        )));
    }
}

#[test]
fn nul_output_is_capped_by_encoded_size_through_the_daemon() {
    let daemon = Daemon::start("ebpf");
    nul_output(Some(&daemon));
}

#[test]
fn nul_output_is_capped_by_encoded_size_in_process() {
    nul_output(None);
}

/// `-k` through the daemon: the envelope carries the daemon's signature
/// and the user's, both verifying; stderr says where and how. `-o -`:
/// stdout is the envelope alone (the command's stdout goes to stderr).
/// Output over the daemon's `max_request`: the step still ends, without
/// it, and the attestation counts it as not captured.
#[test]
fn through_the_daemon_k_cosigns_o_dash_is_alone_and_refused_output_is_counted() {
    use cilock_evidence::dsse::Envelope;
    use cilock_evidence::keys::Verifier;
    let daemon = Daemon::start_with("ebpf", "max_request = \"1MiB\"");
    let dir = tempdir();
    let d = dir.path();
    let (key, pubkey) = keygen(d);
    let out = d.join("att.json");
    let o = daemon
        .command()
        .args(["run", "-s", "cosign", "-o"])
        .arg(&out)
        .arg("-k")
        .arg(&key)
        .args(["--", "sh", "-c", "echo hello; exit 4"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    let env: Envelope = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let user = Verifier::from_file(&pubkey).unwrap();
    let dmn = Verifier::from_file(&daemon.pubkey).unwrap();
    assert_eq!(env.signatures.len(), 2);
    assert_eq!(env.verify_with_keys(std::slice::from_ref(&dmn)).len(), 1);
    assert_eq!(env.verify_with_keys(std::slice::from_ref(&user)).len(), 1);
    assert_eq!(env.signatures[0].keyid, dmn.key_id());
    assert_eq!(env.signatures[1].keyid, user.key_id());
    assert!(
        err.contains(&format!(
            "cilock: step \"cosign\": attestation written to {} (backend: daemon, ebpf; signed by {}, {})",
            out.display(),
            dmn.key_id(),
            user.key_id()
        )),
        "{err}"
    );
    // -o -: the envelope alone on stdout.
    let o = daemon
        .command()
        .args([
            "run",
            "-s",
            "tostdout",
            "-o",
            "-",
            "--",
            "sh",
            "-c",
            "echo hello-out",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let env: Envelope = serde_json::from_slice(&o.stdout).expect("stdout is one envelope");
    assert_eq!(env.signatures.len(), 1);
    assert!(err.starts_with("hello-out\n"), "{err}");
    assert!(
        err.contains("attestation written to standard output"),
        "{err}"
    );
    // 2 MB of output and a 1 MiB max_request.
    let o = daemon
        .command()
        .args(["run", "-s", "big", "-o"])
        .arg(&out)
        .args([
            "--",
            "sh",
            "-c",
            "head -c 2000000 /dev/zero | tr '\\0' a; echo err >&2; exit 5",
        ])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(
        err.contains("the daemon refused the captured output"),
        "{err}"
    );
    let stmt = statement(&out);
    let cr = attestation(&stmt, "command-run/v0.1");
    assert_eq!(
        cr["claimed"]["truncated"],
        serde_json::json!({"stdout": 2000000, "stderr": 4}),
        "{cr}"
    );
    assert!(cr["claimed"].get("stdout").is_none());
    assert_eq!(cr["exitcode"], 5);
}

/// An unknown hash or attestor is refused at once (exit 2), before the
/// command runs and before an eBPF probe load.
#[test]
fn bad_hashes_and_attestors_are_refused_before_anything_runs() {
    let dir = tempdir();
    let d = dir.path();
    let (key, _) = keygen(d);
    for bad in [["--hashes", "sha256,md4"], ["-a", "nosuch"]] {
        let o = Command::new(bin("cilock"))
            .env("CILOCK_SOCKET", d.join("no-daemon.sock"))
            .env("CILOCK_LOG", "debug")
            .args(["run", "-s", "bad", "-o"])
            .arg(d.join("att.json"))
            .arg("-k")
            .arg(&key)
            .args(bad)
            .args(["--", "touch"])
            .arg(d.join("ran"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {err}");
        assert!(
            err.contains(if bad[0] == "-a" {
                "unknown attestor \"nosuch\""
            } else {
                "md4"
            }),
            "{err}"
        );
        assert!(!d.join("ran").exists());
        assert!(!d.join("att.json").exists());
        // No engine was started: the probe load is never reached.
        assert!(!err.contains("loading the eBPF probes"), "{err}");
        assert!(o.status.signal().is_none());
    }
    // The same run with good values does load them (the line exists).
    let o = Command::new(bin("cilock"))
        .env("CILOCK_SOCKET", d.join("no-daemon.sock"))
        .env("CILOCK_LOG", "debug")
        .args(["run", "-s", "good", "-o"])
        .arg(d.join("good.json"))
        .arg("-k")
        .arg(&key)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("loading the eBPF probes"), "{err}");
}

/// Ctrl-C on a terminal: the kernel sends SIGINT to the whole foreground
/// process group, the command included. cilock does not send it a second
/// time (`forwarded: false`), still writes the attestation and exits 130.
#[test]
fn terminal_ctrl_c_is_not_forwarded_twice() {
    let dir = tempdir();
    let d = dir.path();
    let (key, _) = keygen(d);
    let out = d.join("att.json");
    // The command counts the SIGINTs it gets for 1 s after the first.
    let script = format!(
        "n=0; trap 'n=$((n+1)); echo $n > {d}/got' INT; echo $$ > {d}/pid.tmp; mv {d}/pid.tmp {d}/pid; \
         while [ ! -s {d}/got ]; do sleep 0.05; done; sleep 1; exit 7",
        d = d.display()
    );
    let py = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
import time
d = os.environ['DIR']
deadline = time.time() + 30
while not os.path.exists(d + '/pid'):
    if time.time() > deadline:
        sys.exit('the command did not start')
    time.sleep(0.01)
os.write(fd, b'\x03')
out = b''
while True:
    try:
        b = os.read(fd, 65536)
    except OSError:
        break
    if not b:
        break
    out += b
_, st = os.waitpid(pid, 0)
sys.stderr.write(out.decode(errors='replace'))
print(os.waitstatus_to_exitcode(st))
"#;
    let o = Command::new(cilock_testkit::python())
        .env("DIR", d)
        .arg("-c")
        .arg(py)
        .arg(bin("cilock"))
        .args(["run", "-s", "tty", "--backend", "ptrace", "-k"])
        .arg(&key)
        .arg("-o")
        .arg(&out)
        .args(["--", "sh", "-c", &script])
        .env("CILOCK_SOCKET", d.join("no-daemon.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "130", "{err}");
    assert!(
        err.contains("SIGINT received: the command got it from the terminal too"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("got")).unwrap().trim(),
        "1",
        "the command got SIGINT exactly once"
    );
    let stmt = statement(&out);
    let cr = attestation(&stmt, "command-run/v0.1");
    assert_eq!(
        cr["trace"]["interrupted"],
        serde_json::json!({"signal": "SIGINT", "number": 2, "forwarded": false})
    );
    assert_eq!(cr["exitcode"], 7);
}
