//! RFC 3161 timestamps of DSSE signatures (witness-compat §1.5).
//!
//! A signature's `timestamps[]` entry of type `tsp` holds a DER
//! `TimeStampToken`: a CMS `ContentInfo` whose `SignedData` encapsulates a
//! `TSTInfo`. [`verify_token`] checks, in order:
//!
//! 1. the structure (ContentInfo → SignedData → eContent of type
//!    `id-ct-TSTInfo`, exactly one signer);
//! 2. the message imprint: the hash (SHA-256, as go-witness requests it;
//!    SHA-384/512 are accepted too) of the **raw signature bytes**;
//! 3. the signed attributes: `contentType` is `id-ct-TSTInfo`,
//!    `messageDigest` is the digest of the TSTInfo, and an ESS
//!    `signingCertificate(V2)` attribute, when present, names the signer
//!    certificate's hash;
//! 4. the signer's signature over the DER of the signed attributes with the
//!    TSA certificate's key (found by issuer and serial or subject key id
//!    among the token's certificates and the policy's TSA certificates);
//! 5. the TSA certificate: its extended key usage is exactly
//!    `timeStamping` and critical (RFC 3161 §2.3), and it is a policy TSA
//!    certificate or chains to one (through the token's certificates and
//!    the policy TSA's intermediates), valid at `genTime`.
//!
//! The returned `genTime` is the time the signing certificate's chain is
//! then checked at (see [`super::verify()`]).
//!
//! Parsing uses RustCrypto's `cms`/`x509-tsp`/`der`; `genTime` is read by
//! hand because `der`'s `GeneralizedTime` rejects the fractional seconds
//! RFC 3161 allows.

use cms::cert::x509::ext::pkix::name::GeneralName;
use cms::cert::x509::ext::Extensions;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier, SignerInfo, SignerInfos};
use der::asn1::{Int, ObjectIdentifier};
use der::{Any, Decode, Encode, Sequence, Tag, Tagged};
use ring::signature;
use sha2::{Digest, Sha256, Sha384, Sha512};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_tsp::{Accuracy, MessageImprint};

use crate::dsse::{SignatureTimestamp, TIMESTAMP_RFC3161};
use crate::keys::der as mini_der;

use super::x509::{self, CertError, TrustAnchor};

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SIGNING_CERTIFICATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.12");
const ID_SIGNING_CERTIFICATE_V2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");

const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

const CURVE_P256: &str = "1.2.840.10045.3.1.7";
const CURVE_P384: &str = "1.3.132.0.34";

/// Why a timestamp did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimestampError {
    /// The timestamp's `type` is not `tsp`.
    #[error("unsupported timestamp type {0:?} (only \"tsp\" is known)")]
    UnsupportedType(String),
    /// The token is not a well-formed TimeStampToken.
    #[error("malformed timestamp token: {0}")]
    Malformed(String),
    /// A hash or signature algorithm cilock does not verify.
    #[error("unsupported {what} algorithm {oid}")]
    UnsupportedAlgorithm {
        /// Which algorithm (message imprint, digest, signature).
        what: &'static str,
        /// Its OID.
        oid: String,
    },
    /// The token timestamps other data than this signature.
    #[error("the timestamp is not over this signature: its message imprint is {got}, the signature's {algorithm} is {want}")]
    ImprintMismatch {
        /// The imprint's hash algorithm.
        algorithm: &'static str,
        /// Hex imprint in the token.
        got: String,
        /// Hex hash of the signature.
        want: String,
    },
    /// The signed attributes are missing or wrong.
    #[error("timestamp signed attributes: {0}")]
    SignedAttributes(String),
    /// The TSA's certificate is neither in the token nor in the policy.
    #[error("the TSA signing certificate ({0}) is neither in the token nor among the policy's timestamp authorities")]
    SignerNotFound(String),
    /// The TSA's signature does not verify.
    #[error("the TSA signature does not verify with certificate {subject:?}")]
    BadSignature {
        /// The TSA certificate's subject.
        subject: String,
    },
    /// The TSA certificate is not a timestamping certificate.
    #[error("TSA certificate {subject:?}: {detail}")]
    NotTimestampingCertificate {
        /// The TSA certificate's subject.
        subject: String,
        /// What is wrong.
        detail: String,
    },
    /// The TSA certificate does not chain to a policy timestamp authority.
    #[error("TSA certificate not trusted: {0}")]
    Untrusted(#[source] CertError),
    /// The policy has no timestamp authorities.
    #[error("the policy has no timestamp authorities")]
    NoAuthorities,
}

