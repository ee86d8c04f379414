//! DSSE envelopes as Witness writes them: PAE, signing, JSON and signature
//! verification against public keys.
//!
//! JSON shape: `{"payload": b64, "payloadType": …, "signatures": [{"keyid",
//! "sig": b64, "certificate"?: b64(PEM), "intermediates"?: [b64(PEM)],
//! "timestamps"?: [{"type": "tsp", "data": b64(DER)}]}]}`. Every `[]byte`
//! is standard base64 with padding (unpadded input is accepted too).
//!
//! Certificate signatures are checked against a trust store by
//! [`crate::policy`], which knows the policy's roots and timestamp
//! authorities; this module only checks raw keys.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::{KeyError, Signer, Verifier};

/// Payload type of a Witness policy.
pub const POLICY_PAYLOAD_TYPE: &str = "https://witness.testifysec.com/policy/v0.1";
/// Type of an RFC 3161 signature timestamp.
pub const TIMESTAMP_RFC3161: &str = "tsp";

const B64_ENCODE: GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64_DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Explains a [`DsseError::NoValidSignature`]: when a signature claims a
/// trusted keyid, the content was altered (listing both, equal, keyids
/// would not say why); otherwise the keyids differ.
fn no_valid_detail(keyids: &str, trusted: &str) -> String {
    let trusted_ids: Vec<&str> = trusted.split(", ").filter(|k| !k.is_empty()).collect();
    let claimed: Vec<&str> = keyids
        .split(", ")
        .filter(|k| trusted_ids.contains(k))
        .collect();
    if claimed.is_empty() {
        format!("the envelope is signed by keyid {keyids}, the trusted keyids are {trusted}")
    } else {
        format!(
            "the signature by trusted keyid {} does not match the signed content: the payload or the signature was altered after signing",
            claimed.join(", ")
        )
    }
}

/// An error about an envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DsseError {
    /// The envelope is not valid JSON of the DSSE shape (includes bad base64).
    #[error("invalid DSSE envelope JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Signing failed.
    #[error("signing the envelope: {0}")]
    Sign(#[source] KeyError),
    /// The envelope file cannot be read (or is over its size limit).
    #[error("{path}: {cause}")]
    File {
        /// The file.
        path: String,
        /// What is wrong (read error, size limit, invalid JSON).
        cause: String,
    },
    /// The envelope carries no signature.
    #[error("the envelope has no signatures")]
    NoSignatures,
    /// No signature verified with any of the given keys.
    #[error(
        "no signature verified with any trusted key ({})",
        no_valid_detail(keyids, trusted)
    )]
    NoValidSignature {
        /// The keyids the envelope claims.
        keyids: String,
        /// The keyids of the keys that were tried.
        trusted: String,
    },
    /// The signing certificate is unusable or does not hold the signer's key.
    #[error("signing certificate: {0}")]
    Certificate(String),
    /// Fewer distinct keys verified than the threshold asks for.
    #[error("only {got} distinct keys verified, {want} required")]
    Threshold {
        /// Verified distinct keys.
        got: usize,
        /// Required.
        want: usize,
    },
}

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The signed payload (raw bytes, base64 in JSON).
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// What the payload is (e.g. `application/vnd.in-toto+json`).
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The signatures over PAE(payloadType, payload).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub signatures: Vec<Signature>,
}

/// One signature of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's key id (informational: keys are never chosen by it).
    #[serde(default)]
    pub keyid: String,
    /// The raw signature bytes.
    #[serde(with = "b64")]
    pub sig: Vec<u8>,
    /// The signing certificate as PEM text, if signed with a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub certificate: Option<Vec<u8>>,
    /// Intermediate certificates as PEM texts.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "b64_vec")]
    pub intermediates: Vec<Vec<u8>>,
    /// RFC 3161 timestamps over the signature.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub timestamps: Vec<SignatureTimestamp>,
}

