//! The secretscan attestor (`https://witness.dev/attestations/secretscan/v0.1`,
//! stage postproduct): looks for credentials in the command's output, in the
//! products and in every other attestation of the step.
//!
//! - Rules: see [`rules`] (GitHub, AWS, private keys, Slack, GCP, npm,
//!   PyPI, JWT, generic high-entropy assignments), plus the values of the
//!   step's sensitive environment variables (classified by the same filter
//!   as the environment attestor).
//! - Encoded content (base64, hex, URL encoding) is decoded and scanned
//!   again, recursively, up to `max_decode_layers` layers; a finding in
//!   decoded content has its `encodingPath` (outermost first) and
//!   `locationApproximate: true`.
//! - A finding never holds the secret: `secret` is its digest set and
//!   `match` is redacted.
//! - cilock extension: unless disabled, every found secret (and the encoded
//!   text it was decoded from) is replaced by `[REDACTED:<ruleId>]` in the
//!   other attestations of the step ([`SecretScanAttestor::redact_completed`]),
//!   so signed evidence does not republish the leaked credential.

pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::fd::AsFd;
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::environment::SensitiveEnvFilter;
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::{DigestSet, HashAlg};

/// Attestor name.
pub const NAME: &str = "secretscan";

/// Default decode depth.
pub const DEFAULT_MAX_DECODE_LAYERS: usize = 3;
/// Default largest product scanned, in MiB.
pub const DEFAULT_MAX_FILE_SIZE_MB: u64 = 10;
/// Shortest environment value looked for (Witness `minSensitiveValueLength`).
pub const MIN_SENSITIVE_VALUE_LENGTH: usize = 4;

/// One finding (Witness field names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Rule id.
    #[serde(rename = "ruleId")]
    pub rule_id: String,
    /// What the rule detects.
    pub description: String,
    /// `attestation:<name>` or `product:<path>`.
    pub location: String,
    /// 0-based line of the match (of the encoded text, for decoded finds).
    #[serde(rename = "startLine")]
    pub start_line: usize,
    /// Digest set of the secret.
    pub secret: DigestSet,
    /// The match, redacted.
    #[serde(rename = "match")]
    pub match_: String,
    /// Shannon entropy of the secret.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub entropy: f32,
    /// Encodings peeled off to find it, outermost first.
    #[serde(
        rename = "encodingPath",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub encoding_path: Vec<String>,
    /// True when `startLine` is the line of the encoded text.
    #[serde(
        rename = "locationApproximate",
        default,
        skip_serializing_if = "is_false"
    )]
    pub location_approximate: bool,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// The secretscan attestation: `{"findings": null}` when nothing is found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretScanAttestation {
    /// The findings (`null` when none).
    pub findings: Option<Vec<Finding>>,
}

/// Options of secretscan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretScanOptions {
    /// Decode depth (`--attestor-secretscan-max-decode-layers`, default 3).
    pub max_decode_layers: usize,
    /// Fail the step when anything is found.
    pub fail_on_detection: bool,
    /// Largest product scanned, in MiB (default 10).
    pub max_file_size_mb: u64,
    /// Replace found secrets in the other attestations (default true).
    pub redact: bool,
}

impl Default for SecretScanOptions {
    fn default() -> Self {
        SecretScanOptions {
            max_decode_layers: DEFAULT_MAX_DECODE_LAYERS,
            fail_on_detection: false,
            max_file_size_mb: DEFAULT_MAX_FILE_SIZE_MB,
            redact: true,
        }
    }
}

/// Shannon entropy in bits per character (Gitleaks' definition: character
/// counts over the byte length).
pub fn shannon_entropy(s: &str) -> f32 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    for c in s.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let inv = 1.0 / s.len() as f64;
    let mut e = 0.0f64;
    for n in counts.values() {
        let f = *n as f64 * inv;
        e -= f * f.log2();
    }
    e as f32
}

/// Masks a secret: longer than 40 characters keeps the first and last 8
/// around `...`; otherwise only the first quarter (at most 4 characters)
/// stays and the rest becomes `*`.
pub fn mask_secret(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    if n > 40 {
        let head: String = chars[..8].iter().collect();
        let tail: String = chars[n - 8..].iter().collect();
        return format!("{head}...{tail}");
    }
    let keep = (n / 4).min(4);
    let head: String = chars[..keep].iter().collect();
    format!("{head}{}", "*".repeat(n - keep))
}

