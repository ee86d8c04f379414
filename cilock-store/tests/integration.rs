//! cilock-store against a real registry: Debian's `docker-registry`
//! (distribution 2.8.2, no referrers API: the referrers tag schema) on
//! loopback, read back by independent clients (`skopeo`, `curl`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cilock_evidence::dsse;
use cilock_evidence::intoto::{PAYLOAD_TYPE, STATEMENT_TYPE_V01};
use cilock_evidence::keys::{KeyAlgorithm, Signer};
use cilock_store::{
    FoundVia, IndexKind, Store, StoreError, StoreOptions, StoreUrl, SubjectDigest, ARTIFACT_TYPE,
    DSSE_MEDIA_TYPE, ENVELOPE_ANNOTATION,
};
use cilock_testkit::registry::{docker_config_with_auth, Registry};
use serde_json::{json, Value};

fn signer() -> Signer {
    Signer::generate(KeyAlgorithm::EcdsaP256).expect("key").0
}

/// A signed envelope of a Witness collection named `step` about `subjects`
/// (name → {alg: hex}).
fn envelope(signer: &Signer, step: &str, subjects: &[(&str, &[(&str, &str)])]) -> Vec<u8> {
    let subject: Vec<Value> = subjects
        .iter()
        .map(|(name, digests)| {
            let d: serde_json::Map<String, Value> = digests
                .iter()
                .map(|(a, h)| (a.to_string(), Value::from(*h)))
                .collect();
            json!({"name": name, "digest": d})
        })
        .collect();
    let statement = json!({
        "_type": STATEMENT_TYPE_V01,
        "subject": subject,
        "predicateType": cilock_evidence::collection::COLLECTION_TYPE,
        "predicate": {"name": step, "attestations": []},
    });
    dsse::sign(
        PAYLOAD_TYPE,
        serde_json::to_vec(&statement).unwrap(),
        signer,
    )
    .expect("sign")
    .to_json()
}

/// A signed envelope of step "build" about one file, `file:a` with the
/// sha256 `artifact`.
fn build_envelope(artifact: &str) -> Vec<u8> {
    envelope(&signer(), "build", &[("file:a", &[("sha256", artifact)])])
}

