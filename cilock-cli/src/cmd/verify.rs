//! `cilock verify`: attestations against a signed policy.
//!
//! Exit 0: the policy passed; 1: verification failed (every reason is
//! printed); errors (exit 2): unreadable or malformed inputs, invalid policy,
//! a store (`--store`) that cannot be searched.

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context};
use cilock_evidence::dsse::{self, Envelope};
use cilock_evidence::intoto::PAYLOAD_TYPE;
use cilock_evidence::keys::{Signer, Verifier};
use cilock_evidence::limits;
use cilock_evidence::policy::rego::{self, RegoLimits, RegoRunner};
use cilock_evidence::policy::verify::{
    check_vsa_levels, vsa_statement, NamedEnvelope, VerificationReport, VsaOptions,
};
use cilock_evidence::policy::{verify as run_verify, VerifyOptions};

use crate::cli::VerifyArgs;

fn read_envelope(path: &std::path::Path, what: &str) -> anyhow::Result<Envelope> {
    match Envelope::from_file(path) {
        Ok(e) => Ok(e),
        Err(e) => {
            // An unsigned policy given as the policy (or an attestation):
            // say so instead of "missing field `payload`".
            let unsigned_policy = matches!(e, dsse::DsseError::File { ref cause, .. } if cause.contains("missing field `payload`"))
                && path.is_file()
                && limits::read_file(path, limits::MAX_ENVELOPE_BYTES, what, limits::any_start)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| v.get("steps").is_some());
            if unsigned_policy {
                bail!(
                    "reading the {what}: {} is an unsigned policy document, not a DSSE envelope: sign it first with `cilock sign -k KEY -f {} -o policy.signed.json`",
                    path.display(),
                    path.display()
                );
            }
            Err(anyhow::Error::new(e).context(format!("reading the {what}")))
        }
    }
}

/// Runs `cilock verify`.
pub fn verify(a: VerifyArgs) -> anyhow::Result<u8> {
    if a.vsa_out.is_some() != a.vsa_key.is_some() {
        bail!("--vsa-out and --vsa-key go together");
    }
    check_vsa_levels(&a.vsa_levels).map_err(|e| anyhow!("--vsa-level: {e}"))?;
    let is_uri = a
        .vsa_verifier_id
        .split_once(':')
        .is_some_and(|(scheme, rest)| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
                && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if !is_uri {
        bail!(
            "--vsa-verifier-id {:?} is not a URI (e.g. https://ci.example.com/cilock-verifier)",
            a.vsa_verifier_id
        );
    }
    let policy_envelope = read_envelope(&a.policy, "policy")?;
    let policy_key = Verifier::from_file(&a.publickey)
        .with_context(|| format!("loading policy public key {}", a.publickey.display()))?;
    let mut attestations = Vec::new();
    for p in &a.attestations {
        attestations.push(NamedEnvelope {
            source: p.display().to_string(),
            envelope: read_envelope(p, "attestation")?,
        });
    }
    let digests = crate::cmd::store::subjects(&a.subjects, &a.artifact_files)?;
    if digests.is_empty() {
        bail!("give the artifact to verify with -f FILE or its digest with -s SHA256");
    }
    if let Some(d) = digests.iter().find(|d| d.algorithm != "sha256") {
        bail!("subject {d} is not a sha256 digest");
    }
    if !a.store.is_empty() {
        attestations.extend(crate::cmd::store::discover_for_verify(&a.store, &digests)?);
    }
    let subjects: Vec<String> = digests.into_iter().map(|d| d.hex).collect();
    let vsa_signer = match &a.vsa_key {
        Some(k) => {
            Some(Signer::from_file(k).with_context(|| format!("loading VSA key {}", k.display()))?)
        }
        None => None,
    };
    let now = time::OffsetDateTime::now_utc();
    let opts = VerifyOptions {
        policy_envelope,
        policy_verifiers: vec![policy_key],
        attestations,
        subject_digests: subjects,
        now,
        rego_limits: RegoLimits {
            timeout: a.rego_timeout,
            memory_bytes: a.rego_memory,
            runner: RegoRunner::Child {
                program: "/proc/self/exe".into(),
                args: vec![rego::CHILD_ARG.into()],
            },
        },
    };
    let report = run_verify(&opts).with_context(|| format!("policy {}", a.policy.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human(&report));
    }
    if let (Some(out), Some(signer)) = (&a.vsa_out, &vsa_signer) {
        let st = vsa_statement(
            &report,
            &a.policy.display().to_string(),
            &opts.policy_envelope,
            &opts.attestations,
            now,
            &VsaOptions {
                verifier_id: Some(a.vsa_verifier_id.clone()),
                levels: a.vsa_levels.clone(),
                resource_uri: a.vsa_resource_uri.clone(),
            },
        );
        let env = dsse::sign(PAYLOAD_TYPE, serde_json::to_vec(&st)?, signer)
            .context("signing the verification summary")?;
        std::fs::write(out, env.to_json()).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(if report.passed { 0 } else { 1 })
}

fn human(r: &VerificationReport) -> String {
    let mut o = String::new();
    if r.policy.signature_ok {
        let _ = writeln!(
            o,
            "policy: signature OK (key {}), expires {}{}",
            r.policy.signers.join(", "),
            r.policy.expires,
            if r.policy.expired { " — EXPIRED" } else { "" }
        );
    } else {
        let _ = writeln!(o, "policy: signature NOT verified");
    }
    for s in &r.steps {
        let _ = writeln!(
            o,
            "step {:?}: {}",
            s.name,
            if s.passed { "PASS" } else { "FAIL" }
        );
        for c in &s.collections {
            let _ = writeln!(
                o,
                "  {} {} (signed by {})",
                if c.passed { "ok  " } else { "FAIL" },
                c.source,
                c.signers.join(", ")
            );
            for reason in &c.reasons {
                let _ = writeln!(o, "      - {reason}");
            }
        }
        for reason in &s.reasons {
            let _ = writeln!(o, "  - {reason}");
        }
    }
    if !r.rejected_envelopes.is_empty() {
        let _ = writeln!(o, "rejected envelopes:");
        for e in &r.rejected_envelopes {
            let _ = writeln!(o, "  - {}: {}", e.source, e.reason);
        }
    }
    for reason in &r.reasons {
        let _ = writeln!(o, "- {reason}");
    }
    let _ = writeln!(
        o,
        "verification {}",
        if r.passed { "PASSED" } else { "FAILED" }
    );
    o
}

/// When `cilock` was started as a Rego evaluation child
/// ([`rego::CHILD_ARG`] first), evaluates and returns its exit status.
pub fn rego_child_main() -> Option<std::process::ExitCode> {
    let first = std::env::args_os().nth(1)?;
    (first == rego::CHILD_ARG)
        .then(|| std::process::ExitCode::from(u8::try_from(rego::child_main()).unwrap_or(2)))
}
