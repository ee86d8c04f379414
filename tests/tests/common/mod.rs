//! Helpers shared by the network, suspicious-syscall and stealer tests:
//! one traced step run through the real daemon, the daemon's pid, a local
//! DNS responder and a local TLS server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cilock_tests::*;
use serde_json::Value;

/// Starts `sh -c 'read go; exec sh <dir>/<name>.sh'` in `dir` (the job's
/// shell) and moves it into a new step named `name` of `daemon`; the script
/// runs once "go" is written to its stdin.
pub fn begin_job(daemon: &Daemon, name: &str, dir: &Path, script: &str, stdout: Stdio) -> Child {
    let sh = dir.join(format!("{name}.sh"));
    write_script(&sh, script);
    let job = Command::new("sh")
        .arg("-c")
        .arg(format!("read go; exec sh {}", sh.display()))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = daemon.cilock(&[
        "step",
        "begin",
        "--step",
        name,
        "--pid",
        &job.id().to_string(),
        "--workdir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "begin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    job
}

/// Ends step `name` of `daemon`, writing its envelope to
/// `dir/<name>.att.json`; returns that path.
pub fn end_step(daemon: &Daemon, name: &str, dir: &Path) -> PathBuf {
    let att = dir.join(format!("{name}.att.json"));
    let out = daemon.cilock(&["step", "end", "--step", name, "-o", att.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "end: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log_text()
    );
    att
}

/// Runs `script` (sh) as a step named `name` of `daemon` in `dir`: the
/// job's shell is moved into the step before it starts the script;
/// `before_end` runs after the script and before `step end` (a process
/// outside the step). Returns the attestation envelope's path.
pub fn run_step_with(
    daemon: &Daemon,
    name: &str,
    dir: &Path,
    script: &str,
    before_end: impl FnOnce(),
) -> PathBuf {
    let mut job = begin_job(daemon, name, dir, script, Stdio::piped());
    job.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(job.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let st = job.wait().unwrap();
    assert!(st.success(), "step script failed: {stdout}");
    std::fs::write(dir.join(format!("{name}.stdout")), &stdout).unwrap();
    before_end();
    end_step(daemon, name, dir)
}

/// [`run_step_with`] with nothing before the end.
pub fn run_step(daemon: &Daemon, name: &str, dir: &Path, script: &str) -> PathBuf {
    run_step_with(daemon, name, dir, script, || {})
}

/// The command-run attestation of an envelope.
pub fn command_run(att: &Path) -> Value {
    let stmt = statement(att);
    attestation(&stmt, "/command-run/v0.1").clone()
}

/// The processes of a command-run attestation.
pub fn processes(cr: &Value) -> Vec<Value> {
    cr["processes"].as_array().cloned().unwrap_or_default()
}

/// The process with this pid.
pub fn by_pid(cr: &Value, pid: i64) -> Value {
    processes(cr)
        .into_iter()
        .find(|p| p["processid"].as_i64() == Some(pid))
        .unwrap_or_else(|| {
            panic!(
                "no process {pid} in {}",
                serde_json::to_string_pretty(cr).unwrap()
            )
        })
}

/// No event of the trace was lost.
pub fn assert_nothing_lost(cr: &Value) {
    for (kind, c) in cr["trace"]["events"].as_object().unwrap() {
        assert_eq!(c["lost"], 0, "lost {kind} events");
    }
}

/// The pid of the daemon serving `daemon.socket` (found through /proc: its
/// config file sits next to the socket).
pub fn daemon_pid(daemon: &Daemon) -> u32 {
    let config = daemon.socket.parent().unwrap().join("cilock.toml");
    let want = config.to_str().unwrap().as_bytes().to_vec();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|&b| b == 0).any(|a| a == want.as_slice()) {
            return pid;
        }
    }
    panic!("daemon process not found");
}

/// Compiles a C program of `tests/programs` into `dir`.
pub fn cc(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("programs")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let o = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .expect("cc");
    assert!(
        o.status.success(),
        "cc {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A child process killed at drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DNS responder (Python, outside any step) on `ip`:53, UDP and TCP.
/// Every A query is answered with `a_answer`, AAAA with ::1, TXT with
/// "cilock". Each query it receives is appended to `log` as `type name`.
pub fn dns_server(ip: &str, a_answer: &str, log: &Path) -> Bg {
    let script = format!(
        r#"
import socket, struct, threading, sys
IP, A, LOG = {ip:?}, {a_answer:?}, {log:?}
def name_end(m, i):
    while m[i]:
        i += 1 + m[i]
    return i + 1
def answer(q):
    e = name_end(q, 12)
    qname, qtype = q[12:e], struct.unpack(">H", q[e:e+2])[0]
    labels, i = [], 0
    while qname[i]:
        labels.append(qname[i+1:i+1+qname[i]].decode()); i += 1 + qname[i]
    with open(LOG, "a") as f:
        f.write({{1: "A", 28: "AAAA", 16: "TXT"}}.get(qtype, str(qtype)) + " " + ".".join(labels) + "\n")
    if qtype == 1:
        rdata = socket.inet_aton(A)
    elif qtype == 28:
        rdata = socket.inet_pton(socket.AF_INET6, "::1")
    elif qtype == 16:
        rdata = b"\x06cilock"
    else:
        rdata = None
    hdr = q[:2] + struct.pack(">HHHHH", 0x8180, 1, 1 if rdata else 0, 0, 0)
    out = hdr + q[12:e+4]
    if rdata:
        out += b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 60, len(rdata)) + rdata
    return out
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((IP, 53))
    ready.release()
    while True:
        q, peer = s.recvfrom(4096)
        try: s.sendto(answer(q), peer)
        except Exception as e: print("udp", e, file=sys.stderr)
def conn(c):
    buf = b""
    while True:
        d = c.recv(4096)
        if not d: break
        buf += d
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
            n = struct.unpack(">H", buf[:2])[0]
            r = answer(buf[2:2+n]); buf = buf[2+n:]
            c.sendall(struct.pack(">H", len(r)) + r)
    c.close()
def tcp():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((IP, 53)); s.listen(16)
    ready.release()
    while True:
        c, _ = s.accept()
        threading.Thread(target=conn, args=(c,), daemon=True).start()
ready = threading.Semaphore(0)
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
ready.acquire(); ready.acquire()
print("ready", flush=True)
threading.Event().wait()
"#
    );
    spawn_ready(Command::new(python()).arg("-c").arg(script))
}

/// Spawns `cmd` and waits for a line "ready" on its stdout.
pub fn spawn_ready(cmd: &mut Command) -> Bg {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut l = String::new();
    lines.read_line(&mut l).unwrap();
    assert_eq!(l.trim(), "ready", "server did not start");
    Bg(child)
}

/// A self-signed certificate and key for `cn` in `dir`.
pub fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (cert, key)
}

/// `openssl s_server` on `addr:port` (an IPv4 address), optionally inside
/// network namespace `netns`.
pub fn tls_server(addr: &str, port: u16, cert: &Path, key: &Path, netns: Option<&str>) -> Bg {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "openssl"]);
            c
        }
        None => Command::new("openssl"),
    };
    c.args([
        "s_server",
        "-quiet",
        "-naccept",
        "100",
        "-alpn",
        "h2,http/1.1",
    ])
    .arg("-accept")
    .arg(format!("{addr}:{port}"))
    .arg("-cert")
    .arg(cert)
    .arg("-key")
    .arg(key)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = c.spawn().unwrap();
    // Wait until it accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = match netns {
            Some(ns) => {
                Command::new("ip")
                    .args(["netns", "exec", ns, "sh", "-c"])
                    .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
                    || Command::new("ip")
                        .args(["netns", "exec", ns])
                        .arg(python())
                        .arg("-c")
                        .arg(format!(
                            "import socket; socket.create_connection(({addr:?}, {port}), 1)"
                        ))
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
            }
            None => std::net::TcpStream::connect((addr, port)).is_ok(),
        };
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Bg(child)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The connections of a process with this syscall, address and port.
pub fn conns<'a>(p: &'a Value, syscall: &str, address: &str, port: Option<u16>) -> Vec<&'a Value> {
    p["network"]["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["syscall"] == syscall
                && c["address"] == address
                && port.is_none_or(|pt| c["port"].as_u64() == Some(pt as u64))
        })
        .collect()
}
