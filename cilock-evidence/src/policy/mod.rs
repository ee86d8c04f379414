//! Witness / CI-lock policies: the policy document, its Rego modules and the
//! verification of attestation envelopes against it (see [`verify()`]).
//!
//! A policy arrives as a DSSE envelope (payloadType
//! `https://witness.testifysec.com/policy/v0.1`, not enforced, as in
//! Witness) whose payload is the policy JSON described in
//! witness-compat §6.1. [`Policy::from_json`] parses and validates it:
//! public key ids are recomputed, every Rego module is compiled, and a
//! policy without steps is rejected. Problems found there are input errors
//! ([`PolicyError`]), distinct from verification failures, which are
//! reported in a [`verify::VerificationReport`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;

use crate::keys::{KeyError, Verifier};

pub mod rego;
pub mod timestamp;
pub mod verify;
pub mod x509;

pub use verify::{verify, VerificationReport, VerifyOptions};

/// An error in a policy document (an input error, not a failed check).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy is not valid JSON of the policy shape.
    #[error("invalid policy JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `expires` is not RFC 3339.
    #[error("policy expires {value:?} is not an RFC 3339 time: {detail}")]
    Expires {
        /// The value.
        value: String,
        /// The parser's message.
        detail: String,
    },
    /// The policy has no steps.
    #[error("the policy has no steps")]
    NoSteps,
    /// A step's map key differs from its `name`.
    #[error("step key {key:?} differs from its name {name:?}")]
    StepName {
        /// The map key.
        key: String,
        /// The `name` field.
        name: String,
    },
    /// A `publickeys` entry cannot be loaded.
    #[error("policy public key {keyid:?}: {source}")]
    PublicKey {
        /// The entry.
        keyid: String,
        /// The cause.
        #[source]
        source: KeyError,
    },
    /// A `publickeys` map key, `keyid` and the recomputed key id disagree.
    #[error(
        "policy public key {map_key:?}: {}",
        keyid_mismatch(map_key, keyid, computed)
    )]
    KeyIdMismatch {
        /// The map key.
        map_key: String,
        /// The `keyid` field.
        keyid: String,
        /// The id computed from the key.
        computed: String,
    },
    /// A root, intermediate or TSA certificate cannot be parsed.
    #[error("policy certificate {id:?}: {source}")]
    Certificate {
        /// The root/TSA id.
        id: String,
        /// The cause.
        #[source]
        source: x509::CertError,
    },
    /// A functionary is malformed.
    #[error("step {step:?}: {detail}")]
    Functionary {
        /// The step.
        step: String,
        /// What is wrong.
        detail: String,
    },
    /// A Rego module does not compile.
    #[error("step {step:?}, attestation {type_uri:?}: {source}")]
    Rego {
        /// The step.
        step: String,
        /// The attestation type.
        type_uri: String,
        /// The cause.
        #[source]
        source: rego::RegoError,
    },
}

/// Says which of a `publickeys` entry's three ids differ (never two equal
/// values side by side without saying what differs).
fn keyid_mismatch(map_key: &str, keyid: &str, computed: &str) -> String {
    match (map_key == keyid, keyid == computed) {
        (false, true) => format!(
            "the entry must be named by its keyid {keyid:?} (the sha256 of its PEM)"
        ),
        (true, false) => format!(
            "the keyid is not the key's id: the sha256 of its PEM is {computed:?}"
        ),
        _ => format!(
            "the entry's keyid field is {keyid:?}, not its name, and the key's id (the sha256 of its PEM) is {computed:?}"
        ),
    }
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer};

    fn engine() -> base64::engine::GeneralPurpose {
        base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
    }

    pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        engine()
            .decode(s.unwrap_or_default().as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }

    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Option<Vec<String>> = Option::deserialize(d)?;
        v.unwrap_or_default()
            .iter()
            .map(|s| {
                engine()
                    .decode(s.as_bytes())
                    .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
            })
            .collect()
    }
}

/// The policy document.
#[derive(Clone, Debug, Deserialize)]
pub struct PolicyDocument {
    /// RFC 3339 expiry.
    pub expires: String,
    /// Certificate roots by id.
    #[serde(default, deserialize_with = "null_default")]
    pub roots: BTreeMap<String, CertRoot>,
    /// Timestamp authorities by id.
    #[serde(default, deserialize_with = "null_default")]
    pub timestampauthorities: BTreeMap<String, CertRoot>,
    /// Public keys by key id.
    #[serde(default, deserialize_with = "null_default")]
    pub publickeys: BTreeMap<String, PolicyPublicKey>,
    /// Steps by name.
    #[serde(default, deserialize_with = "null_default")]
    pub steps: BTreeMap<String, Step>,
}