/// Witness `truncateMatch`: first 8 … last 8 when longer than 40 characters.
pub fn truncate_match(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    if n > 40 {
        let head: String = chars[..8].iter().collect();
        let tail: String = chars[n - 8..].iter().collect();
        format!("{head}...{tail}")
    } else {
        s.to_string()
    }
}

struct Decoders {
    base64: Regex,
    hex: Regex,
    url: Regex,
}

fn decoders() -> &'static Decoders {
    static D: std::sync::OnceLock<Decoders> = std::sync::OnceLock::new();
    D.get_or_init(|| Decoders {
        base64: Regex::new(r"[A-Za-z0-9+/_-]{16,}={0,2}").expect("constant regex"),
        hex: Regex::new(r"\b(?:[0-9a-fA-F]{2}){8,}\b").expect("constant regex"),
        url: Regex::new(r"[^\s%]*(?:%[0-9A-Fa-f]{2}[^\s%]*)+").expect("constant regex"),
    })
}

fn b64_engines() -> [GeneralPurpose; 2] {
    let cfg = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    [
        GeneralPurpose::new(&alphabet::STANDARD, cfg),
        GeneralPurpose::new(&alphabet::URL_SAFE, cfg),
    ]
}

/// Decoded text is kept only when it is valid UTF-8 without control bytes
/// (other than tab, newline, carriage return).
fn texty(b: &[u8]) -> Option<String> {
    if b.len() < 4 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    if s.chars()
        .any(|c| (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{fffd}')
    {
        return None;
    }
    Some(s.to_string())
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (
                (b[i + 1] as char).to_digit(16),
                (b[i + 2] as char).to_digit(16),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                changed = true;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// A finding plus what must be redacted for it (kept in memory only).
struct Raw {
    finding: Finding,
    secret_text: String,
    redact: Vec<String>,
}

/// Scans text for secrets.
pub struct SecretScanner {
    env_values: Vec<(String, String)>,
    max_layers: usize,
    hashes: Vec<HashAlg>,
}

impl SecretScanner {
    /// A scanner looking for the rules' patterns and for the values of the
    /// sensitive variables of `env` (per `filter`).
    pub fn new(
        env: &[(String, String)],
        filter: &SensitiveEnvFilter,
        max_layers: usize,
        hashes: &[HashAlg],
    ) -> Self {
        let mut env_values: Vec<(String, String)> = env
            .iter()
            .filter(|(k, v)| {
                v.len() >= MIN_SENSITIVE_VALUE_LENGTH && filter.is_sensitive_pair(k, v)
            })
            .filter(|(_, v)| v.as_str() != super::environment::OBFUSCATED)
            .cloned()
            .collect();
        env_values.sort();
        env_values.dedup();
        let mut hashes: Vec<HashAlg> = hashes
            .iter()
            .copied()
            .filter(|h| *h != HashAlg::DirHash)
            .collect();
        if hashes.is_empty() {
            hashes.push(HashAlg::Sha256);
        }
        SecretScanner {
            env_values,
            max_layers,
            hashes,
        }
    }

    /// Scans `text` (found at `location`) and returns its findings.
    pub fn scan_text(&self, text: &str, location: &str) -> Vec<Finding> {
        let mut raw = Vec::new();
        self.scan_into(text, location, &mut raw);
        dedup(raw).into_iter().map(|r| r.finding).collect()
    }

    fn scan_into(&self, text: &str, location: &str, out: &mut Vec<Raw>) -> bool {
        self.scan_layers(text, location, out)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one finding's fields, all from the one match being reported"
    )]
    fn make_finding(
        &self,
        rule_id: String,
        description: String,
        location: &str,
        line: usize,
        secret: &str,
        whole_match: &str,
        path: &[String],
        approx: bool,
        entropy: f32,
    ) -> Finding {
        let redacted = whole_match.replacen(secret, &mask_secret(secret), 1);
        Finding {
            rule_id,
            description,
            location: location.to_string(),
            start_line: line,
            secret: DigestSet::from_bytes(secret.as_bytes(), &self.hashes),
            match_: truncate_match(&redacted),
            entropy,
            encoding_path: path.to_vec(),
            location_approximate: approx,
        }
    }

    /// Scans `text` and every decoded layer below it, depth first and in
    /// the order the candidates appear (the order of the former recursive
    /// scan), with an explicit stack: the depth is capped by
    /// [`bounds::MAX_DECODE_LAYERS`](super::bounds::MAX_DECODE_LAYERS)
    /// whatever the options say, and the decoded text scanned below one input
    /// by [`decode_budget`]. Returns false when the budget stopped decoding.
    fn scan_layers(&self, text: &str, location: &str, out: &mut Vec<Raw>) -> bool {
        let max_layers = self.max_layers.min(super::bounds::MAX_DECODE_LAYERS);
        let mut budget = decode_budget(text.len());
        let mut complete = true;
        let mut stack: Vec<Layer<'_>> = vec![Layer {
            text: std::borrow::Cow::Borrowed(text),
            path: Vec::new(),
            outer_line: None,
            root_blob: None,
        }];
        while let Some(layer) = stack.pop() {
            let children = self.scan_one_layer(&layer, location, max_layers, out);
            for c in children.into_iter().rev() {
                if c.text.len() > budget {
                    complete = false;
                    continue;
                }
                budget -= c.text.len();
                stack.push(c);
            }
        }
        complete
    }

    /// Scans one layer; returns its decoded children, in order.
    fn scan_one_layer<'t>(
        &self,
        layer: &Layer<'t>,
        location: &str,
        max_layers: usize,
        out: &mut Vec<Raw>,
    ) -> Vec<Layer<'t>> {
        let text: &str = &layer.text;
        let path = &layer.path;
        let outer_line = layer.outer_line;
        let root_blob = layer.root_blob.as_deref();
        let newlines: std::cell::OnceCell<Vec<usize>> = std::cell::OnceCell::new();
        let line_of = |pos: usize| {
            outer_line.unwrap_or_else(|| {
                newlines
                    .get_or_init(|| text.match_indices('\n').map(|(i, _)| i).collect())
                    .partition_point(|&n| n < pos)
            })
        };
        let approx = outer_line.is_some();
        let lower = text.to_ascii_lowercase();
        for rule in rules::rules() {
            if !rule.keywords.iter().any(|k| lower.contains(k)) {
                continue;
            }
            for caps in rule.regex.captures_iter(text) {
                let (Some(m0), Some(sm)) = (caps.get(0), caps.get(rule.group)) else {
                    continue;
                };
                let secret = sm.as_str();
                let entropy = shannon_entropy(secret);
                if entropy < rule.min_entropy {
                    continue;
                }
                if rule.needs_digit && !secret.bytes().any(|b| b.is_ascii_digit()) {
                    continue;
                }
                let whole = m0
                    .as_str()
                    .trim_end_matches(['\n', '\r', '"', '\'', '`', ';', ' ', '\t']);
                let mut redact = vec![secret.to_string()];
                if let Some(b) = root_blob {
                    redact.push(b.to_string());
                }
                out.push(Raw {
                    finding: self.make_finding(
                        rule.id.to_string(),
                        rule.description.to_string(),
                        location,
                        line_of(sm.start()),
                        secret,
                        whole,
                        path,
                        approx,
                        entropy,
                    ),
                    secret_text: secret.to_string(),
                    redact,
                });
            }
        }
        for (key, value) in &self.env_values {
            for (pos, _) in text.match_indices(value.as_str()) {
                let mut redact = vec![value.clone()];
                if let Some(b) = root_blob {
                    redact.push(b.to_string());
                }
                out.push(Raw {
                    finding: self.make_finding(
                        format!("witness-env-value-{}", key.replace('_', "-")).to_ascii_lowercase(),
                        format!("Sensitive environment variable value detected: {key}"),
                        location,
                        line_of(pos),
                        value,
                        value,
                        path,
                        approx,
                        shannon_entropy(value),
                    ),
                    secret_text: value.clone(),
                    redact,
                });
            }
        }
        let mut children: Vec<Layer<'t>> = Vec::new();
        if path.len() >= max_layers {
            return children;
        }
        let d = decoders();
        let mut seen: HashSet<(usize, usize, &'static str)> = HashSet::new();
        let mut decoded_child = |start: usize, cand: &str, enc: &'static str, bytes: Vec<u8>| {
            if !seen.insert((start, cand.len(), enc)) {
                return;
            }
            if let Some(decoded) = texty(&bytes) {
                if decoded == cand {
                    return;
                }
                let mut p = path.clone();
                p.push(enc.to_string());
                let blob = root_blob.unwrap_or(cand);
                children.push(Layer {
                    text: std::borrow::Cow::Owned(decoded),
                    path: p,
                    outer_line: Some(line_of(start)),
                    root_blob: Some(blob.to_string()),
                });
            }
        };
        let engines = b64_engines();
        for m in d.base64.find_iter(text) {
            let cand = m.as_str();
            for e in &engines {
                if let Ok(bytes) = e.decode(cand) {
                    decoded_child(m.start(), cand, "base64", bytes);
                    break;
                }
            }
        }
        for m in d.hex.find_iter(text) {
            if let Ok(bytes) = hex::decode(m.as_str()) {
                decoded_child(m.start(), m.as_str(), "hex", bytes);
            }
        }
        if text.contains('%') {
            for m in d.url.find_iter(text) {
                if let Some(bytes) = percent_decode(m.as_str()) {
                    decoded_child(m.start(), m.as_str(), "url", bytes);
                }
            }
        }
        children
    }
}

