//! Certificate chains to the policy's roots and Witness certificate
//! constraints (`certConstraint`).
//!
//! Chain building: from the leaf, through the signature's intermediates and
//! the policy's intermediates, to a policy root. Every link checks the
//! issuer name, the issuer's signature (x509-parser with ring), the validity
//! period at the verification time and, for issuers, `basicConstraints CA`.
//! As in Witness (`ExtKeyUsageAny`), extended key usages are not restricted.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use crate::keys::{der, parse_pem};

use super::CertConstraint;

/// The "allow everything" constraint value.
pub const ALLOW_ALL: &str = "*";

/// A certificate problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not a certificate (PEM or DER).
    #[error("invalid certificate: {0}")]
    Parse(String),
    /// No chain to any trusted root.
    #[error("certificate {subject:?} does not chain to a trusted root: {detail}")]
    Untrusted {
        /// The leaf's subject.
        subject: String,
        /// Why.
        detail: String,
    },
    /// The certificate does not meet the functionary's constraints.
    #[error("certificate constraint failed: {0}")]
    Constraint(String),
}

/// A policy root (or TSA) with its intermediates, as DER.
#[derive(Clone, Debug)]
pub struct TrustAnchor {
    /// The root's id in the policy.
    pub id: String,
    /// The root certificate (DER).
    pub cert: Vec<u8>,
    /// Intermediates listed with the root (DER).
    pub intermediates: Vec<Vec<u8>>,
}