/// A root (or TSA) certificate with intermediates (PEM text in JSON base64).
#[derive(Clone, Debug, Deserialize)]
pub struct CertRoot {
    /// The certificate (PEM text).
    #[serde(deserialize_with = "b64::bytes")]
    pub certificate: Vec<u8>,
    /// Intermediates (PEM texts).
    #[serde(default, deserialize_with = "b64::vec")]
    pub intermediates: Vec<Vec<u8>>,
}

/// A policy public key.
#[derive(Clone, Debug, Deserialize)]
pub struct PolicyPublicKey {
    /// Its key id.
    pub keyid: String,
    /// The public key PEM.
    #[serde(deserialize_with = "b64::bytes")]
    pub key: Vec<u8>,
}

/// A step of the policy.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    /// The step name (collections must carry exactly this name).
    #[serde(default)]
    pub name: String,
    /// Who may sign the step's collections.
    #[serde(default, deserialize_with = "null_default")]
    pub functionaries: Vec<Functionary>,
    /// Required attestation types and their Rego modules.
    #[serde(default, deserialize_with = "null_default")]
    pub attestations: Vec<StepAttestation>,
    /// Upstream steps whose artifacts this step's materials must match.
    #[serde(rename = "artifactsFrom", default, deserialize_with = "null_default")]
    pub artifacts_from: Vec<String>,
}

/// A functionary: a public key or a certificate root with constraints.
#[derive(Clone, Debug, Deserialize)]
pub struct Functionary {
    /// `publickey` or `root`.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// For `root`: the constraints.
    #[serde(rename = "certConstraint", default)]
    pub cert_constraint: Option<CertConstraint>,
    /// For `publickey`: the key id.
    #[serde(default)]
    pub publickeyid: Option<String>,
}

/// Certificate constraints of a `root` functionary.
///
/// Field names match case-insensitively (as Go's JSON decoding does, so
/// `commonName` is `commonname`); an unknown field is an error, never
/// ignored.
#[derive(Clone, Debug, Default)]
pub struct CertConstraint {
    /// Subject common name (`*` = any).
    pub commonname: String,
    /// SAN DNS names.
    pub dnsnames: Vec<String>,
    /// SAN emails.
    pub emails: Vec<String>,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// SAN URIs.
    pub uris: Vec<String>,
    /// Root ids the chain must end at (`*` = any policy root).
    pub roots: Vec<String>,
    /// Fulcio extensions: Go field names (any case) or CI/lock snake_case
    /// names ([`x509::fulcio_extension`]); checked when the policy loads.
    pub extensions: BTreeMap<String, String>,
}

/// The fields of a `certConstraint`.
pub const CERT_CONSTRAINT_FIELDS: &[&str] = &[
    "commonname",
    "dnsnames",
    "emails",
    "organizations",
    "uris",
    "roots",
    "extensions",
];

impl<'de> Deserialize<'de> for CertConstraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let mut c = CertConstraint::default();
        fn field<T: serde::de::DeserializeOwned + Default, E: Error>(
            key: &str,
            v: serde_json::Value,
        ) -> Result<T, E> {
            if v.is_null() {
                return Ok(T::default());
            }
            serde_json::from_value(v)
                .map_err(|e| E::custom(format!("certConstraint field {key:?}: {e}")))
        }
        for (key, v) in map {
            match key.to_ascii_lowercase().as_str() {
                "commonname" => c.commonname = field(&key, v)?,
                "dnsnames" => c.dnsnames = field(&key, v)?,
                "emails" => c.emails = field(&key, v)?,
                "organizations" => c.organizations = field(&key, v)?,
                "uris" => c.uris = field(&key, v)?,
                "roots" => c.roots = field(&key, v)?,
                "extensions" => c.extensions = field(&key, v)?,
                _ => {
                    return Err(D::Error::custom(format!(
                        "unknown certConstraint field {key:?} (accepted: {})",
                        CERT_CONSTRAINT_FIELDS.join(", ")
                    )))
                }
            }
        }
        Ok(c)
    }
}

/// A required attestation type of a step.
#[derive(Clone, Debug, Deserialize)]
pub struct StepAttestation {
    /// The attestor type URI (Witness and CI/lock URIs are aliases).
    #[serde(rename = "type")]
    pub type_: String,
    /// Rego modules every attestation of this type must pass.
    #[serde(default, deserialize_with = "null_default")]
    pub regopolicies: Vec<RegoPolicy>,
}

/// A Rego module of the policy.
#[derive(Clone, Debug)]
pub struct RegoPolicy {
    /// Its name.
    pub name: String,
    /// The Rego source (base64 in JSON).
    pub module: Vec<u8>,
}

