//! Verification of attestation envelopes against a signed policy
//! (witness-compat §6.2).
//!
//! 1. The policy envelope must verify with one of the given keys, and the
//!    policy must not have expired.
//! 2. Every attestation envelope is checked against the policy's public
//!    keys and (for certificate signatures) chained to the policy's roots.
//!    Envelopes with no valid signature are set aside, unparsed.
//! 3. Up to [`SEARCH_DEPTH`] rounds: for every step not yet passed, the
//!    collections named like the step whose subjects contain one of the
//!    searched digests are checked (functionaries, required types, Rego).
//!    Each round adds the back-references (git commit, GitHub pipeline URL,
//!    CI/lock product/material trees) of passed collections to the digests.
//!    Certificate signatures chain to the policy roots at the current time,
//!    or, when the policy has timestamp authorities, at the `genTime` of a
//!    verified RFC 3161 timestamp of the signature ([`super::timestamp`]).
//! 4. `artifactsFrom`: a passed collection keeps passing only if its
//!    materials share at least one path with the materials ∪ products of a
//!    passed collection of each upstream step, and every shared path's
//!    digests match. Materials and products are read from the v0.1 maps
//!    and from CI/lock's v0.3 trees (`leaves[{path, fileDigest}]`).
//! 5. The policy passes if every step has at least one passed collection.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::collection::{self, Collection};
use crate::digest::DigestSet;
use crate::dsse::Envelope;
use crate::intoto::{ResourceDescriptor, Statement, StatementV1, Subject};
use crate::keys::Verifier;

use super::{timestamp, x509, Policy, PolicyError, Step};

/// How many search rounds follow back-references (as Witness).
pub const SEARCH_DEPTH: usize = 3;
/// Predicate type of a SLSA verification summary.
pub const VSA_PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";

/// An attestation envelope and where it came from.
#[derive(Clone, Debug)]
pub struct NamedEnvelope {
    /// A label for reports (usually the file path).
    pub source: String,
    /// The envelope.
    pub envelope: Envelope,
}

/// What to verify.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The signed policy.
    pub policy_envelope: Envelope,
    /// Keys the policy may be signed by.
    pub policy_verifiers: Vec<Verifier>,
    /// The attestation envelopes.
    pub attestations: Vec<NamedEnvelope>,
    /// Subject digests to start the search from (hex, usually sha256).
    pub subject_digests: Vec<String>,
    /// The verification time (policy expiry, certificate validity).
    pub now: OffsetDateTime,
    /// Time and memory limits of each Rego evaluation.
    pub rego_limits: super::rego::RegoLimits,
}

/// The outcome of a verification.
#[derive(Clone, Debug, Serialize)]
pub struct VerificationReport {
    /// True when the policy passed.
    pub passed: bool,
    /// The policy's own checks.
    pub policy: PolicyCheck,
    /// The digests the search started from.
    pub subjects: Vec<String>,
    /// Per step results (in policy order).
    pub steps: Vec<StepReport>,
    /// Envelopes set aside before the search (no trusted signature, bad payload).
    pub rejected_envelopes: Vec<RejectedEnvelope>,
    /// Failures that are not about one step.
    pub reasons: Vec<String>,
}

/// The policy's signature and expiry.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyCheck {
    /// True when a given key verified the policy envelope.
    pub signature_ok: bool,
    /// Key ids that verified the policy.
    pub signers: Vec<String>,
    /// The policy's expiry (empty if it could not be read).
    pub expires: String,
    /// True when the policy has expired.
    pub expired: bool,
}

/// An envelope that never reached the search.
#[derive(Clone, Debug, Serialize)]
pub struct RejectedEnvelope {
    /// Where it came from.
    pub source: String,
    /// Why it was set aside.
    pub reason: String,
}

/// One step's result.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// The step name.
    pub name: String,
    /// True when at least one collection passed.
    pub passed: bool,
    /// Every collection considered for the step.
    pub collections: Vec<CollectionReport>,
    /// Why the step failed, if it did.
    pub reasons: Vec<String>,
}

/// A Rego denial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// The attestation type that was evaluated.
    pub attestation_type: String,
    /// The Rego module name(s).
    pub policy: String,
    /// The deny message.
    pub message: String,
}

/// One collection's result for a step.
#[derive(Clone, Debug, Serialize)]
pub struct CollectionReport {
    /// Where the envelope came from.
    pub source: String,
    /// Key ids (or certificate subjects) that signed it validly.
    pub signers: Vec<String>,
    /// True when it passed every check.
    pub passed: bool,
    /// Required attestation types that were absent.
    pub missing_types: Vec<String>,
    /// Rego denials.
    pub denials: Vec<Denial>,
    /// Every reason it failed, readable.
    pub reasons: Vec<String>,
}

