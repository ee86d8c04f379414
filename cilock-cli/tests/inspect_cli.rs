//! `cilock inspect` through the built binary.

use cilock_testkit::fixtures::fx;
use serde_json::{json, Value};

use crate::cilock;

#[test]
fn inspect_witness_envelope() {
    let f = fx("witness/cdx-att.json");
    let o = cilock(&[
        "inspect",
        f.to_str().unwrap(),
        "-k",
        fx("witness/testpub.pem").to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("step:           sbom"), "{out}");
    assert!(out.contains(
        "signer keyid:   ae2dcc989ea9c109a36e8eba5c4bc16d8fafcfe8e1a614164670d50aedacd647"
    ));
    assert!(out.contains("signature:      OK"));
    assert!(
        out.contains("command:        syft alpine -o cyclonedx-json=sbom.cdx.json"),
        "{out}"
    );
    // Wrong key: exit 1 and says so.
    let o = cilock(&[
        "inspect",
        f.to_str().unwrap(),
        "-k",
        fx("witness/testpub2.pem").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("signature:      INVALID"));
    // --json prints the statement.
    let o = cilock(&["inspect", f.to_str().unwrap(), "--json"]);
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["predicate"]["name"], json!("sbom"));
}

#[test]
fn inspect_process_tree_and_counts() {
    let (key, _) =
        cilock_evidence::keys::Signer::generate(cilock_evidence::keys::KeyAlgorithm::Ed25519)
            .unwrap();
    let st = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [],
        "predicateType": "https://aflock.ai/attestation-collection/v0.1",
        "predicate": {"name": "build", "attestations": [
            {"type": "https://aflock.ai/attestations/command-run/v0.1", "starttime": "", "endtime": "",
             "attestation": {"cmd": ["sh", "-c", "make"], "exitcode": 0,
              "processes": [
                {"program": "/bin/sh", "processid": 10, "parentpid": 1,
                 "openedfiles": {"/a": {"sha256": "00"}, "/b": {"sha256": "11"}}},
                {"program": "/usr/bin/make", "processid": 11, "parentpid": 10,
                 "openedfiles": {"/c": null},
                 "network": {"connections": [{"syscall": "connect", "family": "inet", "address": "1.2.3.4", "port": 443}]},
                 "syscallEvents": [{"syscall": "ptrace"}, {"syscall": "process_vm_readv"}]},
                {"program": "/usr/bin/cc", "processid": 12, "parentpid": 11}
              ],
              "trace": {"backend": "ebpf", "events": {"exec": {"captured": 3, "lost": 0}, "open": {"captured": 120, "lost": 7}}}}}
        ]}
    });
    let env = cilock_evidence::dsse::sign(
        "application/vnd.in-toto+json",
        serde_json::to_vec(&st).unwrap(),
        &key,
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("a.json");
    std::fs::write(&f, env.to_json()).unwrap();
    let o = cilock(&["inspect", f.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("processes:      3"), "{out}");
    assert!(out.contains("  10 (parent 1) /bin/sh\n    11 (parent 10) /usr/bin/make\n      12 (parent 11) /usr/bin/cc\n"), "{out}");
    assert!(out.contains("opened files:   3"));
    assert!(out.contains("network conns:  1"));
    assert!(out.contains("syscall events: 2"));
    assert!(
        out.contains("trace events:   open: captured 120, lost 7"),
        "{out}"
    );
    assert!(out.contains("signature:      not checked"));
    // Garbage input: exit 2, no panic.
    std::fs::write(&f, b"\x00\x01garbage").unwrap();
    let o = cilock(&["inspect", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}
