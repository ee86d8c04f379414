//! sbom and sarif over products made by the real tools (`cyclonedx-py`,
//! `ruff` from PyPI via `cilock_testkit::pytools`), through the lifecycle;
//! and their refusals: absent, malformed, too large, changed after the
//! product attestor hashed it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use cilock_evidence::attestors::filetree::PathFilter;
use cilock_evidence::attestors::lifecycle::{AttestorOptions, Lifecycle};
use cilock_evidence::attestors::product::ProductAttestor;
use cilock_evidence::attestors::sbom::SbomAttestor;
use cilock_evidence::attestors::{
    run_one, AttestError, AttestationContext, Attestor, CompletedAttestation,
};
use cilock_evidence::digest::{DigestSet, HashAlg};
use cilock_testkit::pytools;
use serde_json::{json, Value};

fn sha(data: &[u8]) -> String {
    DigestSet::from_bytes(data, &[HashAlg::Sha256])
        .get_sha256()
        .unwrap()
        .to_string()
}

fn push_command_run(ctx: &mut AttestationContext, cmd: &[&str], exitcode: i32) {
    ctx.completed.push(CompletedAttestation {
        name: "command-run".into(),
        type_uri: "https://witness.dev/attestations/command-run/v0.1".into(),
        json: json!({"cmd": cmd, "exitcode": exitcode}),
        subjects: BTreeMap::new(),
        backrefs: BTreeMap::new(),
        starttime: String::new(),
        endtime: String::new(),
    });
}

fn completed<'a>(ctx: &'a AttestationContext, name: &str) -> &'a CompletedAttestation {
    ctx.completed
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// Runs `tool args…` in `dir`; returns its exit code.
fn run_tool(dir: &Path, tool: &str, args: &[&str]) -> i32 {
    let out = Command::new(pytools::tool(tool))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some(),
        "{tool} killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.code().unwrap()
}

const BAD_PY: &str =
    "import os\nimport sys\n\n\ndef f(x):\n    if x == None:\n        return 1\n    l = 1\n";

/// One step with `names` requested in which cyclonedx-py writes bom.json
/// and ruff writes ruff.sarif.
fn step(names: &[&str]) -> (tempfile::TempDir, AttestationContext, Lifecycle) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    std::fs::write(
        ws.join("requirements.txt"),
        "requests==2.31.0\nurllib3==2.0.7\n",
    )
    .unwrap();
    std::fs::write(
        ws.join("pyproject.toml"),
        "[project]\nname = \"demo-app\"\nversion = \"0.4.2\"\n",
    )
    .unwrap();
    std::fs::write(ws.join("bad.py"), BAD_PY).unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut lc = Lifecycle::new(&names, AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.to_path_buf(), Vec::new());
    lc.before(&mut ctx).unwrap();
    let bom = [
        "requirements",
        "--pyproject",
        "pyproject.toml",
        "--of",
        "JSON",
        "-o",
        "bom.json",
        "requirements.txt",
    ];
    assert_eq!(run_tool(ws, "cyclonedx-py", &bom), 0);
    // ruff exits 1 when it finds violations.
    let lint = [
        "check",
        "--isolated",
        "--select",
        "F,E",
        "--output-format",
        "sarif",
        "-o",
        "ruff.sarif",
        "bad.py",
    ];
    assert_eq!(run_tool(ws, "ruff", &lint), 1);
    push_command_run(&mut ctx, &["cyclonedx-py"], 0);
    lc.after(&mut ctx).unwrap();
    (tmp, ctx, lc)
}

#[test]
fn cyclonedx_py_bom_and_ruff_sarif_are_attested() {
    let (tmp, ctx, lc) = step(&["sbom", "sarif"]);
    let products = &completed(&ctx, "product").json;
    assert_eq!(
        products["bom.json"]["mime_type"],
        "application/vnd.cyclonedx+json"
    );
    assert_eq!(
        products["ruff.sarif"]["mime_type"],
        "application/sarif+json"
    );
    assert!(lc.skipped().is_empty(), "{:?}", lc.skipped());

    let bom_bytes = std::fs::read(tmp.path().join("bom.json")).unwrap();
    let sbom = completed(&ctx, "sbom");
    assert_eq!(sbom.type_uri, "https://cyclonedx.org/bom");
    assert_eq!(sbom.json["bomFormat"], "CycloneDX");
    assert_eq!(sbom.json["specVersion"], "1.6");
    let comps: BTreeSet<(String, String)> = sbom.json["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["purl"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        comps,
        BTreeSet::from([
            ("requests".into(), "pkg:pypi/requests@2.31.0".into()),
            ("urllib3".into(), "pkg:pypi/urllib3@2.0.7".into()),
        ])
    );
    let subjects: BTreeMap<&str, Option<&str>> = sbom
        .subjects
        .iter()
        .map(|(k, v)| (k.as_str(), v.get_sha256()))
        .collect();
    let (bom_sha, name_sha, ver_sha) = (sha(&bom_bytes), sha(b"demo-app"), sha(b"0.4.2"));
    assert_eq!(
        subjects,
        BTreeMap::from([
            ("file:bom.json", Some(bom_sha.as_str())),
            ("name:demo-app", Some(name_sha.as_str())),
            ("version:0.4.2", Some(ver_sha.as_str())),
        ])
    );

    let sarif_bytes = std::fs::read(tmp.path().join("ruff.sarif")).unwrap();
    let sarif = completed(&ctx, "sarif");
    assert_eq!(
        sarif.type_uri,
        "https://witness.dev/attestations/sarif/v0.1"
    );
    assert_eq!(sarif.json["reportFileName"], "ruff.sarif");
    assert_eq!(
        sarif.json["reportDigestSet"],
        json!({"sha256": sha(&sarif_bytes)})
    );
    let report: Value = serde_json::from_slice(&sarif_bytes).unwrap();
    assert_eq!(sarif.json["report"], report);
    assert_eq!(
        sarif.json["summary"],
        json!({
            "tools": ["ruff"],
            "results": 5,
            "levels": {"error": 5, "warning": 0, "note": 0, "none": 0},
            "ruleIds": ["E711", "E741", "F401", "F841"],
        })
    );
    let keys: Vec<&String> = sarif.json.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["report", "reportDigestSet", "reportFileName", "summary"]
    );
}

