//! Certificate (`root`) functionaries and RFC 3161 timestamps end to end,
//! with a real CA → intermediate → leaf chain and a real TSA made with the
//! `openssl` CLI (`openssl ca`, `openssl ts -reply`, `openssl cms -sign`).

use base64::Engine as _;
use cilock_evidence::collection::{Collection, CollectionAttestation, COLLECTION_TYPE};
use cilock_evidence::digest::{DigestSet, HashAlg};
use cilock_evidence::dsse::{self, Envelope, SignatureTimestamp, POLICY_PAYLOAD_TYPE};
use cilock_evidence::intoto::{Statement, Subject, PAYLOAD_TYPE};
use cilock_evidence::keys::{KeyAlgorithm, Signer};
use cilock_evidence::policy::timestamp::{self, TimestampError};
use cilock_evidence::policy::verify::{NamedEnvelope, VerificationReport};
use cilock_evidence::policy::x509::{CertError, TrustAnchor};
use cilock_evidence::policy::{verify, VerifyOptions};
use cilock_testkit::pki;
use pki::{fulcio_leaf_ext, Issued, Pki};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

const LEAF_SUBJECT: &str = "/CN=builder/O=Example Org";
const URI: &str = "spiffe://example.com/build";
const EMAIL: &str = "builder@example.com";
const DNS: &str = "build.example.com";
const ISSUER: &str = "https://token.actions.githubusercontent.com";
const REPO: &str = "https://github.com/example/app";

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn der_of(pem: &[u8]) -> Vec<u8> {
    cilock_evidence::policy::x509::cert_der_from_pem_or_der(pem).unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    pki: Pki,
    root: Issued,
    int: Issued,
    leaf: Issued,
    tsa_root: Issued,
    tsa: Issued,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let root = pki.root("root", "/CN=cilock test root/O=Example Org");
    let int = pki.intermediate("int", "/CN=cilock test intermediate/O=Example Org", &root);
    let now = OffsetDateTime::now_utc();
    let leaf = pki.issue(
        "leaf",
        LEAF_SUBJECT,
        &int,
        &fulcio_leaf_ext(URI, EMAIL, DNS, ISSUER, REPO),
        now - Duration::hours(1),
        now + Duration::days(1),
    );
    let tsa_root = pki.root("tsaroot", "/CN=cilock test TSA root");
    let tsa = pki.tsa("tsa", "tsa", &tsa_root, true);
    World {
        _dir: dir,
        pki,
        root,
        int,
        leaf,
        tsa_root,
        tsa,
    }
}

fn app_digest() -> String {
    DigestSet::from_bytes(b"app binary", &[HashAlg::Sha256])
        .get_sha256()
        .unwrap()
        .to_string()
}

/// A "build" collection signed with `leaf`'s key, carrying its certificate
/// and `intermediates`.
fn envelope(leaf: &Issued, intermediates: &[&Issued]) -> Envelope {
    let signer = Signer::from_pem(&leaf.key_pem()).unwrap();
    let coll = Collection {
        name: "build".into(),
        attestations: vec![CollectionAttestation {
            type_: "https://witness.dev/attestations/command-run/v0.1".into(),
            attestation: json!({"cmd": ["make"], "exitcode": 0}),
            starttime: "2026-08-01T10:00:00Z".into(),
            endtime: "2026-08-01T10:00:01Z".into(),
        }],
        backrefs: None,
    };
    let st = Statement::new(
        COLLECTION_TYPE,
        vec![Subject::new(
            "https://witness.dev/attestations/product/v0.1/file:app",
            &DigestSet::sha256(app_digest()),
        )],
        coll,
    );
    let inters: Vec<Vec<u8>> = intermediates.iter().map(|i| i.pem()).collect();
    dsse::sign_with_certificate(
        PAYLOAD_TYPE,
        serde_json::to_vec(&st).unwrap(),
        &signer,
        &leaf.pem(),
        &inters,
    )
    .unwrap()
}

fn full_constraint() -> Value {
    json!({
        "commonname": "builder",
        "dnsnames": [DNS],
        "emails": [EMAIL],
        "organizations": ["Example Org"],
        "uris": [URI],
        "roots": ["ca"],
        "extensions": {"issuer": ISSUER, "SourceRepositoryURI": REPO}
    })
}

