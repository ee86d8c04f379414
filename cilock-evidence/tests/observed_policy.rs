//! The example policies gate on what the tracer observed: a claimed exit
//! code 0 does not satisfy `command-succeeded.rego` when the observed exit
//! status is 3 (or unknown), and `products-built-by-step.rego` denies a
//! product no step process wrote.

use cilock_evidence::policy::rego::{CompiledRego, RegoModule};
use serde_json::json;

fn module(name: &str) -> CompiledRego {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policies")
        .join(name);
    let source = std::fs::read_to_string(&path).unwrap();
    CompiledRego::compile(&[RegoModule {
        name: name.into(),
        source,
    }])
    .unwrap()
}

#[test]
fn a_claimed_exit_code_does_not_satisfy_the_observed_one() {
    let m = module("command-succeeded.rego");
    // The security review's forgery: the command exited 3, the client
    // claims 0 and a passing output.
    let forged = json!({
        "cmd": ["sh", "-c", "echo 'FAILED: 3 tests' >&2; exit 3"],
        "exitcode": 3,
        "claimed": {"cmd": ["make", "test"], "stdout": "All 412 tests passed\n", "exitcode": 0},
        "trace": {"backend": "ebpf", "observed": ["cmd", "exitcode"]}
    });
    assert_eq!(
        m.deny(&forged).unwrap(),
        ["The command failed: its root process exited with status 3 (claimed: 0)"]
    );
    // step begin/end: the exit was not seen; the claim of 0 does not count.
    let unseen = json!({
        "cmd": [], "exitcode": -1,
        "claimed": {"exitcode": 0},
        "trace": {"backend": "ptrace", "observed": [],
                  "unobserved": {"exitcode": "the step's root process (pid 7) was still running when the step ended"}}
    });
    assert_eq!(
        m.deny(&unseen).unwrap(),
        ["The command's exit status was not observed (the step's root process (pid 7) was still running when the step ended); the claimed exit code (0) does not count"]
    );
    // Even with exitcode 0 written in, a cilock trace that does not list it
    // as observed (an attestation from before claims were kept apart) fails.
    let old = json!({"cmd": ["make"], "exitcode": 0, "trace": {"backend": "ebpf"}});
    assert_eq!(m.deny(&old).unwrap().len(), 1);
    // Observed success passes, with or without a claim.
    let ok = json!({"cmd": ["make"], "exitcode": 0, "claimed": {"exitcode": 1},
                    "trace": {"backend": "ebpf", "observed": ["cmd", "exitcode"]}});
    assert!(m.deny(&ok).unwrap().is_empty());
    // Another producer's attestation (no trace): judged on exitcode.
    assert!(m
        .deny(&json!({"cmd": ["make"], "exitcode": 0}))
        .unwrap()
        .is_empty());
    assert_eq!(
        m.deny(&json!({"cmd": ["make"], "exitcode": 2}))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn products_not_written_by_the_step_are_denied() {
    let m = module("products-built-by-step.rego");
    let d = json!({"sha256": "00"});
    let products = json!({
        "dist/app.bin": {"mime_type": "text/plain", "digest": d, "writtenByStep": true},
        "dist/dropped": {"mime_type": "text/plain", "digest": d, "writtenByStep": false},
        "witness-only": {"mime_type": "text/plain", "digest": d}
    });
    let mut msgs = m.deny(&products).unwrap();
    msgs.sort();
    assert_eq!(
        msgs,
        [
            "Product dist/dropped was not written by any process of the step (writtenByStep: false): it appeared in the workdir from outside the step",
            "Product witness-only was not written by any process of the step (writtenByStep: absent): it appeared in the workdir from outside the step",
        ]
    );
    let built = json!({"a": {"mime_type": "text/plain", "digest": d, "writtenByStep": true}});
    assert!(m.deny(&built).unwrap().is_empty());
}