/// A timestamp that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTimestamp {
    /// The TSA's `genTime` (UTC).
    pub gen_time: OffsetDateTime,
    /// The id of the policy timestamp authority it chains to.
    pub authority: String,
    /// The subject of the TSA's signing certificate.
    pub tsa_subject: String,
    /// The token's serial number (hex).
    pub serial: String,
    /// The TSA policy OID.
    pub policy: String,
}

/// `TSTInfo` (RFC 3161 §2.4.2) with `genTime` kept raw.
#[derive(Clone, Debug, Sequence)]
struct TstInfoRaw {
    version: Int,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    gen_time: Any,
    #[asn1(optional = "true")]
    accuracy: Option<Accuracy>,
    #[asn1(default = "Default::default")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    tsa: Option<GeneralName>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<Extensions>,
}

/// CMS `SignedData` (RFC 5652 §5.1) as `cms` defines it, but with the
/// certificate and CRL sets read as plain lists: OpenSSL's TSA repeats its
/// signing certificate when it is also in its `certs` chain, which a strict
/// DER `SET OF` rejects as a duplicate (Go's pkcs7 accepts it).
#[derive(Clone, Debug, Sequence)]
struct SignedDataView {
    version: CmsVersion,
    digest_algorithms: Any,
    encap_content_info: EncapsulatedContentInfo,
    #[asn1(
        context_specific = "0",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    certificates: Option<Vec<CertificateChoices>>,
    #[asn1(
        context_specific = "1",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    crls: Option<Vec<Any>>,
    signer_infos: SignerInfos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    fn from_oid(oid: &ObjectIdentifier) -> Option<HashAlg> {
        match *oid {
            ID_SHA1 => Some(HashAlg::Sha1),
            ID_SHA256 => Some(HashAlg::Sha256),
            ID_SHA384 => Some(HashAlg::Sha384),
            ID_SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "SHA-1",
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha384 => "SHA-384",
            HashAlg::Sha512 => "SHA-512",
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => {
                use sha1::Digest as _;
                sha1::Sha1::digest(data).to_vec()
            }
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

fn malformed(what: &str) -> impl Fn(der::Error) -> TimestampError + '_ {
    move |e| TimestampError::Malformed(format!("{what}: {e}"))
}

/// Verifies a signature timestamp (see [`verify_token`]); only type `tsp`.
pub fn verify(
    ts: &SignatureTimestamp,
    signature: &[u8],
    authorities: &[TrustAnchor],
) -> Result<VerifiedTimestamp, TimestampError> {
    if ts.type_ != TIMESTAMP_RFC3161 {
        return Err(TimestampError::UnsupportedType(ts.type_.clone()));
    }
    verify_token(&ts.data, signature, authorities)
}

/// Verifies a DER `TimeStampToken` over `signature` (the raw signature
/// bytes) against the policy's timestamp authorities and returns its
/// `genTime`. See the module documentation for every check.
pub fn verify_token(
    token: &[u8],
    signature: &[u8],
    authorities: &[TrustAnchor],
) -> Result<VerifiedTimestamp, TimestampError> {
    if authorities.is_empty() {
        return Err(TimestampError::NoAuthorities);
    }
    // 1. Structure.
    let ci = ContentInfo::from_der(token).map_err(malformed("ContentInfo"))?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(TimestampError::Malformed(format!(
            "content type {} is not signedData",
            ci.content_type
        )));
    }
    let sd: SignedDataView = ci.content.decode_as().map_err(malformed("SignedData"))?;
    let encap = &sd.encap_content_info;
    if encap.econtent_type != ID_CT_TST_INFO {
        return Err(TimestampError::Malformed(format!(
            "encapsulated content type {} is not id-ct-TSTInfo",
            encap.econtent_type
        )));
    }
    let econtent = encap
        .econtent
        .as_ref()
        .ok_or_else(|| TimestampError::Malformed("no encapsulated TSTInfo".into()))?;
    if econtent.tag() != Tag::OctetString {
        return Err(TimestampError::Malformed(format!(
            "eContent is a {}, not an OCTET STRING",
            econtent.tag()
        )));
    }
    let tst_der = econtent.value();
    let tst = TstInfoRaw::from_der(tst_der).map_err(malformed("TSTInfo"))?;
    let gen_time = parse_generalized_time(&tst.gen_time)?;
    let signers: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    let [si] = signers.as_slice() else {
        return Err(TimestampError::Malformed(format!(
            "{} signer infos (a timestamp token has exactly one)",
            signers.len()
        )));
    };

    // 2. The imprint is over the raw signature bytes.
    let imprint_oid = &tst.message_imprint.hash_algorithm.oid;
    let imprint_alg = match HashAlg::from_oid(imprint_oid) {
        Some(HashAlg::Sha1) | None => {
            return Err(TimestampError::UnsupportedAlgorithm {
                what: "message imprint hash",
                oid: imprint_oid.to_string(),
            })
        }
        Some(a) => a,
    };
    let want = imprint_alg.digest(signature);
    let got = tst.message_imprint.hashed_message.as_bytes();
    if got != want.as_slice() {
        return Err(TimestampError::ImprintMismatch {
            algorithm: imprint_alg.name(),
            got: hex::encode(got),
            want: hex::encode(want),
        });
    }

    // 3. Signed attributes.
    let digest_alg = match HashAlg::from_oid(&si.digest_alg.oid) {
        Some(HashAlg::Sha1) | None => {
            return Err(TimestampError::UnsupportedAlgorithm {
                what: "signer digest",
                oid: si.digest_alg.oid.to_string(),
            })
        }
        Some(a) => a,
    };
    let attrs = si.signed_attrs.as_ref().ok_or_else(|| {
        TimestampError::SignedAttributes("absent (required for TSTInfo content)".into())
    })?;
    let single = |oid: ObjectIdentifier, name: &str| -> Result<&Any, TimestampError> {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        let (Some(a), None) = (found.next(), found.next()) else {
            return Err(TimestampError::SignedAttributes(format!(
                "exactly one {name} attribute is required"
            )));
        };
        let mut values = a.values.iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Ok(v),
            _ => Err(TimestampError::SignedAttributes(format!(
                "the {name} attribute must have exactly one value"
            ))),
        }
    };
    let ct: ObjectIdentifier = single(ID_CONTENT_TYPE, "contentType")?
        .decode_as()
        .map_err(malformed("contentType attribute"))?;
    if ct != ID_CT_TST_INFO {
        return Err(TimestampError::SignedAttributes(format!(
            "contentType {ct} is not id-ct-TSTInfo"
        )));
    }
    let md = single(ID_MESSAGE_DIGEST, "messageDigest")?;
    if md.tag() != Tag::OctetString {
        return Err(TimestampError::SignedAttributes(
            "messageDigest is not an OCTET STRING".into(),
        ));
    }
    if md.value() != digest_alg.digest(tst_der).as_slice() {
        return Err(TimestampError::SignedAttributes(
            "messageDigest does not match the TSTInfo".into(),
        ));
    }
    let signed_attrs_der = attrs.to_der().map_err(malformed("signed attributes"))?;

