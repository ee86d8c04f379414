//! The step's products, read back by the attestors that interpret them
//! (sbom, sarif, oci, the scanners): the product attestation's list, and a
//! product's bytes re-read beneath the working directory and checked
//! against the digest the product attestor recorded, so an attestor never
//! describes a file other than the one the subjects name.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::Path;

use super::product::{self, Product};
use super::safeio;
use super::{AttestError, AttestationContext};
use crate::digest::DigestSet;

/// The products the product attestor recorded in `ctx` (relative path →
/// product), empty when it has not run.
pub fn products(ctx: &AttestationContext) -> Result<BTreeMap<String, Product>, AttestError> {
    match ctx.completed_json(product::NAME) {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| AttestError::Invalid(format!("cannot read the products: {e}"))),
        None => Ok(BTreeMap::new()),
    }
}

/// Product `rel` opened beneath the working directory (never following a
/// path as root), and its length: a regular file or an error naming why not
/// (without `rel`).
pub fn open_product(ctx: &AttestationContext, rel: &str) -> Result<(File, u64), String> {
    let dir = safeio::open_workdir(ctx).map_err(|e| e.to_string())?;
    let fd = safeio::open_beneath(dir.as_fd(), Path::new(rel))
        .map_err(|e| format!("cannot open: {e}"))?;
    let f = File::from(fd);
    let len = safeio::require_regular(&f)?.len();
    Ok((f, len))
}

/// The bytes of product `rel` (at most `max`), re-read beneath the working
/// directory and checked against `recorded`. Errors name the reason: not a
/// regular file, larger than `max`, changed since the product attestor
/// hashed it.
pub fn read_product(
    ctx: &AttestationContext,
    rel: &str,
    recorded: &DigestSet,
    max: u64,
) -> Result<Vec<u8>, String> {
    let (f, len) = open_product(ctx, rel).map_err(|e| format!("{rel}: {e}"))?;
    if len > max {
        return Err(format!(
            "{rel}: {len} bytes, more than the {max}-byte limit"
        ));
    }
    let (bytes, more) =
        safeio::read_capped_sized(&f, max, len).map_err(|e| format!("{rel}: cannot read: {e}"))?;
    if more {
        return Err(format!("{rel}: grew past the {max}-byte limit while read"));
    }
    let now = DigestSet::from_bytes(&bytes, &ctx.hashes);
    if !recorded.matches(&now) {
        return Err(format!(
            "{rel}: changed since the product attestor hashed it"
        ));
    }
    Ok(bytes)
}

/// The first product (in path order) whose MIME type `mime` accepts, read
/// with [`read_product`] (at most `max` bytes) and parsed as JSON: its path,
/// product entry and document. No such product: [`AttestError::Absent`]
/// ("`what`: none of the N products is `kind`"); unreadable, changed or not
/// JSON: [`AttestError::Invalid`].
pub fn first_json_product(
    ctx: &AttestationContext,
    what: &str,
    kind: &str,
    mime: impl Fn(&str) -> bool,
    max: u64,
) -> Result<(String, Product, serde_json::Value), AttestError> {
    let products = products(ctx)?;
    let n = products.len();
    let Some((rel, product)) = products.into_iter().find(|(_, p)| mime(&p.mime_type)) else {
        return Err(AttestError::Absent(format!(
            "{what}: none of the {n} products is {kind}"
        )));
    };
    let bytes = read_product(ctx, &rel, &product.digest, max)
        .map_err(|e| AttestError::Invalid(format!("{what}: {e}")))?;
    let doc = serde_json::from_slice(&bytes).map_err(|e| {
        AttestError::Invalid(format!("{what}: {rel}: not a valid JSON document: {e}"))
    })?;
    Ok((rel, product, doc))
}
