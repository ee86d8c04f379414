//! Network evidence: connects (IPv4, IPv6, Unix), a UDP DNS query and TLS
//! ClientHellos (openssl s_client and python ssl) against listeners started
//! here; each must appear exactly once with the right pid, and the payloads
//! must parse (DNS name/type, SNI) from the egress bytes.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::process::Command;

use crate::ptrace_common::trace;
use cilock_daemon::backend::ptrace::PtraceConfig;
use cilock_trace::proto::{
    dns::parse_dns_queries,
    tls::{parse_client_hello, ClientHello},
};
use cilock_trace::{NetCall, SockAddr, TraceEvent};

/// A real python3 binary (not the pyenv shim script).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Accepts connections forever, reading until EOF or 2 s, then closing.
fn sink(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(std::time::Duration::from_millis(500)))
                    .ok();
                let mut b = [0u8; 8192];
                let _ = s.read(&mut b);
            });
        }
    });
}

#[test]
fn connects_dns_and_tls_sni() {
    let tmp = tempfile::tempdir().unwrap();
    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l6 = TcpListener::bind("[::1]:0").unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upath = tmp.path().join("u.sock");
    let ul = UnixListener::bind(&upath).unwrap();
    let (p4, p6, pt, pu) = (
        l4.local_addr().unwrap().port(),
        l6.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    sink(l4);
    sink(l6);
    sink(tls);
    std::thread::spawn(move || for _s in ul.incoming() {});

    let py = format!(
        r#"
import socket, struct, ssl
a = socket.create_connection(("127.0.0.1", {p4})); a.close()
b = socket.socket(socket.AF_INET6); b.connect(("::1", {p6})); b.close()
q = struct.pack(">HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
for l in b"example.cilock.test".split(b"."):
    q += bytes([len(l)]) + l
q += b"\x00" + struct.pack(">HH", 28, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(q, ("127.0.0.1", {pu})); u.close()
x = socket.socket(socket.AF_UNIX); x.connect("{upath}"); x.close()
ctx = ssl.create_default_context()
s = socket.create_connection(("127.0.0.1", {pt}))
try:
    ctx.wrap_socket(s, server_hostname="py.sni.test.example")
except Exception:
    pass
print("py-done", flush=True)
"#,
        upath = upath.display()
    );
    let script = tmp.path().join("net.py");
    std::fs::write(&script, py).unwrap();
    let sh = format!(
        "{py} -S -B {script}\nopenssl s_client -servername sni.test.example -connect 127.0.0.1:{pt} < /dev/null > /dev/null 2>&1\necho sh-done\n",
        py = python(),
        script = script.display()
    );
    let mut cmd = Command::new("/bin/bash");
    cmd.args(["-c", &sh]);
    let (code, events, out) = trace(cmd, &PtraceConfig::default());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("py-done") && out.contains("sh-done"), "{out}");

    let mut pid_of: HashMap<String, u32> = HashMap::new();
    for e in &events {
        if let TraceEvent::Exec { pid, exe, .. } = e {
            let exe = exe.clone().unwrap_or_default();
            if exe.contains("python3") {
                pid_of.insert("python".into(), *pid);
            } else if exe.ends_with("/openssl") {
                pid_of.insert("openssl".into(), *pid);
            }
        }
    }
    let pypid = pid_of["python"];
    let sslpid = pid_of["openssl"];

    let count = |call: NetCall, addr: &SockAddr| -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Net {
                    pid,
                    call: c,
                    addr: a,
                    ..
                } if *c == call && a == addr => Some(*pid),
                _ => None,
            })
            .collect()
    };
    let ip = |s: &str| SockAddr::Ip(s.parse::<SocketAddr>().unwrap());
    assert_eq!(
        count(NetCall::Connect, &ip(&format!("127.0.0.1:{p4}"))),
        vec![pypid]
    );
    assert_eq!(
        count(NetCall::Connect, &ip(&format!("[::1]:{p6}"))),
        vec![pypid]
    );
    assert_eq!(
        count(NetCall::SendTo, &ip(&format!("127.0.0.1:{pu}"))),
        vec![pypid]
    );
    assert_eq!(
        count(
            NetCall::Connect,
            &SockAddr::Unix(upath.display().to_string())
        ),
        vec![pypid]
    );
    let tls_connects = count(NetCall::Connect, &ip(&format!("127.0.0.1:{pt}")));
    assert_eq!(tls_connects.iter().filter(|p| **p == pypid).count(), 1);
    assert_eq!(tls_connects.iter().filter(|p| **p == sslpid).count(), 1);

    // DNS query from the UDP egress.
    let dns: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Egress {
                pid,
                dst: Some(d),
                stream: false,
                bytes,
                ..
            } if d.port() == pu => Some((*pid, parse_dns_queries(bytes, false))),
            _ => None,
        })
        .collect();
    assert_eq!(dns.len(), 1, "{dns:?}");
    assert_eq!(dns[0].0, pypid);
    let q = dns[0].1.as_ref().expect("parses as DNS");
    assert_eq!(q[0].id, 0xBEEF);
    assert_eq!(q[0].name, "example.cilock.test");
    assert_eq!(q[0].qtype, "AAAA");

    // TLS: reassemble the egress per (pid, fd) towards the TLS port.
    let mut streams: HashMap<(u32, i32), Vec<u8>> = HashMap::new();
    for e in &events {
        if let TraceEvent::Egress {
            pid,
            fd,
            dst: Some(d),
            stream: true,
            bytes,
            ..
        } = e
        {
            if d.port() == pt {
                streams
                    .entry((*pid, *fd))
                    .or_default()
                    .extend_from_slice(bytes);
            }
        }
    }
    let sni_of = |pid: u32| -> Vec<Option<String>> {
        streams
            .iter()
            .filter(|((p, _), _)| *p == pid)
            .map(|(_, b)| match parse_client_hello(b) {
                ClientHello::Hello { sni, .. } => sni,
                o => panic!("pid {pid}: {o:?}"),
            })
            .collect()
    };
    assert_eq!(sni_of(sslpid), vec![Some("sni.test.example".to_string())]);
    assert_eq!(sni_of(pypid), vec![Some("py.sni.test.example".to_string())]);
}
