//! Signing keys, verification keys and key ids as Witness computes them.
//!
//! - [`Signer`] loads a PEM private key (PKCS#8 ECDSA P-256/P-384, Ed25519 in
//!   OpenSSL's PKCS#8 v1 or ring's v2, RSA in PKCS#8 or PKCS#1, SEC1
//!   `EC PRIVATE KEY`) and signs the way Witness does: ECDSA as ASN.1 DER over
//!   SHA-256 (for P-384 too, Witness's default hash), Ed25519 pure, RSA-PSS
//!   with SHA-256.
//! - [`Verifier`] loads a `PUBLIC KEY` (SPKI) PEM or a certificate PEM and
//!   checks signatures (RSA: PSS with any salt length, then PKCS#1 v1.5).
//! - Key ids are the lowercase hex SHA-256 of the Go-style public key PEM
//!   (64-column base64 lines, trailing newline): what `sha256sum pub.pem`
//!   prints for a canonically formatted key file.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use ring::signature::{self, KeyPair as _};
use sha2::{Digest, Sha256};

/// An error about a key or a signature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read.
    #[error("reading key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The input is not PEM, or holds no block of a usable type.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The DER inside the PEM is malformed.
    #[error("malformed {what}: {detail}")]
    Der {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The key's algorithm (or curve) is not supported.
    #[error("unsupported key type: {0}")]
    Unsupported(String),
    /// The private key is encrypted (not supported; decrypt it first).
    #[error("encrypted private keys are not supported; decrypt the key first (openssl pkey -in KEY -out PLAIN)")]
    Encrypted,
    /// The key bytes were rejected by the crypto library.
    #[error("rejected {what} key: {detail}")]
    Rejected {
        /// Which kind of key.
        what: &'static str,
        /// The library's reason.
        detail: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The signature does not verify with this key.
    #[error("signature does not verify with key {keyid}")]
    BadSignature {
        /// The key id of the verifier.
        keyid: String,
    },
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// Key algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA (any size ring accepts: 2048–8192 bits).
    Rsa,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa => "rsa",
        })
    }
}

// ---------------------------------------------------------------------------
// OIDs (DER content bytes).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Minimal, panic-free DER reading and writing (what key files need).
pub(crate) mod der {
    /// DER tags used here.
    pub const SEQUENCE: u8 = 0x30;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;

    /// Reads one TLV: returns (tag, content, rest). Only single-byte tags
    /// and definite lengths (up to 4 length bytes).
    pub fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&len0, mut rest) = rest.split_first()?;
        let len = if len0 < 0x80 {
            usize::from(len0)
        } else {
            let n = usize::from(len0 & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for _ in 0..n {
                let (&b, r) = rest.split_first()?;
                len = len.checked_mul(256)?.checked_add(usize::from(b))?;
                rest = r;
            }
            len
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        Some((tag, content, rest))
    }

    /// Reads one TLV that must have tag `tag`.
    pub fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        match read(input)? {
            (t, c, r) if t == tag => Some((c, r)),
            _ => None,
        }
    }

    /// Encodes one TLV.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            let significant = bytes.get(skip..).unwrap_or(&[]);
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
        out.extend_from_slice(content);
        out
    }

    /// Encodes an unsigned big-endian integer as DER INTEGER.
    pub fn uint(bytes: &[u8]) -> Vec<u8> {
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let mut v: Vec<u8> = bytes.get(skip..).unwrap_or(&[]).to_vec();
        if v.first().is_none_or(|b| *b & 0x80 != 0) {
            v.insert(0, 0);
        }
        tlv(INTEGER, &v)
    }
}

// ---------------------------------------------------------------------------
// PEM

/// One PEM block: its label and the decoded DER.
#[derive(Clone, Debug)]
pub struct PemBlock {
    /// The label, e.g. `PUBLIC KEY`.
    pub label: String,
    /// The decoded bytes.
    pub der: Vec<u8>,
}