/// A timestamp of a signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureTimestamp {
    /// `tsp` for RFC 3161.
    #[serde(rename = "type")]
    pub type_: String,
    /// The DER TimeStampToken (CMS ContentInfo).
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

mod b64 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64_ENCODE.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        // Go decodes `null` into an empty []byte.
        let s: Option<String> = Option::deserialize(d)?;
        let s = s.unwrap_or_default();
        B64_DECODE
            .decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

mod b64_opt {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&B64_ENCODE.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => B64_DECODE
                .decode(s.as_bytes())
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}"))),
        }
    }
}

mod b64_vec {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for item in v {
            seq.serialize_element(&B64_ENCODE.encode(item))?;
        }
        seq.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Option<Vec<String>> = Option::deserialize(d)?;
        v.unwrap_or_default()
            .iter()
            .map(|s| {
                B64_DECODE
                    .decode(s.as_bytes())
                    .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
            })
            .collect()
    }
}

/// DSSE pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` into an envelope with one signature by `signer`.
pub fn sign(payload_type: &str, payload: Vec<u8>, signer: &Signer) -> Result<Envelope, DsseError> {
    let sig = signer
        .sign(&pae(payload_type, &payload))
        .map_err(DsseError::Sign)?;
    Ok(Envelope {
        payload,
        payload_type: payload_type.to_string(),
        signatures: vec![Signature {
            keyid: signer.key_id().to_string(),
            sig,
            certificate: None,
            intermediates: Vec::new(),
            timestamps: Vec::new(),
        }],
    })
}

