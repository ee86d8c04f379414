//! secretscan on a stealer-style output, a clean build, products and
//! environment values; the secrets must never appear in clear in the
//! serialized collection.

use std::collections::BTreeMap;
use std::process::Command;

use base64::Engine;
use cilock_evidence::attestors::environment::{EnvOptions, SensitiveEnvFilter};
use cilock_evidence::attestors::lifecycle::{AttestorOptions, Lifecycle};
use cilock_evidence::attestors::secretscan::{SecretScanner, DEFAULT_MAX_DECODE_LAYERS};
use cilock_evidence::attestors::{
    into_collection, AttestError, AttestationContext, CompletedAttestation,
};
use cilock_evidence::digest::{DigestSet, HashAlg};
use serde_json::{json, Value};

const TOKEN: &str = "ghp_R4nd0mT0k3nV4lu3Th4tL00ksR34lEnough1";
const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const PEM_BODY: &str = "MIIEpAIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn pem() -> String {
    format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\naNVRfRDhkPhTtKHFxPOIAIkRFSTiy6AlJBrqFr5X87LrGSsB93G3oT7VzMHTsefH\n-----END RSA PRIVATE KEY-----"
    )
}

fn stealer_stdout() -> String {
    format!(
        "Collected: {TOKEN}\nAWS_ACCESS_KEY_ID={AWS_ID}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n{}\nsending...\nEXFIL {}\ndone\n",
        pem(),
        b64(&b64(TOKEN))
    )
}

fn sha(s: &str) -> DigestSet {
    DigestSet::from_bytes(s.as_bytes(), &[HashAlg::Sha256])
}

fn push_command_run(ctx: &mut AttestationContext, stdout: &str) {
    ctx.completed.push(CompletedAttestation {
        name: "command-run".into(),
        type_uri: "https://witness.dev/attestations/command-run/v0.1".into(),
        json: json!({"cmd": ["sh", "entrypoint.sh"], "stdout": stdout, "exitcode": 0}),
        subjects: BTreeMap::new(),
        backrefs: BTreeMap::new(),
        starttime: String::new(),
        endtime: String::new(),
    });
}

fn findings(ctx: &AttestationContext) -> Value {
    ctx.completed
        .iter()
        .find(|c| c.name == "secretscan")
        .expect("secretscan recorded")
        .json["findings"]
        .clone()
}

#[test]
fn stealer_output_yields_each_secret_with_its_encoding_path() {
    let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
    let scanner = SecretScanner::new(&[], &f, DEFAULT_MAX_DECODE_LAYERS, &[HashAlg::Sha256]);
    let got = scanner.scan_text(&stealer_stdout(), "attestation:command-run");
    let mut summary: Vec<(String, usize, Vec<String>, bool, DigestSet)> = got
        .iter()
        .map(|f| {
            (
                f.rule_id.clone(),
                f.start_line,
                f.encoding_path.clone(),
                f.location_approximate,
                f.secret.clone(),
            )
        })
        .collect();
    summary.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let expect = vec![
        ("github-pat".to_string(), 0, vec![], false, sha(TOKEN)),
        (
            "aws-access-token".to_string(),
            1,
            vec![],
            false,
            sha(AWS_ID),
        ),
        (
            "aws-secret-access-key".to_string(),
            2,
            vec![],
            false,
            sha(AWS_SECRET),
        ),
        ("private-key".to_string(), 3, vec![], false, sha(&pem())),
        (
            "github-pat".to_string(),
            8,
            vec!["base64".to_string(), "base64".to_string()],
            true,
            sha(TOKEN),
        ),
    ];
    assert_eq!(summary, expect, "{got:#?}");
    for f in &got {
        assert!(f.location == "attestation:command-run");
        for s in [TOKEN, AWS_ID, AWS_SECRET, PEM_BODY] {
            assert!(!f.match_.contains(s), "match {:?} leaks", f.match_);
        }
    }
    let pk = got.iter().find(|f| f.rule_id == "private-key").unwrap();
    assert_eq!(pk.match_, "-----BEG...KEY-----");
    let pat = got.iter().find(|f| f.rule_id == "github-pat").unwrap();
    assert_eq!(pat.match_, format!("ghp_{}", "*".repeat(36)));
    assert_eq!(pat.entropy, 4.2653117f32);

    // Only one layer allowed: the doubly encoded token is not reached.
    let shallow = SecretScanner::new(&[], &f, 1, &[HashAlg::Sha256]);
    let got = shallow.scan_text(&stealer_stdout(), "attestation:command-run");
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|f| f.encoding_path.is_empty()));
}