/// Parses every PEM block in `input` (text outside blocks is ignored).
pub fn parse_pem(input: &[u8]) -> Result<Vec<PemBlock>, KeyError> {
    let text = std::str::from_utf8(input).map_err(|_| KeyError::Pem("not UTF-8 text".into()))?;
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            if l.contains(':') {
                // RFC 1421 headers (Proc-Type: 4,ENCRYPTED …).
                if l.starts_with("Proc-Type") && l.contains("ENCRYPTED") {
                    return Err(KeyError::Encrypted);
                }
                continue;
            }
            b64.push_str(l);
        }
        if !closed {
            return Err(KeyError::Pem(format!("block {label:?} has no END line")));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| KeyError::Pem(format!("block {label:?}: bad base64: {e}")))?;
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
        });
    }
    if blocks.is_empty() {
        return Err(KeyError::Pem("no PEM block found".into()));
    }
    Ok(blocks)
}

/// Encodes DER as PEM exactly like Go's `pem.EncodeToMemory`: 64-column
/// base64 lines, each ending with `\n`.
pub fn encode_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn key_id_of_spki(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(
        encode_pem("PUBLIC KEY", spki_der).as_bytes(),
    ))
}

/// The Witness key id of a public key PEM (`PUBLIC KEY` or a certificate):
/// the SPKI is re-encoded Go-style first, so line width and trailing
/// whitespace of the input do not matter.
pub fn key_id_of_public_pem(pem: &[u8]) -> Result<String, KeyError> {
    Ok(Verifier::from_pem(pem)?.key_id().to_string())
}

// ---------------------------------------------------------------------------
// SPKI

fn spki(alg: KeyAlgorithm, key: &[u8]) -> Vec<u8> {
    let alg_id = match alg {
        KeyAlgorithm::EcdsaP256 => [
            der::tlv(der::OID, OID_EC_PUBLIC_KEY),
            der::tlv(der::OID, OID_P256),
        ]
        .concat(),
        KeyAlgorithm::EcdsaP384 => [
            der::tlv(der::OID, OID_EC_PUBLIC_KEY),
            der::tlv(der::OID, OID_P384),
        ]
        .concat(),
        KeyAlgorithm::Ed25519 => der::tlv(der::OID, OID_ED25519),
        KeyAlgorithm::Rsa => [der::tlv(der::OID, OID_RSA), der::tlv(der::NULL, &[])].concat(),
    };
    let mut bits = vec![0u8];
    bits.extend_from_slice(key);
    der::tlv(
        der::SEQUENCE,
        &[
            der::tlv(der::SEQUENCE, &alg_id),
            der::tlv(der::BIT_STRING, &bits),
        ]
        .concat(),
    )
}

/// Parses an AlgorithmIdentifier's content: (algorithm OID, curve OID if any).
fn parse_alg_id(content: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (oid, rest) = der::expect(content, der::OID)?;
    let curve = match der::read(rest) {
        Some((der::OID, c, _)) => Some(c),
        _ => None,
    };
    Some((oid, curve))
}

fn algorithm_of(oid: &[u8], curve: Option<&[u8]>) -> Result<KeyAlgorithm, KeyError> {
    if oid == OID_ED25519 {
        Ok(KeyAlgorithm::Ed25519)
    } else if oid == OID_RSA {
        Ok(KeyAlgorithm::Rsa)
    } else if oid == OID_EC_PUBLIC_KEY {
        match curve {
            Some(c) if c == OID_P256 => Ok(KeyAlgorithm::EcdsaP256),
            Some(c) if c == OID_P384 => Ok(KeyAlgorithm::EcdsaP384),
            Some(c) => Err(KeyError::Unsupported(format!(
                "EC curve with OID bytes {}",
                hex::encode(c)
            ))),
            None => Err(KeyError::Unsupported("EC key without a named curve".into())),
        }
    } else {
        Err(KeyError::Unsupported(format!(
            "key algorithm with OID bytes {}",
            hex::encode(oid)
        )))
    }
}

/// Splits an SPKI into (algorithm, raw public key bytes).
fn parse_spki(spki_der: &[u8]) -> Result<(KeyAlgorithm, Vec<u8>), KeyError> {
    let bad = |d: &str| KeyError::Der {
        what: "SubjectPublicKeyInfo",
        detail: d.to_string(),
    };
    let (body, trailing) =
        der::expect(spki_der, der::SEQUENCE).ok_or_else(|| bad("not a SEQUENCE"))?;
    if !trailing.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let (alg_id, rest) =
        der::expect(body, der::SEQUENCE).ok_or_else(|| bad("no AlgorithmIdentifier"))?;
    let (oid, curve) = parse_alg_id(alg_id).ok_or_else(|| bad("bad AlgorithmIdentifier"))?;
    let alg = algorithm_of(oid, curve)?;
    let (bits, _) =
        der::expect(rest, der::BIT_STRING).ok_or_else(|| bad("no public key BIT STRING"))?;
    let key = match bits.split_first() {
        Some((0, key)) if !key.is_empty() => key.to_vec(),
        _ => return Err(bad("public key BIT STRING has unused bits or is empty")),
    };
    Ok((alg, key))
}