    // 4. The signer certificate and its signature.
    let mut token_certs = Vec::new();
    if let Some(set) = &sd.certificates {
        for c in set {
            if let CertificateChoices::Certificate(c) = c {
                token_certs.push(c.to_der().map_err(malformed("certificate"))?);
            }
        }
    }
    let mut candidates: Vec<&[u8]> = token_certs.iter().map(Vec::as_slice).collect();
    for a in authorities {
        candidates.push(&a.cert);
        candidates.extend(a.intermediates.iter().map(Vec::as_slice));
    }
    let signer_der = find_signer(&si.sid, &candidates)?;
    let signer = parse_cert(signer_der)?;
    let subject = signer.subject().to_string();
    check_ess_certificate(attrs, signer_der)?;
    verify_signer_signature(si, &signer, digest_alg, &signed_attrs_der).map_err(|e| match e {
        Some(e) => e,
        None => TimestampError::BadSignature {
            subject: subject.clone(),
        },
    })?;

    // 5. The TSA certificate.
    check_timestamping_eku(&signer, &subject)?;
    let authority = match authorities.iter().find(|a| a.cert == signer_der) {
        Some(a) => {
            let when = ASN1Time::from_timestamp(gen_time.unix_timestamp())
                .map_err(|e| TimestampError::Malformed(format!("genTime: {e}")))?;
            if !signer.validity().is_valid_at(when) {
                return Err(TimestampError::Untrusted(CertError::Untrusted {
                    subject: subject.clone(),
                    detail: format!("not valid at genTime {gen_time}"),
                }));
            }
            a.id.clone()
        }
        None => x509::verify_chain(signer_der, &token_certs, authorities, gen_time)
            .map_err(TimestampError::Untrusted)?,
    };
    Ok(VerifiedTimestamp {
        gen_time,
        authority,
        tsa_subject: subject,
        serial: hex::encode(tst.serial_number.as_bytes()),
        policy: tst.policy.to_string(),
    })
}