#[test]
fn real_cilock_fixture_digests_match() {
    // Secrets of the real CI/lock envelope: same digests as CI/lock recorded.
    // The repository's copy of the fixture (tests/fixtures, with its
    // attribution README).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/cilock/attestation-with-findings.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("fixture {path}: {e}"));
    let env: Value = serde_json::from_str(&text).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    let st: Value = serde_json::from_slice(&payload).unwrap();
    let atts = st["predicate"]["attestations"].as_array().unwrap();
    let stdout = atts
        .iter()
        .find(|a| a["type"].as_str().unwrap().contains("command-run"))
        .unwrap()["attestation"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    let theirs = &atts
        .iter()
        .find(|a| a["type"].as_str().unwrap().contains("secretscan"))
        .unwrap()["attestation"]["findings"];
    let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
    let sc = SecretScanner::new(&[], &f, 3, &[HashAlg::Sha256]);
    let mut got = sc.scan_text(&stdout, "attestation:command-run");
    // CI/lock also scanned the JSON-escaped stdout (`\n` escapes), which
    // yields the same private key a second time with another digest; cilock
    // scans decoded strings only, so that variant is checked separately.
    let escaped = serde_json::to_string(&stdout).unwrap();
    let from_escaped = sc.scan_text(&escaped, "attestation:command-run");
    assert!(from_escaped.iter().any(|g| g.rule_id == "private-key"
        && g.secret.get_sha256()
            == Some("69ce522d7c0439d006b199ed3b862e32b2dac6f0ed4d54a845cb7ad963edfecb")));
    got.extend(from_escaped);
    for t in theirs.as_array().unwrap() {
        let want = t["secret"]["sha256"].as_str().unwrap();
        assert!(
            got.iter()
                .any(|g| g.rule_id == t["ruleId"].as_str().unwrap()
                    && g.secret.get_sha256() == Some(want)),
            "missing {t}"
        );
    }
}

#[test]
fn clean_build_output_has_no_findings() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    // A real repository and source tree, so git/material/environment JSON is scanned too.
    let run = |args: &[&str]| {
        let ok = Command::new("git")
            .current_dir(ws)
            .args([
                "-c",
                "user.name=Dev",
                "-c",
                "user.email=dev@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok);
    };
    run(&["init", "-q"]);
    std::fs::write(
        ws.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::create_dir(ws.join("src")).unwrap();
    std::fs::write(ws.join("src/main.rs"), "fn main() { println!(\"hi\"); }\n").unwrap();
    run(&["add", "."]);
    run(&["commit", "-q", "-m", "init"]);
    let vars: Vec<(String, String)> = [
        ("PATH", std::env::var("PATH").unwrap().as_str()),
        ("HOME", "/home/runner"),
        ("CARGO_TERM_COLOR", "always"),
        ("RUSTFLAGS", "-D warnings"),
        ("LANG", "C.UTF-8"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut lc = Lifecycle::new(
        &["environment".into(), "git".into(), "secretscan".into()],
        AttestorOptions::default(),
    )
    .unwrap();
    let mut ctx = AttestationContext::new(ws.to_path_buf(), vars);
    lc.before(&mut ctx).unwrap();
    let stdout = "   Compiling proc-macro2 v1.0.86\n   Compiling serde v1.0.204\n   Compiling app v0.1.0 (/home/runner/work/app)\n    Finished `release` profile [optimized] target(s) in 42.17s\n     Running unittests src/main.rs (target/release/deps/app-1a2b3c4d5e6f7a8b)\n\nrunning 12 tests\ntest result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
    push_command_run(&mut ctx, stdout);
    std::fs::create_dir(ws.join("target")).unwrap();
    std::fs::write(
        ws.join("target/app.txt"),
        "build ok, checksum 3f786850e387550fdab836ed7e6dc881de23001b\n",
    )
    .unwrap();
    lc.after(&mut ctx).unwrap();
    let s = ctx
        .completed
        .iter()
        .find(|c| c.name == "secretscan")
        .unwrap();
    assert_eq!(
        s.type_uri,
        "https://witness.dev/attestations/secretscan/v0.1"
    );
    assert_eq!(s.json, json!({"findings": null}));
    assert_eq!(
        s.subjects.keys().cloned().collect::<Vec<_>>(),
        vec!["product:target/app.txt".to_string()]
    );
}

#[test]
fn whole_collection_never_holds_a_secret_in_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    let deploy_pw = "hunter2-Very-Secret-pw";
    let env_token = "ghp_0123456789abcdefghijABCDEFGHIJ987654";
    let vars: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/bin".into()),
        ("DEPLOY_PASSWORD".into(), deploy_pw.into()),
        ("GITHUB_TOKEN".into(), env_token.into()),
    ];
    let mut lc = Lifecycle::new(
        &["environment".into(), "secretscan".into()],
        AttestorOptions::default(),
    )
    .unwrap();
    let mut ctx = AttestationContext::new(ws.to_path_buf(), vars);
    lc.before(&mut ctx).unwrap();
    let stdout = format!("{}pw: {}\n", stealer_stdout(), b64(deploy_pw));
    push_command_run(&mut ctx, &stdout);
    std::fs::create_dir(ws.join("dist")).unwrap();
    std::fs::write(
        ws.join("dist/config.env"),
        format!("X=1\nTOKEN_FILE={env_token}\n"),
    )
    .unwrap();
    lc.after(&mut ctx).unwrap();

    let f = findings(&ctx);
    let list = f.as_array().unwrap();
    for x in list {
        let keys: std::collections::BTreeSet<&str> =
            x.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert!(keys.is_superset(
            &[
                "ruleId",
                "description",
                "location",
                "startLine",
                "secret",
                "match"
            ]
            .into_iter()
            .collect()
        ));
        assert!(keys.iter().all(|k| [
            "ruleId",
            "description",
            "location",
            "startLine",
            "secret",
            "match",
            "entropy",
            "encodingPath",
            "locationApproximate"
        ]
        .contains(k)));
    }
    let has = |rule: &str, loc: &str, path: &[&str]| {
        list.iter().any(|x| {
            x["ruleId"] == rule
                && x["location"] == loc
                && x.get("encodingPath").cloned().unwrap_or(json!([])) == json!(path)
        })
    };
    assert!(has("github-pat", "attestation:command-run", &[]));
    assert!(has(
        "github-pat",
        "attestation:command-run",
        &["base64", "base64"]
    ));
    assert!(has("aws-access-token", "attestation:command-run", &[]));
    assert!(has("aws-secret-access-key", "attestation:command-run", &[]));
    assert!(has("private-key", "attestation:command-run", &[]));
    assert!(has(
        "witness-env-value-deploy-password",
        "attestation:command-run",
        &["base64"]
    ));
    assert!(has("github-pat", "product:dist/config.env", &[]));
    assert!(has(
        "witness-env-value-github-token",
        "product:dist/config.env",
        &[]
    ));
    let scan = ctx
        .completed
        .iter()
        .find(|c| c.name == "secretscan")
        .unwrap();
    assert!(scan.subjects.contains_key("product:dist/config.env"));

    let (coll, subjects) = into_collection("build", &ctx);
    let all = serde_json::to_string(&(coll, subjects)).unwrap();
    for s in [TOKEN, AWS_ID, AWS_SECRET, PEM_BODY, deploy_pw, env_token] {
        assert!(!all.contains(s), "{s} appears in clear");
    }
    assert!(!all.contains(&b64(&b64(TOKEN))));
    assert!(!all.contains(&b64(deploy_pw)));
    assert!(all.contains("[REDACTED:github-pat]"));
}

#[test]
fn fail_on_detection_records_then_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = AttestorOptions::default();
    opts.secretscan.fail_on_detection = true;
    let mut lc = Lifecycle::new(&["secretscan".into()], opts).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), vec![]);
    lc.before(&mut ctx).unwrap();
    push_command_run(&mut ctx, &format!("token {TOKEN}\n"));
    match lc.after(&mut ctx) {
        Err(AttestError::Failed(msg)) => assert!(msg.contains("github-pat"), "{msg}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(findings(&ctx).as_array().unwrap().len(), 1);

    // Without findings it passes.
    let mut opts = AttestorOptions::default();
    opts.secretscan.fail_on_detection = true;
    let mut lc = Lifecycle::new(&["secretscan".into()], opts).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), vec![]);
    lc.before(&mut ctx).unwrap();
    push_command_run(&mut ctx, "all good\n");
    lc.after(&mut ctx).unwrap();
    assert_eq!(findings(&ctx), Value::Null);
}