fn open(url: &str, docker_config: &Path) -> Store {
    Store::open(
        url.parse().expect("url"),
        StoreOptions {
            docker_config: Some(docker_config.to_path_buf()),
            timeout: Duration::from_secs(20),
            max_subjects: 16,
        },
    )
    .expect("open")
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// `skopeo inspect --raw` of `docker://ADDR/REPO:REF` (or `@digest`).
fn skopeo_raw(reg: &Registry, repo: &str, reference: &str) -> Vec<u8> {
    let sep = if reference.contains(':') { "@" } else { ":" };
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}{sep}{reference}", reg.addr))
        .output()
        .expect("skopeo (Debian package skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `curl` of a registry path (or absolute URL); (status, body).
fn curl(reg: &Registry, args: &[&str], path: &str) -> (u16, Vec<u8>) {
    let (status, body, _) = curl_with_headers(reg, args, path);
    (status, body)
}

/// `curl` of a registry path (or absolute URL); (status, body, headers).
fn curl_with_headers(reg: &Registry, args: &[&str], path: &str) -> (u16, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let headers = dir.path().join("headers");
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("http://{}{path}", reg.addr)
    };
    let out = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let status = String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("status");
    (
        status,
        std::fs::read(&body).unwrap_or_default(),
        std::fs::read_to_string(&headers).unwrap_or_default(),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const GIT_SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn push_then_discover_by_each_subject_and_read_back_independently() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let s = signer();
    let artifact = sha256_hex(b"the artifact");
    let env = envelope(
        &s,
        "build",
        &[
            (
                "file:app",
                &[("sha256", &artifact), ("gitoidSha256", "abc")],
            ),
            (
                "https://witness.dev/attestations/git/v0.1/commithash:x",
                &[("sha1", GIT_SHA1)],
            ),
        ],
    );
    let store = open(&reg.url("acme/evidence"), cfg.path());
    let report = rt().block_on(store.push(&env)).expect("push");
    let blob = format!("sha256:{}", sha256_hex(&env));
    assert_eq!(report.blob, blob);
    assert_eq!(report.url.to_string(), reg.url("acme/evidence"));
    let subjects: Vec<String> = report
        .referrers
        .iter()
        .map(|r| r.subject.to_string())
        .collect();
    assert_eq!(
        subjects,
        vec![format!("sha256:{artifact}"), format!("sha1:{GIT_SHA1}")]
    );
    assert!(report
        .referrers
        .iter()
        .all(|r| r.index == IndexKind::TagSchema));
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].subject, "file:app gitoidSha256:abc");

    for r in &report.referrers {
        let found = rt().block_on(store.discover(&r.subject)).expect("discover");
        assert_eq!(found.len(), 1, "{}", r.subject);
        assert_eq!(found[0].bytes, env);
        assert_eq!(found[0].blob, blob);
        assert_eq!(found[0].via, FoundVia::TagSchema);
        assert_eq!(
            found[0].source,
            format!("{}@{blob}", reg.url("acme/evidence"))
        );

        // skopeo reads the tag index: one entry, the referrer manifest, with its annotations.
        let tag = r.subject.tag();
        let index: Value =
            serde_json::from_slice(&skopeo_raw(&reg, "acme/evidence", &tag)).unwrap();
        assert_eq!(
            index["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(index["schemaVersion"], 2);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{index}");
        let e = &entries[0];
        assert_eq!(e["digest"], r.manifest.as_str());
        assert_eq!(e["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(e["artifactType"], ARTIFACT_TYPE);
        let ann = &e["annotations"];
        assert_eq!(
            ann["in-toto.io/predicate-type"],
            cilock_evidence::collection::COLLECTION_TYPE
        );
        assert_eq!(ann["dev.cilock.step"], "build");
        assert_eq!(ann["dev.cilock.keyids"], s.key_id());
        assert_eq!(ann[ENVELOPE_ANNOTATION], blob.as_str());
        let created = ann["org.opencontainers.image.created"].as_str().unwrap();
        cilock_evidence::timefmt::parse(created).expect("created is RFC 3339");

        // The referrer manifest as skopeo reads it by digest.
        let raw = skopeo_raw(&reg, "acme/evidence", &r.manifest);
        assert_eq!(format!("sha256:{}", sha256_hex(&raw)), r.manifest);
        assert_eq!(e["size"], raw.len());
        let m: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(m["artifactType"], ARTIFACT_TYPE);
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(m["config"]["size"], 2);
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);
        assert_eq!(m["layers"][0]["mediaType"], DSSE_MEDIA_TYPE);
        assert_eq!(m["layers"][0]["digest"], blob.as_str());
        assert_eq!(m["layers"][0]["size"], env.len());
        assert_eq!(m["subject"]["digest"], r.subject.to_string());
        assert_eq!(m["subject"]["mediaType"], "application/octet-stream");
        assert_eq!(m["subject"]["size"], 0);
        assert_eq!(&m["annotations"], ann);
    }
    // The envelope blob, by plain HTTP: byte for byte the signed file.
    let (status, body) = curl(&reg, &[], &format!("/v2/acme/evidence/blobs/{blob}"));
    assert_eq!(status, 200);
    assert_eq!(body, env);
    // Nothing for another subject.
    let other: SubjectDigest = sha256_hex(b"other").parse().unwrap();
    assert!(rt().block_on(store.discover(&other)).unwrap().is_empty());
}

#[test]
fn pushing_twice_is_idempotent() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let artifact = sha256_hex(b"idempotent");
    let env = build_envelope(&artifact);
    let store = open(&reg.url("r"), cfg.path());
    let first = rt().block_on(store.push(&env)).expect("push 1");
    let second = rt().block_on(store.push(&env)).expect("push 2");
    assert_eq!(first.referrers.len(), 1);
    assert_eq!(second.referrers.len(), 1);
    assert_eq!(first.referrers[0].manifest, second.referrers[0].manifest);
    let index: Value =
        serde_json::from_slice(&skopeo_raw(&reg, "r", &format!("sha256-{artifact}"))).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    let subject: SubjectDigest = artifact.parse().unwrap();
    assert_eq!(rt().block_on(store.discover(&subject)).unwrap().len(), 1);
}

#[test]
fn concurrent_pushes_for_one_subject_all_end_in_the_index() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let artifact = sha256_hex(b"shared subject");
    let url = reg.url("team/attestations");
    let n = 5;
    let envs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            envelope(
                &signer(),
                &format!("step{i}"),
                &[("file:a", &[("sha256", &artifact)])],
            )
        })
        .collect();
    let rt = rt();
    let reports = rt.block_on(async {
        let mut tasks = Vec::new();
        for env in envs.clone() {
            // One store each, as separate processes would have.
            let store = open(&url, cfg.path());
            tasks.push(tokio::spawn(async move { store.push(&env).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("join").expect("push"));
        }
        out
    });
    let index: Value = serde_json::from_slice(&skopeo_raw(
        &reg,
        "team/attestations",
        &format!("sha256-{artifact}"),
    ))
    .unwrap();
    let mut listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digest"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut pushed: Vec<&str> = reports
        .iter()
        .map(|r| r.referrers[0].manifest.as_str())
        .collect();
    pushed.sort();
    assert_eq!(listed, pushed);
    let store = open(&url, cfg.path());
    let found = rt
        .block_on(store.discover(&artifact.parse().unwrap()))
        .unwrap();
    let mut got: Vec<Vec<u8>> = found.into_iter().map(|f| f.bytes).collect();
    let mut want = envs;
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_tampered_blob_fails_discovery_with_an_integrity_error() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let artifact = sha256_hex(b"tamper");
    let env = build_envelope(&artifact);
    let store = open(&reg.url("r"), cfg.path());
    let report = rt().block_on(store.push(&env)).expect("push");
    let path = reg.blob_path("r", &report.blob);
    let mut data = std::fs::read(&path).expect("blob data file");
    assert_eq!(data, env);
    // Same length, one byte changed.
    let i = data.len() / 2;
    data[i] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let err = rt()
        .block_on(store.discover(&artifact.parse().unwrap()))
        .expect_err("a tampered blob must fail");
    match &err {
        StoreError::Integrity { url, reason } => {
            assert_eq!(url, &reg.url("r"));
            assert!(reason.contains(&report.blob), "{reason}");
            assert!(reason.contains("does not match its digest"), "{reason}");
            assert!(
                reason.contains(&format!("sha256:{}", sha256_hex(&data))),
                "{reason}"
            );
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    // A shorter blob: a size mismatch.
    std::fs::write(&path, &data[..10]).unwrap();
    let err = rt()
        .block_on(store.discover(&artifact.parse().unwrap()))
        .unwrap_err();
    let m = err.to_string();
    assert!(matches!(err, StoreError::Integrity { .. }), "{m}");
    assert!(
        m.contains(&report.blob) && m.contains("10 bytes read"),
        "{m}"
    );
}

#[test]
fn basic_auth_with_docker_config_credentials() {
    let reg = Registry::start_with_basic_auth("ci", "s3cret");
    let artifact = sha256_hex(b"authed");
    let env = build_envelope(&artifact);
    let url = reg.url("private/evidence");

    let good = tempfile::tempdir().unwrap();
    docker_config_with_auth(good.path(), &reg.addr, "ci", "s3cret");
    let store = open(&url, good.path());
    rt().block_on(store.push(&env))
        .expect("push with credentials");
    let found = rt()
        .block_on(store.discover(&artifact.parse().unwrap()))
        .expect("discover");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].bytes, env);

    let none = tempfile::tempdir().unwrap();
    let anon = open(&url, none.path());
    let err = rt().block_on(anon.push(&env)).unwrap_err();
    let m = err.to_string();
    assert!(matches!(err, StoreError::Credentials { .. }), "{m}");
    assert!(
        m.contains(&format!("credentials for {}", reg.addr))
            && m.contains("requires authentication")
            && m.contains("no credentials")
            && m.contains(&format!("{}/config.json (absent)", none.path().display())),
        "{m}"
    );
    let err = rt()
        .block_on(anon.discover(&artifact.parse().unwrap()))
        .unwrap_err();
    assert!(matches!(err, StoreError::Credentials { .. }), "{err}");

    let wrong = tempfile::tempdir().unwrap();
    docker_config_with_auth(wrong.path(), &reg.addr, "ci", "wrong");
    let err = rt()
        .block_on(open(&url, wrong.path()).push(&env))
        .unwrap_err();
    let m = err.to_string();
    assert!(matches!(err, StoreError::Credentials { .. }), "{m}");
    assert!(m.contains("401") && m.contains("config.json"), "{m}");
    assert!(!m.contains("wrong"), "the password leaked: {m}");
}

#[test]
fn a_registry_that_is_down_fails_quickly_and_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = tempfile::tempdir().unwrap();
    let url = format!("oci+http://127.0.0.1:{port}/r");
    let store = open(&url, cfg.path());
    let env = build_envelope(&sha256_hex(b"x"));
    let t = Instant::now();
    let err = rt().block_on(store.push(&env)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let m = err.to_string();
    assert!(matches!(err, StoreError::Registry { .. }), "{m}");
    assert!(
        m.starts_with(&format!("{url}: ")) && m.contains("cannot connect"),
        "{m}"
    );
    let err = rt()
        .block_on(store.discover(&sha256_hex(b"x").parse().unwrap()))
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[test]
fn cosign_legacy_att_manifests_are_discovered() {
    let reg = Registry::start();
    let image = sha256_hex(b"an image");
    let envs = [
        envelope(&signer(), "a", &[("img", &[("sha256", &image)])]),
        envelope(&signer(), "b", &[("img", &[("sha256", &image)])]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let upload = |bytes: &[u8]| -> String {
        let d = format!("sha256:{}", sha256_hex(bytes));
        let f = dir.path().join(sha256_hex(bytes));
        std::fs::write(&f, bytes).unwrap();
        // Distribution 2.8: POST an upload, PUT the blob to its Location.
        let (status, _, headers) =
            curl_with_headers(&reg, &["-X", "POST"], "/v2/signed/app/blobs/uploads/");
        assert_eq!(status, 202, "{headers}");
        let location = headers
            .lines()
            .find_map(|l| {
                l.strip_prefix("Location: ")
                    .or_else(|| l.strip_prefix("location: "))
            })
            .expect("Location")
            .trim();
        let sep = if location.contains('?') { '&' } else { '?' };
        let (status, body) = curl(
            &reg,
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{}", f.display()),
            ],
            &format!("{location}{sep}digest={d}"),
        );
        assert_eq!(
            status,
            201,
            "upload of {d}: {}",
            String::from_utf8_lossy(&body)
        );
        d
    };
    let config = upload(b"{\"architecture\":\"\",\"os\":\"\"}");
    let layers: Vec<Value> = envs
        .iter()
        .map(|e| {
            json!({"mediaType": DSSE_MEDIA_TYPE, "digest": upload(e), "size": e.len(),
                   "annotations": {"predicateType": cilock_evidence::collection::COLLECTION_TYPE,
                                   "dev.cosignproject.cosign/signature": ""}})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 27},
        "layers": layers,
    });
    let mf = dir.path().join("manifest.json");
    std::fs::write(&mf, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let (status, body) = curl(
        &reg,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", mf.display()),
        ],
        &format!("/v2/signed/app/manifests/sha256-{image}.att"),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));

    let cfg = tempfile::tempdir().unwrap();
    let store = open(&reg.url("signed/app"), cfg.path());
    let found = rt()
        .block_on(store.discover(&image.parse().unwrap()))
        .expect("discover");
    assert_eq!(found.len(), 2);
    for (f, e) in found.iter().zip(&envs) {
        assert_eq!(&f.bytes, e);
        assert_eq!(f.via, FoundVia::CosignAtt);
    }
    // A cilock push for the same image adds a tag-schema referrer; both are found.
    let third = envelope(&signer(), "c", &[("img", &[("sha256", &image)])]);
    rt().block_on(store.push(&third)).expect("push");
    let found = rt()
        .block_on(store.discover(&image.parse().unwrap()))
        .unwrap();
    let vias: Vec<FoundVia> = found.iter().map(|f| f.via).collect();
    assert_eq!(
        vias,
        vec![
            FoundVia::TagSchema,
            FoundVia::CosignAtt,
            FoundVia::CosignAtt
        ]
    );
    assert_eq!(found[0].bytes, third);
}

#[test]
fn a_subject_that_is_an_image_in_the_repository_gets_its_real_descriptor() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let store = open(&reg.url("app"), cfg.path());
    // The first push's referrer manifest is itself a manifest in the repository.
    let a = sha256_hex(b"a");
    let r1 = rt()
        .block_on(store.push(&envelope(&signer(), "x", &[("f", &[("sha256", &a)])])))
        .unwrap();
    let image = r1.referrers[0].manifest.clone();
    let raw = skopeo_raw(&reg, "app", &image);
    let hex = image.strip_prefix("sha256:").unwrap();
    let r2 = rt()
        .block_on(store.push(&envelope(&signer(), "y", &[("img", &[("sha256", hex)])])))
        .unwrap();
    let m: Value =
        serde_json::from_slice(&skopeo_raw(&reg, "app", &r2.referrers[0].manifest)).unwrap();
    assert_eq!(
        m["subject"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(m["subject"]["size"], raw.len());
    assert_eq!(m["subject"]["digest"], image.as_str());
}

#[test]
fn bad_envelopes_urls_and_digests_are_refused() {
    for (u, needle) in [
        ("http://127.0.0.1:5000/r", "unknown scheme"),
        ("oci://127.0.0.1:5000/R", "component \"R\""),
        ("oci://127.0.0.1:99999/r", "port \"99999\""),
        ("oci://127.0.0.1:5000", "missing repository"),
    ] {
        let e = u.parse::<StoreUrl>().unwrap_err();
        assert!(
            matches!(e, StoreError::Url { .. }) && e.to_string().contains(needle),
            "{u}: {e}"
        );
    }
    for (d, needle) in [
        ("md5:00", "not indexed"),
        ("sha256:xyz", "64 hex digits"),
        ("", "expected"),
    ] {
        let e = d.parse::<SubjectDigest>().unwrap_err();
        assert!(
            matches!(e, StoreError::Digest { .. }) && e.to_string().contains(needle),
            "{d:?}: {e}"
        );
    }
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let store = open(&reg.url("r"), cfg.path());
    let e = rt().block_on(store.push(b"{\"payload\": 1}")).unwrap_err();
    assert!(matches!(e, StoreError::Envelope(_)), "{e}");
    let unsigned = dsse::Envelope {
        payload: b"{}".to_vec(),
        payload_type: "text/plain".into(),
        signatures: vec![],
    };
    let e = rt().block_on(store.push(&unsigned.to_json())).unwrap_err();
    assert!(
        e.to_string().contains("payloadType is \"text/plain\""),
        "{e}"
    );
    // Nothing was written for refused envelopes.
    let (status, body) = curl(&reg, &[], "/v2/_catalog");
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body).trim(),
        r#"{"repositories":[]}"#
    );
}

