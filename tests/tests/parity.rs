//! The two backends are interchangeable: the same workload, traced as a step
//! by the eBPF daemon and by the ptrace fallback, yields the same programs,
//! opened files with digests, connections, DNS names, TLS server names and
//! suspicious syscalls. Intended differences are listed below and in the
//! README.

mod common;

use std::collections::BTreeSet;

use cilock_tests::*;
use common::*;
use serde_json::Value;

/// Facts both backends must agree on.
#[derive(Debug, Default, PartialEq)]
struct Facts {
    programs: BTreeSet<String>,
    files: BTreeSet<(String, String)>,
    connections: BTreeSet<(String, String, String, u64, String)>,
    dns: BTreeSet<(String, String, String, u64)>,
    syscalls: BTreeSet<String>,
}

fn facts(att: &std::path::Path) -> Facts {
    let cr = command_run(att);
    assert_nothing_lost(&cr);
    let mut f = Facts::default();
    for p in processes(&cr) {
        for e in p["execs"].as_array().into_iter().flatten() {
            f.programs.insert(e.as_str().unwrap().to_string());
        }
        for (path, d) in p["openedfiles"].as_object().into_iter().flatten() {
            // Pseudo files carry per-run inode numbers.
            if path.starts_with("pipe:")
                || path.starts_with("socket:")
                || path.starts_with("anon_inode:")
            {
                continue;
            }
            let digest = d["sha256"].as_str().unwrap_or("").to_string();
            // The step script's name carries the backend.
            let path = path
                .replace("parity-ebpf", "parity-X")
                .replace("parity-ptrace", "parity-X");
            f.files.insert((path, digest));
        }
        let net = &p["network"];
        for c in net["connections"].as_array().into_iter().flatten() {
            let family = c["family"].as_str().unwrap_or("").to_string();
            if family == "AF_UNIX" && c["address"].as_str().unwrap_or("").is_empty() {
                continue;
            }
            f.connections.insert((
                c["syscall"].as_str().unwrap_or("").to_string(),
                family,
                c["address"].as_str().unwrap_or("").to_string(),
                c["port"].as_u64().unwrap_or(0),
                c["hostname"].as_str().unwrap_or("").to_string(),
            ));
        }
        for d in net["dnsLookups"].as_array().into_iter().flatten() {
            f.dns.insert((
                d["name"].as_str().unwrap_or("").to_string(),
                d["type"].as_str().unwrap_or("").to_string(),
                d["serverAddress"].as_str().unwrap_or("").to_string(),
                d["serverPort"].as_u64().unwrap_or(0),
            ));
        }
        for s in p["syscallEvents"].as_array().into_iter().flatten() {
            f.syscalls
                .insert(s["syscall"].as_str().unwrap_or("").to_string());
        }
    }
    f
}

/// Syscalls one backend records and the other cannot, on this kernel.
fn intended_syscall_differences() -> BTreeSet<String> {
    // The eBPF backend attaches to the syscall tracepoints the kernel has;
    // kernels built without module support have no init_module /
    // finit_module tracepoints, while ptrace sees every syscall.
    ["init_module", "finit_module"]
        .into_iter()
        .filter(|s| {
            !std::path::Path::new(&format!(
                "/sys/kernel/tracing/events/syscalls/sys_enter_{s}"
            ))
            .exists()
        })
        .map(String::from)
        .collect()
}

#[test]
fn ebpf_and_ptrace_record_the_same_facts() {
    let work = tempdir();
    let w = work.path();
    std::fs::create_dir_all(w.join("sub")).unwrap();
    std::fs::write(w.join("data.txt"), b"parity\n").unwrap();
    let susp = cc("suspicious_all", w);
    let (cert, key) = self_signed(w, "parity.sni.example");
    let tls_port = free_port();
    let _tls = tls_server("127.0.0.1", tls_port, &cert, &key, None);
    let _dns = dns_server("127.0.0.78", "127.0.0.1", &w.join("dns.log"));
    let tcp4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    let (p4, p6) = (
        tcp4.local_addr().unwrap().port(),
        tcp6.local_addr().unwrap().port(),
    );
    for l in [tcp4, tcp6] {
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s)
            }
        });
    }
    let py = format!(
        r#"
import os, socket, struct
d = os.open("..", os.O_RDONLY | os.O_DIRECTORY)
os.close(os.open("data.txt", os.O_RDONLY, dir_fd=d))
for fam, addr in ((socket.AF_INET, ("127.0.0.1", {p4})), (socket.AF_INET6, ("::1", {p6}))):
    s = socket.socket(fam, socket.SOCK_STREAM); s.connect(addr); s.close()
def q(name, t):
    return struct.pack(">HHHHHH", 0x1234, 0x100, 1, 0, 0, 0) + b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0" + struct.pack(">HH", t, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(q("parity.example", 1), ("127.0.0.78", 53)); u.recvfrom(512)
u.sendto(q("parity.example", 16), ("127.0.0.78", 53)); u.recvfrom(512)
"#
    );
    std::fs::write(w.join("net.py"), py).unwrap();
    let script = format!(
        "set -e\ncd sub\ncat ../data.txt > out.txt\n/usr/bin/python3 -S ../net.py\n\
         openssl s_client -connect 127.0.0.1:{tls_port} -servername parity.sni.example < /dev/null > /dev/null 2>&1 || true\n\
         {} 0 > /dev/null\n",
        susp.display()
    );

    let mut all = Vec::new();
    for backend in ["ebpf", "ptrace"] {
        let daemon = Daemon::start(backend);
        let att = run_step(&daemon, &format!("parity-{backend}"), w, &script);
        let cr = command_run(&att);
        assert_eq!(cr["trace"]["backend"], backend);
        all.push(facts(&att));
    }
    let (e, p) = (&all[0], &all[1]);

    // Each backend saw what the workload did at all.
    assert!(e.programs.iter().any(|x| x.ends_with("/openssl")));
    assert!(e
        .files
        .iter()
        .any(|(f, d)| f.ends_with("/data.txt") && !d.is_empty()));
    assert!(
        e.connections.iter().any(|c| c.4 == "parity.sni.example"),
        "{:?}",
        e.connections
    );
    assert!(
        e.dns
            .iter()
            .any(|d| d.0 == "parity.example" && d.1 == "TXT"),
        "{:?}",
        e.dns
    );
    assert!(e.syscalls.contains("memfd_create"), "{:?}", e.syscalls);

    assert_eq!(e.programs, p.programs, "programs differ");
    let only_e: Vec<_> = e.files.difference(&p.files).collect();
    let only_p: Vec<_> = p.files.difference(&e.files).collect();
    assert!(
        only_e.is_empty() && only_p.is_empty(),
        "files differ:\n only eBPF {only_e:?}\n only ptrace {only_p:?}"
    );
    assert_eq!(e.connections, p.connections, "connections differ");
    assert_eq!(e.dns, p.dns, "DNS lookups differ");
    let allowed = intended_syscall_differences();
    let diff: Vec<_> = e
        .syscalls
        .symmetric_difference(&p.syscalls)
        .filter(|s| !allowed.contains(*s))
        .collect();
    assert!(
        diff.is_empty(),
        "suspicious syscalls differ: {diff:?}\n eBPF {:?}\n ptrace {:?}",
        e.syscalls,
        p.syscalls
    );
}

#[allow(dead_code)]
fn _unused(_: &Value) {}
