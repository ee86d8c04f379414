//! `cilock sign --certificate` and `cilock verify` with `root`
//! functionaries and RFC 3161 timestamps, through the built binary, with a
//! PKI and a TSA made by the `openssl` CLI.

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use cilock_testkit::cli::{b64, p, sign_policy, text};
use cilock_testkit::pki::{fulcio_leaf_ext, Issued, Pki};
use serde_json::{json, Value};
use sha2::Digest as _;
use time::{Duration, OffsetDateTime};

use crate::cilock;

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const REPO: &str = "https://github.com/example/app";

struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    root: Issued,
    int: Issued,
    tsa_root: Issued,
    tsa: Issued,
    policy_key: std::path::PathBuf,
    digest: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let root = pki.root("root", "/CN=cli root/O=Example Org");
    let int = pki.intermediate("int", "/CN=cli intermediate", &root);
    let tsa_root = pki.root("tsaroot", "/CN=cli TSA root");
    let tsa = pki.tsa("tsa", "cli tsa", &tsa_root, true);
    let policy_key = dir.path().join("policy.key");
    let o = cilock(&["keygen", "-o", p(&policy_key)]);
    assert!(o.status.success(), "{}", text(&o));
    let digest = hex::encode(sha2::Sha256::digest(b"app binary"));
    Setup {
        dir,
        pki,
        root,
        int,
        tsa_root,
        tsa,
        policy_key,
        digest,
    }
}

impl Setup {
    fn leaf(&self, name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Issued {
        self.pki.issue(
            name,
            "/CN=builder/O=Example Org",
            &self.int,
            &fulcio_leaf_ext(
                "spiffe://example.com/build",
                "builder@example.com",
                "build.example.com",
                ISSUER,
                REPO,
            ),
            not_before,
            not_after,
        )
    }

    /// `cilock sign` of a "build" collection statement with the leaf's key
    /// and certificate; returns the exit output and the envelope path.
    fn sign_attestation(&self, leaf: &Issued, extra: &[&str]) -> (Output, std::path::PathBuf) {
        let st = json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "subject": [{"name": "https://witness.dev/attestations/product/v0.1/file:app",
                         "digest": {"sha256": self.digest}}],
            "predicateType": "https://witness.testifysec.com/attestation-collection/v0.1",
            "predicate": {"name": "build", "attestations": [{
                "type": "https://witness.dev/attestations/command-run/v0.1",
                "attestation": {"cmd": ["make"], "exitcode": 0},
                "starttime": "2026-08-01T10:00:00Z", "endtime": "2026-08-01T10:00:01Z"}]}
        });
        let st_file = self.dir.path().join("statement.json");
        std::fs::write(&st_file, serde_json::to_vec(&st).unwrap()).unwrap();
        let out = self.dir.path().join(format!("{}.att.json", leaf.name));
        let mut args = vec![
            "sign",
            "-t",
            "application/vnd.in-toto+json",
            "-k",
            p(&leaf.key),
            "-f",
            p(&st_file),
            "-o",
            p(&out),
        ];
        args.extend_from_slice(extra);
        (cilock(&args), out)
    }

    fn policy(&self, commonname: &str, with_tsa: bool) -> std::path::PathBuf {
        let mut tsas = json!({});
        if with_tsa {
            tsas = json!({"tsa": {"certificate": b64(&self.tsa_root.pem())}});
        }
        let policy = json!({
            "expires": "2099-01-01T00:00:00Z",
            "roots": {"ca": {"certificate": b64(&self.root.pem())}},
            "timestampauthorities": tsas,
            "steps": {"build": {
                "name": "build",
                "functionaries": [{"type": "root", "certConstraint": {
                    "commonname": commonname, "dnsnames": ["build.example.com"],
                    "emails": ["builder@example.com"], "organizations": ["Example Org"],
                    "uris": ["spiffe://example.com/build"], "roots": ["ca"],
                    "extensions": {"issuer": ISSUER, "sourceRepositoryURI": REPO}}}],
                "attestations": [{"type": "https://witness.dev/attestations/command-run/v0.1"}]
            }}
        });
        let signed = self.dir.path().join("policy.signed.json");
        sign_policy(
            cilock,
            &policy,
            &self.policy_key,
            &self.dir.path().join("policy.json"),
            &signed,
        );
        signed
    }

    fn verify(&self, policy: &Path, att: &Path) -> Output {
        let pubkey = format!("{}.pub", p(&self.policy_key));
        cilock(&[
            "verify",
            "-p",
            p(policy),
            "-k",
            &pubkey,
            "-a",
            p(att),
            "-s",
            &self.digest,
        ])
    }
}