impl<'de> Deserialize<'de> for RegoPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            name: Option<String>,
            module: String,
        }
        let raw = Raw::deserialize(d)?;
        let name = raw.name.unwrap_or_default();
        let module = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
        .decode(raw.module.as_bytes())
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "rego module {name:?}: `module` is not valid base64: {e}"
            ))
        })?;
        Ok(RegoPolicy { name, module })
    }
}

/// A parsed and validated policy, ready for verification.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The document as parsed.
    pub document: PolicyDocument,
    /// `expires`, parsed.
    pub expires: OffsetDateTime,
    /// Public key verifiers, by key id.
    pub verifiers: BTreeMap<String, Verifier>,
    /// Roots (with intermediates) as DER.
    pub roots: Vec<x509::TrustAnchor>,
    /// Timestamp authorities as DER.
    pub timestamp_authorities: Vec<x509::TrustAnchor>,
    /// Compiled Rego per (step, attestation index).
    pub rego: BTreeMap<(String, usize), rego::CompiledRego>,
}

fn anchors(map: &BTreeMap<String, CertRoot>) -> Result<Vec<x509::TrustAnchor>, PolicyError> {
    map.iter()
        .map(|(id, r)| {
            let err = |source| PolicyError::Certificate {
                id: id.clone(),
                source,
            };
            let cert = x509::cert_der_from_pem_or_der(&r.certificate).map_err(err)?;
            let intermediates = r
                .intermediates
                .iter()
                .map(|i| x509::cert_der_from_pem_or_der(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            Ok(x509::TrustAnchor {
                id: id.clone(),
                cert,
                intermediates,
            })
        })
        .collect()
}

impl Policy {
    /// Parses and validates a policy JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, PolicyError> {
        let document: PolicyDocument = serde_json::from_slice(bytes)?;
        let expires =
            crate::timefmt::parse(&document.expires).map_err(|e| PolicyError::Expires {
                value: document.expires.clone(),
                detail: e.to_string(),
            })?;
        if document.steps.is_empty() {
            return Err(PolicyError::NoSteps);
        }
        let mut verifiers = BTreeMap::new();
        for (map_key, pk) in &document.publickeys {
            let v = Verifier::from_pem(&pk.key).map_err(|source| PolicyError::PublicKey {
                keyid: map_key.clone(),
                source,
            })?;
            if map_key != &pk.keyid || v.key_id() != map_key {
                return Err(PolicyError::KeyIdMismatch {
                    map_key: map_key.clone(),
                    keyid: pk.keyid.clone(),
                    computed: v.key_id().to_string(),
                });
            }
            verifiers.insert(map_key.clone(), v);
        }
        let roots = anchors(&document.roots)?;
        let timestamp_authorities = anchors(&document.timestampauthorities)?;
        let mut rego_map = BTreeMap::new();
        for (key, step) in &document.steps {
            if !step.name.is_empty() && &step.name != key {
                return Err(PolicyError::StepName {
                    key: key.clone(),
                    name: step.name.clone(),
                });
            }
            for f in &step.functionaries {
                match f.type_.as_str() {
                    "publickey" if f.publickeyid.as_deref().is_some_and(|k| !k.is_empty()) => {}
                    "root" if f.cert_constraint.is_some() => {
                        let exts = f.cert_constraint.iter().flat_map(|c| c.extensions.keys());
                        for ext in exts {
                            if x509::fulcio_extension(ext).is_none() {
                                return Err(PolicyError::Functionary {
                                    step: key.clone(),
                                    detail: format!(
                                        "certConstraint extension key {ext:?} is not a Fulcio extension; accepted (snake_case or Go field name, any case): {}",
                                        x509::accepted_extension_keys()
                                    ),
                                });
                            }
                        }
                    }
                    other => {
                        return Err(PolicyError::Functionary {
                            step: key.clone(),
                            detail: format!(
                                "functionary of type {other:?} needs publickeyid (publickey) or certConstraint (root)"
                            ),
                        })
                    }
                }
            }
            for (i, att) in step.attestations.iter().enumerate() {
                let modules = att
                    .regopolicies
                    .iter()
                    .map(|r| {
                        String::from_utf8(r.module.clone())
                            .map(|source| rego::RegoModule {
                                name: r.name.clone(),
                                source,
                            })
                            .map_err(|_| rego::RegoError::NotText {
                                name: r.name.clone(),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|m| {
                        if m.is_empty() {
                            Ok(None)
                        } else {
                            rego::CompiledRego::compile(&m).map(Some)
                        }
                    })
                    .map_err(|source| PolicyError::Rego {
                        step: key.clone(),
                        type_uri: att.type_.clone(),
                        source,
                    })?;
                if let Some(m) = modules {
                    rego_map.insert((key.clone(), i), m);
                }
            }
        }
        Ok(Policy {
            document,
            expires,
            verifiers,
            roots,
            timestamp_authorities,
            rego: rego_map,
        })
    }
}