/// Signs like [`sign`] with a certificate (X509 signer): the signature
/// carries the certificate and the intermediates as PEM text, as Witness
/// writes them. `certificate` and each intermediate may be PEM or DER; the
/// certificate's public key must be the signer's.
pub fn sign_with_certificate(
    payload_type: &str,
    payload: Vec<u8>,
    signer: &Signer,
    certificate: &[u8],
    intermediates: &[Vec<u8>],
) -> Result<Envelope, DsseError> {
    let to_pem = |bytes: &[u8]| -> Result<Vec<u8>, DsseError> {
        let der = crate::policy::x509::cert_der_from_pem_or_der(bytes)
            .map_err(|e| DsseError::Certificate(e.to_string()))?;
        Ok(crate::keys::encode_pem("CERTIFICATE", &der).into_bytes())
    };
    let cert_pem = to_pem(certificate)?;
    let cert_key =
        Verifier::from_pem(&cert_pem).map_err(|e| DsseError::Certificate(e.to_string()))?;
    if cert_key.key_id() != signer.key_id() {
        return Err(DsseError::Certificate(format!(
            "the certificate's key {} is not the signing key {}",
            cert_key.key_id(),
            signer.key_id()
        )));
    }
    let intermediates = intermediates
        .iter()
        .map(|i| to_pem(i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = sign(payload_type, payload, signer)?;
    if let Some(s) = env.signatures.first_mut() {
        s.certificate = Some(cert_pem);
        s.intermediates = intermediates;
    }
    Ok(env)
}

/// A signature of an envelope that verified with a key.
#[derive(Clone, Debug)]
pub struct VerifiedSignature {
    /// Index of the signature in [`Envelope::signatures`].
    pub signature_index: usize,
    /// The key it verified with (a certificate's key for x509 signatures).
    pub verifier: Verifier,
}

impl VerifiedSignature {
    /// The key id of the key that verified.
    pub fn key_id(&self) -> &str {
        self.verifier.key_id()
    }
}

impl Envelope {
    /// Parses an envelope (compact or pretty JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DsseError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Reads and decodes an envelope file, at most
    /// [`crate::limits::MAX_ENVELOPE_BYTES`]; a file that does not start
    /// like a JSON object is refused on its first bytes.
    pub fn from_file(path: &std::path::Path) -> Result<Envelope, DsseError> {
        let bytes = crate::limits::read_file(
            path,
            crate::limits::MAX_ENVELOPE_BYTES,
            "DSSE envelope",
            crate::limits::json_object_start,
        )
        .map_err(|e| DsseError::File {
            path: path.display().to_string(),
            cause: e.to_string(),
        })?;
        Self::from_json(&bytes).map_err(|e| DsseError::File {
            path: path.display().to_string(),
            cause: e.to_string(),
        })
    }

    /// Compact JSON (no trailing newline), fields in Witness's order.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The PAE bytes the signatures cover.
    pub fn pae(&self) -> Vec<u8> {
        pae(&self.payload_type, &self.payload)
    }

    /// Tries every signature with every key (keyids are not used to pick
    /// keys, as in Witness) and returns each (signature, key) pair that
    /// verified. Certificate-carrying signatures are tried against the raw
    /// keys too; their chains are checked by [`crate::policy`].
    pub fn verify_with_keys(&self, verifiers: &[Verifier]) -> Vec<VerifiedSignature> {
        let pae = self.pae();
        let mut out = Vec::new();
        for (i, s) in self.signatures.iter().enumerate() {
            for v in verifiers {
                if v.verify(&pae, &s.sig).is_ok() {
                    out.push(VerifiedSignature {
                        signature_index: i,
                        verifier: v.clone(),
                    });
                }
            }
        }
        out
    }

    /// Like [`Envelope::verify_with_keys`], but fails unless at least
    /// `threshold` (minimum 1) distinct keys verified.
    pub fn verify(
        &self,
        verifiers: &[Verifier],
        threshold: usize,
    ) -> Result<Vec<VerifiedSignature>, DsseError> {
        if self.signatures.is_empty() {
            return Err(DsseError::NoSignatures);
        }
        let passed = self.verify_with_keys(verifiers);
        let mut distinct: Vec<&str> = passed.iter().map(|p| p.key_id()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            return Err(DsseError::NoValidSignature {
                keyids: self
                    .signatures
                    .iter()
                    .map(|s| s.keyid.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                trusted: verifiers
                    .iter()
                    .map(|v| v.key_id())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let want = threshold.max(1);
        if distinct.len() < want {
            return Err(DsseError::Threshold {
                got: distinct.len(),
                want,
            });
        }
        Ok(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyAlgorithm;

    #[test]
    fn pae_spec_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn sign_roundtrip_and_tamper() {
        let (signer, _) = Signer::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let env = sign(
            "application/vnd.in-toto+json",
            b"{\"a\":1}".to_vec(),
            &signer,
        )
        .unwrap();
        let json = env.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.starts_with("{\"payload\":\"eyJhIjoxfQ==\",\"payloadType\":"));
        assert!(!text.contains("certificate"));
        let back = Envelope::from_json(&json).unwrap();
        assert_eq!(back, env);
        let v = signer.verifier().unwrap();
        let ok = back.verify(std::slice::from_ref(&v), 1).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].key_id(), signer.key_id());
        let mut bad = back.clone();
        bad.payload[0] ^= 1;
        assert!(matches!(
            bad.verify(std::slice::from_ref(&v), 1),
            Err(DsseError::NoValidSignature { .. })
        ));
        assert!(matches!(
            back.verify(std::slice::from_ref(&v), 2),
            Err(DsseError::Threshold { got: 1, want: 2 })
        ));
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(Envelope::from_json(b"{").is_err());
        assert!(
            Envelope::from_json(br#"{"payload":"!!!","payloadType":"x","signatures":[]}"#).is_err()
        );
        assert!(Envelope::from_json(br#"{"payloadType":"x"}"#).is_err());
        let e = Envelope::from_json(br#"{"payload":"YQ","payloadType":"x","signatures":null}"#)
            .unwrap();
        assert_eq!(e.payload, b"a");
        assert!(matches!(e.verify(&[], 1), Err(DsseError::NoSignatures)));
    }
}