#[test]
fn sign_with_certificate_and_verify_root_functionary() {
    let s = setup();
    let now = OffsetDateTime::now_utc();
    let leaf = s.leaf("leaf", now - Duration::hours(1), now + Duration::days(1));
    let (o, att) = s.sign_attestation(
        &leaf,
        &[
            "--certificate",
            p(&leaf.cert),
            "--intermediates",
            p(&s.int.cert),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The envelope carries base64 of the PEM texts, as Witness writes them.
    let env: Value = serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
    let sig = &env["signatures"][0];
    let pem = |v: &Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        pem(&sig["certificate"]),
        String::from_utf8(leaf.pem()).unwrap()
    );
    assert_eq!(sig["intermediates"].as_array().unwrap().len(), 1);
    assert_eq!(
        pem(&sig["intermediates"][0]),
        String::from_utf8(s.int.pem()).unwrap()
    );

    let o = s.verify(&s.policy("builder", false), &att);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("step \"build\": PASS"), "{out}");
    assert!(
        out.contains("(certificate \"CN=builder, O=Example Org\", root ca)"),
        "{out}"
    );

    // A common-name constraint the certificate does not meet: exit 1.
    let o = s.verify(&s.policy("deployer", false), &att);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o)
            .contains("common name \"deployer\" required but the certificate has [\"builder\"]"),
        "{}",
        text(&o)
    );

    // Without the intermediate the chain is incomplete: exit 1.
    let (o, bare) = s.sign_attestation(&leaf, &["--certificate", p(&leaf.cert)]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s.verify(&s.policy("builder", false), &bare);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("does not chain to a trusted root"),
        "{}",
        text(&o)
    );

    // A certificate for another key is refused at signing (exit 2).
    let other = s.leaf("other", now - Duration::hours(1), now + Duration::days(1));
    let (o, _) = s.sign_attestation(&leaf, &["--certificate", p(&other.cert)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not the signing key"), "{}", text(&o));
}

#[test]
fn timestamped_short_lived_certificate_verifies_after_expiry() {
    let s = setup();
    let now = OffsetDateTime::now_utc();
    let expires = now + Duration::seconds(3);
    let leaf = s.leaf("short", now - Duration::minutes(1), expires);
    let (o, att) = s.sign_attestation(
        &leaf,
        &[
            "--certificate",
            p(&leaf.cert),
            "--intermediates",
            p(&s.int.cert),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Timestamp the raw signature bytes with the TSA, as `witness run -t` does.
    let mut env: Value = serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(env["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    let token = s.pki.timestamp(&s.tsa, &[], &sig, "sha256", true, "sha256");
    env["signatures"][0]["timestamps"] = json!([{"type": "tsp", "data": b64(&token)}]);
    let stamped = s.dir.path().join("stamped.json");
    std::fs::write(&stamped, serde_json::to_vec(&env).unwrap()).unwrap();
    while OffsetDateTime::now_utc() <= expires + Duration::seconds(1) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let with_tsa = s.policy("builder", true);
    let o = s.verify(&with_tsa, &stamped);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("by TSA tsa)"), "{}", text(&o));
    // The same envelope without its timestamp: the certificate has expired.
    let o = s.verify(&with_tsa, &att);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o)
            .contains("the policy has timestamp authorities but the signature has no timestamp"),
        "{}",
        text(&o)
    );
    let o = s.verify(&s.policy("builder", false), &att);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not valid at"), "{}", text(&o));
}