/// A policy with `roots` (id → (cert, intermediates)), `tsas`, and a
/// `build` step whose functionary is a `root` with `constraint`.
fn policy(
    roots: &[(&str, &Issued, &[&Issued])],
    tsas: &[(&str, &Issued)],
    constraint: Value,
) -> Vec<u8> {
    let roots: serde_json::Map<String, Value> = roots
        .iter()
        .map(|(id, c, inters)| {
            (
                id.to_string(),
                json!({
                    "certificate": b64(&c.pem()),
                    "intermediates": inters.iter().map(|i| b64(&i.pem())).collect::<Vec<_>>()
                }),
            )
        })
        .collect();
    let tsas: serde_json::Map<String, Value> = tsas
        .iter()
        .map(|(id, c)| (id.to_string(), json!({"certificate": b64(&c.pem())})))
        .collect();
    serde_json::to_vec(&json!({
        "expires": "2099-01-01T00:00:00Z",
        "roots": roots,
        "timestampauthorities": tsas,
        "steps": {"build": {
            "name": "build",
            "functionaries": [{"type": "root", "certConstraint": constraint}],
            "attestations": [{"type": "https://witness.dev/attestations/command-run/v0.1"}]
        }}
    }))
    .unwrap()
}

fn check(policy: &[u8], env: Envelope, now: OffsetDateTime) -> VerificationReport {
    let (pkey, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    verify(&VerifyOptions {
        policy_envelope: dsse::sign(POLICY_PAYLOAD_TYPE, policy.to_vec(), &pkey).unwrap(),
        policy_verifiers: vec![pkey.verifier().unwrap()],
        attestations: vec![NamedEnvelope {
            source: "build.json".into(),
            envelope: env,
        }],
        subject_digests: vec![app_digest()],
        now,
        rego_limits: Default::default(),
    })
    .unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn rejected(r: &VerificationReport) -> &str {
    assert!(!r.passed, "{r:#?}");
    assert_eq!(r.rejected_envelopes.len(), 1, "{r:#?}");
    &r.rejected_envelopes[0].reason
}

#[test]
fn certificate_functionary_passes_with_every_constraint() {
    let w = world();
    let p = policy(&[("ca", &w.root, &[])], &[], full_constraint());
    let r = check(&p, envelope(&w.leaf, &[&w.int]), now());
    assert!(r.passed, "{r:#?}");
    let c = &r.steps[0].collections[0];
    assert!(c.passed);
    let keyid = Signer::from_pem(&w.leaf.key_pem())
        .unwrap()
        .key_id()
        .to_string();
    assert_eq!(c.signers.len(), 1);
    assert!(
        c.signers[0].starts_with(&format!(
            "{keyid} (certificate \"CN=builder, O=Example Org\", root ca)"
        )),
        "{:?}",
        c.signers
    );
    // "*" everywhere passes too.
    let star = json!({"commonname": "*", "dnsnames": ["*"], "emails": ["*"], "organizations": ["*"], "uris": ["*"], "roots": ["*"]});
    assert!(
        check(
            &policy(&[("ca", &w.root, &[])], &[], star),
            envelope(&w.leaf, &[&w.int]),
            now()
        )
        .passed
    );
    // The intermediate may come from the policy instead of the envelope.
    let p = policy(&[("ca", &w.root, &[&w.int])], &[], full_constraint());
    assert!(check(&p, envelope(&w.leaf, &[]), now()).passed);
    // Without the intermediate anywhere there is no chain.
    let p = policy(&[("ca", &w.root, &[])], &[], full_constraint());
    let r = check(&p, envelope(&w.leaf, &[]), now());
    assert!(
        rejected(&r).contains("does not chain to a trusted root"),
        "{r:#?}"
    );
}

#[test]
fn each_constraint_mismatch_fails() {
    let w = world();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("commonname", json!("someone"), "common name \"someone\" required but the certificate has [\"builder\"]"),
        ("dnsnames", json!(["other.example.com"]), "dns name \"other.example.com\" required"),
        ("emails", json!(["other@example.com"]), "email \"other@example.com\" required"),
        ("organizations", json!(["Other Org"]), "organization \"Other Org\" required"),
        ("uris", json!(["spiffe://example.com/deploy"]), "uri \"spiffe://example.com/deploy\" required"),
        ("roots", json!(["other"]), "unexpected root \"ca\""),
        ("roots", json!([]), "the functionary lists no roots"),
        // A certificate value the constraint does not list is a failure too.
        ("emails", json!([]), "unexpected email \"builder@example.com\""),
        (
            "extensions",
            json!({"issuer": "https://accounts.google.com"}),
            "extension issuer (1.3.6.1.4.1.57264.1.8) is \"https://token.actions.githubusercontent.com\", \"https://accounts.google.com\" required",
        ),
        (
            "extensions",
            json!({"SourceRepositoryURI": "https://github.com/example/other"}),
            "extension SourceRepositoryURI (1.3.6.1.4.1.57264.1.12) is \"https://github.com/example/app\", \"https://github.com/example/other\" required",
        ),
        (
            "extensions",
            json!({"RunnerEnvironment": "github-hosted"}),
            "extension RunnerEnvironment (1.3.6.1.4.1.57264.1.11) is absent from the certificate, \"github-hosted\" required",
        ),
    ];
    for (field, value, want) in cases {
        let mut c = full_constraint();
        c[field] = value.clone();
        let p = policy(&[("ca", &w.root, &[]), ("other", &w.tsa_root, &[])], &[], c);
        let r = check(&p, envelope(&w.leaf, &[&w.int]), now());
        assert!(!r.passed, "{field}={value}: {r:#?}");
        assert!(r.rejected_envelopes.is_empty());
        let reasons = &r.steps[0].collections[0].reasons;
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("not signed by a functionary of step \"build\""));
        assert!(reasons[0].contains(want), "{field}={value}: {reasons:?}");
    }
}

