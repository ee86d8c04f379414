//! Policy verification end to end, with the Witness and CI/lock fixtures and
//! with attestations built by the library.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use cilock_evidence::collection::{Collection, CollectionAttestation, COLLECTION_TYPE};
use cilock_evidence::digest::DigestSet;
use cilock_evidence::dsse::{self, Envelope, POLICY_PAYLOAD_TYPE};
use cilock_evidence::intoto::{Statement, Subject, PAYLOAD_TYPE};
use cilock_evidence::keys::{KeyAlgorithm, Signer, Verifier};
use cilock_evidence::policy::rego::RegoError;
use cilock_evidence::policy::verify::{NamedEnvelope, VerificationReport};
use cilock_evidence::policy::{verify, Policy, PolicyError, VerifyOptions};
use serde_json::{json, Value};
use time::OffsetDateTime;

const SBOM_SUBJECT: &str = "54c5b3dd459d5ef778bb2fa1e23a5fb0e1b62ae66970bcb436e8f81a1a1a8e41";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sign_policy(policy: &[u8], key: &Signer) -> Envelope {
    dsse::sign(POLICY_PAYLOAD_TYPE, policy.to_vec(), key).unwrap()
}

fn run(
    policy: Envelope,
    policy_key: &Verifier,
    atts: Vec<(&str, Envelope)>,
    subjects: &[&str],
) -> Result<VerificationReport, PolicyError> {
    verify(&VerifyOptions {
        policy_envelope: policy,
        policy_verifiers: vec![policy_key.clone()],
        attestations: atts
            .into_iter()
            .map(|(s, e)| NamedEnvelope {
                source: s.to_string(),
                envelope: e,
            })
            .collect(),
        subject_digests: subjects.iter().map(|s| s.to_string()).collect(),
        now: OffsetDateTime::now_utc(),
        rego_limits: Default::default(),
    })
}

fn testkey() -> Signer {
    Signer::from_pem(&read("witness/testkey.pem")).unwrap()
}

fn testpub() -> Verifier {
    Verifier::from_pem(&read("witness/testpub.pem")).unwrap()
}

#[test]
fn witness_sbom_policies_pass() {
    for (policy, att) in [
        ("witness/cdx-sbom-policy.json", "witness/cdx-att.json"),
        ("witness/spdx-sbom-policy.json", "witness/spdx-att.json"),
    ] {
        let env = sign_policy(&read(policy), &testkey());
        let r = run(
            env,
            &testpub(),
            vec![(att, Envelope::from_json(&read(att)).unwrap())],
            &[SBOM_SUBJECT],
        )
        .unwrap();
        assert!(r.passed, "{policy}: {r:#?}");
        assert_eq!(r.steps.len(), 1);
        assert_eq!(r.steps[0].name, "sbom");
        assert!(r.steps[0].passed);
        assert_eq!(
            r.steps[0].collections[0].signers,
            ["ae2dcc989ea9c109a36e8eba5c4bc16d8fafcfe8e1a614164670d50aedacd647"]
        );
        // A subject no collection has: the step fails, nothing is found.
        let env = sign_policy(&read(policy), &testkey());
        let r = run(
            env,
            &testpub(),
            vec![(att, Envelope::from_json(&read(att)).unwrap())],
            &["00".repeat(32).as_str()],
        )
        .unwrap();
        assert!(!r.passed);
        assert!(r.steps[0].collections.is_empty());
        assert!(r.steps[0].reasons[0].contains("no collection named \"sbom\""));
    }
}

#[test]
fn policy_signed_by_failkey_fails() {
    let fail = Signer::from_pem(&read("witness/failkey.pem")).unwrap();
    let env = sign_policy(&read("witness/cdx-sbom-policy.json"), &fail);
    let att = Envelope::from_json(&read("witness/cdx-att.json")).unwrap();
    let r = run(env, &testpub(), vec![("cdx", att)], &[SBOM_SUBJECT]).unwrap();
    assert!(!r.passed);
    assert!(!r.policy.signature_ok);
    assert!(
        r.reasons[0].starts_with("policy signature:"),
        "{:?}",
        r.reasons
    );
}

