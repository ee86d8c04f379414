//! Reading what cilock produced: the statement of a DSSE envelope, one
//! attestation of it, the recorded file-open hook, and a signature check by
//! an independent implementation (Python `cryptography`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The decoded statement of an envelope file.
pub fn statement(envelope_path: &Path) -> Value {
    let env: Value = serde_json::from_slice(&std::fs::read(envelope_path).unwrap()).unwrap();
    let payload = env["payload"].as_str().expect("payload");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .expect("payload base64");
    serde_json::from_slice(&bytes).expect("statement JSON")
}

/// The attestation of `type_suffix` (e.g. `command-run/v0.1`) in a statement.
pub fn attestation<'a>(stmt: &'a Value, type_suffix: &str) -> &'a Value {
    stmt["predicate"]["attestations"]
        .as_array()
        .expect("attestations")
        .iter()
        .find(|a| a["type"].as_str().is_some_and(|t| t.ends_with(type_suffix)))
        .map(|a| &a["attestation"])
        .unwrap_or_else(|| panic!("no {type_suffix} attestation"))
}

/// Checks the eBPF file-open hook a command-run attestation records
/// (`trace.hooks["file-open"]`): prints it as a `CILOCK-HOOK file-open=...`
/// line (collected by `cargo xtask vm-test` for its report) and, when
/// `CILOCK_E2E_EXPECT_FILE_OPEN_HOOK` is set (`fexit` or `tracepoint`),
/// asserts the hook is of that kind. The kernel matrix sets it to `fexit`
/// for kernels that allow BPF trampolines.
pub fn check_file_open_hook(command_run: &Value) {
    let hook = command_run["trace"]["hooks"]["file-open"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // The expectation is about the eBPF backend's choice; a ptrace-backend
    // attestation reports its own hook.
    if command_run["trace"]["backend"] != "ebpf" {
        return;
    }
    println!("CILOCK-HOOK file-open={hook}");
    if let Ok(want) = std::env::var("CILOCK_E2E_EXPECT_FILE_OPEN_HOOK") {
        if !want.is_empty() {
            assert!(
                hook.starts_with(&format!("{want}:")),
                "file-open hook is {hook:?}, expected {want}"
            );
        }
    }
}

/// Verifies an envelope's signature with Python `cryptography` (an
/// implementation independent of cilock's), rebuilding the DSSE PAE.
pub fn verify_with_python(envelope: &Path, pubkey: &Path) {
    let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
env = json.load(open(sys.argv[1]))
key = serialization.load_pem_public_key(open(sys.argv[2], 'rb').read())
body = base64.b64decode(env['payload'])
t = env['payloadType'].encode()
pae = b'DSSEv1 %d %s %d %s' % (len(t), t, len(body), body)
ok = 0
for s in env['signatures']:
    sig = base64.b64decode(s['sig'])
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(sig, pae, ec.ECDSA(hashes.SHA256()))
    else:
        key.verify(sig, pae)
    ok += 1
assert ok >= 1
print('verified', ok)
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(envelope)
        .arg(pubkey)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "independent signature check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Python with `cryptography` (Debian's, installed by `cargo xtask setup`).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}