/// One text to scan: the input or a decoded layer below it.
struct Layer<'t> {
    text: std::borrow::Cow<'t, str>,
    /// Encodings peeled off to reach it, outermost first.
    path: Vec<String>,
    /// Line of the outermost encoded text, for decoded layers.
    outer_line: Option<usize>,
    /// The outermost encoded text (redacted with the secret).
    root_blob: Option<String>,
}

/// Most bytes of decoded text scanned below one input of `len` bytes:
/// decoding always shrinks text, so normal inputs stay far below it; a
/// crafted one that decodes many ways at every layer is stopped.
pub fn decode_budget(len: usize) -> usize {
    len.saturating_mul(16)
        .saturating_add(1 << 20)
        .min(MAX_DECODE_BUDGET)
}

/// The most decoded text [`decode_budget`] ever allows below one input.
pub const MAX_DECODE_BUDGET: usize = 512 << 20;

/// Removes duplicates, and generic findings of a secret a specific rule
/// also found at the same place.
fn dedup(raw: Vec<Raw>) -> Vec<Raw> {
    let specific: HashSet<(String, String)> = raw
        .iter()
        .filter(|r| r.finding.rule_id != rules::GENERIC_RULE)
        .map(|r| (r.finding.location.clone(), r.secret_text.clone()))
        .collect();
    let mut seen: HashSet<(String, String, usize, Vec<String>, String)> = HashSet::new();
    let mut out = Vec::new();
    for r in raw {
        if r.finding.rule_id == rules::GENERIC_RULE {
            let covered = specific.iter().any(|(loc, s)| {
                *loc == r.finding.location
                    && (s.contains(&r.secret_text) || r.secret_text.contains(s.as_str()))
            });
            if covered {
                continue;
            }
        }
        let key = (
            r.finding.rule_id.clone(),
            r.finding.location.clone(),
            r.finding.start_line,
            r.finding.encoding_path.clone(),
            r.secret_text.clone(),
        );
        if seen.insert(key) {
            out.push(r);
        }
    }
    out
}

