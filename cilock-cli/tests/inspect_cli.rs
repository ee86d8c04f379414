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

#[test]
fn inspect_containers_builds_and_where_processes_ran() {
    let (key, _) =
        cilock_evidence::keys::Signer::generate(cilock_evidence::keys::KeyAlgorithm::Ed25519)
            .unwrap();
    let cid = "4f1c2a9be0d3".to_string() + &"a".repeat(52);
    let run_id = "9e8d7c6b5a41".to_string() + &"b".repeat(52);
    // The fields as the command-run attestor writes them (serde names).
    let st = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [],
        "predicateType": "https://aflock.ai/attestation-collection/v0.1",
        "predicate": {"name": "ci", "attestations": [
            {"type": "https://aflock.ai/attestations/command-run/v0.1", "starttime": "", "endtime": "",
             "attestation": {"cmd": [], "exitcode": -1,
              "processes": [
                {"program": "/bin/bash", "processid": 20, "parentpid": 1},
                {"program": "/usr/bin/docker", "processid": 21, "parentpid": 20},
                {"program": "/bin/cat", "processid": 30, "parentpid": 20,
                 "container": cid, "mountNamespace": 4026532801u64},
                {"program": "/bin/sh", "processid": 31, "parentpid": 20,
                 "container": "buildkit:x7k2", "mountNamespace": 4026532900u64}
              ],
              "containers": [
                {"id": cid, "engine": "docker", "imageRef": "bb:local",
                 "imageId": "sha256:0123abcd", "imageDigests": ["bb@sha256:feed"],
                 "cmd": ["cat", "/etc/hostname"],
                 "mounts": [{"type": "bind", "source": "/srv/in", "destination": "/in", "readOnly": true}],
                 "cgroup": format!("/cilock.steps/u0.ci.1/{cid}"),
                 "attribution": "cgroup-parent", "createdBy": 21, "aliveAtEnd": true},
                {"id": run_id, "engine": "docker", "attribution": "cgroup-parent", "build": "build-1"}
              ],
              "builds": [
                {"id": "build-1", "builder": "classic", "attribution": "cgroup-parent",
                 "tags": ["app:1", "app:latest"], "dockerfile": "Dockerfile",
                 "containers": [run_id], "imageId": "sha256:beef", "createdBy": 21},
                {"id": "build-2", "builder": "buildkit", "attribution": "none",
                 "reason": "the engine's BuildKit cgroup could not be attributed"}
              ],
              "trace": {"backend": "ebpf", "events": {}}}}
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
    let expected_tree = "processes:      4\n\
        \x20 20 (parent 1) /bin/bash\n\
        \x20   21 (parent 20) /usr/bin/docker\n\
        \x20   30 (parent 20) /bin/cat [container 4f1c2a9be0d3, mount ns 4026532801]\n\
        \x20   31 (parent 20) /bin/sh [container buildkit:x7k2, mount ns 4026532900]\n";
    assert!(out.contains(expected_tree), "{out}");
    let expected_containers = format!(
        "containers:     2\n\
        \x20 - 4f1c2a9be0d3 (docker) image \"bb:local\" (as requested) = sha256:0123abcd, attribution cgroup-parent, created by pid 21, still running at the end\n\
        \x20     cmd:    cat /etc/hostname\n\
        \x20     cgroup: /cilock.steps/u0.ci.1/{cid}\n\
        \x20     digest: bb@sha256:feed\n\
        \x20     mount:  bind /srv/in -> /in (read-only)\n\
        \x20 - 9e8d7c6b5a41 (docker), attribution cgroup-parent, RUN of build-1\n\
        builds:         2\n\
        \x20 - build-1 (classic) Dockerfile tags app:1, app:latest -> sha256:beef, attribution cgroup-parent, created by pid 21\n\
        \x20     RUN containers: 9e8d7c6b5a41\n\
        \x20 - build-2 (buildkit), attribution none (the engine's BuildKit cgroup could not be attributed)\n"
    );
    assert!(out.contains(&expected_containers), "{out}");
    assert!(
        out.contains(
            "at end:         1 container still running when the step ended (left running, no longer traced): 4f1c2a9be0d3\n"
        ),
        "{out}"
    );
    // Without containers, nothing about them is printed.
    assert!(!String::from_utf8_lossy(
        &cilock(&["inspect", fx("witness/cdx-att.json").to_str().unwrap()]).stdout
    )
    .contains("containers:"));
}
