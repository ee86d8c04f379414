//! CI/lock's own secretscan policy (from the fixtures, unchanged Rego and
//! attestation types) applied to cilock's envelope of a stealer-style
//! script: denied, naming each finding; a clean build passes. The secrets
//! never appear in clear in the envelope.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use cilock_testkit::*;
use serde_json::{json, Value};

const TOKEN: &str = "ghp_R4nd0mT0k3nV4lu3Th4tL00ksR34lEnough1";
const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn fixture_policy() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cilock/policy.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The fixture's `clean-build` step, its attestations and Rego unchanged,
/// with our key as the functionary (the fixture's signer is a GitHub OIDC
/// certificate we cannot have).
fn policy(dir: &Path, step_pubkey: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let fixture = fixture_policy();
    let keyid =
        cilock_evidence::keys::key_id_of_public_pem(&std::fs::read(step_pubkey).unwrap()).unwrap();
    let pem_b64 =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(step_pubkey).unwrap());
    let mut step = fixture["steps"]["clean-build"].clone();
    step["functionaries"] = json!([{ "type": "publickey", "publickeyid": keyid }]);
    // Keep the attestors cilock ran here (no git/environment in this test).
    let wanted = ["secretscan", "command-run", "material", "product"];
    let atts: Vec<Value> = step["attestations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            wanted
                .iter()
                .any(|w| a["type"].as_str().unwrap().contains(&format!("/{w}/")))
        })
        .cloned()
        .collect();
    assert_eq!(atts.len(), 4);
    step["attestations"] = json!(atts);
    let policy = json!({
        "expires": "2099-01-01T00:00:00Z",
        "publickeys": { keyid.clone(): { "keyid": keyid, "key": pem_b64 } },
        "steps": { "clean-build": step },
    });
    let (pkey, ppub) = {
        let d = dir.join("policy-keys");
        std::fs::create_dir_all(&d).unwrap();
        keygen(&d)
    };
    let raw = dir.join("policy.json");
    std::fs::write(&raw, serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
    let signed = dir.join("policy.signed.json");
    let out = Command::new(bin("cilock"))
        .args([
            "sign",
            "-k",
            pkey.to_str().unwrap(),
            "-f",
            raw.to_str().unwrap(),
            "-o",
            signed.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (signed, ppub)
}

fn run_step(dir: &Path, key: &Path, script: &str) -> std::path::PathBuf {
    let att = dir.join("att.json");
    let out = Command::new(bin("cilock"))
        .args([
            "run",
            "--no-daemon",
            "-k",
            key.to_str().unwrap(),
            "-a",
            "secretscan",
            "-s",
            "clean-build",
        ])
        .args(["-o", att.to_str().unwrap(), "--", "sh", "-c", script])
        .env("CILOCK_SOCKET", dir.join("none.sock"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    att
}

fn verify(dir: &Path, policy: &Path, ppub: &Path, att: &Path) -> (i32, String) {
    let out = Command::new(bin("cilock"))
        .args([
            "verify",
            "-p",
            policy.to_str().unwrap(),
            "-k",
            ppub.to_str().unwrap(),
        ])
        .args([
            "-a",
            att.to_str().unwrap(),
            "-f",
            dir.join("app.bin").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn cilock_secretscan_policy_denies_the_stealer_and_passes_a_clean_build() {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for (name, leaky) in [("stealer", true), ("clean", false)] {
        let w = tempdir();
        let dir = w.path();
        let (key, pubkey) = keygen(dir);
        let (policy, ppub) = policy(dir, &pubkey);
        let script = if leaky {
            format!(
                "echo collected {TOKEN}; echo AWS_ACCESS_KEY_ID={AWS_ID}; echo AWS_SECRET_ACCESS_KEY={AWS_SECRET}; \
                 echo exfil {}; echo built > app.bin",
                b64(&b64(TOKEN))
            )
        } else {
            "echo compiling; echo built > app.bin".to_string()
        };
        let att = run_step(dir, &key, &script);
        let envelope = String::from_utf8(std::fs::read(&att).unwrap()).unwrap();
        let stmt_text = serde_json::to_string(&statement(&att)).unwrap();
        for secret in [TOKEN, AWS_ID, AWS_SECRET] {
            assert!(
                !envelope.contains(secret) && !stmt_text.contains(secret),
                "{name}: a secret is in clear"
            );
        }
        let (code, report) = verify(dir, &policy, &ppub, &att);
        if leaky {
            assert_eq!(code, 1, "{name}: {report}");
            // Rego's deny is a set: one message per rule and location.
            for rule in ["github-pat", "aws-access-token", "aws-secret-access-key"] {
                assert!(
                    report.contains(&format!(
                        "Secret detected: {rule} at attestation:command-run"
                    )),
                    "{name}: no denial for {rule}: {report}"
                );
            }
            // The token encoded twice is its own finding, with its decoding path.
            let stmt = statement(&att);
            let findings = attestation(&stmt, "/secretscan/v0.1")["findings"]
                .as_array()
                .unwrap()
                .clone();
            assert!(findings.len() >= 4, "{findings:?}");
            assert!(findings
                .iter()
                .any(|f| f["ruleId"] == "github-pat"
                    && f["encodingPath"] == json!(["base64", "base64"])));
        } else {
            assert_eq!(code, 0, "{name}: {report}");
        }
    }
}