/// A validly signed signer of an attestation envelope.
#[derive(Clone, Debug)]
enum SignerInfo {
    Key {
        keyid: String,
    },
    Cert {
        keyid: String,
        leaf: Vec<u8>,
        root_id: String,
        subject: String,
        /// The RFC 3161 timestamp whose genTime the chain was checked at.
        timestamp: Option<timestamp::VerifiedTimestamp>,
    },
}

impl SignerInfo {
    fn label(&self) -> String {
        match self {
            SignerInfo::Key { keyid } => keyid.clone(),
            SignerInfo::Cert {
                keyid,
                subject,
                root_id,
                timestamp,
                ..
            } => match timestamp {
                Some(t) => format!(
                    "{keyid} (certificate {subject:?}, root {root_id}, timestamped {} by TSA {})",
                    crate::timefmt::rfc3339(t.gen_time),
                    t.authority
                ),
                None => format!("{keyid} (certificate {subject:?}, root {root_id})"),
            },
        }
    }
}

struct Candidate {
    source: String,
    signers: Vec<SignerInfo>,
    statement: Statement,
    collection: Option<Collection>,
    collection_error: Option<String>,
    digests: BTreeSet<String>,
}

/// Verifies attestations against a signed policy. `Err` is an input error
/// (the policy document is invalid); a failed check is a report with
/// `passed == false`.
pub fn verify(opts: &VerifyOptions) -> Result<VerificationReport, PolicyError> {
    let mut report = VerificationReport {
        passed: false,
        policy: PolicyCheck {
            signature_ok: false,
            signers: Vec::new(),
            expires: String::new(),
            expired: false,
        },
        subjects: opts
            .subject_digests
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        steps: Vec::new(),
        rejected_envelopes: Vec::new(),
        reasons: Vec::new(),
    };
    // 1. The policy envelope.
    match opts.policy_envelope.verify(&opts.policy_verifiers, 1) {
        Ok(passed) => {
            report.policy.signature_ok = true;
            let mut ids: Vec<String> = passed.iter().map(|p| p.key_id().to_string()).collect();
            ids.dedup();
            report.policy.signers = ids;
        }
        Err(e) => {
            report.reasons.push(format!("policy signature: {e}"));
            return Ok(report);
        }
    }
    let policy = Policy::from_json(&opts.policy_envelope.payload)?;
    report.policy.expires = policy.document.expires.clone();
    if opts.now > policy.expires {
        report.policy.expired = true;
        report
            .reasons
            .push(format!("the policy expired at {}", policy.document.expires));
        return Ok(report);
    }
    if opts.subject_digests.is_empty() {
        report
            .reasons
            .push("no subject digests to search for".to_string());
        return Ok(report);
    }

    // 2. Signatures of every attestation envelope.
    let key_verifiers: Vec<Verifier> = policy.verifiers.values().cloned().collect();
    let mut candidates = Vec::new();
    for ne in &opts.attestations {
        match check_envelope(ne, &policy, &key_verifiers, opts.now) {
            Ok(c) => candidates.push(c),
            Err(reason) => report.rejected_envelopes.push(RejectedEnvelope {
                source: ne.source.clone(),
                reason,
            }),
        }
    }

    // 3. Search rounds.
    let mut digests: BTreeSet<String> = report.subjects.iter().cloned().collect();
    let mut results: BTreeMap<String, BTreeMap<usize, CollectionReport>> = BTreeMap::new();
    for _round in 0..SEARCH_DEPTH {
        for (name, step) in &policy.document.steps {
            let entry = results.entry(name.clone()).or_default();
            if entry.values().any(|r| r.passed) {
                continue;
            }
            for (i, cand) in candidates.iter().enumerate() {
                if entry.contains_key(&i) {
                    continue;
                }
                let Some(coll) = &cand.collection else {
                    continue;
                };
                if &coll.name != name || cand.digests.is_disjoint(&digests) {
                    continue;
                }
                entry.insert(
                    i,
                    evaluate(cand, coll, name, step, &policy, &opts.rego_limits),
                );
            }
        }
        let mut added = false;
        for per_step in results.values() {
            for (i, r) in per_step {
                if !r.passed {
                    continue;
                }
                if let Some(cand) = candidates.get(*i) {
                    for d in backrefs(cand) {
                        added |= digests.insert(d);
                    }
                }
            }
        }
        if !added {
            break;
        }
    }

    // 4. artifactsFrom.
    let snapshot = results.clone();
    for (name, step) in &policy.document.steps {
        if step.artifacts_from.is_empty() {
            continue;
        }
        let Some(per_step) = results.get_mut(name) else {
            continue;
        };
        for (i, r) in per_step.iter_mut() {
            if !r.passed {
                continue;
            }
            let Some(cand) = candidates.get(*i) else {
                continue;
            };
            for up in &step.artifacts_from {
                let upstream: Vec<&Candidate> = snapshot
                    .get(up)
                    .map(|m| {
                        m.iter()
                            .filter(|(_, r)| r.passed)
                            .filter_map(|(j, _)| candidates.get(*j))
                            .collect()
                    })
                    .unwrap_or_default();
                if upstream.is_empty() {
                    r.reasons.push(format!(
                        "artifactsFrom: upstream step {up:?} has no passed collection"
                    ));
                    continue;
                }
                let mut problems = Vec::new();
                let ok = upstream.iter().any(|u| match check_artifacts(cand, u) {
                    Ok(()) => true,
                    Err(e) => {
                        problems.push(format!("against {}: {e}", u.source));
                        false
                    }
                });
                if !ok {
                    r.reasons
                        .push(format!("artifactsFrom {up:?}: {}", problems.join("; ")));
                }
            }
            r.passed = r.reasons.is_empty();
        }
    }

    // 5. Per step outcome.
    let mut all = true;
    for name in policy.document.steps.keys() {
        let collections: Vec<CollectionReport> = results
            .remove(name)
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        let passed = collections.iter().any(|c| c.passed);
        let mut reasons = Vec::new();
        if collections.is_empty() {
            reasons.push(format!(
                "no collection named {name:?} with a matching subject was found among the validly signed attestations"
            ));
            reasons.extend(explain_no_match(
                name,
                &candidates,
                &report.rejected_envelopes,
                &digests,
            ));
        } else if !passed {
            reasons.push(format!(
                "none of the {} collection(s) for step {name:?} passed",
                collections.len()
            ));
        }
        all &= passed;
        report.steps.push(StepReport {
            name: name.clone(),
            passed,
            collections,
            reasons,
        });
    }
    report.passed = all && report.reasons.is_empty();
    Ok(report)
}