#[test]
fn untrusted_root_expired_leaf_and_foreign_ca_fail() {
    let w = world();
    // The policy trusts another root only.
    let other = w.pki.root("other", "/CN=other root");
    let star = json!({"commonname": "*", "dnsnames": ["*"], "emails": ["*"], "organizations": ["*"], "uris": ["*"], "roots": ["*"]});
    let p = policy(&[("other", &other, &[])], &[], star.clone());
    let r = check(&p, envelope(&w.leaf, &[&w.int]), now());
    let reason = rejected(&r);
    assert!(reason.contains("certificate \"CN=builder, O=Example Org\" does not chain to a trusted root: no valid path to any of the roots [\"other\"]"), "{reason}");

    // An expired leaf from the right CA.
    let old = w.pki.issue(
        "old",
        LEAF_SUBJECT,
        &w.int,
        &fulcio_leaf_ext(URI, EMAIL, DNS, ISSUER, REPO),
        OffsetDateTime::UNIX_EPOCH + Duration::days(18_262), // 2020-01-01
        OffsetDateTime::UNIX_EPOCH + Duration::days(18_263),
    );
    let p = policy(&[("ca", &w.root, &[])], &[], star.clone());
    let r = check(&p, envelope(&old, &[&w.int]), now());
    let reason = rejected(&r);
    assert!(reason.contains("not valid at"), "{reason}");
    assert!(reason.contains("2020"), "{reason}");
    // A leaf from a look-alike CA: same intermediate and root names, other keys.
    let evil_root = w.pki.root("evilroot", "/CN=cilock test root/O=Example Org");
    let evil_int = w.pki.intermediate(
        "evilint",
        "/CN=cilock test intermediate/O=Example Org",
        &evil_root,
    );
    let now_ = now();
    let evil_leaf = w.pki.issue(
        "evilleaf",
        LEAF_SUBJECT,
        &evil_int,
        &fulcio_leaf_ext(URI, EMAIL, DNS, ISSUER, REPO),
        now_ - Duration::hours(1),
        now_ + Duration::days(1),
    );
    for inters in [vec![&evil_int], vec![&w.int], vec![&evil_int, &w.int]] {
        let r = check(&p, envelope(&evil_leaf, &inters), now());
        let reason = rejected(&r);
        assert!(
            reason.contains("does not chain to a trusted root"),
            "{reason}"
        );
    }
    // Control: the real leaf with the same policy passes.
    assert!(check(&p, envelope(&w.leaf, &[&w.int]), now()).passed);
}