#[test]
fn altered_attestation_fails() {
    let att = Envelope::from_json(&read("witness/cdx-att.json")).unwrap();
    let mut by_payload = att.clone();
    // One byte of the payload: a digit of the subject digest.
    let pos = by_payload
        .payload
        .windows(8)
        .position(|w| w == b"54c5b3dd")
        .unwrap();
    by_payload.payload[pos + 1] = b'5';
    let mut by_sig = att.clone();
    by_sig.signatures[0].sig[0] ^= 0x80;
    for bad in [by_payload, by_sig] {
        let env = sign_policy(&read("witness/cdx-sbom-policy.json"), &testkey());
        let r = run(env, &testpub(), vec![("cdx", bad)], &[SBOM_SUBJECT]).unwrap();
        assert!(!r.passed);
        assert_eq!(r.rejected_envelopes.len(), 1);
        // The envelope claims the policy's key: the message says the content
        // was altered (not two equal keyids).
        assert_eq!(
            r.rejected_envelopes[0].reason,
            "the signature by policy key ae2dcc989ea9c109a36e8eba5c4bc16d8fafcfe8e1a614164670d50aedacd647 does not match the signed content: the payload or the signature was altered after signing"
        );
    }
}

#[test]
fn expired_policy_fails() {
    let mut p: Value = serde_json::from_slice(&read("witness/cdx-sbom-policy.json")).unwrap();
    p["expires"] = json!("2020-01-01T00:00:00Z");
    let env = sign_policy(&serde_json::to_vec(&p).unwrap(), &testkey());
    let att = Envelope::from_json(&read("witness/cdx-att.json")).unwrap();
    let r = run(env, &testpub(), vec![("cdx", att)], &[SBOM_SUBJECT]).unwrap();
    assert!(!r.passed);
    assert!(r.policy.expired);
    assert_eq!(r.reasons, ["the policy expired at 2020-01-01T00:00:00Z"]);
}

#[test]
fn rego_denial_and_eval_error_fail_with_messages() {
    let mut p: Value = serde_json::from_slice(&read("witness/cdx-sbom-policy.json")).unwrap();
    // Legacy and v1 modules on command-run, in different packages.
    p["steps"]["sbom"]["attestations"][1]["regopolicies"] = json!([
        {"name": "legacy", "module": b64("package commandrun.cmd\n\ndeny[msg] {\n  input.cmd[0] == \"syft\"\n  msg := sprintf(\"syft is not allowed: %v\", [input.cmd])\n}\n")},
        {"name": "v1", "module": b64("package cilock.exit\nimport rego.v1\ndeny contains msg if {\n  input.exitcode == 0\n  msg := \"exit code is zero\"\n}\n")},
    ]);
    let env = sign_policy(&serde_json::to_vec(&p).unwrap(), &testkey());
    let att = Envelope::from_json(&read("witness/cdx-att.json")).unwrap();
    let r = run(env, &testpub(), vec![("cdx", att.clone())], &[SBOM_SUBJECT]).unwrap();
    assert!(!r.passed);
    let c = &r.steps[0].collections[0];
    let mut msgs: Vec<&str> = c.denials.iter().map(|d| d.message.as_str()).collect();
    msgs.sort();
    assert_eq!(
        msgs,
        [
            "exit code is zero",
            "syft is not allowed: [\"syft\", \"alpine\", \"-o\", \"cyclonedx-json=sbom.cdx.json\"]"
        ]
    );
    assert!(c
        .denials
        .iter()
        .all(|d| d.attestation_type == "https://witness.dev/attestations/command-run/v0.1"));
    // deny that is not a set of strings: "could not evaluate", no denial.
    p["steps"]["sbom"]["attestations"][1]["regopolicies"] =
        json!([{"name": "bad", "module": b64("package p\ndeny := 42\n")}]);
    let env = sign_policy(&serde_json::to_vec(&p).unwrap(), &testkey());
    let r = run(env, &testpub(), vec![("cdx", att)], &[SBOM_SUBJECT]).unwrap();
    assert!(!r.passed);
    let c = &r.steps[0].collections[0];
    assert!(c.denials.is_empty());
    assert_eq!(c.reasons.len(), 1);
    assert!(
        c.reasons[0].starts_with("could not evaluate rego policy \"bad\""),
        "{:?}",
        c.reasons
    );
}