/// Collects the strings of a JSON value: every key, and every string value
/// prefixed with its key (`key: value`) so assignment rules see the name.
fn json_leaves(v: &serde_json::Value, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => match key {
            Some(k) => out.push(format!("{k}: {s}")),
            None => out.push(s.clone()),
        },
        serde_json::Value::Array(a) => {
            for x in a {
                json_leaves(x, None, out);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if !x.is_string() {
                    out.push(k.clone());
                }
                json_leaves(x, Some(k), out);
            }
        }
        _ => {}
    }
}

/// Replaces each `(secret, rule)`'s secret by `[REDACTED:<rule>]` in every
/// string and key of `v` (what `redact_completed` does to one attestation).
pub fn redact_json(v: &mut serde_json::Value, secrets: &[(String, String)]) {
    redact_value(v, secrets)
}

fn redact_value(v: &mut serde_json::Value, secrets: &[(String, String)]) {
    let fix = |s: &str| -> Option<String> {
        let mut cur: Option<String> = None;
        for (secret, rule) in secrets {
            let base = cur.as_deref().unwrap_or(s);
            if base.contains(secret.as_str()) {
                cur = Some(base.replace(secret.as_str(), &format!("[REDACTED:{rule}]")));
            }
        }
        cur
    };
    match v {
        serde_json::Value::String(s) => {
            if let Some(n) = fix(s) {
                *s = n;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| redact_value(x, secrets)),
        serde_json::Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if let Some(mut x) = m.remove(&k) {
                    redact_value(&mut x, secrets);
                    let nk = fix(&k).unwrap_or(k);
                    m.insert(nk, x);
                }
            }
        }
        _ => {}
    }
}