fn parse_cert(der_bytes: &[u8]) -> Result<X509Certificate<'_>, TimestampError> {
    X509Certificate::from_der(der_bytes)
        .map(|(_, c)| c)
        .map_err(|e| TimestampError::Malformed(format!("certificate: {e}")))
}

fn find_signer<'a>(
    sid: &SignerIdentifier,
    candidates: &[&'a [u8]],
) -> Result<&'a [u8], TimestampError> {
    let (issuer, serial, ski) = match sid {
        SignerIdentifier::IssuerAndSerialNumber(is) => (
            Some(is.issuer.to_der().map_err(malformed("signer issuer"))?),
            Some(is.serial_number.as_bytes().to_vec()),
            None,
        ),
        SignerIdentifier::SubjectKeyIdentifier(k) => (None, None, Some(k.0.as_bytes().to_vec())),
    };
    for c in candidates {
        let Ok((_, cert)) = X509Certificate::from_der(c) else {
            continue;
        };
        let hit = match (&issuer, &serial, &ski) {
            (Some(i), Some(s), _) => {
                cert.issuer().as_raw() == i.as_slice() && cert.raw_serial() == s.as_slice()
            }
            (_, _, Some(k)) => cert.extensions().iter().any(|e| {
                matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(id) if id.0 == k.as_slice())
            }),
            _ => false,
        };
        if hit {
            return Ok(c);
        }
    }
    Err(TimestampError::SignerNotFound(match sid {
        SignerIdentifier::IssuerAndSerialNumber(is) => format!(
            "issuer {}, serial {}",
            is.issuer,
            hex::encode(is.serial_number.as_bytes())
        ),
        SignerIdentifier::SubjectKeyIdentifier(k) => {
            format!("subject key id {}", hex::encode(k.0.as_bytes()))
        }
    }))
}

/// RFC 2634 / RFC 5035 `signingCertificate(V2)`: when present, its first
/// ESSCertID must be the hash of the signer certificate.
fn check_ess_certificate(
    attrs: &cms::signed_data::SignedAttributes,
    signer_der: &[u8],
) -> Result<(), TimestampError> {
    let bad = |d: &str| TimestampError::SignedAttributes(format!("signingCertificate: {d}"));
    for a in attrs.iter() {
        let v2 = if a.oid == ID_SIGNING_CERTIFICATE {
            false
        } else if a.oid == ID_SIGNING_CERTIFICATE_V2 {
            true
        } else {
            continue;
        };
        let Some(value) = a.values.iter().next() else {
            return Err(bad("no value"));
        };
        let value = value.to_der().map_err(malformed("signingCertificate"))?;
        // SigningCertificate(V2) ::= SEQUENCE { certs SEQUENCE OF ESSCertID(v2), … }
        let (outer, _) =
            mini_der::expect(&value, mini_der::SEQUENCE).ok_or_else(|| bad("not a SEQUENCE"))?;
        let (certs, _) =
            mini_der::expect(outer, mini_der::SEQUENCE).ok_or_else(|| bad("no certs"))?;
        let (first, _) =
            mini_der::expect(certs, mini_der::SEQUENCE).ok_or_else(|| bad("empty certs"))?;
        let (alg, rest) = if v2 && first.first() == Some(&mini_der::SEQUENCE) {
            let (alg_seq, rest) =
                mini_der::expect(first, mini_der::SEQUENCE).ok_or_else(|| bad("hashAlgorithm"))?;
            let (oid, _) =
                mini_der::expect(alg_seq, mini_der::OID).ok_or_else(|| bad("hashAlgorithm"))?;
            let oid = ObjectIdentifier::from_bytes(oid).map_err(|_| bad("hashAlgorithm OID"))?;
            let alg =
                HashAlg::from_oid(&oid).ok_or_else(|| TimestampError::UnsupportedAlgorithm {
                    what: "ESS certificate hash",
                    oid: oid.to_string(),
                })?;
            (alg, rest)
        } else if v2 {
            (HashAlg::Sha256, first)
        } else {
            (HashAlg::Sha1, first)
        };
        let (hash, _) =
            mini_der::expect(rest, mini_der::OCTET_STRING).ok_or_else(|| bad("certHash"))?;
        if hash != alg.digest(signer_der).as_slice() {
            return Err(bad(
                "the certificate hash does not match the TSA signing certificate",
            ));
        }
    }
    Ok(())
}

