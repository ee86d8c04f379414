//! Issue #17: attestors chosen by what the trace sees. A traced step runs
//! the real `ruff` (SARIF report) and `cyclonedx-py` (CycloneDX SBOM) from
//! PyPI; with `-a sbom,sarif` and without `-a`, through the daemon and the
//! embedded engine, the signed envelope holds the sbom and sarif
//! attestations and `trace.selectedAttestors` says why; with
//! `--no-auto-attestors` they are absent. Then `cilock verify` with the
//! example Rego gates on an SBOM component and a SARIF error count.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cilock_testkit::cli::{p, sign_policy, text};
use cilock_testkit::pytools;
use cilock_testkit::*;
use serde_json::json;

const CYCLONEDX_TYPE: &str = "https://cyclonedx.org/bom";
const SARIF_TYPE: &str = "https://witness.dev/attestations/sarif/v0.1";
const BASE_TYPES: [&str; 3] = [
    "https://witness.dev/attestations/command-run/v0.1",
    "https://witness.dev/attestations/material/v0.1",
    "https://witness.dev/attestations/product/v0.1",
];

/// Three ruff findings, all error level by ruff's SARIF: F401 twice (`os`,
/// `sys` unused), F841 once (`y` unused).
const PY: &str = "import os\nimport sys\n\n\ndef f():\n    y = 1\n";
const REQUIREMENTS: &str = "requests==2.31.0\nurllib3==2.2.1\n";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// `-a sbom,sarif`.
    Requested,
    /// No `-a`: the trace selects them.
    Auto,
    /// No `-a`, `--no-auto-attestors`.
    NoAuto,
}

impl Mode {
    fn args(self) -> Vec<&'static str> {
        match self {
            Mode::Requested => vec!["-a", "sbom,sarif"],
            Mode::Auto => vec![],
            Mode::NoAuto => vec!["--no-auto-attestors"],
        }
    }
}

fn script() -> String {
    format!(
        "{} check --exit-zero --output-format sarif -o ruff.sarif x.py && \
         {} requirements requirements.txt --of JSON -o bom.json",
        pytools::tool("ruff").display(),
        pytools::tool("cyclonedx-py").display()
    )
}

fn workdir() -> tempfile::TempDir {
    let w = tempdir();
    std::fs::write(w.path().join("x.py"), PY).unwrap();
    std::fs::write(w.path().join("requirements.txt"), REQUIREMENTS).unwrap();
    w
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", text(out));
}

fn run_embedded(dir: &Path, key: &Path, mode: Mode) -> PathBuf {
    let att = dir.join(format!("{mode:?}.att.json"));
    let out = Command::new(bin("cilock"))
        .args(["run", "--no-daemon", "-k", p(key), "-s", "lint"])
        .args(mode.args())
        .args(["-o", p(&att), "--", "sh", "-c", &script()])
        .env("CILOCK_SOCKET", dir.join("none.sock"))
        .current_dir(dir)
        .output()
        .unwrap();
    ok(&out, "cilock run --no-daemon");
    att
}

fn run_daemon(d: &Daemon, dir: &Path, mode: Mode) -> PathBuf {
    let att = dir.join(format!("{mode:?}.att.json"));
    let out = d
        .command()
        .args(["run", "-s", "lint"])
        .args(mode.args())
        .args(["-o", p(&att), "--", "sh", "-c", &script()])
        .current_dir(dir)
        .output()
        .unwrap();
    ok(&out, "cilock run (daemon)");
    att
}

