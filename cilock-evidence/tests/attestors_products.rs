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
        "sbom: bom.json: 25165825 bytes, more than the 25165824-byte limit"
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

// ---- oci: a docker-archive tarball written by skopeo ----

/// A tar archive of `files` (name, content), as image layers are.
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Writes blob `data` into the OCI layout `dir`; returns its descriptor.
fn blob(dir: &Path, media_type: &str, data: &[u8]) -> Value {
    let hex = sha(data);
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
}

struct Image {
    /// The uncompressed layers, base first.
    layers: Vec<Vec<u8>>,
}

/// An OCI image layout in `dir` (tag `v1`) with a gzip layer and an
/// uncompressed one, made with the tar and gzip libraries.
fn oci_layout(dir: &Path) -> Image {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let l1 = layer_tar(&[("hello.txt", b"hello\n")]);
    let l2 = layer_tar(&[("etc/app.conf", b"port = 8080\n")]);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&l1)), format!("sha256:{}", sha(&l2))]},
    });
    let config = blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_string(&config).unwrap().as_bytes(),
    );
    let d1 = blob(
        dir,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gzip(&l1),
    );
    let d2 = blob(dir, "application/vnd.oci.image.layer.v1.tar", &l2);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [d1, d2],
    });
    let mut m = blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_string(&manifest).unwrap().as_bytes(),
    );
    m["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_string(&json!({"schemaVersion": 2, "manifests": [m]})).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    Image {
        layers: vec![l1, l2],
    }
}

/// `tar -xOf archive member` (GNU tar: an implementation other than the
/// attestor's).
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn skopeo_save(layout: &Path, archive: &Path, tag: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker-archive:{}:{tag}", archive.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn docker_archive_from_skopeo_is_attested() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let image = oci_layout(&tmp.path().join("layout"));
    let mut lc = Lifecycle::new(&["oci".into()], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), Vec::new());
    lc.before(&mut ctx).unwrap();
    std::fs::write(ws.join("a-plain.tar"), layer_tar(&[("x", b"not an image")])).unwrap();
    skopeo_save(
        &tmp.path().join("layout"),
        &ws.join("image.tar"),
        "demo/app:v1",
    );
    push_command_run(&mut ctx, &["skopeo", "copy"], 0);
    lc.after(&mut ctx).unwrap();
    assert!(lc.skipped().is_empty(), "{:?}", lc.skipped());

    let archive = ws.join("image.tar");
    let tar_sha = sha(&std::fs::read(&archive).unwrap());
    let manifest_raw = tar_member(&archive, "manifest.json");
    let manifest: Value = serde_json::from_slice(&manifest_raw).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let config_sha = sha(&tar_member(&archive, config_name));
    let (l1, l2) = (sha(&image.layers[0]), sha(&image.layers[1]));

    let oci = completed(&ctx, "oci");
    assert_eq!(oci.type_uri, "https://witness.dev/attestations/oci/v0.1");
    let v = &oci.json;
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "diffids",
            "imageid",
            "imagetags",
            "manifest",
            "manifestdigest",
            "manifestraw",
            "tardigest"
        ]
    );
    assert_eq!(v["tardigest"], json!({"sha256": tar_sha}));
    assert_eq!(v["manifestdigest"], json!({"sha256": sha(&manifest_raw)}));
    use base64::Engine as _;
    assert_eq!(
        v["manifestraw"],
        base64::engine::general_purpose::STANDARD.encode(&manifest_raw)
    );
    assert_eq!(v["imageid"], json!({"sha256": config_sha}));
    assert_eq!(v["diffids"], json!([{"sha256": l1}, {"sha256": l2}]));
    let tags = manifest[0]["RepoTags"].clone();
    assert_eq!(v["imagetags"], tags);
    assert_eq!(v["manifest"][0]["Config"], config_name);
    assert_eq!(v["manifest"][0]["Layers"], manifest[0]["Layers"]);

    let tag = tags[0].as_str().unwrap();
    assert!(tag.ends_with("demo/app:v1"), "{tag}");
    let want: BTreeSet<String> = [
        format!("tardigest:{tar_sha}"),
        format!("manifestdigest:{}", sha(&manifest_raw)),
        format!("imageid:{config_sha}"),
        format!("imagetag:{tag}"),
        format!("layerdiffid00:{l1}"),
        format!("layerdiffid01:{l2}"),
    ]
    .into();
    assert_eq!(oci.subjects.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(
        oci.subjects[&format!("imagetag:{tag}")].get_sha256(),
        Some(sha(tag.as_bytes()).as_str())
    );
}