/// `Err(None)`: the signature does not verify; `Err(Some)`: unsupported.
fn verify_signer_signature(
    si: &SignerInfo,
    cert: &X509Certificate<'_>,
    digest_alg: HashAlg,
    signed_attrs_der: &[u8],
) -> Result<(), Option<TimestampError>> {
    let spki = cert.public_key();
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let sig_oid = si.signature_algorithm.oid;
    let unsupported = || {
        Some(TimestampError::UnsupportedAlgorithm {
            what: "TSA signature",
            oid: format!("{sig_oid} with key {key_oid}"),
        })
    };
    // The hash a signature algorithm implies, else the signer's digest.
    let hash = match sig_oid {
        ECDSA_WITH_SHA256 | SHA256_WITH_RSA => HashAlg::Sha256,
        ECDSA_WITH_SHA384 | SHA384_WITH_RSA => HashAlg::Sha384,
        SHA512_WITH_RSA => HashAlg::Sha512,
        ID_EC_PUBLIC_KEY | RSA_ENCRYPTION | ID_ED25519 => digest_alg,
        _ => return Err(unsupported()),
    };
    let alg: &'static dyn signature::VerificationAlgorithm =
        match (key_oid.as_str(), curve.as_deref(), sig_oid, hash) {
            (
                "1.2.840.10045.2.1",
                Some(CURVE_P256),
                ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384 | ID_EC_PUBLIC_KEY,
                HashAlg::Sha256,
            ) => &signature::ECDSA_P256_SHA256_ASN1,
            (
                "1.2.840.10045.2.1",
                Some(CURVE_P256),
                ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384 | ID_EC_PUBLIC_KEY,
                HashAlg::Sha384,
            ) => &signature::ECDSA_P256_SHA384_ASN1,
            (
                "1.2.840.10045.2.1",
                Some(CURVE_P384),
                ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384 | ID_EC_PUBLIC_KEY,
                HashAlg::Sha256,
            ) => &signature::ECDSA_P384_SHA256_ASN1,
            (
                "1.2.840.10045.2.1",
                Some(CURVE_P384),
                ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384 | ID_EC_PUBLIC_KEY,
                HashAlg::Sha384,
            ) => &signature::ECDSA_P384_SHA384_ASN1,
            (
                "1.2.840.113549.1.1.1",
                _,
                RSA_ENCRYPTION | SHA256_WITH_RSA | SHA384_WITH_RSA | SHA512_WITH_RSA,
                h,
            ) => match h {
                HashAlg::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                HashAlg::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                HashAlg::Sha1 => return Err(unsupported()),
            },
            ("1.3.101.112", _, ID_ED25519, _) => &signature::ED25519,
            _ => return Err(unsupported()),
        };
    signature::UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(signed_attrs_der, si.signature.as_bytes())
        .map_err(|_| None)
}

