//! Network evidence of a traced step (eBPF backend, real daemon, real
//! peers): connects over IPv4, IPv6 and Unix sockets; DNS queries (A, AAAA,
//! TXT over UDP, A and TXT over TCP) to a local resolver on 127.0.0.77:53;
//! TLS ClientHellos from Python ssl, openssl s_client, a hello written in
//! two pieces and a large openssl hello in a network namespace whose
//! loopback MTU is 1280. Every item must be attributed to the right process,
//! exactly once; a concurrent process outside the step must not appear.

use std::os::unix::net::UnixListener;
use std::process::Command;

use cilock_testkit::*;
use cilock_testkit::{net::*, step::*};
use serde_json::Value;

const CLIENT: &str = r#"
import socket, ssl, struct, sys, time
P4, P6, UPATH, TLSP, DNS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]

a = socket.create_connection(("127.0.0.1", P4)); a.close()
b = socket.socket(socket.AF_INET6); b.connect(("::1", P6)); b.close()
x = socket.socket(socket.AF_UNIX); x.connect(UPATH); x.close()

def query(i, name, t):
    m = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0)
    for l in name.split("."):
        m += bytes([len(l)]) + l.encode()
    return m + b"\0" + struct.pack(">HH", t, 1)

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
for i, (n, t) in enumerate([("a.cilock.test", 1), ("aaaa.cilock.test", 28), ("txt.cilock.test", 16)]):
    u.sendto(query(100 + i, n, t), (DNS, 53)); u.recvfrom(4096)
u.close()
t = socket.create_connection((DNS, 53)); t.settimeout(5)
for i, (n, qt) in enumerate([("tcp-a.cilock.test", 1), ("tcp-txt.cilock.test", 16)]):
    m = query(200 + i, n, qt)
    t.sendall(struct.pack(">H", len(m)) + m)
    n = struct.unpack(">H", t.recv(2))[0]
    while n > 0:
        n -= len(t.recv(n))
t.close()

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2", "http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", TLSP)), server_hostname="py.sni.cilock.test")
s.close()

# A large ClientHello (many ALPN values) written in two pieces: two
# segments whatever the MSS; the second piece must be reassembled.
big = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
big.check_hostname = False
big.verify_mode = ssl.CERT_NONE
big.set_alpn_protocols(["proto-%03d-%s" % (i, "x" * 20) for i in range(80)] + ["h2"])
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
o = big.wrap_bio(inc, out, server_hostname="big.sni.cilock.test")
try:
    o.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
print("hello_len", len(hello), flush=True)
s = socket.create_connection(("127.0.0.1", TLSP))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(hello[:600]); time.sleep(0.1); s.sendall(hello[600:])
s.settimeout(2)
try:
    s.recv(100)
except Exception:
    pass
s.close()
print("client done", flush=True)
"#;

const OUTSIDE: &str = r#"
import socket, struct, sys, time
P4, DNS = int(sys.argv[1]), sys.argv[2]
for _ in range(20):
    socket.create_connection(("127.0.0.1", P4)).close()
    m = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x07outside\x06cilock\x04test\x00" + struct.pack(">HH", 1, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2); u.sendto(m, (DNS, 53)); u.recvfrom(512); u.close()
    time.sleep(0.05)
"#;

fn accept_forever(l: std::net::TcpListener) {
    std::thread::spawn(move || for _s in l.incoming() {});
}

fn find_proc<'a>(procs: &'a [Value], pred: impl Fn(&Value) -> bool, what: &str) -> &'a Value {
    let v: Vec<&Value> = procs.iter().filter(|p| pred(p)).collect();
    assert_eq!(v.len(), 1, "expected one {what} process, got {}", v.len());
    v[0]
}

fn dns<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
    p["network"]["dnsLookups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["name"] == name)
        .collect()
}