/// The attestation types of a collection statement, sorted.
fn sorted_types(stmt: &serde_json::Value) -> Vec<&str> {
    let mut types: Vec<&str> = stmt["predicate"]["attestations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    types.sort();
    types
}

/// Checks the envelope of one run: signature (independent check), exact
/// attestation types, what sbom and sarif recorded, and why they ran.
fn check(att: &Path, pubkey: &Path, mode: Mode, how: &str) {
    verify_with_python(att, pubkey);
    let stmt = statement(att);
    let types = sorted_types(&stmt);
    let mut want: Vec<&str> = BASE_TYPES.to_vec();
    if mode != Mode::NoAuto {
        want.extend([CYCLONEDX_TYPE, SARIF_TYPE]);
    }
    want.sort();
    assert_eq!(types, want, "{how} {mode:?}");
    let cr = attestation(&stmt, "/command-run/v0.1");
    assert!(
        cr["trace"].get("skippedAttestors").is_none(),
        "{how} {mode:?}: {}",
        cr["trace"]
    );
    let selected = cr["trace"].get("selectedAttestors").cloned();
    match mode {
        Mode::NoAuto => assert!(selected.is_none(), "{how}: {selected:?}"),
        Mode::Requested => assert_eq!(
            selected,
            Some(json!([
                {"name": "sbom", "reason": "requested"},
                {"name": "sarif", "reason": "requested"},
            ])),
            "{how}"
        ),
        Mode::Auto => assert_eq!(
            selected,
            Some(json!([
                {"name": "sbom", "reason": format!(
                    "the trace ran `{}` (catalogue: cyclonedx-py → sbom)",
                    pytools::tool("cyclonedx-py").display())},
                {"name": "sarif", "reason": format!(
                    "the trace ran `{}` (catalogue: ruff → sarif)",
                    pytools::tool("ruff").display())},
            ])),
            "{how}"
        ),
    }
    if mode == Mode::NoAuto {
        return;
    }
    let product = attestation(&stmt, "/product/v0.1");
    let sarif = attestation(&stmt, "/sarif/v0.1");
    assert_eq!(sarif["reportFileName"], "ruff.sarif", "{how} {mode:?}");
    assert_eq!(
        sarif["reportDigestSet"], product["ruff.sarif"]["digest"],
        "{how} {mode:?}"
    );
    assert_eq!(
        sarif["summary"],
        json!({"tools": ["ruff"], "results": 3,
               "levels": {"error": 3, "warning": 0, "note": 0, "none": 0},
               "ruleIds": ["F401", "F841"]}),
        "{how} {mode:?}"
    );
    assert_eq!(
        sarif["report"]["runs"][0]["results"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let sbom = attestation(&stmt, "cyclonedx.org/bom");
    assert_eq!(sbom["bomFormat"], "CycloneDX", "{how} {mode:?}");
    let comps: Vec<(&str, &str)> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        comps,
        [("requests", "2.31.0"), ("urllib3", "2.2.1")],
        "{how} {mode:?}"
    );
}

#[test]
fn embedded_engine_attests_what_the_tools_wrote_with_and_without_a() {
    for mode in [Mode::Requested, Mode::Auto, Mode::NoAuto] {
        let w = workdir();
        let (key, pubkey) = keygen(w.path());
        let att = run_embedded(w.path(), &key, mode);
        check(&att, &pubkey, mode, "embedded");
    }
}

#[test]
fn daemon_attests_what_the_tools_wrote_with_and_without_a() {
    let d = Daemon::start("ebpf");
    for mode in [Mode::Requested, Mode::Auto, Mode::NoAuto] {
        let w = workdir();
        let att = run_daemon(&d, w.path(), mode);
        check(&att, &d.pubkey, mode, "daemon");
    }
}

fn example(name: &str) -> String {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policies")
        .join(name);
    std::fs::read_to_string(f).unwrap()
}

/// The example module with the line starting `name :=` replaced.
fn with_setting(module: &str, name: &str, value: &str) -> String {
    let prefix = format!("{name} := ");
    let n = module.lines().filter(|l| l.starts_with(&prefix)).count();
    assert_eq!(n, 1, "{name} in the example");
    module
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{prefix}{value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn verify(dir: &Path, signer: &Path, att: &Path, sbom_rego: &str, sarif_rego: &str) -> Output {
    let pem = std::fs::read(signer).unwrap();
    let keyid = cilock_evidence::keys::key_id_of_public_pem(&pem).unwrap();
    let b64 = |s: &[u8]| cilock_testkit::cli::b64(s);
    let doc = json!({
        "expires": "2099-01-01T00:00:00Z",
        "publickeys": { keyid.clone(): { "keyid": keyid, "key": b64(&pem) } },
        "steps": { "lint": {
            "name": "lint",
            "functionaries": [{ "type": "publickey", "publickeyid": keyid }],
            "attestations": [
                {"type": CYCLONEDX_TYPE, "regopolicies": [
                    {"name": "sbom-components", "module": b64(sbom_rego.as_bytes())}]},
                {"type": SARIF_TYPE, "regopolicies": [
                    {"name": "sarif-max-errors", "module": b64(sarif_rego.as_bytes())}]},
            ],
        }},
    });
    let pk = dir.join("policy-keys");
    let (pkey, ppub) = if pk.exists() {
        (pk.join("signing-key.pem"), pk.join("signing-key.pem.pub"))
    } else {
        std::fs::create_dir_all(&pk).unwrap();
        keygen(&pk)
    };
    let signed = dir.join("policy.signed.json");
    sign_policy(
        |a| Command::new(bin("cilock")).args(a).output().unwrap(),
        &doc,
        &pkey,
        &dir.join("policy.json"),
        &signed,
    );
    Command::new(bin("cilock"))
        .args(["verify", "-p", p(&signed), "-k", p(&ppub), "-a", p(att)])
        .args(["-f", p(&dir.join("ruff.sarif"))])
        .output()
        .unwrap()
}

#[test]
fn rego_gates_on_an_sbom_component_and_a_sarif_error_count() {
    let w = workdir();
    let dir = w.path();
    let (key, pubkey) = keygen(dir);
    let att = run_embedded(dir, &key, Mode::Auto);
    let sbom = example("sbom-components.rego");
    let sarif = example("sarif-max-errors.rego");
    let sbom_ok = with_setting(
        &with_setting(&sbom, "required_components", r#"{"requests"}"#),
        "denied_components",
        r#"{"event-stream", "flatmap-stream"}"#,
    );
    let sbom_denied = with_setting(&sbom, "denied_components", r#"{"urllib3"}"#);
    let sbom_missing = with_setting(&sbom, "required_components", r#"{"flask"}"#);
    let sarif_ok = with_setting(&sarif, "max_errors", "3");
    let sarif_denied = with_setting(&sarif, "max_errors", "2");

    let out = verify(dir, &pubkey, &att, &sbom_ok, &sarif_ok);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    for (sb, sa, code, msgs) in [
        (
            &sbom_denied,
            &sarif_ok,
            1,
            vec!["The SBOM lists the denied component urllib3 2.2.1"],
        ),
        (
            &sbom_missing,
            &sarif_ok,
            1,
            vec!["The SBOM does not list the required component flask"],
        ),
        (
            &sbom_ok,
            &sarif_denied,
            1,
            vec![
                "The SARIF report ruff.sarif has 3 error-level results (at most 2 allowed); \
                 rules seen: F401, F841",
            ],
        ),
    ] {
        let out = verify(dir, &pubkey, &att, sb, sa);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(code), "{t}");
        for m in msgs {
            assert!(t.contains(m), "missing {m:?} in: {t}");
        }
    }

    // Without the attestations (--no-auto-attestors) the gate cannot pass.
    let w2 = workdir();
    let (key2, pubkey2) = keygen(w2.path());
    let bare = run_embedded(w2.path(), &key2, Mode::NoAuto);
    let out = verify(w2.path(), &pubkey2, &bare, &sbom_ok, &sarif_ok);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

const TOKEN: &str = "ghp_R4nd0mT0k3nV4lu3Th4tL00ksR34lEnough1";

fn run_script(d: Option<&Daemon>, dir: &Path, args: &[&str], script: &str) -> (PathBuf, PathBuf) {
    let att = dir.join("s.att.json");
    let (mut cmd, pubkey) = match d {
        Some(d) => (d.command(), d.pubkey.clone()),
        None => {
            let (key, pubkey) = keygen(dir);
            let mut c = Command::new(bin("cilock"));
            c.args(["run", "--no-daemon", "-k", p(&key)])
                .env("CILOCK_SOCKET", dir.join("none.sock"));
            (c, pubkey)
        }
    };
    if d.is_some() {
        cmd.arg("run");
    }
    let out = cmd
        .args(["-s", "lint"])
        .args(args)
        .args(["-o", p(&att), "--", "sh", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    ok(&out, "cilock run");
    (att, pubkey)
}

/// secretscan runs after the attestors the trace selected and masks what
/// they recorded: ruff's SARIF message quotes a variable named like a
/// GitHub token.
#[test]
fn secretscan_masks_what_a_trace_selected_attestor_recorded() {
    let d = Daemon::start("ebpf");
    for daemon in [None, Some(&d)] {
        let w = tempdir();
        std::fs::write(
            w.path().join("s.py"),
            format!("def f():\n    {TOKEN} = 1\n"),
        )
        .unwrap();
        let script = format!(
            "{} check --exit-zero --output-format sarif -o s.sarif s.py",
            pytools::tool("ruff").display()
        );
        let (att, pubkey) = run_script(daemon, w.path(), &["-a", "secretscan"], &script);
        let how = if daemon.is_some() {
            "daemon"
        } else {
            "embedded"
        };
        assert!(
            std::fs::read_to_string(w.path().join("s.sarif"))
                .unwrap()
                .contains(TOKEN),
            "the report itself quotes the token"
        );
        verify_with_python(&att, &pubkey);
        let stmt = statement(&att);
        let all = serde_json::to_string(&stmt).unwrap();
        assert!(!all.contains(TOKEN), "{how}: the token is in clear");
        let sarif = attestation(&stmt, "/sarif/v0.1");
        assert_eq!(sarif["reportFileName"], "s.sarif", "{how}");
        assert_eq!(sarif["summary"]["ruleIds"], json!(["F841"]), "{how}");
        let findings = attestation(&stmt, "/secretscan/v0.1")["findings"]
            .as_array()
            .unwrap()
            .clone();
        assert!(
            findings
                .iter()
                .any(|f| f["ruleId"] == "github-pat" && f["location"] == "attestation:sarif"),
            "{how}: {findings:?}"
        );
        let cr = attestation(&stmt, "/command-run/v0.1");
        assert_eq!(
            cr["trace"]["selectedAttestors"],
            json!([{"name": "sarif", "reason": format!(
                "the trace ran `{}` (catalogue: ruff → sarif)",
                pytools::tool("ruff").display())}]),
            "{how}"
        );
    }
}

/// A tool the trace saw that wrote nothing an attestor reads: the attestor
/// is listed as skipped with both reasons, and the step is still signed.
#[test]
fn a_selected_attestor_with_nothing_to_read_is_listed_as_skipped() {
    let d = Daemon::start("ebpf");
    for daemon in [None, Some(&d)] {
        let w = workdir();
        let script = format!(
            "{} check --exit-zero x.py > ruff.txt",
            pytools::tool("ruff").display()
        );
        let (att, pubkey) = run_script(daemon, w.path(), &[], &script);
        let how = if daemon.is_some() {
            "daemon"
        } else {
            "embedded"
        };
        verify_with_python(&att, &pubkey);
        let stmt = statement(&att);
        let types = sorted_types(&stmt);
        assert_eq!(types, BASE_TYPES, "{how}");
        let cr = attestation(&stmt, "/command-run/v0.1");
        assert!(cr["trace"].get("selectedAttestors").is_none(), "{how}");
        let skipped = cr["trace"]["skippedAttestors"].as_array().unwrap();
        assert_eq!(skipped.len(), 1, "{how}: {skipped:?}");
        assert_eq!(skipped[0]["name"], "sarif");
        let reason = skipped[0]["reason"].as_str().unwrap();
        assert!(
            reason.ends_with(&format!(
                "(the trace ran `{}` (catalogue: ruff → sarif))",
                pytools::tool("ruff").display()
            )),
            "{how}: {reason}"
        );
    }
}

/// lockfiles: requested (`-a`, before the step, in the daemon's "before"
/// helper run) and selected by the trace because a package manager ran
/// (the real `cargo`, after the step), through the daemon and embedded.
#[test]
fn lockfiles_requested_or_selected_by_a_package_manager() {
    let d = Daemon::start("ebpf");
    let cargo = env!("CARGO");
    let lock = "# a lockfile\nversion = 3\n";
    for daemon in [None, Some(&d)] {
        let how = if daemon.is_some() {
            "daemon"
        } else {
            "embedded"
        };
        for requested in [true, false] {
            let w = tempdir();
            std::fs::write(w.path().join("Cargo.lock"), lock).unwrap();
            let script = if requested {
                "echo no package manager".to_string()
            } else {
                format!("{cargo} --version")
            };
            let args: &[&str] = if requested { &["-a", "lockfiles"] } else { &[] };
            let (att, pubkey) = run_script(daemon, w.path(), args, &script);
            verify_with_python(&att, &pubkey);
            let stmt = statement(&att);
            let lf = attestation(&stmt, "/lockfiles/v0.1");
            assert_eq!(
                lf["lockfiles"],
                json!([{"filename": "Cargo.lock", "content": lock,
                        "digest": {"sha256": sha256_hex(lock.as_bytes())}}]),
                "{how} requested={requested}"
            );
            let cr = attestation(&stmt, "/command-run/v0.1");
            assert!(cr["trace"].get("skippedAttestors").is_none(), "{how}");
            let sel = cr["trace"]["selectedAttestors"].as_array().unwrap();
            assert_eq!(sel.len(), 1, "{how}: {sel:?}");
            assert_eq!(sel[0]["name"], "lockfiles");
            let reason = sel[0]["reason"].as_str().unwrap();
            if requested {
                assert_eq!(reason, "requested", "{how}");
            } else {
                assert!(
                    reason.starts_with("the trace ran `/")
                        && reason.ends_with("/cargo` (catalogue: cargo → lockfiles)"),
                    "{how}: {reason}"
                );
            }
        }
    }
}