/// RFC 3161 §2.3: the extended key usage is exactly `timeStamping`, critical.
fn check_timestamping_eku(cert: &X509Certificate<'_>, subject: &str) -> Result<(), TimestampError> {
    let err = |detail: &str| TimestampError::NotTimestampingCertificate {
        subject: subject.to_string(),
        detail: detail.to_string(),
    };
    let eku = match cert.extended_key_usage() {
        Ok(Some(e)) => e,
        Ok(None) => {
            return Err(err(
                "no extended key usage extension (timeStamping is required)",
            ))
        }
        Err(e) => return Err(err(&format!("extended key usage: {e}"))),
    };
    let v = eku.value;
    if !v.time_stamping {
        return Err(err("the extended key usage does not include timeStamping"));
    }
    if v.any
        || v.server_auth
        || v.client_auth
        || v.code_signing
        || v.email_protection
        || v.ocsp_signing
        || !v.other.is_empty()
    {
        return Err(err("the extended key usage must be timeStamping only"));
    }
    if !eku.critical {
        return Err(err("the extended key usage extension must be critical"));
    }
    Ok(())
}

/// `YYYYMMDDHHMMSS[.fff…]Z` (RFC 3161 §2.4.2: UTC, optional fraction).
fn parse_generalized_time(any: &Any) -> Result<OffsetDateTime, TimestampError> {
    let bad = |d: &str| TimestampError::Malformed(format!("genTime: {d}"));
    if any.tag() != Tag::GeneralizedTime {
        return Err(bad(&format!("a {}, not a GeneralizedTime", any.tag())));
    }
    let s = std::str::from_utf8(any.value()).map_err(|_| bad("not text"))?;
    let body = s
        .strip_suffix('Z')
        .ok_or_else(|| bad("not in UTC (no trailing Z)"))?;
    let (whole, frac) = match body.split_once('.') {
        Some((w, f)) => (w, f),
        None => (body, ""),
    };
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(&format!("{s:?} is not YYYYMMDDHHMMSS")));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (body.contains('.') && frac.is_empty()) {
        return Err(bad(&format!("{s:?} has a malformed fraction")));
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        whole
            .get(r)
            .and_then(|d| d.parse().ok())
            .unwrap_or(u32::MAX)
    };
    let year = i32::try_from(num(0..4)).map_err(|_| bad("year"))?;
    let month = u8::try_from(num(4..6))
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(|| bad("month"))?;
    let byte = |r| u8::try_from(num(r)).map_err(|_| bad("field out of range"));
    let date = time::Date::from_calendar_date(year, month, byte(6..8)?)
        .map_err(|e| bad(&e.to_string()))?;
    let mut nanos_text: String = frac.chars().take(9).collect();
    while nanos_text.len() < 9 {
        nanos_text.push('0');
    }
    let nanos: u32 = nanos_text.parse().map_err(|_| bad("fraction"))?;
    let t = time::Time::from_hms_nano(byte(8..10)?, byte(10..12)?, byte(12..14)?, nanos)
        .map_err(|e| bad(&e.to_string()))?;
    Ok(time::PrimitiveDateTime::new(date, t).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(s: &str) -> Any {
        Any::new(Tag::GeneralizedTime, s.as_bytes()).unwrap()
    }

    #[test]
    fn generalized_time_forms() {
        let t = parse_generalized_time(&gt("20260801101112Z")).unwrap();
        assert_eq!(t.unix_timestamp(), 1_785_579_072);
        let t = parse_generalized_time(&gt("20260801101112.25Z")).unwrap();
        assert_eq!(t.nanosecond(), 250_000_000);
        for bad in [
            "20260801101112",
            "2026080110111Z",
            "20261301101112Z",
            "20260801101112.Z",
            "20260801101112+0100",
            "2026080110111xZ",
        ] {
            assert!(parse_generalized_time(&gt(bad)).is_err(), "{bad}");
        }
        let utc = Any::new(Tag::UtcTime, b"260801101112Z".as_slice()).unwrap();
        assert!(parse_generalized_time(&utc).is_err());
    }

    #[test]
    fn garbage_tokens_are_errors_not_panics() {
        let anchor = TrustAnchor {
            id: "tsa".into(),
            cert: vec![0x30, 0x00],
            intermediates: vec![],
        };
        for token in [
            &b""[..],
            b"\x30\x00",
            b"\x30\x80\x00\x00",
            b"hello",
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(matches!(
                verify_token(token, b"sig", std::slice::from_ref(&anchor)),
                Err(TimestampError::Malformed(_))
            ));
        }
        assert!(matches!(
            verify_token(b"\x30\x00", b"sig", &[]),
            Err(TimestampError::NoAuthorities)
        ));
    }
}