// ---------------------------------------------------------------------------
// Signer

enum SignerKey {
    P256(signature::EcdsaKeyPair),
    P384(Box<p384::ecdsa::SigningKey>),
    Ed25519(signature::Ed25519KeyPair),
    Rsa(signature::RsaKeyPair),
}

/// A private key that signs as Witness does.
pub struct Signer {
    key: SignerKey,
    alg: KeyAlgorithm,
    spki_der: Vec<u8>,
    key_id: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn rejected(what: &'static str) -> impl Fn(ring::error::KeyRejected) -> KeyError {
    move |e| KeyError::Rejected {
        what,
        detail: e.to_string(),
    }
}

/// The private scalar of a SEC1 `ECPrivateKey`, with its curve and public
/// point when present.
struct Sec1<'a> {
    d: &'a [u8],
    curve: Option<&'a [u8]>,
    public: Option<&'a [u8]>,
}

fn parse_sec1(input: &[u8]) -> Result<Sec1<'_>, KeyError> {
    let bad = |d: &str| KeyError::Der {
        what: "EC private key",
        detail: d.to_string(),
    };
    let (body, _) = der::expect(input, der::SEQUENCE).ok_or_else(|| bad("not a SEQUENCE"))?;
    let (version, rest) = der::expect(body, der::INTEGER).ok_or_else(|| bad("no version"))?;
    if version != [1] {
        return Err(bad("version is not 1"));
    }
    let (d, mut rest) =
        der::expect(rest, der::OCTET_STRING).ok_or_else(|| bad("no private key"))?;
    let mut curve = None;
    let mut public = None;
    while let Some((tag, content, r)) = der::read(rest) {
        match tag {
            0xa0 => curve = der::expect(content, der::OID).map(|(c, _)| c),
            0xa1 => {
                public =
                    der::expect(content, der::BIT_STRING).and_then(|(b, _)| match b.split_first() {
                        Some((0, p)) => Some(p),
                        _ => None,
                    })
            }
            _ => {}
        }
        rest = r;
    }
    Ok(Sec1 { d, curve, public })
}

impl Signer {
    /// Loads a private key PEM: `PRIVATE KEY` (PKCS#8: EC P-256/P-384,
    /// Ed25519 v1 or v2, RSA), `EC PRIVATE KEY` (SEC1) or `RSA PRIVATE KEY`
    /// (PKCS#1). The first usable block wins.
    pub fn from_pem(pem: &[u8]) -> Result<Signer, KeyError> {
        let blocks = parse_pem(pem)?;
        for b in &blocks {
            match b.label.as_str() {
                "PRIVATE KEY" => return Self::from_pkcs8(&b.der),
                "EC PRIVATE KEY" => return Self::from_sec1(&b.der, None),
                "RSA PRIVATE KEY" => {
                    let kp = signature::RsaKeyPair::from_der(&b.der).map_err(rejected("RSA"))?;
                    return Ok(Self::rsa(kp));
                }
                "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
                _ => continue,
            }
        }
        let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
        Err(KeyError::Pem(format!(
            "no private key block (found {})",
            labels.join(", ")
        )))
    }