/// At most this many subjects are listed per envelope in a failure.
const LISTED_SUBJECTS: usize = 8;

fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

/// Why no envelope was considered for step `name`: one line per envelope
/// saying which step it is and what its subjects are.
fn explain_no_match(
    name: &str,
    candidates: &[Candidate],
    rejected: &[RejectedEnvelope],
    searched: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let searched_list: Vec<&str> = searched.iter().map(|d| short(d)).collect();
    let searched_list = format!("[{}…]", searched_list.join("…, "));
    for c in candidates {
        let Some(coll) = &c.collection else {
            out.push(format!(
                "{} is not an attestation collection (predicateType {})",
                c.source, c.statement.predicate_type
            ));
            continue;
        };
        if coll.name != name {
            out.push(format!(
                "{} is step {:?}, not {name:?}",
                c.source, coll.name
            ));
            continue;
        }
        let subjects = if c.statement.subject.is_empty() {
            "none (an output whose bytes did not change during the step is not a product, so a rebuild that changes nothing has no subjects)".to_string()
        } else {
            let mut listed: Vec<String> = c
                .statement
                .subject
                .iter()
                .take(LISTED_SUBJECTS)
                .map(|s| {
                    let d = s
                        .digest
                        .get("sha256")
                        .or_else(|| s.digest.values().next())
                        .map(|d| short(d).to_string())
                        .unwrap_or_default();
                    let n = s.name.rsplit('/').next().unwrap_or(&s.name);
                    format!("{n} {d}…")
                })
                .collect();
            if c.statement.subject.len() > LISTED_SUBJECTS {
                listed.push(format!(
                    "and {} more",
                    c.statement.subject.len() - LISTED_SUBJECTS
                ));
            }
            listed.join(", ")
        };
        out.push(format!(
            "{} is step {name:?} but has no subject matching the searched digests {searched_list}; its subjects: {subjects}",
            c.source
        ));
    }
    for r in rejected {
        out.push(format!(
            "{} was not considered: its signature was rejected (see below)",
            r.source
        ));
    }
    if candidates.is_empty() && rejected.is_empty() {
        out.push("no attestation was given (-a FILE)".to_string());
    }
    out
}