#[test]
fn connects_dns_and_tls_per_process() {
    let work = tempdir();
    let w = work.path();
    let netns = format!("cilock-net-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    sh(&format!(
        "ip netns add {netns} && ip netns exec {netns} ip link set lo mtu 1280 up"
    ));
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _ns = DelNs(netns.clone());

    // Peers, all outside the step.
    let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let l6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    let (p4, p6) = (
        l4.local_addr().unwrap().port(),
        l6.local_addr().unwrap().port(),
    );
    accept_forever(l4);
    accept_forever(l6);
    let upath = w.join("peer.sock");
    let ul = UnixListener::bind(&upath).unwrap();
    std::thread::spawn(move || for _s in ul.incoming() {});
    let dns_log = w.join("dns.log");
    let _dns = dns_server("127.0.0.77", "127.0.0.88", &dns_log);
    let (cert, key) = self_signed(w, "cilock.test");
    let tlsp = free_port();
    let _tls = tls_server("127.0.0.1", tlsp, &cert, &key, None);
    let _tls_ns = tls_server("127.0.0.1", 8443, &cert, &key, Some(&netns));

    let daemon = Daemon::start("ebpf");
    std::fs::write(w.join("client.py"), CLIENT).unwrap();
    std::fs::write(w.join("outside.py"), OUTSIDE).unwrap();
    // A process outside the step doing the same kind of things meanwhile.
    let mut outside = Command::new(python())
        .arg("outside.py")
        .arg(p4.to_string())
        .arg("127.0.0.77")
        .current_dir(w)
        .spawn()
        .unwrap();

    let alpn_long: Vec<String> = (0..80)
        .map(|i| format!("ossl-{i:03}-{}", "y".repeat(18)))
        .collect();
    let alpn_arg = alpn_long.join(",");
    assert!(
        alpn_arg.len() > 1460,
        "the large openssl hello must exceed one MSS"
    );
    let script = format!(
        "set -e\n\
         {py} client.py {p4} {p6} {upath} {tlsp} 127.0.0.77\n\
         openssl s_client -connect 127.0.0.1:{tlsp} -servername ossl.sni.cilock.test -alpn h2 < /dev/null > /dev/null 2>&1 || echo s_client failed $?\n\
         ip netns exec {netns} openssl s_client -connect 127.0.0.1:8443 -servername big-ossl.sni.cilock.test -alpn {alpn_arg} < /dev/null > /dev/null 2>&1 || echo netns s_client failed $?\n\
         echo step done\n",
        py = python(),
        upath = upath.display(),
    );
    let att = run_step(&daemon, "net", w, &script);
    assert!(outside.wait().unwrap().success());
    let outside_pid = outside.id() as i64;
    let stdout = std::fs::read_to_string(w.join("net.stdout")).unwrap();
    let hello_len: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("hello_len "))
        .and_then(|v| v.trim().parse().ok())
        .expect("hello length printed");
    assert!(
        hello_len > 1460,
        "the two-piece ClientHello must exceed one MSS ({hello_len} bytes)"
    );

    verify_with_python(&att, &daemon.pubkey);
    let cr = command_run(&att);
    assert_nothing_lost(&cr);
    let procs = processes(&cr);
    let py = find_proc(
        &procs,
        |p| {
            p["cmdline"]
                .as_str()
                .is_some_and(|c| c.contains("client.py"))
        },
        "python client",
    );
    let ossl = find_proc(
        &procs,
        |p| {
            p["cmdline"]
                .as_str()
                .is_some_and(|c| c.contains("ossl.sni.cilock.test") && !c.contains("big-ossl"))
        },
        "openssl",
    );
    let ossl_big = find_proc(
        &procs,
        |p| {
            p["cmdline"]
                .as_str()
                .is_some_and(|c| c.contains("big-ossl.sni.cilock.test"))
        },
        "openssl in the netns",
    );

    // Connects: each once, by the process that made it, nowhere else.
    let upath_s = upath.display().to_string();
    for (addr, port, fam) in [
        ("127.0.0.1", Some(p4), "AF_INET"),
        ("::1", Some(p6), "AF_INET6"),
        (upath_s.as_str(), None, "AF_UNIX"),
    ] {
        let c = conns(py, "connect", addr, port);
        assert_eq!(
            c.len(),
            1,
            "connect to {addr} {port:?}: {}",
            serde_json::to_string_pretty(&py["network"]).unwrap()
        );
        assert_eq!(c[0]["family"], fam);
        assert!(c[0]["fd"].as_i64().unwrap() >= 3, "fd of connect to {addr}");
        for other in procs.iter().filter(|p| p["processid"] != py["processid"]) {
            assert!(
                conns(other, "connect", addr, port).is_empty(),
                "connect to {addr} also on {}",
                other["processid"]
            );
        }
    }

    // DNS: each query once, with server, port, type, transport, answers.
    let log = std::fs::read_to_string(&dns_log).unwrap();
    for (name, qtype, transport) in [
        ("a.cilock.test", "A", "udp"),
        ("aaaa.cilock.test", "AAAA", "udp"),
        ("txt.cilock.test", "TXT", "udp"),
        ("tcp-a.cilock.test", "A", "tcp"),
        ("tcp-txt.cilock.test", "TXT", "tcp"),
    ] {
        assert!(
            log.contains(&format!("{qtype} {name}\n")),
            "the resolver did not see {qtype} {name}: {log}"
        );
        let l = dns(py, name);
        assert_eq!(
            l.len(),
            1,
            "{name}: {}",
            serde_json::to_string_pretty(&py["network"]).unwrap()
        );
        assert_eq!(l[0]["type"], qtype, "{name}");
        assert_eq!(l[0]["transport"], transport, "{name}");
        assert_eq!(l[0]["serverAddress"], "127.0.0.77");
        assert_eq!(l[0]["serverPort"], 53);
        if transport == "udp" {
            let answers: Vec<&str> = l[0]["answers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let want = match qtype {
                "A" => "A 127.0.0.88",
                "AAAA" => "AAAA ::1",
                _ => "TXT",
            };
            assert!(
                answers.iter().any(|a| a.starts_with(want)),
                "{name} answers {answers:?}"
            );
        }
    }
    let all_dns: usize = procs
        .iter()
        .map(|p| p["network"]["dnsLookups"].as_array().map_or(0, |a| a.len()))
        .sum();
    assert_eq!(all_dns, 5, "no other lookups");

    // TLS: SNI and ALPN on the right connection of the right process.
    let tls = |p: &Value, port: u16| -> Vec<(String, usize)> {
        conns(p, "connect", "127.0.0.1", Some(port))
            .iter()
            .map(|c| {
                (
                    c["hostname"].as_str().unwrap_or("").to_string(),
                    c["alpn"].as_array().map_or(0, |a| a.len()),
                )
            })
            .collect()
    };
    let mut py_tls = tls(py, tlsp);
    py_tls.sort();
    assert_eq!(
        py_tls,
        vec![
            ("big.sni.cilock.test".to_string(), 81),
            ("py.sni.cilock.test".to_string(), 2)
        ]
    );
    assert_eq!(
        tls(ossl, tlsp),
        vec![("ossl.sni.cilock.test".to_string(), 1)]
    );
    assert_eq!(
        tls(ossl_big, 8443),
        vec![("big-ossl.sni.cilock.test".to_string(), 80)]
    );

    // Nothing from the concurrent outside process.
    let text = serde_json::to_string(&cr).unwrap();
    assert!(
        !text.contains("outside.cilock.test"),
        "an outside DNS query leaked into the step"
    );
    assert!(procs
        .iter()
        .all(|p| p["processid"].as_i64() != Some(outside_pid)));
    assert!(
        log.contains("A outside.cilock.test"),
        "the outside process did run its queries"
    );

    // The hooks are named in the trace.
    let hooks = &cr["trace"]["hooks"];
    assert!(hooks["network"].as_str().unwrap().contains("cgroup/"));
    assert!(hooks["dns-tls"]
        .as_str()
        .unwrap()
        .contains("cgroup_skb/egress"));
}