#[test]
fn oci_refuses_tampered_and_malformed_tarballs() {
    use cilock_evidence::attestors::oci::OciAttestor;
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    oci_layout(&tmp.path().join("layout"));
    skopeo_save(
        &tmp.path().join("layout"),
        &ws.join("image.tar"),
        "demo/app:v1",
    );
    let new = || OciAttestor::new(&AttestorOptions::default()).unwrap();

    // Changed after the product attestor hashed it.
    let ctx = products_of(&ws);
    let mut bytes = std::fs::read(ws.join("image.tar")).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(ws.join("image.tar"), &bytes).unwrap();
    assert_eq!(
        invalid(new().attest(&ctx)),
        "oci: image.tar: changed since the product attestor hashed it"
    );

    // A tar header, then garbage.
    let mut bad = layer_tar(&[("manifest.json", b"[]")]);
    bad.truncate(512);
    bad.extend(std::iter::repeat_n(0x41u8, 2048));
    std::fs::write(ws.join("image.tar"), &bad).unwrap();
    let ctx = products_of(&ws);
    assert_eq!(
        completed(&ctx, "product").json["image.tar"]["mime_type"],
        "application/x-tar"
    );
    let m = invalid(new().attest(&ctx));
    assert!(m.starts_with("oci: image.tar: "), "{m}");

    // A manifest naming a layer that is not there.
    let t = layer_tar(&[
        (
            "manifest.json",
            br#"[{"Config": "c.json", "RepoTags": null, "Layers": ["l.tar"]}]"#,
        ),
        ("c.json", b"{}"),
    ]);
    std::fs::write(ws.join("image.tar"), &t).unwrap();
    let ctx = products_of(&ws);
    assert_eq!(
        invalid(new().attest(&ctx)),
        "oci: image.tar: no layer entry \"l.tar\""
    );

    // A tar without manifest.json is not an image.
    std::fs::write(ws.join("image.tar"), layer_tar(&[("x", b"y")])).unwrap();
    let ctx = products_of(&ws);
    match new().attest(&ctx) {
        Err(AttestError::Absent(m)) => assert_eq!(
            m,
            "oci: none of the 1 products is a docker save tarball (1 tar files, none with a manifest.json)"
        ),
        other => panic!("{other:?}"),
    }
}

/// One step whose product is `name` written by `make`; the oci attestation.
fn oci_step(ws: &Path, make: impl FnOnce(&Path)) -> CompletedAttestation {
    let mut lc = Lifecycle::new(&["oci".into()], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.to_path_buf(), Vec::new());
    lc.before(&mut ctx).unwrap();
    make(ws);
    push_command_run(&mut ctx, &["save"], 0);
    lc.after(&mut ctx).unwrap();
    assert!(lc.skipped().is_empty(), "{:?}", lc.skipped());
    completed(&ctx, "oci").clone()
}

