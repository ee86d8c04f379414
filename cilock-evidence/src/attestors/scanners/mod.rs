//! Attestors that turn a security scanner's report (a product of the step)
//! into a typed attestation Rego can gate on: Falco events, kube-bench CIS
//! results, Prowler findings, testssl.sh findings. They parse the tools'
//! documented JSON outputs; they do not run the tools.
//!
//! Each finds its report among the step's products by content
//! (`find_report`): products whose MIME type is text or JSON, in path
//! order, at most [`MAX_CANDIDATES`] of them, each re-read beneath the
//! working directory and checked against the digest the product attestor
//! recorded ([`product_files::read_product`]), at most
//! [`MAX_REPORT_BYTES`]. The first whose shape is the tool's is the report.
//! - no product has the shape: [`AttestError::Absent`] (the reason names the
//!   products too large to look at);
//! - a product starts like the tool's report but does not parse, or a
//!   candidate changed since it was hashed (it may have been the report):
//!   [`AttestError::Invalid`], naming the file and the reason.
//!
//! What they record is bounded: lists at most [`MAX_LIST`] entries (with a
//! `…Truncated` flag), strings at most [`MAX_TEXT`] bytes.

use std::collections::BTreeMap;

use super::product_files;
use super::{AttestError, AttestationContext};
use crate::digest::DigestSet;

pub mod falco;
pub mod kube_bench;
pub mod prowler;
pub mod testssl;

/// Largest report read.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;
/// Most products looked at.
pub const MAX_CANDIDATES: usize = 256;
/// Most entries of each recorded list (failed checks, rules, hosts…).
pub const MAX_LIST: usize = 1000;
/// Longest recorded string, in bytes.
pub const MAX_TEXT: usize = 1024;

/// What a sniffer says of a product's bytes.
pub(crate) enum Sniff<T> {
    /// Not this tool's report.
    NotMine,
    /// This tool's report, parsed.
    Mine(T),
    /// Starts like this tool's report but does not parse: why.
    Malformed(String),
}

/// A report found among the products.
pub(crate) struct Found<T> {
    /// Its path relative to the working directory.
    pub rel: String,
    /// Its digest (as the product attestor recorded it, re-checked).
    pub digest: DigestSet,
    /// What the sniffer parsed.
    pub parsed: T,
}

impl<T> Found<T> {
    /// The attestation's subjects: the report, `report_file:<rel>`.
    pub fn subjects(&self) -> BTreeMap<String, DigestSet> {
        BTreeMap::from([(format!("report_file:{}", self.rel), self.digest.clone())])
    }
}

fn candidate_mime(m: &str) -> bool {
    m.is_empty() || m.starts_with("text/") || m.contains("json")
}

/// The first product `sniff` recognizes (see the module documentation).
pub(crate) fn find_report<T>(
    ctx: &AttestationContext,
    what: &str,
    sniff: impl Fn(&[u8]) -> Sniff<T>,
) -> Result<Found<T>, AttestError> {
    let products = product_files::products(ctx)?;
    let mut tried = 0usize;
    let mut notes = Vec::new();
    let mut refused = Vec::new();
    for (rel, p) in &products {
        if !candidate_mime(&p.mime_type) {
            continue;
        }
        tried += 1;
        if tried > MAX_CANDIDATES {
            notes.push(format!(
                "only the first {MAX_CANDIDATES} text or JSON products were looked at"
            ));
            break;
        }
        let bytes = match product_files::read_product(ctx, rel, &p.digest, MAX_REPORT_BYTES) {
            Ok(b) => b,
            // read_product's digest-mismatch error (its other errors: not a
            // regular file, too large, unreadable).
            Err(e) if e.contains("changed since") => {
                refused.push(e);
                continue;
            }
            Err(e) => {
                notes.push(e);
                continue;
            }
        };
        match sniff(&bytes) {
            Sniff::NotMine => {}
            Sniff::Mine(parsed) => {
                return Ok(Found {
                    rel: rel.clone(),
                    digest: p.digest.clone(),
                    parsed,
                })
            }
            Sniff::Malformed(why) => refused.push(format!("{rel}: {why}")),
        }
    }
    if !refused.is_empty() {
        return Err(AttestError::Invalid(format!(
            "{what}: no usable report: {}",
            refused.join("; ")
        )));
    }
    let mut msg = format!("{what}: no {what} report among the step's products");
    if !notes.is_empty() {
        msg.push_str(&format!(" ({})", notes.join("; ")));
    }
    Err(AttestError::Absent(msg))
}