const EVIDENCE_CLIENT: &str = r#"
import ctypes, os, socket, ssl, struct, sys
TLSP, DNS, HP = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def query(i, name, t):
    m = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0)
    for l in name.split("."):
        m += bytes([len(l)]) + l.encode()
    return m + b"\0" + struct.pack(">HH", t, 1)

def read_reply(t):
    n = struct.unpack(">H", t.recv(2))[0]
    while n > 0:
        n -= len(t.recv(n))

# A real ClientHello of ~20 KB (100 ALPN names of 200 bytes): larger than
# either backend captures of a stream. The handshake is the real one.
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["p%03d-%s" % (i, "z" * 196) for i in range(100)])
s = socket.create_connection(("127.0.0.1", TLSP))
try:
    ctx.wrap_socket(s, server_hostname="huge.sni.cilock.test").close()
except (ssl.SSLError, OSError) as e:
    print("handshake", e, flush=True)

# DNS over TCP on a high port: one length-prefixed query.
m = query(400, "tcp-high.cilock.test", 1)
t = socket.create_connection(("127.0.0.1", HP))
t.sendall(struct.pack(">H", len(m)) + m)
t.close()

# DNS over TCP on port 53, length and query in one writev (glibc's way).
m = query(401, "tcp53-writev.cilock.test", 28)
t = socket.create_connection((DNS, 53)); t.settimeout(5)
os.writev(t.fileno(), [struct.pack(">H", len(m)), m])
read_reply(t)
t.close()