// ---------------------------------------------------------------------------
// RFC 3161

fn anchor(id: &str, cert: &Issued, intermediates: &[&Issued]) -> TrustAnchor {
    TrustAnchor {
        id: id.into(),
        cert: der_of(&cert.pem()),
        intermediates: intermediates.iter().map(|i| der_of(&i.pem())).collect(),
    }
}

#[test]
fn timestamp_token_checks() {
    let w = world();
    let sig = b"raw signature bytes".to_vec();
    let anchors = [anchor("tsa", &w.tsa_root, &[])];
    let before = now().unix_timestamp();
    for (digest, ess) in [
        ("sha256", "sha1"),
        ("sha256", "sha256"),
        ("sha384", "sha1"),
        ("sha512", "sha256"),
    ] {
        let token = w.pki.timestamp(&w.tsa, &[], &sig, digest, true, ess);
        let t = timestamp::verify_token(&token, &sig, &anchors)
            .unwrap_or_else(|e| panic!("{digest}/{ess}: {e}"));
        assert!((before - 1..=now().unix_timestamp()).contains(&t.gen_time.unix_timestamp()));
        assert_eq!(t.authority, "tsa");
        assert_eq!(t.tsa_subject, "CN=tsa, O=cilock test TSA");
        assert_eq!(t.policy, "1.2.3.4.1");
        // openssl ts increments the serial file ("01") before use.
        assert_eq!(t.serial, "02");
    }
    let token = w.pki.timestamp(&w.tsa, &[], &sig, "sha256", true, "sha256");
    // Through the envelope's timestamp type.
    let ts = SignatureTimestamp {
        type_: "tsp".into(),
        data: token.clone(),
    };
    assert!(timestamp::verify(&ts, &sig, &anchors).is_ok());
    let other_type = SignatureTimestamp {
        type_: "rekor".into(),
        data: token.clone(),
    };
    assert!(
        matches!(timestamp::verify(&other_type, &sig, &anchors), Err(TimestampError::UnsupportedType(t)) if t == "rekor")
    );

    // Wrong imprint: the token is over another signature.
    match timestamp::verify_token(&token, b"another signature", &anchors) {
        Err(TimestampError::ImprintMismatch {
            algorithm,
            got,
            want,
        }) => {
            assert_eq!(algorithm, "SHA-256");
            assert_eq!(got, hex::encode(sha2::Sha256::digest(&sig)));
            assert_eq!(
                want,
                hex::encode(sha2::Sha256::digest(b"another signature"))
            );
        }
        other => panic!("{other:?}"),
    }

    // Tampered genTime (inside the signed TSTInfo): messageDigest breaks.
    let pos = token
        .windows(2)
        .position(|w| w == [0x18, 0x0f])
        .expect("genTime");
    let mut bad = token.clone();
    bad[pos + 2 + 13] = if bad[pos + 2 + 13] == b'0' {
        b'1'
    } else {
        b'0'
    };
    match timestamp::verify_token(&bad, &sig, &anchors) {
        Err(TimestampError::SignedAttributes(m)) => {
            assert_eq!(m, "messageDigest does not match the TSTInfo")
        }
        other => panic!("{other:?}"),
    }
    // Tampered signature value (the last bytes of the token).
    let mut bad = token.clone();
    let n = bad.len();
    bad[n - 2] ^= 0x01;
    assert!(
        matches!(timestamp::verify_token(&bad, &sig, &anchors), Err(TimestampError::BadSignature { ref subject }) if subject == "CN=tsa, O=cilock test TSA"),
        "{:?}",
        timestamp::verify_token(&bad, &sig, &anchors)
    );
    // Truncated.
    assert!(matches!(
        timestamp::verify_token(&token[..token.len() - 10], &sig, &anchors),
        Err(TimestampError::Malformed(_))
    ));

    // TSA not in the policy.
    let other_root = w.pki.root("othertsaroot", "/CN=other TSA root");
    match timestamp::verify_token(&token, &sig, &[anchor("other", &other_root, &[])]) {
        Err(TimestampError::Untrusted(CertError::Untrusted { subject, detail })) => {
            assert_eq!(subject, "CN=tsa, O=cilock test TSA");
            assert!(detail.contains("[\"other\"]"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // A TSA from another root, with the same names as ours: not trusted.
    let evil_root = w.pki.root("eviltsaroot", "/CN=cilock test TSA root");
    let evil_tsa = w.pki.tsa("eviltsa", "tsa", &evil_root, true);
    let evil = w
        .pki
        .timestamp(&evil_tsa, &[], &sig, "sha256", true, "sha1");
    assert!(matches!(
        timestamp::verify_token(&evil, &sig, &anchors),
        Err(TimestampError::Untrusted(_))
    ));

    // A token without certificates: the TSA certificate must come from the policy.
    let bare = w.pki.timestamp(&w.tsa, &[], &sig, "sha256", false, "sha1");
    assert!(matches!(
        timestamp::verify_token(&bare, &sig, &anchors),
        Err(TimestampError::SignerNotFound(_))
    ));
    assert_eq!(
        timestamp::verify_token(&bare, &sig, &[anchor("tsa", &w.tsa_root, &[&w.tsa])])
            .unwrap()
            .authority,
        "tsa"
    );
    assert_eq!(
        timestamp::verify_token(&bare, &sig, &[anchor("pinned", &w.tsa, &[])])
            .unwrap()
            .authority,
        "pinned"
    );

    // A TSA under an intermediate, the intermediate carried by the token
    // (openssl puts tsa2 in it twice: as the signer and from `certs`).
    let tsa_int = w
        .pki
        .intermediate("tsaint", "/CN=TSA intermediate", &w.tsa_root);
    let tsa2 = w.pki.tsa("tsa2", "tsa2", &tsa_int, true);
    let chained = w
        .pki
        .timestamp(&tsa2, &[&tsa2, &tsa_int], &sig, "sha256", true, "sha1");
    assert_eq!(
        timestamp::verify_token(&chained, &sig, &anchors)
            .unwrap()
            .tsa_subject,
        "CN=tsa2, O=cilock test TSA"
    );
    // Without the intermediate (not in the token, not in the policy): untrusted.
    let unchained = w.pki.timestamp(&tsa2, &[], &sig, "sha256", true, "sha1");
    assert!(matches!(
        timestamp::verify_token(&unchained, &sig, &anchors),
        Err(TimestampError::Untrusted(_))
    ));
    assert!(
        timestamp::verify_token(&unchained, &sig, &[anchor("tsa", &w.tsa_root, &[&tsa_int])])
            .is_ok()
    );
}

use sha2::Digest as _;

/// The TSTInfo DER of a token (to re-sign it with `openssl cms`).
fn tst_info(token: &[u8]) -> Vec<u8> {
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    use der::Decode;
    let ci = ContentInfo::from_der(token).unwrap();
    let sd: SignedData = ci.content.decode_as().unwrap();
    sd.encap_content_info.econtent.unwrap().value().to_vec()
}

/// A TimeStampToken made by `openssl cms -sign` (not `openssl ts`, which
/// refuses certificates that are not timestamping certificates).
fn cms_token(pki: &Pki, tst: &[u8], signer: &Issued) -> Vec<u8> {
    let tst_file = pki.write("cms.tst", "");
    std::fs::write(&tst_file, tst).unwrap();
    let out = pki.dir.join(format!("cms-{}.der", signer.name));
    pki::openssl(
        &pki.dir,
        &[
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-nosmimecap",
            "-md",
            "sha256",
            "-econtent_type",
            "1.2.840.113549.1.9.16.1.4",
            "-in",
            tst_file.to_str().unwrap(),
            "-signer",
            signer.cert.to_str().unwrap(),
            "-inkey",
            signer.key.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

#[test]
fn tsa_certificate_must_be_a_timestamping_certificate() {
    let w = world();
    let sig = b"raw signature bytes".to_vec();
    let anchors = [anchor("tsa", &w.tsa_root, &[])];
    let tst = tst_info(&w.pki.timestamp(&w.tsa, &[], &sig, "sha256", true, "sha1"));
    // Control: the same TSTInfo signed by the real TSA through openssl cms
    // (other signed attributes, no ESS attribute) verifies.
    let ok = cms_token(&w.pki, &tst, &w.tsa);
    assert!(
        timestamp::verify_token(&ok, &sig, &anchors).is_ok(),
        "{:?}",
        timestamp::verify_token(&ok, &sig, &anchors)
    );
    let now_ = now();
    for (name, ext, want) in [
        (
            "noncrit",
            "extendedKeyUsage=timeStamping\n",
            "the extended key usage extension must be critical",
        ),
        (
            "codesign",
            "extendedKeyUsage=critical,codeSigning\n",
            "the extended key usage does not include timeStamping",
        ),
        (
            "twousages",
            "extendedKeyUsage=critical,timeStamping,codeSigning\n",
            "the extended key usage must be timeStamping only",
        ),
        (
            "noeku",
            "",
            "no extended key usage extension (timeStamping is required)",
        ),
    ] {
        let cert = w.pki.issue(
            name,
            &format!("/CN={name}"),
            &w.tsa_root,
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"
            ),
            now_ - Duration::hours(1),
            now_ + Duration::days(1),
        );
        let token = cms_token(&w.pki, &tst, &cert);
        match timestamp::verify_token(&token, &sig, &anchors) {
            Err(TimestampError::NotTimestampingCertificate { subject, detail }) => {
                assert_eq!(subject, format!("CN={name}"));
                assert_eq!(detail, want);
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn short_lived_certificate_verifies_at_the_timestamp() {
    let w = world();
    // A Fulcio-style leaf valid for a few seconds.
    let start = now();
    let expires = start + Duration::seconds(3);
    let leaf = w.pki.issue(
        "shortlived",
        LEAF_SUBJECT,
        &w.int,
        &fulcio_leaf_ext(URI, EMAIL, DNS, ISSUER, REPO),
        start - Duration::minutes(1),
        expires,
    );
    let env = envelope(&leaf, &[&w.int]);
    let token = w.pki.timestamp(
        &w.tsa,
        &[],
        &env.signatures[0].sig,
        "sha256",
        true,
        "sha256",
    );
    let mut stamped = env.clone();
    stamped.signatures[0].timestamps = vec![SignatureTimestamp {
        type_: "tsp".into(),
        data: token.clone(),
    }];
    // The envelope round-trips through JSON with its timestamp.
    let stamped = Envelope::from_json(&stamped.to_json()).unwrap();
    assert_eq!(stamped.signatures[0].timestamps[0].data, token);
    // Wait until the leaf has expired.
    while now() <= expires + Duration::seconds(1) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let with_tsa = policy(
        &[("ca", &w.root, &[])],
        &[("tsa", &w.tsa_root)],
        full_constraint(),
    );
    let r = check(&with_tsa, stamped.clone(), now());
    assert!(r.passed, "{r:#?}");
    let signer = &r.steps[0].collections[0].signers[0];
    assert!(signer.contains("root ca, timestamped "), "{signer}");
    assert!(signer.ends_with(" by TSA tsa)"), "{signer}");

    // No timestamp, policy with a TSA: rejected.
    let r = check(&with_tsa, env.clone(), now());
    let reason = rejected(&r);
    assert!(
        reason.contains(
            "signature 0: the policy has timestamp authorities but the signature has no timestamp"
        ),
        "{reason}"
    );
    // No timestamp, policy without a TSA: checked now, expired.
    let without_tsa = policy(&[("ca", &w.root, &[])], &[], full_constraint());
    let r = check(&without_tsa, env.clone(), now());
    assert!(rejected(&r).contains("not valid at"), "{r:#?}");
    // Timestamps are ignored when the policy has no TSA (as go-witness).
    let r = check(&without_tsa, stamped.clone(), now());
    assert!(rejected(&r).contains("not valid at"), "{r:#?}");
    // A tampered timestamp.
    let mut tampered = stamped.clone();
    let n = tampered.signatures[0].timestamps[0].data.len();
    tampered.signatures[0].timestamps[0].data[n - 2] ^= 0x01;
    let r = check(&with_tsa, tampered, now());
    let reason = rejected(&r);
    assert!(
        reason.contains("signature 0: timestamp 0: the TSA signature does not verify"),
        "{reason}"
    );
    // A timestamp over another signature.
    let mut wrong = stamped.clone();
    wrong.signatures[0].timestamps[0].data =
        w.pki
            .timestamp(&w.tsa, &[], b"other", "sha256", true, "sha1");
    let r = check(&with_tsa, wrong, now());
    assert!(
        rejected(&r).contains("signature 0: timestamp 0: the timestamp is not over this signature"),
        "{r:#?}"
    );
    // The policy's TSA is another one.
    let other = w.pki.root("othertsa", "/CN=other TSA root");
    let p = policy(
        &[("ca", &w.root, &[])],
        &[("other", &other)],
        full_constraint(),
    );
    let r = check(&p, stamped.clone(), now());
    assert!(
        rejected(&r).contains("signature 0: timestamp 0: TSA certificate not trusted"),
        "{r:#?}"
    );
    // A second, valid timestamp after a bad one is enough.
    let mut two = stamped.clone();
    two.signatures[0].timestamps.insert(
        0,
        SignatureTimestamp {
            type_: "tsp".into(),
            data: b"junk".to_vec(),
        },
    );
    assert!(check(&with_tsa, two, now()).passed);
}

// ---------------------------------------------------------------------------
// Extension keys: CI/lock snake_case and Witness Go field names

const CILOCK_REPO: &str = "https://github.com/testifysec/cilock-trivy-detection-test";

/// The `certConstraint` of the CI/lock fixture policy (step `clean-build`),
/// verbatim except `roots`, which names this test's CA.
fn cilock_fixture_constraint() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/cilock/policy.json");
    let p: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut c = p["steps"]["clean-build"]["functionaries"][0]["certConstraint"].clone();
    assert_eq!(
        c["extensions"]["source_repository_uri"], CILOCK_REPO,
        "fixture changed: {c}"
    );
    assert_eq!(c["extensions"]["runner_environment"], "github-hosted");
    c["roots"] = json!(["ca"]);
    c
}

/// A leaf from the test CA carrying Fulcio's issuer (1.1 and 1.8),
/// source repository URI (1.12) and runner environment (1.11).
fn ci_leaf(w: &World, name: &str, repo: &str, runner: &str) -> Issued {
    let now_ = now();
    let ext = format!(
        "{}1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{ISSUER}\n1.3.6.1.4.1.57264.1.11=ASN1:UTF8String:{runner}\n",
        fulcio_leaf_ext(URI, EMAIL, DNS, ISSUER, repo)
    );
    w.pki.issue(
        name,
        LEAF_SUBJECT,
        &w.int,
        &ext,
        now_ - Duration::hours(1),
        now_ + Duration::days(1),
    )
}

fn functionary_reason(r: &VerificationReport) -> String {
    assert!(!r.passed, "{r:#?}");
    assert!(r.rejected_envelopes.is_empty(), "{r:#?}");
    let reasons = &r.steps[0].collections[0].reasons;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("not signed by a functionary of step \"build\""),
        "{reasons:?}"
    );
    assert!(!reasons[0].contains("Some("), "{reasons:?}");
    reasons[0].clone()
}

#[test]
fn snake_case_extension_constraints_reject_another_repository() {
    let w = world();
    let good = ci_leaf(&w, "good", CILOCK_REPO, "github-hosted");
    let evil = ci_leaf(
        &w,
        "evil",
        "https://github.com/evil-org/cilock-trivy-detection-test",
        "github-hosted",
    );
    let self_hosted = ci_leaf(&w, "selfhosted", CILOCK_REPO, "self-hosted");
    let snake = cilock_fixture_constraint();
    let p = policy(&[("ca", &w.root, &[])], &[], snake.clone());
    // The right repository on a GitHub-hosted runner passes.
    let r = check(&p, envelope(&good, &[&w.int]), now());
    assert!(r.passed, "{r:#?}");
    // A certificate from another organisation's repository is rejected.
    let reason = functionary_reason(&check(&p, envelope(&evil, &[&w.int]), now()));
    assert!(
        reason.contains(
            "extension source_repository_uri (1.3.6.1.4.1.57264.1.12) is \"https://github.com/evil-org/cilock-trivy-detection-test\", \"https://github.com/testifysec/cilock-trivy-detection-test\" required"
        ),
        "{reason}"
    );
    // A self-hosted runner is rejected.
    let reason = functionary_reason(&check(&p, envelope(&self_hosted, &[&w.int]), now()));
    assert!(
        reason.contains(
            "extension runner_environment (1.3.6.1.4.1.57264.1.11) is \"self-hosted\", \"github-hosted\" required"
        ),
        "{reason}"
    );
    // The same rules spelt as Witness's Go field names, in any case, and as
    // Fulcio's camelCase: the same outcomes.
    for (repo_key, runner_key) in [
        ("SourceRepositoryURI", "RunnerEnvironment"),
        ("sourcerepositoryuri", "runnerenvironment"),
        ("sourceRepositoryURI", "runnerEnvironment"),
    ] {
        let mut c = snake.clone();
        c["extensions"] = json!({
            "Issuer": ISSUER,
            repo_key: CILOCK_REPO,
            runner_key: "github-hosted",
        });
        let p = policy(&[("ca", &w.root, &[])], &[], c);
        assert!(check(&p, envelope(&good, &[&w.int]), now()).passed);
        let reason = functionary_reason(&check(&p, envelope(&evil, &[&w.int]), now()));
        assert!(
            reason.contains(&format!(
                "extension {repo_key} (1.3.6.1.4.1.57264.1.12) is \"https://github.com/evil-org/"
            )),
            "{reason}"
        );
        let reason = functionary_reason(&check(&p, envelope(&self_hosted, &[&w.int]), now()));
        assert!(
            reason.contains(&format!("extension {runner_key} ")),
            "{reason}"
        );
    }
    // The failure lists the functionary's roots without Rust's Option.
    let reason = functionary_reason(&check(&p, envelope(&evil, &[&w.int]), now()));
    assert!(
        reason.contains("functionaries [root (roots [ca])]"),
        "{reason}"
    );
}

#[test]
fn unknown_constraint_keys_are_policy_errors() {
    use cilock_evidence::policy::{Policy, PolicyError};
    let w = world();
    // A misspelt extension key: the policy is refused, naming the key, the
    // step and the accepted keys.
    let mut c = cilock_fixture_constraint();
    c["extensions"]["source_repo_uri"] = json!("https://github.com/example/app");
    let p = policy(&[("ca", &w.root, &[])], &[], c);
    let err = Policy::from_json(&p).unwrap_err();
    assert!(matches!(err, PolicyError::Functionary { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("step \"build\": certConstraint extension key \"source_repo_uri\" is not a Fulcio extension; accepted"), "{msg}");
    assert!(
        msg.contains("source_repository_uri/SourceRepositoryURI"),
        "{msg}"
    );
    assert!(
        msg.contains("runner_environment/RunnerEnvironment"),
        "{msg}"
    );
    // verify() reports it as an input error, never a pass.
    let (pkey, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let res = verify(&VerifyOptions {
        policy_envelope: dsse::sign(POLICY_PAYLOAD_TYPE, p.clone(), &pkey).unwrap(),
        policy_verifiers: vec![pkey.verifier().unwrap()],
        attestations: vec![NamedEnvelope {
            source: "build.json".into(),
            envelope: envelope(&w.leaf, &[&w.int]),
        }],
        subject_digests: vec![app_digest()],
        now: now(),
        rego_limits: Default::default(),
    });
    assert!(
        matches!(res, Err(PolicyError::Functionary { .. })),
        "{res:?}"
    );
    // An unknown certConstraint field is refused too.
    let mut c = full_constraint();
    c["commonnames"] = json!("builder");
    let err = Policy::from_json(&policy(&[("ca", &w.root, &[])], &[], c)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unknown certConstraint field \"commonnames\" (accepted: commonname, dnsnames, emails, organizations, uris, roots, extensions)"),
        "{msg}"
    );
    // Field names match case-insensitively, as Go decodes them.
    let mut c = full_constraint();
    let cn = c.as_object_mut().unwrap().remove("commonname").unwrap();
    c["commonName"] = cn;
    c["DNSNames"] = c.as_object_mut().unwrap().remove("dnsnames").unwrap();
    let p = policy(&[("ca", &w.root, &[])], &[], c.clone());
    assert!(check(&p, envelope(&w.leaf, &[&w.int]), now()).passed);
    c["commonName"] = json!("someone");
    let p = policy(&[("ca", &w.root, &[])], &[], c);
    let reason = functionary_reason(&check(&p, envelope(&w.leaf, &[&w.int]), now()));
    assert!(
        reason.contains("common name \"someone\" required"),
        "{reason}"
    );
}