/// `s` cut to at most [`MAX_TEXT`] bytes, on a character boundary.
pub(crate) fn clip(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A bounded, sorted, de-duplicated list of strings.
#[derive(Debug, Default)]
pub(crate) struct BoundedSet {
    items: std::collections::BTreeSet<String>,
    /// True when an item was dropped at the bound.
    pub truncated: bool,
}

impl BoundedSet {
    /// Adds `s` (non-empty) unless the set is full.
    pub fn add(&mut self, s: &str) {
        if s.is_empty() || self.items.contains(s) {
            return;
        }
        if self.items.len() >= MAX_LIST {
            self.truncated = true;
            return;
        }
        self.items.insert(clip(s));
    }
    /// The items, sorted.
    pub fn to_vec(&self) -> Vec<String> {
        self.items.iter().cloned().collect()
    }
}

/// A bounded list kept in input order.
#[derive(Debug)]
pub(crate) struct BoundedList<T> {
    /// The items.
    pub items: Vec<T>,
    /// True when an item was dropped at the bound.
    pub truncated: bool,
}

impl<T> Default for BoundedList<T> {
    fn default() -> Self {
        BoundedList {
            items: Vec::new(),
            truncated: false,
        }
    }
}

impl<T> BoundedList<T> {
    /// Adds `t` unless the list is full.
    pub fn push(&mut self, t: T) {
        if self.items.len() >= MAX_LIST {
            self.truncated = true;
        } else {
            self.items.push(t);
        }
    }
}

/// A map keyed by clipped strings, at most [`MAX_LIST`] keys (counts by
/// status, severity, rule, check…).
#[derive(Debug)]
pub(crate) struct BoundedMap<V> {
    /// The entries, by key.
    pub items: BTreeMap<String, V>,
    /// True when a new key was refused at the bound.
    pub truncated: bool,
}

impl<V> Default for BoundedMap<V> {
    fn default() -> Self {
        BoundedMap {
            items: BTreeMap::new(),
            truncated: false,
        }
    }
}

impl<V> BoundedMap<V> {
    /// The entry of `key` (clipped), made by `make` when new; `None` when
    /// the key is new and the map full.
    pub fn entry_or(&mut self, key: &str, make: impl FnOnce() -> V) -> Option<&mut V> {
        let key = clip(key);
        if !self.items.contains_key(&key) && self.items.len() >= MAX_LIST {
            self.truncated = true;
            return None;
        }
        Some(self.items.entry(key).or_insert_with(make))
    }
}

impl BoundedMap<u64> {
    /// Counts one more `key`.
    pub fn count(&mut self, key: &str) {
        if let Some(n) = self.entry_or(key, || 0) {
            *n += 1;
        }
    }
}

/// True when the first 64 KiB of `b` (after whitespace) start with `open`
/// and contain every one of `needles`: a cheap filter before a full parse.
pub(crate) fn head_has(b: &[u8], open: u8, needles: &[&str]) -> bool {
    let head = &b[..b.len().min(64 << 10)];
    let start = head.iter().position(|c| !c.is_ascii_whitespace());
    let start = match start {
        Some(i) if head[i] == open => i,
        _ => return false,
    };
    let head = &head[start..];
    needles
        .iter()
        .all(|n| head.windows(n.len()).any(|w| w == n.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_and_bounds() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(MAX_TEXT);
        let c = clip(&long);
        assert!(c.len() <= MAX_TEXT + "…".len() && c.ends_with('…'));
        let mut s = BoundedSet::default();
        for i in 0..MAX_LIST + 5 {
            s.add(&format!("{i:05}"));
        }
        s.add("");
        assert_eq!(s.to_vec().len(), MAX_LIST);
        assert!(s.truncated);
        let mut l = BoundedList::default();
        for i in 0..MAX_LIST + 1 {
            l.push(i);
        }
        assert_eq!(l.items.len(), MAX_LIST);
        assert!(l.truncated);
        let mut m = BoundedMap::default();
        let long = "x".repeat(MAX_TEXT + 1);
        m.count(&long);
        for i in 1..MAX_LIST + 1 {
            m.count(&format!("{i:05}"));
        }
        m.count(&long);
        m.count("00001");
        assert_eq!(m.items.len(), MAX_LIST);
        assert_eq!(m.items[&clip(&long)], 2);
        assert_eq!(m.items["00001"], 2);
        assert!(!m.items.contains_key(&format!("{MAX_LIST:05}")));
        assert!(m.truncated);
        assert!(head_has(b"  \n[{\"a\":1,\"b\"", b'[', &["\"a\"", "\"b\""]));
        assert!(!head_has(b"{\"a\":1,\"b\"", b'[', &["\"a\""]));
        assert!(!head_has(b"[{\"a\":1}", b'[', &["\"a\"", "\"b\""]));
        assert!(!head_has(b"", b'[', &[]));
    }
}