#[test]
fn a_registry_that_does_not_answer_times_out() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(4) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let cfg = tempfile::tempdir().unwrap();
    let url = format!("oci+http://127.0.0.1:{port}/r");
    let store = Store::open(
        url.parse().unwrap(),
        StoreOptions {
            docker_config: Some(cfg.path().to_path_buf()),
            timeout: Duration::from_secs(1),
            max_subjects: 4,
        },
    )
    .unwrap();
    let env = build_envelope(&sha256_hex(b"x"));
    let t = Instant::now();
    let err = rt().block_on(store.push(&env)).unwrap_err();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let m = err.to_string();
    assert!(matches!(err, StoreError::Registry { .. }), "{m}");
    assert!(m.contains("no answer within 1 s"), "{m}");
    drop(hold);
}

#[test]
fn a_tampered_manifest_or_tag_index_fails_loudly() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let artifact = sha256_hex(b"index tamper");
    let env = build_envelope(&artifact);
    let store = open(&reg.url("r"), cfg.path());
    let report = rt().block_on(store.push(&env)).expect("push");
    let subject: SubjectDigest = artifact.parse().unwrap();

    // The referrer manifest's bytes altered in the registry's storage.
    let manifest = &report.referrers[0].manifest;
    let path = reg.blob_path("r", manifest);
    let original = std::fs::read(&path).expect("manifest data file");
    let altered = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"build\"", "\"b0ild\"");
    assert_ne!(altered.as_bytes(), &original[..]);
    std::fs::write(&path, &altered).unwrap();
    let err = rt().block_on(store.discover(&subject)).unwrap_err();
    let m = err.to_string();
    assert!(matches!(err, StoreError::Integrity { .. }), "{m}");
    assert!(
        m.contains(&format!("manifest {manifest} does not match its digest")),
        "{m}"
    );
    std::fs::write(&path, &original).unwrap();
    assert_eq!(rt().block_on(store.discover(&subject)).unwrap().len(), 1);

    // The tag replaced by something that is not an image index.
    let f = tempfile::NamedTempFile::new().unwrap();
    let empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    let not_index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}, "layers": []});
    std::fs::write(f.path(), serde_json::to_vec(&not_index).unwrap()).unwrap();
    let (status, body) = curl(
        &reg,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", f.path().display()),
        ],
        &format!("/v2/r/manifests/sha256-{artifact}"),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let err = rt().block_on(store.discover(&subject)).unwrap_err();
    let m = err.to_string();
    assert!(matches!(err, StoreError::Integrity { .. }), "{m}");
    assert!(
        m.contains(&format!(
            "the referrers tag index sha256-{artifact} has mediaType"
        )) && m.contains("not application/vnd.oci.image.index.v1+json"),
        "{m}"
    );
    // A push does not overwrite what it cannot read as an index.
    let err = rt()
        .block_on(store.push(&envelope(
            &signer(),
            "again",
            &[("file:a", &[("sha256", &artifact)])],
        )))
        .unwrap_err();
    assert!(matches!(err, StoreError::Integrity { .. }), "{err}");
}