    /// Loads a private key PEM file.
    pub fn from_file(path: &Path) -> Result<Signer, KeyError> {
        let bytes = crate::limits::read_file(
            path,
            crate::limits::MAX_KEY_BYTES,
            "key file",
            crate::limits::any_start,
        )
        .map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&bytes)
    }

    fn rsa(kp: signature::RsaKeyPair) -> Signer {
        let spki_der = spki(KeyAlgorithm::Rsa, kp.public().as_ref());
        Self::finish(SignerKey::Rsa(kp), KeyAlgorithm::Rsa, spki_der)
    }

    fn finish(key: SignerKey, alg: KeyAlgorithm, spki_der: Vec<u8>) -> Signer {
        let key_id = key_id_of_spki(&spki_der);
        Signer {
            key,
            alg,
            spki_der,
            key_id,
        }
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Signer, KeyError> {
        let bad = |d: &str| KeyError::Der {
            what: "PKCS#8 private key",
            detail: d.to_string(),
        };
        let (body, _) = der::expect(pkcs8, der::SEQUENCE).ok_or_else(|| bad("not a SEQUENCE"))?;
        let (_version, rest) = der::expect(body, der::INTEGER).ok_or_else(|| bad("no version"))?;
        let (alg_id, rest) =
            der::expect(rest, der::SEQUENCE).ok_or_else(|| bad("no AlgorithmIdentifier"))?;
        let (oid, curve) = parse_alg_id(alg_id).ok_or_else(|| bad("bad AlgorithmIdentifier"))?;
        let alg = algorithm_of(oid, curve)?;
        let rng = ring::rand::SystemRandom::new();
        match alg {
            KeyAlgorithm::EcdsaP256 => {
                let kp = signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    pkcs8,
                    &rng,
                )
                .map_err(rejected("ECDSA P-256"))?;
                let spki_der = spki(alg, kp.public_key().as_ref());
                Ok(Self::finish(SignerKey::P256(kp), alg, spki_der))
            }
            KeyAlgorithm::EcdsaP384 => {
                let (inner, _) =
                    der::expect(rest, der::OCTET_STRING).ok_or_else(|| bad("no private key"))?;
                Self::from_sec1(inner, Some(OID_P384))
            }
            KeyAlgorithm::Ed25519 => {
                let kp = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(rejected("Ed25519"))?;
                let spki_der = spki(alg, kp.public_key().as_ref());
                Ok(Self::finish(SignerKey::Ed25519(kp), alg, spki_der))
            }
            KeyAlgorithm::Rsa => {
                let kp = signature::RsaKeyPair::from_pkcs8(pkcs8).map_err(rejected("RSA"))?;
                Ok(Self::rsa(kp))
            }
        }
    }

    fn from_sec1(sec1: &[u8], outer_curve: Option<&[u8]>) -> Result<Signer, KeyError> {
        let k = parse_sec1(sec1)?;
        let curve = k.curve.or(outer_curve).ok_or_else(|| KeyError::Der {
            what: "EC private key",
            detail: "no named curve".into(),
        })?;
        match algorithm_of(OID_EC_PUBLIC_KEY, Some(curve))? {
            KeyAlgorithm::EcdsaP256 => {
                let public = k.public.ok_or_else(|| KeyError::Der {
                    what: "EC private key",
                    detail: "P-256 key without its public point".into(),
                })?;
                let rng = ring::rand::SystemRandom::new();
                let kp = signature::EcdsaKeyPair::from_private_key_and_public_key(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    k.d,
                    public,
                    &rng,
                )
                .map_err(rejected("ECDSA P-256"))?;
                let spki_der = spki(KeyAlgorithm::EcdsaP256, kp.public_key().as_ref());
                Ok(Self::finish(
                    SignerKey::P256(kp),
                    KeyAlgorithm::EcdsaP256,
                    spki_der,
                ))
            }
            KeyAlgorithm::EcdsaP384 => {
                let sk =
                    p384::ecdsa::SigningKey::from_slice(k.d).map_err(|e| KeyError::Rejected {
                        what: "ECDSA P-384",
                        detail: e.to_string(),
                    })?;
                let point = sk.verifying_key().to_encoded_point(false);
                if let Some(public) = k.public {
                    if public != point.as_bytes() {
                        return Err(KeyError::Rejected {
                            what: "ECDSA P-384",
                            detail: "public point does not match the private key".into(),
                        });
                    }
                }
                let spki_der = spki(KeyAlgorithm::EcdsaP384, point.as_bytes());
                Ok(Self::finish(
                    SignerKey::P384(Box::new(sk)),
                    KeyAlgorithm::EcdsaP384,
                    spki_der,
                ))
            }
            other => Err(KeyError::Unsupported(format!("{other} in an EC key"))),
        }
    }

    /// Generates a key pair; returns the signer and its private key as PEM
    /// (PKCS#8 v1, readable by OpenSSL 3.0). Supported: ECDSA P-256 (the
    /// default elsewhere), ECDSA P-384 and Ed25519. RSA generation is not
    /// supported (ring cannot generate RSA keys).
    pub fn generate(alg: KeyAlgorithm) -> Result<(Signer, String), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let gen_err = |e: ring::error::Unspecified| KeyError::Generate(e.to_string());
        let pkcs8: Vec<u8> = match alg {
            KeyAlgorithm::EcdsaP256 => signature::EcdsaKeyPair::generate_pkcs8(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &rng,
            )
            .map_err(gen_err)?
            .as_ref()
            .to_vec(),
            KeyAlgorithm::EcdsaP384 => signature::EcdsaKeyPair::generate_pkcs8(
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                &rng,
            )
            .map_err(gen_err)?
            .as_ref()
            .to_vec(),
            KeyAlgorithm::Ed25519 => {
                // ring writes PKCS#8 v2, which OpenSSL 3.0 cannot read: write
                // the v1 form (RFC 8410) from a fresh seed instead.
                let mut seed = [0u8; 32];
                rng.fill(&mut seed).map_err(gen_err)?;
                let alg_id = der::tlv(der::SEQUENCE, &der::tlv(der::OID, OID_ED25519));
                let inner = der::tlv(der::OCTET_STRING, &seed);
                der::tlv(
                    der::SEQUENCE,
                    &[
                        der::tlv(der::INTEGER, &[0]),
                        alg_id,
                        der::tlv(der::OCTET_STRING, &inner),
                    ]
                    .concat(),
                )
            }
            KeyAlgorithm::Rsa => {
                return Err(KeyError::Unsupported(
                    "generating RSA keys (use openssl genpkey, then load the PEM)".into(),
                ))
            }
        };
        let signer = Self::from_pkcs8(&pkcs8)?;
        Ok((signer, encode_pem("PRIVATE KEY", &pkcs8)))
    }

    /// The algorithm of this key.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    /// The Witness key id (hex SHA-256 of [`Signer::public_key_pem`]).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as Go-style PEM (`PUBLIC KEY`, 64-column lines).
    pub fn public_key_pem(&self) -> String {
        encode_pem("PUBLIC KEY", &self.spki_der)
    }

    /// The public key's SPKI DER.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// A verifier for this signer's public key.
    pub fn verifier(&self) -> Result<Verifier, KeyError> {
        Verifier::from_spki_der(&self.spki_der, None)
    }

    /// Signs `msg`: ECDSA → ASN.1 DER over SHA-256, Ed25519 → pure,
    /// RSA → PSS with SHA-256.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let unspecified = |e: ring::error::Unspecified| KeyError::Sign(e.to_string());
        match &self.key {
            SignerKey::P256(kp) => Ok(kp.sign(&rng, msg).map_err(unspecified)?.as_ref().to_vec()),
            SignerKey::P384(sk) => {
                use p384::ecdsa::signature::hazmat::PrehashSigner;
                let digest = Sha256::digest(msg);
                let sig: p384::ecdsa::Signature = sk
                    .sign_prehash(&digest)
                    .map_err(|e| KeyError::Sign(e.to_string()))?;
                let raw = sig.to_bytes();
                let (r, s) = raw.split_at(raw.len() / 2);
                Ok(der::tlv(
                    der::SEQUENCE,
                    &[der::uint(r), der::uint(s)].concat(),
                ))
            }
            SignerKey::Ed25519(kp) => Ok(kp.sign(msg).as_ref().to_vec()),
            SignerKey::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(&signature::RSA_PSS_SHA256, &rng, msg, &mut sig)
                    .map_err(unspecified)?;
                Ok(sig)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Verifier

/// A public key (optionally from a certificate) that checks signatures.
#[derive(Clone)]
pub struct Verifier {
    alg: KeyAlgorithm,
    /// Raw key: EC point, Ed25519 32 bytes, or PKCS#1 RSAPublicKey.
    key: Vec<u8>,
    spki_der: Vec<u8>,
    key_id: String,
    certificate_der: Option<Vec<u8>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("alg", &self.alg)
            .field("key_id", &self.key_id)
            .field("from_certificate", &self.certificate_der.is_some())
            .finish()
    }
}