#[test]
fn legacy_archive_with_a_gzip_layer_behind_a_link() {
    // docker load accepts gzip layers; the legacy layout names each layer
    // `<id>/layer.tar`, here a symbolic link to the blob.
    let tmp = tempfile::tempdir().unwrap();
    let layer = layer_tar(&[("bin/tool", b"#!/bin/sh\necho hi\n")]);
    let gz = gzip(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
        sha(&layer)
    );
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["r.example/tool:1","r.example/tool:latest"],"Layers":["abc/layer.tar"]}]"#;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("blob.tar.gz", &gz);
    add("cfg.json", config.as_bytes());
    add("manifest.json", manifest);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "abc/layer.tar", "../blob.tar.gz")
        .unwrap();
    let archive = b.into_inner().unwrap();
    let oci = oci_step(tmp.path(), |ws| {
        std::fs::write(ws.join("tool-image.tar"), &archive).unwrap()
    });
    assert_eq!(oci.json["diffids"], json!([{"sha256": sha(&layer)}]));
    assert_eq!(
        oci.json["imageid"],
        json!({"sha256": sha(config.as_bytes())})
    );
    assert_eq!(
        oci.json["imagetags"],
        json!(["r.example/tool:1", "r.example/tool:latest"])
    );
    assert_eq!(
        oci.subjects.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            format!("tardigest:{}", sha(&archive)),
            format!("manifestdigest:{}", sha(manifest)),
            format!("imageid:{}", sha(config.as_bytes())),
            "imagetag:r.example/tool:1".to_string(),
            "imagetag:r.example/tool:latest".to_string(),
            format!("layerdiffid00:{}", sha(&layer)),
        ])
    );

    // The config's diff ids disagree with the layers: refused.
    let ws2 = tmp.path().join("two");
    std::fs::create_dir(&ws2).unwrap();
    let wrong = config.replace(&sha(&layer), &sha(b"other"));
    let t = {
        let mut b = tar::Builder::new(Vec::new());
        for (n, d) in [
            ("l.tar", layer.as_slice()),
            ("cfg.json", wrong.as_bytes()),
            (
                "manifest.json",
                br#"[{"Config":"cfg.json","RepoTags":[],"Layers":["l.tar"]}]"#.as_slice(),
            ),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(d.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, n, d).unwrap();
        }
        b.into_inner().unwrap()
    };
    std::fs::write(ws2.join("image.tar"), &t).unwrap();
    let ctx = products_of(&ws2);
    let mut a =
        cilock_evidence::attestors::oci::OciAttestor::new(&AttestorOptions::default()).unwrap();
    let m = invalid(a.attest(&ctx));
    assert!(
        m.starts_with("oci: image.tar: the layers' diff ids [\"sha256:"),
        "{m}"
    );
    assert!(m.contains("are not the config's rootfs.diff_ids"), "{m}");
}

