//! Products a step process wrote are checked against what it left: the
//! product attestation digests the workdir at step end (in the attestor
//! helper); the trace knows, for every path a step process opened for
//! writing, the digest of what that process left (see
//! [`cilock_trace::fold`]). A product whose path a step process wrote but
//! whose digest is not what any of its writers left is listed in the
//! command-run's `trace.productsNotAsWritten` (path relative to the
//! workdir, and why). Products no step process wrote are not listed here.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;

use cilock_evidence::attestors::{command_run, product, AttestationContext};
use cilock_evidence::digest::DigestSet;
use serde_json::json;

use cilock_trace::pathname;

/// Most mismatches listed (the rest are counted).
const MAX_LISTED: usize = 10_000;

/// Why product `digest` at `abs` is not what a writer left; `None` when it
/// is, or when no step process wrote it.
pub fn not_as_written(
    digest: &DigestSet,
    writers: Option<&Vec<Result<DigestSet, String>>>,
) -> Option<String> {
    let writers = writers?;
    if writers
        .iter()
        .any(|w| w.as_ref().is_ok_and(|d| d.matches(digest)))
    {
        return None;
    }
    let why: Vec<&str> = writers
        .iter()
        .filter_map(|w| w.as_ref().err().map(String::as_str))
        .collect();
    Some(if why.is_empty() {
        "its digest is not that of what the step process that wrote it left".to_string()
    } else {
        format!(
            "what the step process that wrote it left is unproven: {}",
            why.join("; ")
        )
    })
}

/// Adds `trace.productsNotAsWritten` to the command-run in `ctx` for the
/// products of `ctx` that a step process wrote (`written`, by absolute
/// path) with another content than the one it left.
pub fn flag(
    ctx: &mut AttestationContext,
    written: &BTreeMap<String, Vec<Result<DigestSet, String>>>,
) {
    if written.is_empty() {
        return;
    }
    let Some(products) = ctx
        .completed_json(product::NAME)
        .and_then(|v| serde_json::from_value::<BTreeMap<String, product::Product>>(v.clone()).ok())
    else {
        return;
    };
    // The trace has the kernel's paths, escaped (`pathname`); the workdir
    // may be given otherwise. The kernel's path of the directory is that of
    // the handle the daemon opened at begin (never a path the job can
    // re-point); without one (an embedded run, as the caller) it is
    // resolved.
    let root = match &ctx.workdir_fd {
        Some(fd) => std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        None => std::fs::canonicalize(&ctx.workdir),
    };
    let Ok(root) = root else {
        return;
    };
    let mut listed = Vec::new();
    let mut more = 0u64;
    for (rel, p) in &products {
        let abs = pathname::escape_os(root.join(rel));
        if let Some(why) = not_as_written(&p.digest, written.get(&abs)) {
            if listed.len() < MAX_LISTED {
                listed.push(json!({"path": rel, "reason": why}));
            } else {
                more += 1;
            }
        }
    }
    if listed.is_empty() {
        return;
    }
    let Some(c) = ctx
        .completed
        .iter_mut()
        .find(|c| c.name == command_run::NAME)
    else {
        return;
    };
    if let Some(t) = c.json.get_mut("trace").and_then(|t| t.as_object_mut()) {
        t.insert("productsNotAsWritten".into(), json!(listed));
        if more > 0 {
            t.insert("productsNotAsWrittenOmitted".into(), json!(more));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilock_evidence::digest::HashAlg;

    fn d(s: &str) -> DigestSet {
        DigestSet::from_reader(s.as_bytes(), &[HashAlg::Sha256]).unwrap()
    }

    #[test]
    fn a_product_must_be_what_a_writer_left() {
        assert_eq!(not_as_written(&d("a"), None), None);
        assert_eq!(not_as_written(&d("a"), Some(&vec![Ok(d("a"))])), None);
        assert_eq!(
            not_as_written(&d("a"), Some(&vec![Err("x".into()), Ok(d("a"))])),
            None
        );
        assert!(not_as_written(&d("a"), Some(&vec![Ok(d("b"))]))
            .unwrap()
            .contains("not that of"));
        assert_eq!(
            not_as_written(&d("a"), Some(&vec![Err("modified after".into())])).unwrap(),
            "what the step process that wrote it left is unproven: modified after"
        );
    }
}