fn check_envelope(
    ne: &NamedEnvelope,
    policy: &Policy,
    key_verifiers: &[Verifier],
    now: OffsetDateTime,
) -> Result<Candidate, String> {
    let env = &ne.envelope;
    if env.signatures.is_empty() {
        return Err("the envelope has no signatures".into());
    }
    let mut signers: Vec<SignerInfo> = env
        .verify_with_keys(key_verifiers)
        .into_iter()
        .map(|v| SignerInfo::Key {
            keyid: v.key_id().to_string(),
        })
        .collect();
    let mut problems = Vec::new();
    let pae = env.pae();
    for (i, sig) in env.signatures.iter().enumerate() {
        let Some(cert_pem) = &sig.certificate else {
            continue;
        };
        let leaf = match x509::cert_der_from_pem_or_der(cert_pem) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("signature {i}: {e}"));
                continue;
            }
        };
        let v = match Verifier::from_certificate_der(&leaf) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("signature {i}: certificate key: {e}"));
                continue;
            }
        };
        if let Err(e) = v.verify(&pae, &sig.sig) {
            problems.push(format!("signature {i}: {e}"));
            continue;
        }
        let mut inters = Vec::new();
        for p in &sig.intermediates {
            match x509::cert_der_from_pem_or_der(p) {
                Ok(d) => inters.push(d),
                Err(e) => problems.push(format!("signature {i}: intermediate: {e}")),
            }
        }
        // As go-witness: with timestamp authorities in the policy, the chain
        // is checked at the genTime of each verified timestamp (and a
        // signature without one fails); otherwise at `now`.
        let mut times: Vec<(OffsetDateTime, Option<timestamp::VerifiedTimestamp>)> = Vec::new();
        if policy.timestamp_authorities.is_empty() {
            times.push((now, None));
        } else {
            if sig.timestamps.is_empty() {
                problems.push(format!(
                    "signature {i}: the policy has timestamp authorities but the signature has no timestamp"
                ));
            }
            for (j, ts) in sig.timestamps.iter().enumerate() {
                match timestamp::verify(ts, &sig.sig, &policy.timestamp_authorities) {
                    Ok(t) => times.push((t.gen_time, Some(t))),
                    Err(e) => problems.push(format!("signature {i}: timestamp {j}: {e}")),
                }
            }
        }
        for (at, ts) in times {
            match x509::verify_chain(&leaf, &inters, &policy.roots, at) {
                Ok(root_id) => {
                    let subject = x509_parser::parse_x509_certificate(&leaf)
                        .map(|(_, c)| c.subject().to_string())
                        .unwrap_or_default();
                    signers.push(SignerInfo::Cert {
                        keyid: v.key_id().to_string(),
                        leaf,
                        root_id,
                        subject,
                        timestamp: ts,
                    });
                    break;
                }
                Err(e) => problems.push(format!(
                    "signature {i}: {e}{}",
                    match &ts {
                        Some(t) => format!(
                            " (checked at the timestamp {})",
                            crate::timefmt::rfc3339(t.gen_time)
                        ),
                        None => String::new(),
                    }
                )),
            }
        }
    }
    if signers.is_empty() {
        let keyids: Vec<&str> = env.signatures.iter().map(|s| s.keyid.as_str()).collect();
        let claimed: Vec<&str> = keyids
            .iter()
            .copied()
            .filter(|k| policy.verifiers.contains_key(*k))
            .collect();
        let mut reason = if claimed.is_empty() {
            format!(
                "no signature verified with a policy public key or root (envelope keyids: {}; policy keyids: {})",
                keyids.join(", "),
                if policy.verifiers.is_empty() {
                    "none".to_string()
                } else {
                    policy.verifiers.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )
        } else {
            format!(
                "the signature by policy key {} does not match the signed content: the payload or the signature was altered after signing",
                claimed.join(", ")
            )
        };
        if !problems.is_empty() {
            reason.push_str(&format!("; {}", problems.join("; ")));
        }
        return Err(reason);
    }
    let statement: Statement = serde_json::from_slice(&env.payload)
        .map_err(|e| format!("signed payload is not an in-toto statement: {e}"))?;
    let (collection, collection_error) =
        if collection::is_collection_type(&statement.predicate_type) {
            match serde_json::from_value::<Collection>(statement.predicate.clone()) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(format!("invalid collection predicate: {e}"))),
            }
        } else {
            (None, None)
        };
    if let Some(e) = &collection_error {
        return Err(e.clone());
    }
    let digests = statement
        .subject
        .iter()
        .flat_map(|s| s.digest.values().map(|v| v.to_ascii_lowercase()))
        .collect();
    Ok(Candidate {
        source: ne.source.clone(),
        signers,
        statement,
        collection,
        collection_error,
        digests,
    })
}