#[test]
fn docker_save_of_a_real_engine_is_attested() {
    use cilock_testkit::docker::{Dockerd, BUSYBOX_IMAGE};
    let (d, image_id) = Dockerd::with_busybox();
    let layers = d.inspect(BUSYBOX_IMAGE, "{{json .RootFS.Layers}}");
    let layers: Vec<String> = serde_json::from_str(&layers).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let oci = oci_step(tmp.path(), |ws| {
        d.run(&[
            "save",
            "-o",
            ws.join("bb.tar").to_str().unwrap(),
            BUSYBOX_IMAGE,
        ]);
    });
    assert_eq!(
        format!("sha256:{}", oci.json["imageid"]["sha256"].as_str().unwrap()),
        image_id
    );
    assert_eq!(oci.json["imagetags"], json!([BUSYBOX_IMAGE]));
    let got: Vec<String> = oci.json["diffids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("sha256:{}", d["sha256"].as_str().unwrap()))
        .collect();
    assert_eq!(got, layers);
    assert!(oci
        .subjects
        .contains_key(&format!("imagetag:{BUSYBOX_IMAGE}")));
    assert!(oci.subjects.contains_key(&format!(
        "imageid:{}",
        image_id.trim_start_matches("sha256:")
    )));
}

// ---- link ----

/// Parses `link` as the in-toto-attestation package's Link v0 message and
/// validates each material as a ResourceDescriptor; fails unless what the
/// package reads back equals `link` (Struct numbers are doubles: Python
/// compares 0 and 0.0 equal).
fn python_link(link: &Value) {
    let script = r#"
import json, sys
from google.protobuf import json_format
from in_toto_attestation.predicates.link.v0 import link_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
d = json.load(sys.stdin)
m = json_format.ParseDict(d, link_pb2.Link())
for rd in m.materials:
    ResourceDescriptor.copy_from_pb(rd).validate()
back = json_format.MessageToDict(m)
assert back == d, (back, d)
print(len(m.materials), m.name)
"#;
    let mut child = Command::new(pytools::tool("python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(link.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "in-toto-attestation refused the link: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let n = link["materials"].as_array().map_or(0, Vec::len);
    let name = link["name"].as_str().unwrap_or("");
    assert_eq!(said.trim(), format!("{n} {name}"));
}

#[test]
fn link_predicate_parses_with_the_in_toto_bindings() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    std::fs::write(ws.join("main.c"), b"int main(void) { return 0; }\n").unwrap();
    std::fs::create_dir(ws.join("inc")).unwrap();
    std::fs::write(ws.join("inc/a.h"), b"#define A 1\n").unwrap();
    let names = vec!["environment".to_string(), "link".to_string()];
    let mut lc = Lifecycle::new(&names, AttestorOptions::default()).unwrap();
    let env = vec![
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
        ("CC".to_string(), "gcc".to_string()),
        ("API_TOKEN".to_string(), "s3cr3t".to_string()),
    ];
    let mut ctx = AttestationContext::new(ws.to_path_buf(), env);
    ctx.step = "compile".into();
    lc.before(&mut ctx).unwrap();
    std::fs::write(ws.join("app"), b"built\n").unwrap();
    ctx.completed.push(CompletedAttestation {
        name: "command-run".into(),
        type_uri: "https://witness.dev/attestations/command-run/v0.1".into(),
        json: json!({"cmd": ["cc", "-o", "app", "main.c"], "stdout": "", "stderr": "warning\n", "exitcode": 0}),
        subjects: BTreeMap::new(),
        backrefs: BTreeMap::new(),
        starttime: String::new(),
        endtime: String::new(),
    });
    lc.after(&mut ctx).unwrap();
    let link = completed(&ctx, "link");
    assert_eq!(link.type_uri, "https://in-toto.io/attestation/link/v0.3");
    let (h, c) = (
        sha(b"#define A 1\n"),
        sha(b"int main(void) { return 0; }\n"),
    );
    let want = json!({
        "name": "compile",
        "command": ["cc", "-o", "app", "main.c"],
        "materials": [
            {"name": "inc/a.h", "digest": {"sha256": h}},
            {"name": "main.c", "digest": {"sha256": c}},
        ],
        "byproducts": {"return-value": 0, "stdoutCaptured": false, "stderrCaptured": true},
        "environment": completed(&ctx, "environment").json["variables"].clone(),
    });
    assert_eq!(link.json, want);
    // What the environment attestor kept, the token not in clear.
    assert_eq!(link.json["environment"]["CC"], "gcc");
    assert!(!link.json.to_string().contains("s3cr3t"), "{}", link.json);
    assert_eq!(
        link.subjects.keys().cloned().collect::<Vec<_>>(),
        ["file:app"]
    );
    assert_eq!(
        link.subjects["file:app"].get_sha256(),
        Some(sha(b"built\n").as_str())
    );
    // The in-toto bindings read back exactly what was written.
    python_link(&link.json);
    // And refuse what is not a Link (the check can fail).
    let bad = json!({"name": "x", "products": []});
    let out = Command::new(pytools::tool("python"))
        .args([
            "-c",
            "import sys; from google.protobuf import json_format; \
             from in_toto_attestation.predicates.link.v0 import link_pb2; \
             json_format.Parse(sys.argv[1], link_pb2.Link())",
            &bad.to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