#[test]
fn absent_inputs_are_skipped_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let names = vec!["sbom".to_string(), "sarif".to_string()];
    let mut lc = Lifecycle::new(&names, AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), Vec::new());
    lc.before(&mut ctx).unwrap();
    std::fs::write(tmp.path().join("out.json"), b"{\"a\": 1}").unwrap();
    push_command_run(&mut ctx, &["true"], 0);
    lc.after(&mut ctx).unwrap();
    let skipped: Vec<(&str, &str)> = lc
        .skipped()
        .iter()
        .map(|s| (s.name.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                "sbom",
                "sbom: none of the 1 products is an SPDX or CycloneDX JSON document"
            ),
            ("sarif", "sarif: none of the 1 products is a SARIF report"),
        ]
    );
    assert!(ctx
        .completed
        .iter()
        .all(|c| c.name != "sbom" && c.name != "sarif"));
}

/// The product attestor over `ws`, as after a step.
fn products_of(ws: &Path) -> AttestationContext {
    let mut ctx = AttestationContext::new(ws.to_path_buf(), Vec::new());
    run_one(
        &mut ctx,
        &mut ProductAttestor::new(PathFilter::new(&[], &[]).unwrap()),
    )
    .unwrap();
    ctx
}

fn invalid(r: Result<Value, AttestError>) -> String {
    match r {
        Err(AttestError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn tampered_truncated_and_huge_sboms_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    let args = [
        "requirements",
        "--of",
        "JSON",
        "-o",
        "bom.json",
        "requirements.txt",
    ];
    // Enough components that half the BOM is longer than the MIME sniff.
    std::fs::write(
        ws.join("requirements.txt"),
        "urllib3==2.0.7\nrequests==2.31.0\nidna==3.6\ncertifi==2024.2.2\nsix==1.16.0\n\
         PyYAML==6.0.1\nattrs==23.2.0\npackaging==24.0\n",
    )
    .unwrap();
    assert_eq!(run_tool(ws, "cyclonedx-py", &args), 0);
    let real = std::fs::read(ws.join("bom.json")).unwrap();

    // Changed after the product attestor hashed it: not described.
    let ctx = products_of(ws);
    let mut changed = real.clone();
    let at = changed.windows(7).position(|w| w == b"urllib3").unwrap();
    changed[at..at + 7].copy_from_slice(b"urllib4");
    std::fs::write(ws.join("bom.json"), &changed).unwrap();
    let mut a = SbomAttestor::new(&AttestorOptions::default()).unwrap();
    assert_eq!(
        invalid(a.attest(&ctx)),
        "sbom: bom.json: changed since the product attestor hashed it"
    );
    assert!(a.subjects().is_empty());

    // Cut short: its end (and so its markers) are gone, but a pretty BOM
    // starting with its markers is still detected and then fails to parse.
    assert!(real.len() / 2 > 3072, "{}", real.len());
    let mut cut = b"{\n  \"bomFormat\": \"CycloneDX\",\n  \"specVersion\": \"1.6\",\n".to_vec();
    cut.extend_from_slice(&real[1..real.len() / 2]);
    std::fs::write(ws.join("bom.json"), &cut).unwrap();
    let ctx = products_of(ws);
    let mut a = SbomAttestor::new(&AttestorOptions::default()).unwrap();
    let m = invalid(a.attest(&ctx));
    assert!(
        m.starts_with("sbom: bom.json: not a valid JSON document: "),
        "{m}"
    );

    // Larger than the bound (sparse: its head is a BOM's, the rest a hole).
    let f = std::fs::File::create(ws.join("bom.json")).unwrap();
    let mut head = b"{\"bomFormat\": \"CycloneDX\", \"pad\": \"".to_vec();
    head.resize(4096, b' ');
    std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
    f.set_len(cilock_evidence::attestors::sbom::MAX_SBOM_BYTES + 1)
        .unwrap();
    drop(f);
    let ctx = products_of(ws);
    assert_eq!(
        completed(&ctx, "product").json["bom.json"]["mime_type"],
        "application/vnd.cyclonedx+json"
    );
    let mut a = SbomAttestor::new(&AttestorOptions::default()).unwrap();
    assert_eq!(
        invalid(a.attest(&ctx)),
        "sbom: bom.json: 67108865 bytes, more than the 67108864-byte limit"
    );
}

#[test]
fn tampered_sarif_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    std::fs::write(ws.join("bad.py"), BAD_PY).unwrap();
    let lint = [
        "check",
        "--isolated",
        "--output-format",
        "sarif",
        "-o",
        "ruff.sarif",
        "bad.py",
    ];
    assert_eq!(run_tool(ws, "ruff", &lint), 1);
    let ctx = products_of(ws);
    std::fs::write(
        ws.join("ruff.sarif"),
        br#"{"version": "2.1.0", "runs": []}"#,
    )
    .unwrap();
    let mut a =
        cilock_evidence::attestors::sarif::SarifAttestor::new(&AttestorOptions::default()).unwrap();
    assert_eq!(
        invalid(a.attest(&ctx)),
        "sarif: ruff.sarif: changed since the product attestor hashed it"
    );
}