/// The secretscan attestor.
pub struct SecretScanAttestor {
    opts: SecretScanOptions,
    filter: SensitiveEnvFilter,
    findings: Vec<Finding>,
    redactions: Vec<(String, String)>,
    subjects: BTreeMap<String, DigestSet>,
    skipped: Vec<super::filetree::SkippedPath>,
}

impl std::fmt::Debug for SecretScanAttestor {
    // Never prints the redaction list (it holds the secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretScanAttestor")
            .field("opts", &self.opts)
            .field("findings", &self.findings.len())
            .finish()
    }
}

impl SecretScanAttestor {
    /// A secretscan attestor; `filter` classifies sensitive variables.
    pub fn new(opts: SecretScanOptions, filter: SensitiveEnvFilter) -> Self {
        SecretScanAttestor {
            opts,
            filter,
            findings: Vec::new(),
            redactions: Vec::new(),
            subjects: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    /// The findings of the last `attest`.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Products that were not scanned, and why.
    pub fn skipped(&self) -> &[super::filetree::SkippedPath] {
        &self.skipped
    }

    /// The options.
    pub fn options(&self) -> &SecretScanOptions {
        &self.opts
    }

    /// The strings `redact_completed` masks, longest first, with the rule
    /// that found each (empty when redaction is off). Holds the secrets.
    pub fn redactions(&self) -> &[(String, String)] {
        &self.redactions
    }

    /// Replaces every found secret (and the encoded text it came from) by
    /// `[REDACTED:<ruleId>]` in the other attestations of `ctx`.
    pub fn redact_completed(&self, ctx: &mut AttestationContext) {
        if self.redactions.is_empty() {
            return;
        }
        for c in ctx.completed.iter_mut().filter(|c| c.name != NAME) {
            redact_value(&mut c.json, &self.redactions);
        }
    }
}

impl Attestor for SecretScanAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let scanner = SecretScanner::new(
            &ctx.env,
            &self.filter,
            self.opts.max_decode_layers,
            &ctx.hashes,
        );
        let mut raw: Vec<Raw> = Vec::new();
        let mut skipped = Vec::new();
        for c in ctx.completed.iter().filter(|c| c.name != NAME) {
            let location = format!("attestation:{}", c.name);
            let mut leaves = Vec::new();
            json_leaves(&c.json, None, &mut leaves);
            for leaf in leaves {
                if !scanner.scan_into(&leaf, &location, &mut raw) {
                    skipped.push(super::filetree::SkippedPath {
                        path: location.clone(),
                        reason: decode_budget_note(leaf.len()),
                    });
                }
            }
        }
        let mut subjects = BTreeMap::new();
        if let Some(products) = ctx
            .completed_json(super::product::NAME)
            .and_then(|v| v.as_object())
            .filter(|p| !p.is_empty())
        {
            // Products are read only through the working directory's
            // descriptor: a swap of the path since the walk changes nothing.
            let root = super::safeio::open_workdir(ctx)?;
            let max = self
                .opts
                .max_file_size_mb
                .min(super::bounds::MAX_FILE_SIZE_MB)
                .saturating_mul(1024 * 1024);
            let mut total: u64 = 0;
            for (rel, p) in products {
                if total >= MAX_TOTAL_SCAN_BYTES {
                    skipped.push(super::filetree::SkippedPath {
                        path: rel.clone(),
                        reason: format!(
                            "not scanned: {MAX_TOTAL_SCAN_BYTES} bytes of products already scanned in this step"
                        ),
                    });
                    continue;
                }
                let max = max.min(MAX_TOTAL_SCAN_BYTES - total);
                match scan_file(&scanner, root.as_fd(), rel, max, &mut raw, &mut skipped) {
                    Ok(n) => {
                        total += n;
                        if let Some(d) = p
                            .get("digest")
                            .and_then(|d| serde_json::from_value::<DigestSet>(d.clone()).ok())
                        {
                            subjects.insert(format!("product:{rel}"), d);
                        }
                    }
                    Err(reason) => skipped.push(super::filetree::SkippedPath {
                        path: rel.clone(),
                        reason,
                    }),
                }
            }
        }
        let raw = dedup(raw);
        let mut redactions: BTreeSet<(String, String)> = BTreeSet::new();
        for r in &raw {
            for s in &r.redact {
                if !s.is_empty() {
                    redactions.insert((s.clone(), r.finding.rule_id.clone()));
                }
            }
        }
        // Longest first, so an encoded blob is replaced before its parts.
        let mut redactions: Vec<(String, String)> = redactions.into_iter().collect();
        redactions.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.cmp(b)));
        self.redactions = if self.opts.redact {
            redactions
        } else {
            Vec::new()
        };
        self.findings = raw.into_iter().map(|r| r.finding).collect();
        self.subjects = subjects;
        self.skipped = skipped;
        let att = SecretScanAttestation {
            findings: if self.findings.is_empty() {
                None
            } else {
                Some(self.findings.clone())
            },
        };
        serde_json::to_value(&att).map_err(|e| AttestError::Invalid(format!("secretscan: {e}")))
    }

    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.subjects.clone()
    }
}