#[test]
fn a_push_merges_again_when_a_concurrent_writer_overwrites_the_tag_index() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let artifact = sha256_hex(b"contended");
    let tag = format!("sha256-{artifact}");
    let store = open(&reg.url("r"), cfg.path());
    // Another writer's referrer: a manifest in the repository (distribution
    // 2.8 refuses an index listing unknown manifests).
    let other = envelope(
        &signer(),
        "other",
        &[("f", &[("sha256", &sha256_hex(b"o"))])],
    );
    let other = rt().block_on(store.push(&other)).expect("push other");
    let foreign = other.referrers[0].manifest.clone();
    let foreign_size = skopeo_raw(&reg, "r", &foreign).len();
    let stale = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": foreign,
                       "size": foreign_size, "artifactType": "application/example"}]});
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), serde_json::to_vec(&stale).unwrap()).unwrap();
    let put_stale = |reg: &Registry| {
        let (status, body) = curl(
            reg,
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/vnd.oci.image.index.v1+json",
                "--data-binary",
                &format!("@{}", f.path().display()),
            ],
            &format!("/v2/r/manifests/{tag}"),
        );
        assert!(
            status == 201 || status >= 500,
            "{status} {}",
            String::from_utf8_lossy(&body)
        );
    };
    put_stale(&reg);
    let env = build_envelope(&artifact);
    let overwrites = std::thread::scope(|s| {
        // A writer that keeps putting its stale view (without cilock's entry)
        // for 700 ms, every 20 ms.
        let writer = s.spawn(|| {
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_millis(700) {
                put_stale(&reg);
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        });
        let report = rt().block_on(store.push(&env)).expect("push");
        assert_eq!(report.referrers.len(), 1);
        let took = writer.join().unwrap();
        (report, took)
    });
    let (report, n) = overwrites;
    assert!(n >= 10, "the writer ran {n} times");
    let index: Value = serde_json::from_slice(&skopeo_raw(&reg, "r", &tag)).unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![foreign.as_str(), report.referrers[0].manifest.as_str()]
    );
}