#[test]
fn other_credential_formats() {
    let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
    let sc = SecretScanner::new(&[], &f, 3, &[HashAlg::Sha256]);
    let jwt_h =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let jwt_p = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#);
    let cases: Vec<(&str, String)> = vec![
        ("slack-bot-token", "xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx".to_string()),
        ("slack-webhook-url", "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX".to_string()),
        ("npm-access-token", "npm_abcdefghijklmnopqrstuvwxyz0123456789".to_string()),
        ("pypi-upload-token", format!("pypi-AgEIcHlwaS5vcmc{}", "Ab1_".repeat(15))),
        ("jwt", format!("{jwt_h}.{jwt_p}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")),
        ("gcp-service-account", r#"{"type": "service_account", "private_key_id": "0123456789abcdef0123456789abcdef01234567"}"#.to_string()),
        ("gcp-api-key", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q".to_string()),
        ("github-fine-grained-pat", format!("github_pat_{}", "A1b2C3d4E5".repeat(8) + "Zz")),
        ("generic-api-key", "api_key = \"q8Zr2Lx9Vt4Nw7Kp3Hs6\"".to_string()),
    ];
    for (rule, text) in cases {
        let got = sc.scan_text(&format!("line0\n{text}\n"), "attestation:x");
        assert!(
            got.iter().any(|g| g.rule_id == rule && g.start_line == 1),
            "{rule}: {got:#?}"
        );
    }
}

/// `x=%2525…2541`: `n` nested percent-encodings of `A` (each layer of URL
/// decoding removes one `25`), the input of security review #2.
fn nested_percent(n: usize) -> String {
    format!("x=%{}41", "25".repeat(n))
}

#[test]
fn deep_decode_depth_is_rejected_by_the_bounds() {
    for n in [2000, 5000] {
        let opts = AttestorOptions {
            secretscan: cilock_evidence::attestors::secretscan::SecretScanOptions {
                max_decode_layers: 100_000,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Lifecycle::new(&["secretscan".into()], opts).unwrap_err();
        assert!(
            matches!(&e, AttestError::Invalid(m) if m.contains("secretscan.max_decode_layers") && m.contains("limit of 8")),
            "{n}: {e}"
        );
    }
}

#[test]
fn nested_encodings_are_scanned_iteratively_within_the_hard_cap() {
    // A scanner built directly with a huge depth still stops at the hard
    // cap, and the scan uses no recursion: it runs on a 256 KiB stack (the
    // recursive scan overflowed 2 MiB at depth 2 000).
    let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
    for n in [2000usize, 5000] {
        for layers in [
            100_000usize,
            cilock_evidence::attestors::bounds::MAX_DECODE_LAYERS,
        ] {
            let f = f.clone();
            let got = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let s = SecretScanner::new(&[], &f, layers, &[HashAlg::Sha256]);
                    s.scan_text(&nested_percent(n), "attestation:command-run")
                })
                .unwrap()
                .join()
                .expect("the scan must not overflow its stack");
            assert!(got.is_empty(), "{got:?}");
        }
    }
    // A secret under more layers than the cap is not reached; under the cap
    // it is, with its whole encoding path.
    let s = SecretScanner::new(&[], &f, 100_000, &[HashAlg::Sha256]);
    let mut text = TOKEN.to_string();
    for _ in 0..3 {
        text = b64(&text);
    }
    let got = s.scan_text(&format!("blob={text}"), "attestation:t");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].encoding_path, vec!["base64"; 3]);
    let mut text = TOKEN.to_string();
    for _ in 0..9 {
        text = b64(&text);
    }
    assert!(s
        .scan_text(&format!("blob={text}"), "attestation:t")
        .is_empty());
}