#[test]
fn missing_type_and_wrong_functionary_are_reported() {
    let mut p: Value = serde_json::from_slice(&read("witness/cdx-sbom-policy.json")).unwrap();
    p["steps"]["sbom"]["attestations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "https://witness.dev/attestations/git/v0.1"}));
    p["steps"]["sbom"]["functionaries"][0]["publickeyid"] = json!("ff".repeat(32));
    let env = sign_policy(&serde_json::to_vec(&p).unwrap(), &testkey());
    let att = Envelope::from_json(&read("witness/cdx-att.json")).unwrap();
    let r = run(env, &testpub(), vec![("cdx", att)], &[SBOM_SUBJECT]).unwrap();
    assert!(!r.passed);
    let c = &r.steps[0].collections[0];
    assert_eq!(
        c.missing_types,
        ["https://witness.dev/attestations/git/v0.1"]
    );
    assert!(c
        .reasons
        .iter()
        .any(|r| r.starts_with("not signed by a functionary of step \"sbom\"")));
}

#[test]
fn invalid_policies_are_input_errors() {
    let key = testkey();
    let mut p: Value = serde_json::from_slice(&read("witness/cdx-sbom-policy.json")).unwrap();
    let att = || {
        vec![(
            "cdx",
            Envelope::from_json(&read("witness/cdx-att.json")).unwrap(),
        )]
    };
    // No steps.
    let mut q = p.clone();
    q["steps"] = json!({});
    let e = run(
        sign_policy(&serde_json::to_vec(&q).unwrap(), &key),
        &testpub(),
        att(),
        &[SBOM_SUBJECT],
    );
    assert!(matches!(e, Err(PolicyError::NoSteps)));
    // Rego syntax error.
    let mut q = p.clone();
    q["steps"]["sbom"]["attestations"][1]["regopolicies"] =
        json!([{"name": "broken", "module": b64("package x\ndeny[msg] {")}]);
    let e = run(
        sign_policy(&serde_json::to_vec(&q).unwrap(), &key),
        &testpub(),
        att(),
        &[SBOM_SUBJECT],
    );
    assert!(
        matches!(
            e,
            Err(PolicyError::Rego {
                source: RegoError::Compile { .. },
                ..
            })
        ),
        "{e:?}"
    );
    // keyid that is not the key's.
    let k =
        p["publickeys"]["ae2dcc989ea9c109a36e8eba5c4bc16d8fafcfe8e1a614164670d50aedacd647"].clone();
    p["publickeys"] = json!({ "abcd": {"keyid": "abcd", "key": k["key"]} });
    let e = run(
        sign_policy(&serde_json::to_vec(&p).unwrap(), &key),
        &testpub(),
        att(),
        &[SBOM_SUBJECT],
    );
    assert!(matches!(e, Err(PolicyError::KeyIdMismatch { .. })), "{e:?}");
    assert_eq!(
        e.unwrap_err().to_string(),
        "policy public key \"abcd\": the keyid is not the key's id: the sha256 of its PEM is \"ae2dcc989ea9c109a36e8eba5c4bc16d8fafcfe8e1a614164670d50aedacd647\""
    );
    // Entry name and keyid field differ, the keyid field is the key's id:
    // the message says the name is what differs.
    let real = "ae2dcc989ea9c109a36e8eba5c4bc16d8fafcfe8e1a614164670d50aedacd647";
    p["publickeys"] = json!({ "abcd": {"keyid": real, "key": k["key"]} });
    let e = Policy::from_json(&serde_json::to_vec(&p).unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("policy public key \"abcd\": the entry must be named by its keyid \"{real}\" (the sha256 of its PEM)")
    );
    // Not JSON.
    assert!(matches!(
        Policy::from_json(b"{nope"),
        Err(PolicyError::Json(_))
    ));
}

// ---------------------------------------------------------------------------
// CI/lock fixtures: decode, and their findings and trace fields reach Rego.

fn statement_of(rel: &str) -> Statement {
    let env = Envelope::from_json(&read(rel)).unwrap();
    serde_json::from_slice(&env.payload).unwrap()
}

fn collection_of(st: &Statement) -> Collection {
    serde_json::from_value(st.predicate.clone()).unwrap()
}

fn policy_rego(
    rel: &str,
    step: &str,
    type_suffix: &str,
) -> cilock_evidence::policy::rego::CompiledRego {
    let p = Policy::from_json(&read(rel)).unwrap();
    let idx = p.document.steps[step]
        .attestations
        .iter()
        .position(|a| a.type_.ends_with(type_suffix))
        .unwrap();
    p.rego[&(step.to_string(), idx)].clone()
}

#[test]
fn cilock_envelopes_decode() {
    for f in [
        "cilock/attestation-aws-keys.json",
        "cilock/attestation-procmem-pattern.json",
        "cilock/attestation-sarif-trivy.json",
        "cilock/attestation-with-findings.json",
    ] {
        let st = statement_of(f);
        assert_eq!(
            st.predicate_type,
            "https://aflock.ai/attestation-collection/v0.1"
        );
        let c = collection_of(&st);
        assert!(
            c.of_type("https://witness.dev/attestations/secretscan/v0.1")
                .count()
                == 1,
            "{f}"
        );
        assert!(
            c.of_type("https://witness.dev/attestations/command-run/v0.1")
                .count()
                == 1,
            "{f}"
        );
    }
    // Unknown attestor types (sarif) stay raw JSON.
    let c = collection_of(&statement_of("cilock/attestation-sarif-trivy.json"));
    let sarif = c
        .of_type("https://aflock.ai/attestations/sarif/v0.1")
        .next()
        .unwrap();
    assert!(sarif.attestation.get("report").is_some());
}

#[test]
fn cilock_secretscan_findings_are_denied() {
    let rego = policy_rego("cilock/policy.json", "clean-build", "/secretscan/v0.1");
    let c = collection_of(&statement_of("cilock/attestation-with-findings.json"));
    let ss = c
        .of_type("https://aflock.ai/attestations/secretscan/v0.1")
        .next()
        .unwrap();
    let mut d = rego.deny(&ss.attestation).unwrap();
    d.sort();
    assert_eq!(
        d,
        [
            "Secret detected: github-pat at attestation:command-run",
            "Secret detected: private-key at attestation:command-run",
        ]
    );
    let c = collection_of(&statement_of("cilock/attestation-aws-keys.json"));
    let ss = c
        .of_type("https://aflock.ai/attestations/secretscan/v0.1")
        .next()
        .unwrap();
    let d = rego.deny(&ss.attestation).unwrap();
    assert!(d.contains(&"Secret detected: aws-access-token at attestation:command-run".to_string()));
    assert!(d.contains(&"Secret detected: generic-api-key at attestation:command-run".to_string()));
    // findings: null → allowed.
    let c = collection_of(&statement_of("cilock/attestation-sarif-trivy.json"));
    let ss = c
        .of_type("https://aflock.ai/attestations/secretscan/v0.1")
        .next()
        .unwrap();
    assert!(rego.deny(&ss.attestation).unwrap().is_empty());
}

fn traced_command_run() -> Value {
    let c = collection_of(&statement_of("cilock/attestation-procmem-pattern.json"));
    let mut cr = c
        .of_type("https://aflock.ai/attestations/command-run/v0.1")
        .next()
        .unwrap()
        .attestation
        .clone();
    cr["processes"] = json!([
        {"program": "/usr/bin/bash", "processid": 100, "parentpid": 1,
         "openedfiles": {"/etc/passwd": {"sha256": "aa"}}},
        {"program": "/usr/bin/cat", "processid": 4242, "parentpid": 100,
         "openedfiles": {"/proc/self/environ": null, "/tmp/runner_collected_1": {"sha256": "bb"}},
         "syscallEvents": [{"syscall": "process_vm_readv", "detail": "read another process's memory"}]}
    ]);
    cr["trace"] = json!({"backend": "ptrace", "events": {"exec": {"captured": 2, "lost": 0}}});
    cr
}

#[test]
fn cilock_trace_fields_are_denied() {
    let rego = policy_rego(
        "cilock/policy-trace.json",
        "covert-attack-traced",
        "/command-run/v0.1",
    );
    let mut d = rego.deny(&traced_command_run()).unwrap();
    d.sort();
    assert_eq!(
        d,
        [
            "Suspicious file access: process /usr/bin/cat (PID 4242) opened /tmp/runner_collected_1 — matches credential harvesting pattern",
            "Suspicious file access: process /usr/bin/cat (PID 4242) read /proc/self/environ — environment variable harvesting indicator",
        ]
    );
}

#[test]
fn cilock_source_restriction_denies() {
    let rego = policy_rego(
        "cilock/policy-source.json",
        "wrapped-action-test",
        "/github-action/v0.1",
    );
    let mut d = rego
        .deny(&json!({"actionref": "evil-org/checkout@v4", "refpinned": false}))
        .unwrap();
    d.sort();
    assert_eq!(
        d,
        [
            "Action from untrusted source: evil-org/checkout@v4",
            "Action ref not pinned to SHA: evil-org/checkout@v4",
        ]
    );
    assert!(rego
        .deny(&json!({"actionref": "actions/checkout@abc", "refpinned": true}))
        .unwrap()
        .is_empty());
}

/// The CI/lock payload, with findings and a trace, re-signed with a key the
/// policy trusts: the denials come out of the full verification path, and a
/// Witness-typed policy matches aflock-typed attestations.
#[test]
fn cilock_envelope_denied_through_verify() {
    let (key, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut st: Value = serde_json::from_slice(
        &Envelope::from_json(&read("cilock/attestation-sarif-trivy.json"))
            .unwrap()
            .payload,
    )
    .unwrap();
    let findings = collection_of(&statement_of("cilock/attestation-with-findings.json"))
        .of_type("https://aflock.ai/attestations/secretscan/v0.1")
        .next()
        .unwrap()
        .attestation
        .clone();
    for a in st["predicate"]["attestations"].as_array_mut().unwrap() {
        let t = a["type"].as_str().unwrap().to_string();
        if t.ends_with("/secretscan/v0.1") {
            a["attestation"] = findings.clone();
        }
        if t.ends_with("/command-run/v0.1") {
            a["attestation"] = traced_command_run();
        }
    }
    let att = dsse::sign(PAYLOAD_TYPE, serde_json::to_vec(&st).unwrap(), &key).unwrap();
    let secret_rego = Policy::from_json(&read("cilock/policy.json"))
        .unwrap()
        .document
        .steps["clean-build"]
        .attestations
        .iter()
        .find(|a| a.type_.ends_with("/secretscan/v0.1"))
        .unwrap()
        .regopolicies[0]
        .module
        .clone();
    let trace_rego = Policy::from_json(&read("cilock/policy-trace.json"))
        .unwrap()
        .document
        .steps["covert-attack-traced"]
        .attestations[0]
        .regopolicies[0]
        .module
        .clone();
    let b = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let policy = json!({
        "expires": "2099-01-01T00:00:00Z",
        "publickeys": {key.key_id(): {"keyid": key.key_id(), "key": b(key.public_key_pem().as_bytes())}},
        "steps": {"trivy-scan-with-sarif": {
            "name": "trivy-scan-with-sarif",
            "functionaries": [{"type": "publickey", "publickeyid": key.key_id()}],
            "attestations": [
                {"type": "https://witness.dev/attestations/secretscan/v0.1",
                 "regopolicies": [{"name": "no-secrets-in-output", "module": b(&secret_rego)}]},
                {"type": "https://witness.dev/attestations/command-run/v0.1",
                 "regopolicies": [{"name": "trace-behavioral", "module": b(&trace_rego)}]},
                {"type": "https://aflock.ai/attestations/sarif/v0.1"}
            ]
        }}
    });
    let (pkey, _) = Signer::generate(KeyAlgorithm::Ed25519).unwrap();
    let penv = sign_policy(&serde_json::to_vec(&policy).unwrap(), &pkey);
    let r = run(
        penv,
        &pkey.verifier().unwrap(),
        vec![("trivy", att)],
        &["60244ec0e8e61c1e51ac38688d599febd00f96bf327aef081063ba091d20e2d1"],
    )
    .unwrap();
    assert!(!r.passed);
    let c = &r.steps[0].collections[0];
    let mut msgs: Vec<String> = c
        .denials
        .iter()
        .map(|d| format!("{} | {}", d.policy, d.message))
        .collect();
    msgs.sort();
    assert_eq!(
        msgs,
        [
            "no-secrets-in-output | Secret detected: github-pat at attestation:command-run",
            "no-secrets-in-output | Secret detected: private-key at attestation:command-run",
            "trace-behavioral | Suspicious file access: process /usr/bin/cat (PID 4242) opened /tmp/runner_collected_1 — matches credential harvesting pattern",
            "trace-behavioral | Suspicious file access: process /usr/bin/cat (PID 4242) read /proc/self/environ — environment variable harvesting indicator",
        ]
    );
    assert!(c.missing_types.is_empty());
}

// ---------------------------------------------------------------------------
// Two-step chain: build → package (artifactsFrom), from the final artifact.

struct Chain {
    key: Signer,
    build: Envelope,
    package: Envelope,
    tarball: String,
}

fn attestation(t: &str, v: Value) -> CollectionAttestation {
    CollectionAttestation {
        type_: format!("https://witness.dev/attestations/{t}/v0.1"),
        attestation: v,
        starttime: "2026-08-01T10:00:00Z".into(),
        endtime: "2026-08-01T10:00:01Z".into(),
    }
}

fn step_envelope(
    key: &Signer,
    name: &str,
    atts: Vec<CollectionAttestation>,
    subjects: Vec<Subject>,
) -> Envelope {
    let coll = Collection {
        name: name.into(),
        attestations: atts,
        backrefs: None,
    };
    let st = Statement::new(COLLECTION_TYPE, subjects, coll);
    dsse::sign(PAYLOAD_TYPE, serde_json::to_vec(&st).unwrap(), key).unwrap()
}

fn chain(app_digest_in_package: &str) -> Chain {
    let (key, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let sha = |s: &str| DigestSet::from_bytes(s.as_bytes(), &[cilock_evidence::HashAlg::Sha256]);
    let main_go = sha("package main").get_sha256().unwrap().to_string();
    let app = sha("app binary").get_sha256().unwrap().to_string();
    let tarball = sha("tarball").get_sha256().unwrap().to_string();
    let commit = "0b6e1b5c0d7a1c2b3d4e5f60718293a4b5c6d7e8";
    let git_subject = Subject {
        name: format!("https://witness.dev/attestations/git/v0.1/commithash:{commit}"),
        digest: [("sha1".to_string(), commit.to_string())].into(),
    };
    let build = step_envelope(
        &key,
        "build",
        vec![
            attestation("git", json!({"commithash": commit})),
            attestation("material", json!({"main.go": {"sha256": main_go}})),
            attestation(
                "command-run",
                json!({"cmd": ["go", "build", "-o=app", "."], "exitcode": 0}),
            ),
            attestation(
                "product",
                json!({"app": {"mime_type": "application/x-executable", "digest": {"sha256": app}}}),
            ),
        ],
        vec![
            Subject::new(
                "https://witness.dev/attestations/product/v0.1/file:app",
                &DigestSet::sha256(app.clone()),
            ),
            git_subject.clone(),
        ],
    );
    let package = step_envelope(
        &key,
        "package",
        vec![
            attestation("git", json!({"commithash": commit})),
            attestation(
                "material",
                json!({"app": {"sha256": app_digest_in_package}, "README": {"sha256": "11"}}),
            ),
            attestation(
                "command-run",
                json!({"cmd": ["tar", "czf", "app.tgz", "app"], "exitcode": 0}),
            ),
            attestation(
                "product",
                json!({"app.tgz": {"mime_type": "application/gzip", "digest": {"sha256": tarball}}}),
            ),
        ],
        vec![
            Subject::new(
                "https://witness.dev/attestations/product/v0.1/file:app.tgz",
                &DigestSet::sha256(tarball.clone()),
            ),
            git_subject,
        ],
    );
    Chain {
        key,
        build,
        package,
        tarball,
    }
}

fn chain_policy(key: &Signer) -> Vec<u8> {
    let b = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let step = |name: &str, cmd0: &str, from: Vec<&str>| {
        json!({
            "name": name,
            "functionaries": [{"type": "publickey", "publickeyid": key.key_id()}],
            "attestations": [
                {"type": "https://witness.dev/attestations/material/v0.1"},
                {"type": "https://witness.dev/attestations/command-run/v0.1", "regopolicies": [
                    {"name": "cmd", "module": b(format!("package commandrun.cmd\ndeny[msg] {{\n input.cmd[0] != \"{cmd0}\"\n msg := \"unexpected cmd\"\n}}\n").as_bytes())}
                ]},
                {"type": "https://witness.dev/attestations/product/v0.1"}
            ],
            "artifactsFrom": from
        })
    };
    serde_json::to_vec(&json!({
        "expires": "2099-01-01T00:00:00Z",
        "publickeys": {key.key_id(): {"keyid": key.key_id(), "key": b(key.public_key_pem().as_bytes())}},
        "steps": {"build": step("build", "go", vec![]), "package": step("package", "tar", vec!["build"])}
    }))
    .unwrap()
}

#[test]
fn two_step_chain_verifies_from_final_artifact() {
    let sha = DigestSet::from_bytes(b"app binary", &[cilock_evidence::HashAlg::Sha256]);
    let c = chain(sha.get_sha256().unwrap());
    let (pkey, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let penv = sign_policy(&chain_policy(&c.key), &pkey);
    let r = run(
        penv.clone(),
        &pkey.verifier().unwrap(),
        vec![
            ("build.json", c.build.clone()),
            ("package.json", c.package.clone()),
        ],
        &[&c.tarball],
    )
    .unwrap();
    assert!(r.passed, "{r:#?}");
    assert_eq!(
        r.steps
            .iter()
            .map(|s| (s.name.as_str(), s.passed))
            .collect::<Vec<_>>(),
        [("build", true), ("package", true)]
    );
    // Without the build attestation, the package step alone fails
    // (artifactsFrom needs a passed build).
    let r = run(
        penv.clone(),
        &pkey.verifier().unwrap(),
        vec![("package.json", c.package.clone())],
        &[&c.tarball],
    )
    .unwrap();
    assert!(!r.passed);
    let pkg = r.steps.iter().find(|s| s.name == "package").unwrap();
    assert!(
        pkg.collections[0].reasons[0].contains("upstream step \"build\" has no passed collection")
    );
}

#[test]
fn two_step_chain_fails_on_digest_mismatch() {
    let c = chain(&"ab".repeat(32));
    let (pkey, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let penv = sign_policy(&chain_policy(&c.key), &pkey);
    let r = run(
        penv,
        &pkey.verifier().unwrap(),
        vec![("build.json", c.build), ("package.json", c.package)],
        &[&c.tarball],
    )
    .unwrap();
    assert!(!r.passed);
    let build = r.steps.iter().find(|s| s.name == "build").unwrap();
    assert!(build.passed);
    let pkg = r.steps.iter().find(|s| s.name == "package").unwrap();
    assert!(!pkg.passed);
    assert!(
        pkg.collections[0].reasons[0]
            .contains("material \"app\" differs from the upstream artifact's digest"),
        "{:?}",
        pkg.collections[0].reasons
    );
}

// CI/lock v0.3 material/product trees (witness-compat §4.6) in artifactsFrom.
fn tree_chain(app_in_package: &str) -> (Signer, Envelope, Envelope, String) {
    let (key, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let sha = |s: &str| {
        DigestSet::from_bytes(s.as_bytes(), &[cilock_evidence::HashAlg::Sha256])
            .get_sha256()
            .unwrap()
            .to_string()
    };
    let (main_c, app, tarball) = (sha("int main"), sha("app binary"), sha("tarball"));
    let commit = "0b6e1b5c0d7a1c2b3d4e5f60718293a4b5c6d7e8";
    let git_subject = Subject {
        name: format!("https://witness.dev/attestations/git/v0.1/commithash:{commit}"),
        digest: [("sha1".to_string(), commit.to_string())].into(),
    };
    let tree = |kind: &str, leaves: Value| CollectionAttestation {
        type_: format!("https://aflock.ai/attestations/{kind}/v0.3"),
        attestation: json!({"merkleRoot": "00", "treeSize": 1, "hashAlgorithm": "sha256",
            "construction": "RFC6962", "leaves": leaves}),
        starttime: "2026-08-01T10:00:00Z".into(),
        endtime: "2026-08-01T10:00:01Z".into(),
    };
    let build = step_envelope(
        &key,
        "build",
        vec![
            tree(
                "material",
                json!([{"path": "main.c", "fileDigest": main_c, "leafHash": "00"}]),
            ),
            tree(
                "product",
                json!([{"path": "app", "fileDigest": app, "leafHash": "00"}]),
            ),
        ],
        vec![git_subject.clone()],
    );
    let package = step_envelope(
        &key,
        "package",
        vec![
            tree(
                "material",
                json!([{"path": "app", "fileDigest": app_in_package, "leafHash": "00"},
                       {"path": "notes.txt", "fileDigest": sha("notes"), "leafHash": "00"}]),
            ),
            tree(
                "product",
                json!([{"path": "app.tgz", "fileDigest": tarball, "leafHash": "00"}]),
            ),
        ],
        vec![
            Subject::new(
                "https://aflock.ai/attestations/product/v0.3/file:app.tgz",
                &DigestSet::sha256(tarball.clone()),
            ),
            git_subject,
        ],
    );
    (key, build, package, tarball)
}

#[test]
fn artifacts_from_reads_cilock_v03_trees() {
    let app = DigestSet::from_bytes(b"app binary", &[cilock_evidence::HashAlg::Sha256]);
    for (app_in_package, pass) in [
        (app.get_sha256().unwrap().to_string(), true),
        ("ab".repeat(32), false),
    ] {
        let (key, build, package, tarball) = tree_chain(&app_in_package);
        let b = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let step = |name: &str, from: Vec<&str>| {
            json!({
                "name": name,
                "functionaries": [{"type": "publickey", "publickeyid": key.key_id()}],
                "attestations": [
                    {"type": "https://aflock.ai/attestations/material/v0.3"},
                    {"type": "https://aflock.ai/attestations/product/v0.3"}
                ],
                "artifactsFrom": from
            })
        };
        let policy = serde_json::to_vec(&json!({
            "expires": "2099-01-01T00:00:00Z",
            "publickeys": {key.key_id(): {"keyid": key.key_id(), "key": b(key.public_key_pem().as_bytes())}},
            "steps": {"build": step("build", vec![]), "package": step("package", vec!["build"])}
        }))
        .unwrap();
        let (pkey, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let r = run(
            sign_policy(&policy, &pkey),
            &pkey.verifier().unwrap(),
            vec![("build.json", build), ("package.json", package)],
            &[&tarball],
        )
        .unwrap();
        assert_eq!(r.passed, pass, "{r:#?}");
        let pkg = r.steps.iter().find(|s| s.name == "package").unwrap();
        let build = r.steps.iter().find(|s| s.name == "build").unwrap();
        assert!(build.passed, "{r:#?}");
        if pass {
            assert!(pkg.passed);
        } else {
            assert_eq!(
                pkg.collections[0].reasons,
                ["artifactsFrom \"build\": against build.json: material \"app\" differs from the upstream artifact's digest"]
            );
        }
    }
}

/// A one-step ("build") policy trusting `key`, requiring command-run, with
/// the given Rego modules on it.
fn build_policy(key: &Signer, modules: Value) -> Envelope {
    let keyid = key.key_id().to_string();
    let pem = key.verifier().unwrap().public_key_pem();
    let p = json!({
        "expires": "2099-01-01T00:00:00Z",
        "publickeys": {keyid.clone(): {"keyid": keyid, "key": base64::engine::general_purpose::STANDARD.encode(pem)}},
        "steps": {"build": {
            "name": "build",
            "functionaries": [{"type": "publickey", "publickeyid": key.key_id()}],
            "attestations": [{"type": "https://witness.dev/attestations/command-run/v0.1", "regopolicies": modules}]
        }}
    });
    sign_policy(&serde_json::to_vec(&p).unwrap(), key)
}

#[test]
fn no_match_says_which_envelope_is_which_step_and_why() {
    let (key, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let (other, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let app = "270e".to_string() + &"0".repeat(60);
    let old = "abcd".to_string() + &"1".repeat(60);
    let cmd = || {
        vec![attestation(
            "command-run",
            json!({"cmd": ["make"], "exitcode": 0}),
        )]
    };
    let product = |d: &str| {
        vec![Subject::new(
            "https://witness.dev/attestations/product/v0.1/file:hello",
            &DigestSet::sha256(d.to_string()),
        )]
    };
    let atts = vec![
        // A rebuild that changed nothing: no subjects at all.
        ("rebuild.json", step_envelope(&key, "build", cmd(), vec![])),
        // The step, but an older artifact.
        (
            "old.json",
            step_envelope(&key, "build", cmd(), product(&old)),
        ),
        // Another step with the right artifact.
        (
            "test.json",
            step_envelope(&key, "test", cmd(), product(&app)),
        ),
        // Signed by a key the policy does not know.
        (
            "stranger.json",
            step_envelope(&other, "build", cmd(), product(&app)),
        ),
    ];
    let r = run(
        build_policy(&key, json!([])),
        &key.verifier().unwrap(),
        atts,
        &[&app],
    )
    .unwrap();
    assert!(!r.passed);
    let reasons = &r.steps[0].reasons;
    assert_eq!(
        reasons[0],
        "no collection named \"build\" with a matching subject was found among the validly signed attestations"
    );
    let none = "rebuild.json is step \"build\" but has no subject matching the searched digests [270e00000000…]; its subjects: none (an output whose bytes did not change during the step is not a product, so a rebuild that changes nothing has no subjects)";
    assert_eq!(
        reasons[1..],
        [
            none.to_string(),
            "old.json is step \"build\" but has no subject matching the searched digests [270e00000000…]; its subjects: file:hello abcd11111111…".to_string(),
            "test.json is step \"test\", not \"build\"".to_string(),
            "stranger.json was not considered: its signature was rejected (see below)".to_string(),
        ]
    );
    assert_eq!(r.rejected_envelopes.len(), 1);
    assert_eq!(r.rejected_envelopes[0].source, "stranger.json");
    assert_eq!(
        r.rejected_envelopes[0].reason,
        format!(
            "no signature verified with a policy public key or root (envelope keyids: {}; policy keyids: {})",
            other.key_id(),
            key.key_id()
        )
    );
}

#[test]
fn rego_time_limit_in_process_names_the_module_and_step() {
    use cilock_evidence::policy::rego::{RegoLimits, RegoRunner};
    let (key, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let app = "270e".to_string() + &"0".repeat(60);
    // An interpreted loop of 20 million steps: far longer than 200 ms.
    let slow = "package slow\nimport rego.v1\ndeny contains msg if {\n  n := count([x | some x in numbers.range(1, 20000000); x % 7 == 3])\n  n < 0\n  msg := \"never\"\n}\n";
    let policy = build_policy(&key, json!([{"name": "slow loop", "module": b64(slow)}]));
    let att = step_envelope(
        &key,
        "build",
        vec![attestation("command-run", json!({"cmd": ["make"]}))],
        vec![Subject::new("file:app", &DigestSet::sha256(app.clone()))],
    );
    let started = std::time::Instant::now();
    let r = verify(&VerifyOptions {
        policy_envelope: policy,
        policy_verifiers: vec![key.verifier().unwrap()],
        attestations: vec![NamedEnvelope {
            source: "att.json".into(),
            envelope: att,
        }],
        subject_digests: vec![app],
        now: OffsetDateTime::now_utc(),
        rego_limits: RegoLimits {
            timeout: std::time::Duration::from_millis(200),
            memory_bytes: 1 << 30,
            runner: RegoRunner::InProcess,
        },
    })
    .unwrap();
    assert!(!r.passed);
    assert_eq!(
        r.steps[0].collections[0].reasons,
        ["could not evaluate rego policy \"slow loop\" of step \"build\" on https://witness.dev/attestations/command-run/v0.1: stopped: it exceeded the time limit of 200 ms"]
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bad_base64_rego_names_the_module() {
    let mut p: Value = serde_json::from_slice(&read("witness/cdx-sbom-policy.json")).unwrap();
    p["steps"]["sbom"]["attestations"][1]["regopolicies"] =
        json!([{"name": "gcc only", "module": "%%% not base64"}]);
    let err = Policy::from_json(&serde_json::to_vec(&p).unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "invalid policy JSON: rego module \"gcc only\": `module` is not valid base64: "
        ),
        "{msg}"
    );
}