# UDP: sendmsg with an address, and sendmmsg of two queries.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendmsg([query(402, "sendmsg.cilock.test", 1)], [], 0, (DNS, 53)); u.recvfrom(4096)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); v.settimeout(5)
sa = ctypes.create_string_buffer(struct.pack("<H", socket.AF_INET) + struct.pack(">H", 53) + socket.inet_aton(DNS) + b"\0" * 8, 16)
msgs, keep = (mmsghdr * 2)(), []
for i, n in enumerate(["mmsg1.cilock.test", "mmsg2.cilock.test"]):
    q = query(403 + i, n, 1)
    b = ctypes.create_string_buffer(q, len(q))
    iov = iovec(ctypes.cast(b, ctypes.c_void_p), len(q))
    keep += [b, iov]
    msgs[i].hdr.name = ctypes.cast(sa, ctypes.c_void_p)
    msgs[i].hdr.namelen = 16
    msgs[i].hdr.iov = ctypes.pointer(iov)
    msgs[i].hdr.iovlen = 1
libc = ctypes.CDLL(None, use_errno=True)
assert libc.sendmmsg(v.fileno(), msgs, 2, 0) == 2, ctypes.get_errno()
v.recvfrom(4096); v.recvfrom(4096)
print("mmsg_fd", v.fileno(), flush=True)

# AF_NETLINK: named, not AF_16.
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
nl.bind((0, 0))
nl.close()
print("client done", flush=True)
"#;

