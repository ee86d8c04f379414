//! Keys and DSSE against real Witness fixtures and independent
//! implementations (OpenSSL CLI, Python `cryptography`).

use std::path::{Path, PathBuf};
use std::process::Command;

use cilock_evidence::dsse::{self, Envelope};
use cilock_evidence::keys::{key_id_of_public_pem, KeyAlgorithm, KeyError, Signer, Verifier};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

const TESTPUB_KEYID: &str = "ae2dcc989ea9c109a36e8eba5c4bc16d8fafcfe8e1a614164670d50aedacd647";
const TESTPUB2_KEYID: &str = "5e8c57df8ae58fe9a29b29f9993e2fc3b25bd75eb2754f353880bad4b9ebfdb3";

#[test]
fn witness_keyids_match_sha256_of_pem() {
    assert_eq!(
        key_id_of_public_pem(&read("witness/testpub.pem")).unwrap(),
        TESTPUB_KEYID
    );
    assert_eq!(
        key_id_of_public_pem(&read("witness/testpub2.pem")).unwrap(),
        TESTPUB2_KEYID
    );
    // The private keys give the same ids.
    let s = Signer::from_pem(&read("witness/testkey.pem")).unwrap();
    assert_eq!(s.algorithm(), KeyAlgorithm::Ed25519);
    assert_eq!(s.key_id(), TESTPUB_KEYID);
    assert_eq!(
        s.public_key_pem().as_bytes(),
        read("witness/testpub.pem").as_slice()
    );
    let s2 = Signer::from_pem(&read("witness/testkey2.pem")).unwrap();
    assert_eq!(s2.algorithm(), KeyAlgorithm::Rsa);
    assert_eq!(s2.key_id(), TESTPUB2_KEYID);
    // failkey is a SEC1 "EC PRIVATE KEY" (P-256) and not in the policy.
    let f = Signer::from_pem(&read("witness/failkey.pem")).unwrap();
    assert_eq!(f.algorithm(), KeyAlgorithm::EcdsaP256);
    assert_ne!(f.key_id(), TESTPUB_KEYID);
    let cilock_pub = key_id_of_public_pem(&read("cilock/policy-pub.pem")).unwrap();
    assert!(cilock_pub.starts_with("9346a114"), "{cilock_pub}");
}

#[test]
fn witness_envelopes_verify_with_testpub() {
    let v = Verifier::from_pem(&read("witness/testpub.pem")).unwrap();
    for f in ["witness/cdx-att.json", "witness/spdx-att.json"] {
        let env = Envelope::from_json(&read(f)).unwrap();
        let ok = env.verify(std::slice::from_ref(&v), 1).unwrap();
        assert_eq!(ok[0].key_id(), TESTPUB_KEYID);
        // One byte of payload or signature changed: fails.
        let mut bad = env.clone();
        bad.payload[10] ^= 0x01;
        assert!(bad.verify(std::slice::from_ref(&v), 1).is_err());
        let mut bad = env.clone();
        bad.signatures[0].sig[5] ^= 0x01;
        assert!(bad.verify(std::slice::from_ref(&v), 1).is_err());
        // Wrong key: fails.
        let other = Verifier::from_pem(&read("witness/testpub2.pem")).unwrap();
        assert!(env.verify(&[other], 1).is_err());
    }
    let signed_policy = Envelope::from_json(&read("cilock/policy-signed.json")).unwrap();
    let pv = Verifier::from_pem(&read("cilock/policy-pub.pem")).unwrap();
    signed_policy.verify(&[pv], 1).unwrap();
}

#[test]
fn rsa_pss_and_pkcs1_roundtrip_with_witness_rsa_key() {
    let s = Signer::from_pem(&read("witness/testkey2.pem")).unwrap();
    let v = Verifier::from_pem(&read("witness/testpub2.pem")).unwrap();
    let env = dsse::sign("text/plain", b"hello".to_vec(), &s).unwrap();
    env.verify(std::slice::from_ref(&v), 1).unwrap();
}