impl Verifier {
    /// Loads a `PUBLIC KEY` (SPKI) PEM or a `CERTIFICATE` PEM (the key of the
    /// first certificate is used). `RSA PUBLIC KEY` (PKCS#1) is accepted too.
    pub fn from_pem(pem: &[u8]) -> Result<Verifier, KeyError> {
        let blocks = parse_pem(pem)?;
        for b in &blocks {
            match b.label.as_str() {
                "PUBLIC KEY" => return Self::from_spki_der(&b.der, None),
                "RSA PUBLIC KEY" => {
                    return Self::from_spki_der(&spki(KeyAlgorithm::Rsa, &b.der), None)
                }
                "CERTIFICATE" => return Self::from_certificate_der(&b.der),
                _ => continue,
            }
        }
        let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
        Err(KeyError::Pem(format!(
            "no public key or certificate block (found {})",
            labels.join(", ")
        )))
    }

    /// Loads a public key or certificate PEM file.
    pub fn from_file(path: &Path) -> Result<Verifier, KeyError> {
        let bytes = crate::limits::read_file(
            path,
            crate::limits::MAX_KEY_BYTES,
            "key file",
            crate::limits::any_start,
        )
        .map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&bytes)
    }

    /// The key of a DER certificate (the certificate is kept, see
    /// [`Verifier::certificate_der`]).
    pub fn from_certificate_der(cert_der: &[u8]) -> Result<Verifier, KeyError> {
        use x509_parser::prelude::FromDer;
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(cert_der).map_err(|e| {
                KeyError::Der {
                    what: "certificate",
                    detail: e.to_string(),
                }
            })?;
        Self::from_spki_der(cert.public_key().raw, Some(cert_der.to_vec()))
    }

    fn from_spki_der(
        spki_der: &[u8],
        certificate_der: Option<Vec<u8>>,
    ) -> Result<Verifier, KeyError> {
        let (alg, key) = parse_spki(spki_der)?;
        // Re-encode so that the key id is computed over canonical DER.
        let canonical = spki(alg, &key);
        Ok(Verifier {
            alg,
            key,
            key_id: key_id_of_spki(&canonical),
            spki_der: canonical,
            certificate_der,
        })
    }

    /// The algorithm of this key.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    /// The Witness key id of the public key (never of the certificate).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as Go-style PEM.
    pub fn public_key_pem(&self) -> String {
        encode_pem("PUBLIC KEY", &self.spki_der)
    }

    /// The certificate this key came from, if any (DER).
    pub fn certificate_der(&self) -> Option<&[u8]> {
        self.certificate_der.as_deref()
    }

    /// Checks `sig` over `msg`. ECDSA: DER signature over SHA-256 (P-384:
    /// SHA-256, then SHA-384); Ed25519; RSA: PSS-SHA256 with any salt
    /// length, then PKCS#1 v1.5 SHA-256.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        let ok = match self.alg {
            KeyAlgorithm::EcdsaP256 => {
                ring_verify(&signature::ECDSA_P256_SHA256_ASN1, &self.key, msg, sig)
            }
            KeyAlgorithm::EcdsaP384 => {
                ring_verify(&signature::ECDSA_P384_SHA256_ASN1, &self.key, msg, sig)
                    || ring_verify(&signature::ECDSA_P384_SHA384_ASN1, &self.key, msg, sig)
            }
            KeyAlgorithm::Ed25519 => ring_verify(&signature::ED25519, &self.key, msg, sig),
            KeyAlgorithm::Rsa => {
                ring_verify(&signature::RSA_PSS_2048_8192_SHA256, &self.key, msg, sig)
                    || rsa_pss_any_salt(&self.key, msg, sig)
                    || ring_verify(&signature::RSA_PKCS1_2048_8192_SHA256, &self.key, msg, sig)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(KeyError::BadSignature {
                keyid: self.key_id.clone(),
            })
        }
    }
}