#[test]
fn sha512_subjects_sharing_a_truncated_tag_keep_their_own_referrers() {
    let reg = Registry::start();
    let cfg = tempfile::tempdir().unwrap();
    let store = open(&reg.url("r"), cfg.path());
    let prefix = "ab".repeat(32);
    let a = format!("{prefix}{}", "1".repeat(64));
    let b = format!("{prefix}{}", "2".repeat(64));
    let ea = envelope(&signer(), "a", &[("a", &[("sha512", &a)])]);
    let eb = envelope(&signer(), "b", &[("b", &[("sha512", &b)])]);
    let ra = rt().block_on(store.push(&ea)).unwrap();
    let rb = rt().block_on(store.push(&eb)).unwrap();
    assert_eq!(ra.referrers[0].subject.tag(), format!("sha512-{prefix}"));
    assert_eq!(rb.referrers[0].subject.tag(), format!("sha512-{prefix}"));
    let index: Value =
        serde_json::from_slice(&skopeo_raw(&reg, "r", &format!("sha512-{prefix}"))).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    let fa = rt()
        .block_on(store.discover(&format!("sha512:{a}").parse().unwrap()))
        .unwrap();
    let fb = rt()
        .block_on(store.discover(&format!("sha512:{b}").parse().unwrap()))
        .unwrap();
    assert_eq!(fa.len(), 1);
    assert_eq!(fa[0].bytes, ea);
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0].bytes, eb);
}