#[test]
fn deep_decode_through_the_lifecycle_at_the_maximum_depth() {
    // The review's reproduction, with the largest depth the bounds allow:
    // the step ends normally.
    let tmp = tempfile::tempdir().unwrap();
    let opts = AttestorOptions {
        secretscan: cilock_evidence::attestors::secretscan::SecretScanOptions {
            max_decode_layers: cilock_evidence::attestors::bounds::MAX_DECODE_LAYERS,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut lc = Lifecycle::new(&["secretscan".into()], opts).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), vec![]);
    lc.before(&mut ctx).unwrap();
    push_command_run(
        &mut ctx,
        &format!("{}\n{}", nested_percent(2000), nested_percent(5000)),
    );
    lc.after(&mut ctx).unwrap();
    assert_eq!(findings(&ctx), Value::Null);
}

#[test]
fn products_are_scanned_through_the_workdir_descriptor() {
    // The workdir is opened at begin (O_PATH, as the daemon does); swapping
    // the path for a link to a root-only directory before the end changes
    // nothing: products and secretscan read the original tree.
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let rootonly = tmp.path().join("rootonly");
    std::fs::create_dir(&ws).unwrap();
    std::fs::create_dir(&rootonly).unwrap();
    std::fs::write(ws.join("m.txt"), "material\n").unwrap();
    std::fs::write(
        rootonly.join("secret.txt"),
        format!("token={TOKEN}\naws={AWS_ID}\n"),
    )
    .unwrap();
    std::fs::write(
        rootonly.join("kv.env"),
        "DB_PASSWORD=SuperSecret-RootOnly-123\n",
    )
    .unwrap();
    std::fs::set_permissions(&rootonly, std::fs::Permissions::from_mode(0o700)).unwrap();
    let fd: OwnedFd = nix::fcntl::open(
        &ws,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut lc = Lifecycle::new(&["secretscan".into()], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), vec![]);
    ctx.workdir_fd = Some(std::sync::Arc::new(fd));
    lc.before(&mut ctx).unwrap();
    // The job writes a product holding a token, then swaps the workdir.
    std::fs::write(ws.join("out.txt"), format!("built with {AWS_ID}\n")).unwrap();
    std::fs::rename(&ws, tmp.path().join("ws.orig")).unwrap();
    std::os::unix::fs::symlink(&rootonly, &ws).unwrap();
    push_command_run(&mut ctx, "done");
    lc.after(&mut ctx).unwrap();
    let product = ctx.completed.iter().find(|c| c.name == "product").unwrap();
    let names: Vec<&String> = product.json.as_object().unwrap().keys().collect();
    assert_eq!(names, vec!["out.txt"]);
    let f = findings(&ctx);
    let f = f.as_array().expect("the product's token is found");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["location"], "product:out.txt");
    assert_eq!(f[0]["ruleId"], "aws-access-token");
    let all = serde_json::to_string(&into_collection("swap", &ctx).0).unwrap();
    for leaked in ["kv.env", "secret.txt", "SuperSecret", TOKEN] {
        assert!(!all.contains(leaked), "{leaked} reached the collection");
    }
}