fn evaluate(
    cand: &Candidate,
    coll: &Collection,
    name: &str,
    step: &Step,
    policy: &Policy,
    limits: &super::rego::RegoLimits,
) -> CollectionReport {
    let mut r = CollectionReport {
        source: cand.source.clone(),
        signers: cand.signers.iter().map(SignerInfo::label).collect(),
        passed: false,
        missing_types: Vec::new(),
        denials: Vec::new(),
        reasons: Vec::new(),
    };
    if let Some(e) = &cand.collection_error {
        r.reasons.push(e.clone());
    }
    // Functionaries.
    let mut functionary_ok = false;
    let mut constraint_errors = Vec::new();
    for f in &step.functionaries {
        for s in &cand.signers {
            match (f.type_.as_str(), s) {
                ("publickey", SignerInfo::Key { keyid } | SignerInfo::Cert { keyid, .. })
                    if f.publickeyid.as_deref() == Some(keyid.as_str()) =>
                {
                    functionary_ok = true;
                }
                ("root", SignerInfo::Cert { leaf, root_id, .. }) => {
                    if let Some(c) = &f.cert_constraint {
                        match x509::check_constraint(leaf, root_id, c) {
                            Ok(()) => functionary_ok = true,
                            Err(e) => constraint_errors.push(e.to_string()),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if !functionary_ok {
        let wanted: Vec<String> = step
            .functionaries
            .iter()
            .map(|f| match f.type_.as_str() {
                "publickey" => format!("publickey {}", f.publickeyid.as_deref().unwrap_or("")),
                other => format!(
                    "{other} (roots [{}])",
                    f.cert_constraint
                        .as_ref()
                        .map(|c| c.roots.join(", "))
                        .unwrap_or_default()
                ),
            })
            .collect();
        let mut msg = format!(
            "not signed by a functionary of step {name:?}: signed by [{}], functionaries [{}]",
            r.signers.join(", "),
            wanted.join(", ")
        );
        if !constraint_errors.is_empty() {
            msg.push_str(&format!("; {}", constraint_errors.join("; ")));
        }
        r.reasons.push(msg);
    }
    // Attestations and Rego.
    if step.attestations.is_empty() {
        r.reasons.push(format!(
            "step {name:?} requires no attestations (an empty list always fails)"
        ));
    }
    for (i, req) in step.attestations.iter().enumerate() {
        let found: Vec<_> = coll.of_type(&req.type_).collect();
        if found.is_empty() {
            r.missing_types.push(req.type_.clone());
            r.reasons
                .push(format!("missing attestation type {}", req.type_));
            continue;
        }
        let Some(compiled) = policy.rego.get(&(name.to_string(), i)) else {
            continue;
        };
        let module_names: Vec<&str> = req.regopolicies.iter().map(|p| p.name.as_str()).collect();
        let module_names = module_names.join(", ");
        for att in found {
            match compiled.deny_limited(&att.attestation, limits) {
                Ok(msgs) => {
                    for m in msgs {
                        r.reasons.push(format!(
                            "rego policy {module_names:?} denied {}: {m}",
                            req.type_
                        ));
                        r.denials.push(Denial {
                            attestation_type: req.type_.clone(),
                            policy: module_names.clone(),
                            message: m,
                        });
                    }
                }
                Err(e) => r.reasons.push(format!(
                    "could not evaluate rego policy {module_names:?} of step {name:?} on {}: {e}",
                    req.type_
                )),
            }
        }
    }
    r.passed = r.reasons.is_empty();
    r
}

/// Digests a passed collection contributes to the next search round.
fn backrefs(c: &Candidate) -> Vec<String> {
    backref_digests(&c.statement, c.collection.as_ref())
        .into_iter()
        .map(|(_, hex)| hex)
        .collect()
}

/// The back-references of a statement (and of its collection, when its
/// predicate is one): the digests the search rounds of [`verify`] follow to
/// earlier steps — the subjects naming a git commit, a GitHub pipeline URL
/// or CI/lock's product/material trees, and the attestors' `backrefs`.
/// Each is `(algorithm, lowercase hex)`, the algorithm as the statement
/// names it (`sha1` for a git commit, `sha256`, `gitoid:sha256`, …); a
/// store searches by both, [`verify`] by the hex alone.
pub fn backref_digests(
    statement: &Statement,
    collection: Option<&Collection>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let is_backref = |s: &Subject| {
        let n = s.name.as_str();
        (n.contains("/git/") && n.contains("/commithash:"))
            || (n.contains("/github/") && n.contains("/pipelineurl:"))
            || n.ends_with("/tree:products")
            || n.ends_with("/tree:materials")
    };
    for s in statement.subject.iter().filter(|s| is_backref(s)) {
        out.extend(
            s.digest
                .iter()
                .map(|(alg, v)| (alg.clone(), v.to_ascii_lowercase())),
        );
    }
    if let Some(coll) = collection {
        if let Some(b) = &coll.backrefs {
            for ds in b.values() {
                out.extend(
                    ds.0.iter()
                        .map(|(alg, v)| (alg.key().to_string(), v.to_ascii_lowercase())),
                );
            }
        }
    }
    out
}

/// [`backref_digests`] of an envelope's statement (its payload, unverified:
/// for finding more envelopes, never for trusting them). `Err` when the
/// payload is not an in-toto statement or its collection predicate is
/// malformed.
pub fn envelope_backref_digests(env: &Envelope) -> Result<Vec<(String, String)>, String> {
    let statement: Statement = serde_json::from_slice(&env.payload)
        .map_err(|e| format!("the payload is not an in-toto statement: {e}"))?;
    let collection = if collection::is_collection_type(&statement.predicate_type) {
        Some(
            serde_json::from_value::<Collection>(statement.predicate.clone())
                .map_err(|e| format!("invalid collection predicate: {e}"))?,
        )
    } else {
        None
    };
    Ok(backref_digests(&statement, collection.as_ref()))
}

type Artifacts = BTreeMap<String, Option<DigestSet>>;

/// Materials (`kind` material) or products (`kind` product) of a
/// collection: the v0.1 map shapes (Witness and CI/lock) and CI/lock's v0.3
/// Merkle-tree shape (`leaves[{path, fileDigest}]`, witness-compat §4.6).
fn artifacts(coll: &Collection, kind: &str) -> Option<Artifacts> {
    let type_uri = collection::witness_type(kind);
    let tree_uri = format!("https://aflock.ai/attestations/{kind}/v0.3");
    let mut found = false;
    let mut out = BTreeMap::new();
    for a in coll.of_type(&tree_uri) {
        found = true;
        let leaves = a
            .attestation
            .get("leaves")
            .and_then(|l| l.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for leaf in leaves {
            let Some(path) = leaf.get("path").and_then(|p| p.as_str()) else {
                continue;
            };
            let digest = leaf
                .get("fileDigest")
                .and_then(|d| d.as_str())
                .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|d| DigestSet::sha256(d.to_ascii_lowercase()));
            out.insert(path.to_string(), digest);
        }
    }
    for a in coll.of_type(&type_uri) {
        found = true;
        let Some(map) = a.attestation.as_object() else {
            continue;
        };
        for (path, v) in map {
            let ds_json = if kind == "product" {
                v.get("digest").cloned().unwrap_or(serde_json::Value::Null)
            } else {
                v.clone()
            };
            out.insert(
                path.clone(),
                serde_json::from_value::<DigestSet>(ds_json).ok(),
            );
        }
    }
    found.then_some(out)
}

fn check_artifacts(down: &Candidate, up: &Candidate) -> Result<(), String> {
    let (Some(dc), Some(uc)) = (&down.collection, &up.collection) else {
        return Err("not a collection".into());
    };
    let materials = artifacts(dc, "material")
        .ok_or_else(|| format!("collection {:?} has no material attestation", dc.name))?;
    let mut upstream = artifacts(uc, "material").unwrap_or_default();
    upstream.extend(artifacts(uc, "product").unwrap_or_default());
    let mut shared = 0usize;
    let mut errs = Vec::new();
    for (path, d) in &materials {
        let Some(u) = upstream.get(path) else {
            continue;
        };
        shared += 1;
        match (d, u) {
            (Some(d), Some(u)) if d.matches(u) => {}
            _ => errs.push(format!(
                "material {path:?} differs from the upstream artifact's digest"
            )),
        }
    }
    if shared == 0 {
        return Err(format!(
            "no material of {:?} is an artifact of {:?}",
            dc.name, uc.name
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// Default `verifier.id` of the VSAs cilock writes.
pub const VSA_VERIFIER_ID: &str = "https://cilock.dev/verifier/v1";

/// Predicate type of SLSA provenance v1 (what the `slsa` attestor writes).
pub const PROVENANCE_V1: &str = crate::attestors::slsa::TYPE_URI;

/// What a VSA says beyond the report.
#[derive(Clone, Debug, Default)]
pub struct VsaOptions {
    /// `verifier.id` (a URI; default [`VSA_VERIFIER_ID`]).
    pub verifier_id: Option<String>,
    /// `verifiedLevels` to state when the policy passed (checked with
    /// [`check_vsa_levels`]); empty: derived from the evidence (see
    /// [`vsa_statement`]).
    pub levels: Vec<String>,
    /// `resourceUri`; default: `sha256:<first subject>`.
    pub resource_uri: Option<String>,
}

/// Checks VSA levels: each `SLSA_<TRACK>_LEVEL_<0-4>`, at most one per
/// track (each level implies the ones below it, as the VSA spec says).
pub fn check_vsa_levels(levels: &[String]) -> Result<(), String> {
    let mut tracks = std::collections::BTreeSet::new();
    for l in levels {
        let track = l
            .strip_prefix("SLSA_")
            .and_then(|r| r.rsplit_once("_LEVEL_"))
            .filter(|(t, n)| {
                !t.is_empty()
                    && t.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                    && matches!(*n, "0" | "1" | "2" | "3" | "4")
            })
            .map(|(t, _)| t)
            .ok_or_else(|| {
                format!("invalid SLSA level {l:?}: use SLSA_<TRACK>_LEVEL_<0-4>, e.g. SLSA_BUILD_LEVEL_2")
            })?;
        if !tracks.insert(track) {
            return Err(format!(
                "more than one level of track {track}: give only the highest (each level implies those below it)"
            ));
        }
    }
    Ok(())
}

/// True when the collection signed in `env` holds SLSA provenance v1 (the
/// `slsa` attestor's output).
fn holds_provenance(env: &Envelope) -> bool {
    let Ok(st) = serde_json::from_slice::<Statement<serde_json::Value>>(&env.payload) else {
        return false;
    };
    st.predicate_type == PROVENANCE_V1
        || st.predicate["attestations"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["type"] == PROVENANCE_V1))
}

/// A SLSA VSA (`https://slsa.dev/verification_summary/v1`) for a report:
/// an in-toto Statement v1 with the searched digests as subjects.
///
/// `verifiedLevels`: `["FAILED"]` when the policy failed; otherwise
/// `opts.levels` when given, else `SLSA_BUILD_LEVEL_1` when a collection
/// that passed holds SLSA provenance v1 (provenance exists: Build L1) and
/// `SLSA_BUILD_LEVEL_0` when none does. Higher levels depend on the build
/// platform, which only the operator can vouch for: `--vsa-level`.
pub fn vsa_statement(
    report: &VerificationReport,
    policy_uri: &str,
    policy_envelope: &Envelope,
    inputs: &[NamedEnvelope],
    time_verified: OffsetDateTime,
    opts: &VsaOptions,
) -> StatementV1 {
    let subjects = report
        .subjects
        .iter()
        .map(|d| ResourceDescriptor {
            name: d.clone(),
            digest: BTreeMap::from([("sha256".to_string(), d.clone())]),
            ..Default::default()
        })
        .collect();
    let input_json: Vec<ResourceDescriptor> = inputs
        .iter()
        .map(|ne| ResourceDescriptor {
            uri: ne.source.clone(),
            digest: BTreeMap::from([(
                "sha256".to_string(),
                hex::encode(Sha256::digest(ne.envelope.to_json())),
            )]),
            ..Default::default()
        })
        .collect();
    let levels: Vec<String> = if !report.passed {
        vec!["FAILED".to_string()]
    } else if !opts.levels.is_empty() {
        opts.levels.clone()
    } else {
        let passed_sources: std::collections::BTreeSet<&str> = report
            .steps
            .iter()
            .flat_map(|s| s.collections.iter())
            .filter(|c| c.passed)
            .map(|c| c.source.as_str())
            .collect();
        let provenance = inputs.iter().any(|ne| {
            passed_sources.contains(ne.source.as_str()) && holds_provenance(&ne.envelope)
        });
        vec![if provenance {
            "SLSA_BUILD_LEVEL_1"
        } else {
            "SLSA_BUILD_LEVEL_0"
        }
        .to_string()]
    };
    let resource_uri = opts.resource_uri.clone().unwrap_or_else(|| {
        report
            .subjects
            .first()
            .map(|d| format!("sha256:{d}"))
            .unwrap_or_default()
    });
    let predicate = serde_json::json!({
        "verifier": {
            "id": opts.verifier_id.as_deref().unwrap_or(VSA_VERIFIER_ID),
            "version": {"cilock": env!("CARGO_PKG_VERSION")},
        },
        "timeVerified": crate::timefmt::rfc3339(time_verified),
        "resourceUri": resource_uri,
        "policy": {
            "uri": policy_uri,
            "digest": {"sha256": hex::encode(Sha256::digest(&policy_envelope.payload))},
        },
        "inputAttestations": input_json,
        "verificationResult": if report.passed { "PASSED" } else { "FAILED" },
        "verifiedLevels": levels,
        "slsaVersion": "1.0",
    });
    StatementV1::new(VSA_PREDICATE_TYPE, subjects, predicate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsa_levels_are_checked() {
        let ok =
            |l: &[&str]| check_vsa_levels(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&[]).is_ok());
        assert!(ok(&["SLSA_BUILD_LEVEL_3", "SLSA_SOURCE_LEVEL_2"]).is_ok());
        for bad in [
            "SLSA_BUILD_LEVEL_5",
            "SLSA__LEVEL_1",
            "slsa_build_level_1",
            "FAILED",
            "SLSA_BUILD_LEVEL_",
        ] {
            assert!(
                ok(&[bad]).unwrap_err().contains("invalid SLSA level"),
                "{bad}"
            );
        }
        assert!(ok(&["SLSA_BUILD_LEVEL_1", "SLSA_BUILD_LEVEL_2"])
            .unwrap_err()
            .contains("more than one level of track BUILD"));
    }

    #[test]
    fn provenance_is_found_in_a_collection_or_as_the_statement() {
        let env = |st: serde_json::Value| Envelope {
            payload_type: crate::intoto::PAYLOAD_TYPE.into(),
            payload: serde_json::to_vec(&st).unwrap(),
            signatures: Vec::new(),
        };
        let coll = |t: &str| {
            serde_json::json!({"_type": "https://in-toto.io/Statement/v0.1", "subject": [],
                "predicateType": crate::collection::COLLECTION_TYPE,
                "predicate": {"name": "b", "attestations": [{"type": t, "attestation": {}}]}})
        };
        assert!(holds_provenance(&env(coll(PROVENANCE_V1))));
        assert!(!holds_provenance(&env(coll(
            "https://slsa.dev/provenance/v1.0"
        ))));
        assert!(holds_provenance(&env(
            serde_json::json!({"_type": "https://in-toto.io/Statement/v1",
            "subject": [], "predicateType": PROVENANCE_V1, "predicate": {}})
        )));
    }

    #[test]
    fn backref_digests_keep_their_algorithm() {
        let st: Statement = serde_json::from_value(serde_json::json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://witness.testifysec.com/attestation-collection/v0.1",
            "subject": [
                {"name": "https://witness.dev/attestations/git/v0.1/commithash:ABC",
                 "digest": {"sha1": "ABCDEF0123456789abcdef0123456789abcdef01"}},
                {"name": "https://witness.dev/attestations/product/v0.1/file:app",
                 "digest": {"sha256": "11".repeat(32)}},
                {"name": "https://witness.dev/attestations/github/v0.1/pipelineurl:https://x",
                 "digest": {"sha256": "22".repeat(32)}}
            ],
            "predicate": {"name": "build", "attestations": [],
                          "backrefs": {"x": {"gitoid:sha256": "33".repeat(32)}}}
        }))
        .unwrap();
        let coll: Collection = serde_json::from_value(st.predicate.clone()).unwrap();
        let got = backref_digests(&st, Some(&coll));
        assert_eq!(
            got,
            vec![
                (
                    "sha1".to_string(),
                    "abcdef0123456789abcdef0123456789abcdef01".to_string()
                ),
                ("sha256".to_string(), "22".repeat(32)),
                ("gitoid:sha256".to_string(), "33".repeat(32)),
            ]
        );
        // The product is a subject, not a back-reference.
        assert!(!got.iter().any(|(_, h)| h == &"11".repeat(32)));
        // The envelope form parses the payload the same way.
        let env = Envelope {
            payload: serde_json::to_vec(&st).unwrap(),
            payload_type: crate::intoto::PAYLOAD_TYPE.to_string(),
            signatures: Vec::new(),
        };
        assert_eq!(envelope_backref_digests(&env).unwrap(), got);
        let bad = Envelope {
            payload: b"not json".to_vec(),
            ..env
        };
        assert!(envelope_backref_digests(&bad).is_err());
    }
}