/// Scans the product `rel`, opened beneath the working directory's
/// descriptor (`RESOLVE_BENEATH`: in-tree links only), non-blocking, regular
/// files only, at most `max` bytes (checked with `fstat` and again while
/// reading). Returns the bytes read.
fn scan_file(
    scanner: &SecretScanner,
    root: std::os::fd::BorrowedFd<'_>,
    rel: &str,
    max: u64,
    out: &mut Vec<Raw>,
    skipped: &mut Vec<super::filetree::SkippedPath>,
) -> Result<u64, String> {
    let fd =
        super::safeio::open_beneath(root, Path::new(rel)).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => "not scanned: leads outside the working directory".to_string(),
            _ => format!("cannot open: {e}"),
        })?;
    let f = std::fs::File::from(fd);
    let meta = super::safeio::require_regular(&f)?;
    if meta.len() > max {
        return Err(format!("larger than the {} byte scan limit", max));
    }
    let (bytes, more) = super::safeio::read_capped_sized(&f, max, meta.len())
        .map_err(|e| format!("cannot read: {e}"))?;
    if more {
        return Err(format!("larger than the {} byte scan limit", max));
    }
    let text = String::from_utf8_lossy(&bytes);
    let location = format!("product:{rel}");
    if !scanner.scan_into(&text, &location, out) {
        skipped.push(super::filetree::SkippedPath {
            path: rel.to_string(),
            reason: decode_budget_note(bytes.len()),
        });
    }
    Ok(bytes.len() as u64)
}

fn decode_budget_note(len: usize) -> String {
    format!(
        "decoding stopped after {} bytes of decoded text (the bound for this input); deeper layers were not scanned",
        decode_budget(len)
    )
}

/// Most product bytes one secretscan run reads; later products are listed
/// as skipped.
pub const MAX_TOTAL_SCAN_BYTES: u64 = 2 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestors::environment::EnvOptions;

    fn scanner(env: &[(String, String)]) -> SecretScanner {
        let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
        SecretScanner::new(env, &f, 3, &[HashAlg::Sha256])
    }

    #[test]
    fn entropy_matches_gitleaks() {
        // From a real CI/lock envelope (fixture attestation-with-findings.json).
        assert_eq!(
            shannon_entropy("ghp_R4nd0mT0k3nV4lu3Th4tL00ksR34lEnough1"),
            4.2653117f32
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask_secret("AKIAIOSFODNN7EXAMPLE"), "AKIA****************");
        let long = "x".repeat(20) + &"y".repeat(30);
        assert_eq!(mask_secret(&long), "xxxxxxxx...yyyyyyyy");
        assert_eq!(truncate_match("short"), "short");
    }

    #[test]
    fn hex_and_url_layers() {
        let tok = "ghp_R4nd0mT0k3nV4lu3Th4tL00ksR34lEnough1";
        let s = scanner(&[]);
        let f = s.scan_text(&format!("x={}\n", hex::encode(tok)), "attestation:t");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].encoding_path, vec!["hex"]);
        let url = format!("u=https%3A%2F%2Fx%2F%3Ft%3D{tok}%26");
        let f = s.scan_text(&url, "attestation:t");
        // The token is visible in clear too (only the delimiters are encoded).
        assert!(f.iter().any(|x| x.encoding_path.is_empty()));
        assert!(f.iter().any(|x| x.encoding_path == vec!["url"]));
    }

    #[test]
    fn env_values_are_found() {
        let s = scanner(&[
            ("MY_SECRET".into(), "s3cr3t-value-123".into()),
            ("PATH".into(), "/usr/bin".into()),
        ]);
        let f = s.scan_text(
            "echo s3cr3t-value-123 and /usr/bin",
            "attestation:command-run",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule_id, "witness-env-value-my-secret");
        assert!(!f[0].match_.contains("s3cr3t-value-123"));
    }
}