#[test]
fn basic_auth_with_a_credential_helper() {
    let reg = Registry::start_with_basic_auth("helper-user", "helper-pw");
    let dir = tempfile::tempdir().unwrap();
    // docker-credential-<name> get: the server on stdin, JSON on stdout.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-cilockstoretest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"helper-pw\"}}' \"$server\"\n",
            reg.addr
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Prepending a directory leaves every other test's programs where they were.
    let old = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&old));
    std::env::set_var("PATH", std::env::join_paths(paths).unwrap());

    let cfg = dir.path().join("docker");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.json"),
        json!({"credHelpers": {reg.addr.clone(): "cilockstoretest"}}).to_string(),
    )
    .unwrap();
    let artifact = sha256_hex(b"helper");
    let env = build_envelope(&artifact);
    let store = open(&reg.url("r"), &cfg);
    rt().block_on(store.push(&env))
        .expect("push with the helper's credentials");
    let found = rt()
        .block_on(store.discover(&artifact.parse().unwrap()))
        .unwrap();
    assert_eq!(found.len(), 1);

    // The same helper for another host has nothing: anonymous, refused clearly.
    let other = Registry::start_with_basic_auth("helper-user", "helper-pw");
    std::fs::write(
        cfg.join("config.json"),
        json!({"credsStore": "cilockstoretest"}).to_string(),
    )
    .unwrap();
    let err = rt()
        .block_on(open(&other.url("r"), &cfg).push(&env))
        .unwrap_err();
    let m = err.to_string();
    assert!(matches!(err, StoreError::Credentials { .. }), "{m}");
    assert!(
        m.contains("docker-credential-cilockstoretest (no credentials stored)"),
        "{m}"
    );
}

#[test]
fn a_refused_write_quotes_the_registry_error() {
    // A read-only registry refuses the blob upload (a POST, which expects
    // no body) with its error JSON: the message says why.
    let reg = Registry::start_read_only();
    let cfg = tempfile::tempdir().unwrap();
    let store = open(&reg.url("r"), cfg.path());
    let env = build_envelope(&sha256_hex(b"ro"));
    let err = rt().block_on(store.push(&env)).unwrap_err();
    let m = err.to_string();
    assert!(matches!(err, StoreError::Registry { .. }), "{m}");
    assert_eq!(
        m,
        format!(
            "{}: POST /v2/r/blobs/uploads/: HTTP 405 Method Not Allowed: Method not allowed",
            reg.url("r")
        )
    );
}