#[test]
fn unknown_and_malformed_keys_are_typed_errors() {
    assert!(matches!(
        Signer::from_pem(b"not a key"),
        Err(KeyError::Pem(_))
    ));
    assert!(matches!(
        Verifier::from_pem(b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n"),
        Err(KeyError::Pem(_))
    ));
    // A DSA-like unknown OID in an SPKI.
    let der = [
        0x30, 0x0d, 0x30, 0x07, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x0c, 0x03, 0x02, 0x00, 0x01,
    ];
    let pem = cilock_evidence::keys::encode_pem("PUBLIC KEY", &der);
    assert!(matches!(
        Verifier::from_pem(pem.as_bytes()),
        Err(KeyError::Unsupported(_))
    ));
    let pem = cilock_evidence::keys::encode_pem("PUBLIC KEY", &[0x30, 0x80]);
    assert!(matches!(
        Verifier::from_pem(pem.as_bytes()),
        Err(KeyError::Der { .. })
    ));
    let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert!(matches!(
        Signer::from_pem(enc.as_bytes()),
        Err(KeyError::Encrypted)
    ));
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// cilock signs (P-256, Ed25519); Python `cryptography` rebuilds PAE from
/// the envelope JSON and verifies the signature with the public PEM.
#[test]
fn python_cryptography_verifies_cilock_signatures() {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 with `cryptography` is required (pip install cryptography)"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
env = json.load(open(sys.argv[1]))
pub = serialization.load_pem_public_key(open(sys.argv[2], 'rb').read())
payload = base64.b64decode(env['payload'])
t = env['payloadType'].encode()
pae = b'DSSEv1 %d %s %d %s' % (len(t), t, len(payload), payload)
sig = base64.b64decode(env['signatures'][0]['sig'])
if isinstance(pub, ed25519.Ed25519PublicKey):
    pub.verify(sig, pae)
else:
    pub.verify(sig, pae, ec.ECDSA(hashes.SHA256()))
# and the private key PEM cilock wrote must load too
serialization.load_pem_private_key(open(sys.argv[3], 'rb').read(), password=None)
print('OK')
"#;
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::EcdsaP384,
    ] {
        let (signer, priv_pem) = Signer::generate(alg).unwrap();
        let env = dsse::sign(
            "application/vnd.in-toto+json",
            br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#.to_vec(),
            &signer,
        )
        .unwrap();
        let e = dir.path().join(format!("{alg}.json"));
        let p = dir.path().join(format!("{alg}.pub"));
        let k = dir.path().join(format!("{alg}.key"));
        std::fs::write(&e, env.to_json()).unwrap();
        std::fs::write(&p, signer.public_key_pem()).unwrap();
        std::fs::write(&k, &priv_pem).unwrap();
        let out = run(Command::new("python3")
            .args(["-c", script])
            .arg(&e)
            .arg(&p)
            .arg(&k));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{alg}");
        // Tampered envelope: Python must reject it (the check can fail).
        let mut bad = env.clone();
        bad.payload.push(b' ');
        std::fs::write(&e, bad.to_json()).unwrap();
        let st = Command::new("python3")
            .args(["-c", script])
            .arg(&e)
            .arg(&p)
            .arg(&k)
            .output()
            .unwrap();
        assert!(
            !st.status.success(),
            "{alg}: python accepted a tampered envelope"
        );
    }
}

/// OpenSSL makes keys and signatures over a PAE; cilock loads the keys and
/// verifies the signatures. OpenSSL also reads the keys cilock generates.
#[test]
fn openssl_signatures_verify_in_cilock() {
    assert!(have("openssl", "version"), "the openssl CLI is required");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pae = dsse::pae("application/vnd.in-toto+json", br#"{"hello":"world"}"#);
    std::fs::write(d.join("pae.bin"), &pae).unwrap();
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "ec256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            &["-sha256"],
        ),
        (
            "ec384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            &["-sha256"],
        ),
        (
            "rsa-pss-max",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            &[
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:max",
            ],
        ),
        (
            "rsa-pss-20",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            &[
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:20",
            ],
        ),
        (
            "rsa-pkcs1",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            &["-sha256"],
        ),
    ];
    for (name, genopts, sigopts) in cases {
        let key = d.join(format!("{name}.key"));
        let pubk = d.join(format!("{name}.pub"));
        let sig = d.join(format!("{name}.sig"));
        run(Command::new("openssl")
            .arg("genpkey")
            .args(*genopts)
            .arg("-out")
            .arg(&key));
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&pubk));
        run(Command::new("openssl")
            .arg("dgst")
            .args(*sigopts)
            .arg("-sign")
            .arg(&key)
            .arg("-out")
            .arg(&sig)
            .arg(d.join("pae.bin")));
        let v = Verifier::from_file(&pubk).unwrap();
        let s = std::fs::read(&sig).unwrap();
        v.verify(&pae, &s).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(v.verify(b"other", &s).is_err(), "{name}");
        // The OpenSSL private key loads as a cilock signer with the same id.
        let signer = Signer::from_file(&key).unwrap();
        assert_eq!(signer.key_id(), v.key_id(), "{name}");
        // The key id is sha256 of the (Go-identical) PEM OpenSSL wrote.
        let pem = std::fs::read(&pubk).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&pem)),
            v.key_id(),
            "{name}"
        );
        // And OpenSSL verifies what cilock signs with that key.
        let mine = signer.sign(&pae).unwrap();
        std::fs::write(&sig, &mine).unwrap();
        let mut verify = Command::new("openssl");
        verify.arg("dgst").args(*sigopts);
        if name.starts_with("rsa") && !name.contains("pss") {
            // cilock signs RSA with PSS: tell OpenSSL.
            verify.args([
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:auto",
            ]);
        }
        if name.contains("pss") {
            verify.args(["-sigopt", "rsa_pss_saltlen:auto"]);
        }
        run(verify
            .arg("-verify")
            .arg(&pubk)
            .arg("-signature")
            .arg(&sig)
            .arg(d.join("pae.bin")));
    }
    // Ed25519 (OpenSSL's PKCS#8 v1) through pkeyutl -rawin.
    let key = d.join("ed.key");
    let pubk = d.join("ed.pub");
    let sig = d.join("ed.sig");
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ED25519", "-out"])
        .arg(&key));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&pubk));
    run(Command::new("openssl")
        .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(&key)
        .arg("-in")
        .arg(d.join("pae.bin"))
        .arg("-out")
        .arg(&sig));
    let v = Verifier::from_file(&pubk).unwrap();
    v.verify(&pae, &std::fs::read(&sig).unwrap()).unwrap();
    assert_eq!(Signer::from_file(&key).unwrap().key_id(), v.key_id());
    // OpenSSL 3.0 reads the private keys cilock generates (Ed25519 as v1).
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
        let (signer, pem) = Signer::generate(alg).unwrap();
        let k = d.join("gen.key");
        std::fs::write(&k, pem).unwrap();
        let out = run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&k));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            signer.public_key_pem(),
            "{alg}"
        );
    }
}