fn ring_verify(
    alg: &'static dyn signature::VerificationAlgorithm,
    key: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> bool {
    signature::UnparsedPublicKey::new(alg, key)
        .verify(msg, sig)
        .is_ok()
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with SHA-256 and MGF1-SHA-256 where the
/// salt length is recovered from the encoding (Go's `PSSSaltLengthAuto`).
fn rsa_pss_any_salt(pkcs1_public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use num_bigint::BigUint;
    let Some((body, _)) = der::expect(pkcs1_public, der::SEQUENCE) else {
        return false;
    };
    let Some((n, rest)) = der::expect(body, der::INTEGER) else {
        return false;
    };
    let Some((e, _)) = der::expect(rest, der::INTEGER) else {
        return false;
    };
    let n = BigUint::from_bytes_be(n);
    let e = BigUint::from_bytes_be(e);
    let mod_bits = n.bits() as usize;
    if !(2048..=8192).contains(&mod_bits) || e.bits() > 33 {
        return false;
    }
    let k = mod_bits.div_ceil(8);
    if sig.len() != k {
        return false;
    }
    let s = BigUint::from_bytes_be(sig);
    if s >= n {
        return false;
    }
    let m = s.modpow(&e, &n);
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let m_bytes = m.to_bytes_be();
    if m_bytes.len() > em_len {
        return false;
    }
    let mut em = vec![0u8; em_len - m_bytes.len()];
    em.extend_from_slice(&m_bytes);
    const H_LEN: usize = 32;
    if em_len < H_LEN + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let db_len = em_len - H_LEN - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let Some(h) = rest.get(..H_LEN) else {
        return false;
    };
    let top_bits = 8 * em_len - em_bits;
    let top_mask: u8 = if top_bits == 0 {
        0
    } else {
        0xffu8 << (8 - top_bits)
    };
    if masked_db.first().is_some_and(|b| b & top_mask != 0) {
        return false;
    }
    // MGF1-SHA256(h, db_len)
    let mut db = Vec::with_capacity(db_len + H_LEN);
    let mut counter: u32 = 0;
    while db.len() < db_len {
        let mut hasher = Sha256::new();
        hasher.update(h);
        hasher.update(counter.to_be_bytes());
        db.extend_from_slice(&hasher.finalize());
        counter = counter.wrapping_add(1);
    }
    db.truncate(db_len);
    for (d, m) in db.iter_mut().zip(masked_db) {
        *d ^= m;
    }
    if let Some(first) = db.first_mut() {
        *first &= !top_mask;
    }
    // DB = PS (zeros) || 0x01 || salt
    let Some(one) = db.iter().position(|b| *b != 0) else {
        return false;
    };
    if db.get(one) != Some(&1) {
        return false;
    }
    let salt = db.get(one + 1..).unwrap_or(&[]);
    let m_hash = Sha256::digest(msg);
    let mut hasher = Sha256::new();
    hasher.update([0u8; 8]);
    hasher.update(m_hash);
    hasher.update(salt);
    // Everything compared here is public (signature, message, key).
    h == &hasher.finalize()[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_and_verifier_are_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Signer>();
        assert_send_sync::<Verifier>();
    }

    #[test]
    fn der_length_forms() {
        let long = vec![7u8; 300];
        let enc = der::tlv(der::OCTET_STRING, &long);
        assert_eq!(&enc[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (t, c, r) = der::read(&enc).unwrap();
        assert_eq!((t, c.len(), r.len()), (der::OCTET_STRING, 300, 0));
        assert!(der::read(&enc[..100]).is_none());
        assert!(der::read(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert_eq!(der::uint(&[0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der::uint(&[0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(der::uint(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn pem_roundtrip_and_width() {
        let pem = encode_pem("PUBLIC KEY", &[1u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[1].len(), 64);
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        let blocks = parse_pem(pem.as_bytes()).unwrap();
        assert_eq!(blocks[0].der, vec![1u8; 100]);
        assert!(matches!(parse_pem(b"hello"), Err(KeyError::Pem(_))));
        assert!(matches!(
            parse_pem(b"-----BEGIN X-----\nAAAA\n"),
            Err(KeyError::Pem(_))
        ));
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
        ] {
            let (signer, pem) = Signer::generate(alg).unwrap();
            let again = Signer::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(again.key_id(), signer.key_id(), "{alg}");
            let v = Verifier::from_pem(signer.public_key_pem().as_bytes()).unwrap();
            assert_eq!(v.key_id(), signer.key_id());
            let sig = signer.sign(b"message").unwrap();
            v.verify(b"message", &sig).unwrap();
            assert!(matches!(
                v.verify(b"messagf", &sig),
                Err(KeyError::BadSignature { .. })
            ));
        }
        assert!(matches!(
            Signer::generate(KeyAlgorithm::Rsa),
            Err(KeyError::Unsupported(_))
        ));
    }
}