/// Decodes a certificate given as PEM text (what Witness stores) or DER.
pub fn cert_der_from_pem_or_der(bytes: &[u8]) -> Result<Vec<u8>, CertError> {
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let blocks = parse_pem(bytes).map_err(|e| CertError::Parse(e.to_string()))?;
    blocks
        .into_iter()
        .find(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .ok_or_else(|| CertError::Parse("no CERTIFICATE block".into()))
}

fn parse(der_bytes: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    X509Certificate::from_der(der_bytes)
        .map(|(_, c)| c)
        .map_err(|e| CertError::Parse(e.to_string()))
}

fn asn1_time(t: OffsetDateTime) -> Result<ASN1Time, CertError> {
    ASN1Time::from_timestamp(t.unix_timestamp()).map_err(|e| CertError::Parse(e.to_string()))
}

fn issued_by(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == issuer.subject().as_raw()
        && child.verify_signature(Some(issuer.public_key())).is_ok()
}

fn is_ca(c: &X509Certificate<'_>) -> bool {
    matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Verifies that `leaf` chains to one of `anchors` at time `at`, using the
/// given extra intermediates. Returns the id of the root it chains to.
pub fn verify_chain(
    leaf: &[u8],
    extra_intermediates: &[Vec<u8>],
    anchors: &[TrustAnchor],
    at: OffsetDateTime,
) -> Result<String, CertError> {
    let leaf_cert = parse(leaf)?;
    let subject = leaf_cert.subject().to_string();
    let untrusted = |detail: String| CertError::Untrusted {
        subject: subject.clone(),
        detail,
    };
    let when = asn1_time(at)?;
    if !leaf_cert.validity().is_valid_at(when) {
        return Err(untrusted(format!(
            "not valid at {at} (valid {} to {})",
            leaf_cert.validity().not_before,
            leaf_cert.validity().not_after
        )));
    }
    let mut pool: Vec<Vec<u8>> = extra_intermediates.to_vec();
    for a in anchors {
        pool.extend(a.intermediates.iter().cloned());
    }
    let pool: Vec<X509Certificate<'_>> = pool.iter().filter_map(|d| parse(d).ok()).collect();
    let roots: Vec<(String, X509Certificate<'_>)> = anchors
        .iter()
        .filter_map(|a| parse(&a.cert).ok().map(|c| (a.id.clone(), c)))
        .collect();
    if roots.is_empty() {
        return Err(untrusted("the policy has no usable roots".into()));
    }
    // Depth-first search, at most 5 intermediates.
    fn walk(
        cur: &X509Certificate<'_>,
        pool: &[X509Certificate<'_>],
        roots: &[(String, X509Certificate<'_>)],
        when: ASN1Time,
        depth: usize,
    ) -> Option<String> {
        for (id, root) in roots {
            if root.validity().is_valid_at(when) && issued_by(cur, root) {
                return Some(id.clone());
            }
        }
        if depth >= 5 {
            return None;
        }
        for inter in pool {
            if inter.tbs_certificate.as_ref() == cur.tbs_certificate.as_ref() {
                continue;
            }
            if is_ca(inter) && inter.validity().is_valid_at(when) && issued_by(cur, inter) {
                if let Some(id) = walk(inter, pool, roots, when, depth + 1) {
                    return Some(id);
                }
            }
        }
        None
    }
    walk(&leaf_cert, &pool, &roots, when, 0).ok_or_else(|| {
        untrusted(format!(
            "no valid path to any of the roots {:?}",
            anchors.iter().map(|a| a.id.as_str()).collect::<Vec<_>>()
        ))
    })
}

/// A Fulcio certificate extension a `certConstraint.extensions` key may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FulcioExtension {
    /// The Go field name of Fulcio's `certificate.Extensions` (what Witness
    /// matches, case-insensitively).
    pub go_name: &'static str,
    /// The snake_case spelling CI/lock policies use.
    pub snake_name: &'static str,
    /// The extension's OID.
    pub oid: &'static str,
}

const fn ext(
    go_name: &'static str,
    snake_name: &'static str,
    oid: &'static str,
) -> FulcioExtension {
    FulcioExtension {
        go_name,
        snake_name,
        oid,
    }
}

/// Every Fulcio extension a constraint may name.
pub const FULCIO_EXTENSIONS: &[FulcioExtension] = &[
    ext("Issuer", "issuer", "1.3.6.1.4.1.57264.1.8"),
    ext(
        "GithubWorkflowTrigger",
        "github_workflow_trigger",
        "1.3.6.1.4.1.57264.1.2",
    ),
    ext(
        "GithubWorkflowSHA",
        "github_workflow_sha",
        "1.3.6.1.4.1.57264.1.3",
    ),
    ext(
        "GithubWorkflowName",
        "github_workflow_name",
        "1.3.6.1.4.1.57264.1.4",
    ),
    ext(
        "GithubWorkflowRepository",
        "github_workflow_repository",
        "1.3.6.1.4.1.57264.1.5",
    ),
    ext(
        "GithubWorkflowRef",
        "github_workflow_ref",
        "1.3.6.1.4.1.57264.1.6",
    ),
    ext(
        "BuildSignerURI",
        "build_signer_uri",
        "1.3.6.1.4.1.57264.1.9",
    ),
    ext(
        "BuildSignerDigest",
        "build_signer_digest",
        "1.3.6.1.4.1.57264.1.10",
    ),
    ext(
        "RunnerEnvironment",
        "runner_environment",
        "1.3.6.1.4.1.57264.1.11",
    ),
    ext(
        "SourceRepositoryURI",
        "source_repository_uri",
        "1.3.6.1.4.1.57264.1.12",
    ),
    ext(
        "SourceRepositoryDigest",
        "source_repository_digest",
        "1.3.6.1.4.1.57264.1.13",
    ),
    ext(
        "SourceRepositoryRef",
        "source_repository_ref",
        "1.3.6.1.4.1.57264.1.14",
    ),
    ext(
        "SourceRepositoryIdentifier",
        "source_repository_identifier",
        "1.3.6.1.4.1.57264.1.15",
    ),
    ext(
        "SourceRepositoryOwnerURI",
        "source_repository_owner_uri",
        "1.3.6.1.4.1.57264.1.16",
    ),
    ext(
        "SourceRepositoryOwnerIdentifier",
        "source_repository_owner_identifier",
        "1.3.6.1.4.1.57264.1.17",
    ),
    ext(
        "BuildConfigURI",
        "build_config_uri",
        "1.3.6.1.4.1.57264.1.18",
    ),
    ext(
        "BuildConfigDigest",
        "build_config_digest",
        "1.3.6.1.4.1.57264.1.19",
    ),
    ext("BuildTrigger", "build_trigger", "1.3.6.1.4.1.57264.1.20"),
    ext(
        "RunInvocationURI",
        "run_invocation_uri",
        "1.3.6.1.4.1.57264.1.21",
    ),
    ext(
        "SourceRepositoryVisibilityAtSigning",
        "source_repository_visibility_at_signing",
        "1.3.6.1.4.1.57264.1.22",
    ),
];

/// The extension a `certConstraint.extensions` key names: the Go field name
/// (any case, as Go's JSON decoding matches it; this also covers Fulcio's
/// camelCase JSON names) or the snake_case name CI/lock policies use.
pub fn fulcio_extension(key: &str) -> Option<&'static FulcioExtension> {
    let lower = key.to_ascii_lowercase();
    FULCIO_EXTENSIONS
        .iter()
        .find(|e| e.go_name.to_ascii_lowercase() == lower || e.snake_name == lower)
}

/// The accepted extension keys, for error messages.
pub fn accepted_extension_keys() -> String {
    FULCIO_EXTENSIONS
        .iter()
        .map(|e| {
            if e.go_name.eq_ignore_ascii_case(e.snake_name) {
                e.snake_name.to_string()
            } else {
                format!("{}/{}", e.snake_name, e.go_name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const FULCIO_LEGACY_ISSUER: &str = "1.3.6.1.4.1.57264.1.1";

fn extension_value(cert: &X509Certificate<'_>, oid: &str) -> Option<String> {
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == oid)?;
    // v2 extensions are DER UTF8String; v1 ones are raw text.
    match der::read(ext.value) {
        Some((0x0c, s, [])) => std::str::from_utf8(s).ok().map(str::to_string),
        _ => std::str::from_utf8(ext.value).ok().map(str::to_string),
    }
}

/// Witness `checkCertConstraint`: `["*"]` allows anything; otherwise the
/// certificate's values must be exactly the constraint's values.
fn check_values(attribute: &str, constraints: &[String], values: &[String]) -> Result<(), String> {
    if constraints.len() == 1 && constraints.first().map(String::as_str) == Some(ALLOW_ALL) {
        return Ok(());
    }
    let constraints: Vec<&String> = constraints.iter().filter(|c| !c.is_empty()).collect();
    let values: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
    if constraints.iter().any(|c| c.as_str() == ALLOW_ALL) {
        return Err(format!(
            "{attribute}: \"*\" is only allowed as the sole constraint"
        ));
    }
    let mut errs = Vec::new();
    for v in &values {
        if !constraints.contains(v) {
            errs.push(format!(
                "unexpected {attribute} {v:?} (allowed: {constraints:?})"
            ));
        }
    }
    for c in &constraints {
        if !values.contains(c) {
            errs.push(format!(
                "{attribute} {c:?} required but the certificate has {values:?}"
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// Checks a leaf certificate (DER) that chained to root `root_id` against a
/// functionary's constraint.
pub fn check_constraint(leaf: &[u8], root_id: &str, c: &CertConstraint) -> Result<(), CertError> {
    let cert = parse(leaf)?;
    let mut errs = Vec::new();
    // Roots: must be non-empty, and name the root (or be ["*"]).
    if c.roots.is_empty() {
        errs.push("the functionary lists no roots".to_string());
    } else if let Err(e) = check_values("root", &c.roots, &[root_id.to_string()]) {
        errs.push(e);
    }
    let cns: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    let cn_constraint = if c.commonname.is_empty() {
        Vec::new()
    } else {
        vec![c.commonname.clone()]
    };
    if let Err(e) = check_values("common name", &cn_constraint, &cns) {
        errs.push(e);
    }
    let orgs: Vec<String> = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    if let Err(e) = check_values("organization", &c.organizations, &orgs) {
        errs.push(e);
    }
    let (mut dns, mut emails, mut uris) = (Vec::new(), Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) => dns.push(s.to_string()),
                GeneralName::RFC822Name(s) => emails.push(s.to_string()),
                GeneralName::URI(s) => uris.push(s.to_string()),
                _ => {}
            }
        }
    }
    for (attr, cons, vals) in [
        ("dns name", &c.dnsnames, &dns),
        ("email", &c.emails, &emails),
        ("uri", &c.uris, &uris),
    ] {
        if let Err(e) = check_values(attr, cons, vals) {
            errs.push(e);
        }
    }
    // Extensions: keys are Fulcio's Go field names (any case) or CI/lock's
    // snake_case names. An unknown key is never ignored: the policy is
    // rejected when it is loaded, and here it fails the constraint.
    for (key, want) in &c.extensions {
        if want.is_empty() {
            continue;
        }
        let Some(ext) = fulcio_extension(key) else {
            errs.push(format!(
                "extension key {key:?} is not a Fulcio extension (accepted: {})",
                accepted_extension_keys()
            ));
            continue;
        };
        let got = extension_value(&cert, ext.oid).or_else(|| {
            (ext.snake_name == "issuer")
                .then(|| extension_value(&cert, FULCIO_LEGACY_ISSUER))
                .flatten()
        });
        match got {
            Some(g) if g == *want => {}
            Some(g) => errs.push(format!(
                "extension {key} ({}) is {g:?}, {want:?} required",
                ext.oid
            )),
            None => errs.push(format!(
                "extension {key} ({}) is absent from the certificate, {want:?} required",
                ext.oid
            )),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(CertError::Constraint(errs.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn constraint_values() {
        assert!(check_values("x", &s(&["*"]), &s(&["a", "b"])).is_ok());
        assert!(check_values("x", &s(&["a"]), &s(&["a"])).is_ok());
        assert!(check_values("x", &s(&["a"]), &s(&["a", "b"])).is_err());
        assert!(check_values("x", &s(&["a", "b"]), &s(&["a"])).is_err());
        assert!(check_values("x", &s(&[]), &s(&["a"])).is_err());
        assert!(check_values("x", &s(&[]), &s(&[])).is_ok());
        assert!(check_values("x", &s(&[""]), &s(&[])).is_ok());
        // "*" with other values is not allow-all.
        assert!(check_values("x", &s(&["*", "a"]), &s(&["a"])).is_err());
    }
}
