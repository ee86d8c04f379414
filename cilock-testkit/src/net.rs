//! Local network peers for the network tests, run outside any step: a DNS
//! responder and a TLS server (Python), a free port, and a lookup of the
//! connections a traced process made.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::envelope::python;

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
pub fn dns_server(ip: &str, a_answer: &str, log: &Path) -> Dns {
    let claim = Claim::take(ip);
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
    Dns {
        _server: spawn_ready(Command::new(python()).arg("-c").arg(script)),
        _claim: claim,
    }
}

/// A running [`dns_server`]; stopped at drop, which frees its address.
pub struct Dns {
    _server: Bg,
    /// Dropped after the server.
    _claim: Claim,
}

/// An address:53 in use by a test, held until drop: an exclusive `flock`
/// on `/tmp/cilock-test-dns-<ip>.lock`. The tests of one binary run side by
/// side, and several test runs may share the machine; some tests use the
/// same fixed resolver address (it appears in what they assert), so a
/// second user waits for the first.
struct Claim {
    /// Holds the lock; closing it (at drop) releases it.
    _lock: std::fs::File,
}

impl Claim {
    fn take(ip: &str) -> Claim {
        use std::os::fd::AsRawFd as _;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("/tmp/cilock-test-dns-{ip}.lock"))
            .expect("open the DNS address lock");
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        Claim { _lock: f }
    }
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