/// D9, D10 and the minor network items on both backends: the server name of
/// a ~20 KB ClientHello (a real Python ssl handshake), DNS over TCP on a
/// high port and through writev on port 53, sendmsg/sendmmsg labels with
/// their fd, DNS answers (ptrace too), AF_NETLINK by name, and limitations
/// that state the capture sizes.
#[test]
fn large_hello_dns_over_tcp_any_port_and_send_labels() {
    let dns_ip = "127.0.0.78";
    let work = tempdir();
    let w = work.path();
    let dns_log = w.join("dns.log");
    let _dns = dns_server(dns_ip, "127.0.0.89", &dns_log);
    let (cert, key) = self_signed(w, "cilock.test");
    let tlsp = free_port();
    let _tls = tls_server("127.0.0.1", tlsp, &cert, &key, None);
    let high = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hp = high.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in high.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
        }
    });
    std::fs::write(w.join("client.py"), EVIDENCE_CLIENT).unwrap();

    for backend in ["ebpf", "ptrace"] {
        let daemon = Daemon::start(backend);
        let script = format!(
            "set -e\n{py} client.py {tlsp} {dns_ip} {hp}\n",
            py = python()
        );
        let att = run_step(&daemon, &format!("ev-{backend}"), w, &script);
        let stdout = std::fs::read_to_string(w.join(format!("ev-{backend}.stdout"))).unwrap();
        assert!(stdout.contains("client done"), "{backend}: {stdout}");
        let mmsg_fd: i64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("mmsg_fd "))
            .and_then(|v| v.trim().parse().ok())
            .expect("sendmmsg fd printed");
        let cr = command_run(&att);
        assert_nothing_lost(&cr);
        let procs = processes(&cr);
        let py = find_proc(
            &procs,
            |p| {
                p["cmdline"]
                    .as_str()
                    .is_some_and(|c| c.contains("client.py"))
            },
            "python client",
        );
        let net = serde_json::to_string_pretty(&py["network"]).unwrap();

        // D9: the server name of the ~20 KB hello, marked as cut.
        let c = conns(py, "connect", "127.0.0.1", Some(tlsp));
        assert_eq!(c.len(), 1, "{backend}: {net}");
        assert_eq!(c[0]["hostname"], "huge.sni.cilock.test", "{backend}: {net}");
        assert_eq!(c[0]["helloTruncated"], true, "{backend}: {net}");

        // D10: DNS over TCP on a high port and via writev on port 53.
        for (name, qtype, port) in [
            ("tcp-high.cilock.test", "A", hp),
            ("tcp53-writev.cilock.test", "AAAA", 53),
        ] {
            let l = dns(py, name);
            assert_eq!(l.len(), 1, "{backend} {name}: {net}");
            assert_eq!(l[0]["type"], qtype, "{backend} {name}");
            assert_eq!(l[0]["transport"], "tcp", "{backend} {name}");
            assert_eq!(l[0]["serverPort"], port, "{backend} {name}");
        }
        for name in [
            "sendmsg.cilock.test",
            "mmsg1.cilock.test",
            "mmsg2.cilock.test",
        ] {
            let l = dns(py, name);
            assert_eq!(l.len(), 1, "{backend} {name}: {net}");
            assert_eq!(l[0]["transport"], "udp", "{backend} {name}");
            assert_eq!(l[0]["serverAddress"], dns_ip, "{backend} {name}");
            // The reply, read with recvfrom, is recorded by both backends.
            assert_eq!(
                l[0]["answers"],
                serde_json::json!(["A 127.0.0.89"]),
                "{backend} {name}: {net}"
            );
        }
        let log = std::fs::read_to_string(&dns_log).unwrap();
        assert!(log.contains("AAAA tcp53-writev.cilock.test\n"), "{log}");

        // Labels by the real call; sendmmsg carries its fd.
        let sm = conns(py, "sendmsg", dns_ip, Some(53));
        assert_eq!(sm.len(), 1, "{backend}: {net}");
        let mm = conns(py, "sendmmsg", dns_ip, Some(53));
        assert_eq!(mm.len(), 1, "{backend}: {net}");
        assert_eq!(mm[0]["fd"], mmsg_fd, "{backend}: {net}");
        assert!(
            conns(py, "sendto", dns_ip, Some(53)).is_empty(),
            "{backend}: no sendto was made: {net}"
        );
        let nl: Vec<&Value> = py["network"]["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["syscall"] == "bind" && c["family"] == "AF_NETLINK")
            .collect();
        assert_eq!(nl.len(), 1, "{backend}: {net}");

        // The limitations state the capture sizes.
        let lim = cr["trace"]["limitations"].to_string();
        let size = if backend == "ebpf" { "8192" } else { "16384" };
        assert!(
            lim.contains(&format!("the first {size} bytes")) && lim.contains("helloTruncated"),
            "{backend}: {lim}"
        );
        assert!(
            lim.contains("DNS over TCP is parsed on port 53 and on any port"),
            "{lim}"
        );
    }
}
