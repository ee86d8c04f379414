//! The kube-bench attestor: a `kube-bench --json` report among the step's
//! products (`{"Controls": [...], "Totals": {...}}`, or with `--nototals`
//! the bare array of controls: kube-bench `cmd/common.go`
//! `writeJSONOutput`, `check/controls.go`), summarized so Rego can gate on
//! it. Type and field names are rookery's
//! (`https://aflock.ai/attestations/kube-bench/v0.1`: `report_file`,
//! `report_digest_set`, `summary.total_pass|fail|warn`,
//! `summary.failed_checks`/`warned_checks` of `{id, text}`), so one policy
//! reads both; cilock adds `summary.total_info`, `totals_from_report`
//! (false with `--nototals`: the totals are then the sums of the controls'
//! own), `result_counts` (the statuses of the individual results, counted
//! here), `sections` (each control's id, text, node type, benchmark version
//! and totals), `node_types`, `benchmark_version`, `detected_version`, and
//! each listed check's `section` and `scored`.
//!
//! rookery's `version` (the first control's id) is not recorded: it is not a
//! version.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};
use super::{clip, find_report, head_has, BoundedList, BoundedMap, BoundedSet, Sniff};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "kube-bench";
/// Type URI (rookery's).
pub const TYPE: &str = "https://aflock.ai/attestations/kube-bench/v0.1";

/// The kube-bench attestor.
#[derive(Debug, Default)]
pub struct KubeBenchAttestor {
    subjects: BTreeMap<String, DigestSet>,
}

impl KubeBenchAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(KubeBenchAttestor::default())
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
struct Totals {
    #[serde(default)]
    total_pass: u64,
    #[serde(default)]
    total_fail: u64,
    #[serde(default)]
    total_warn: u64,
    #[serde(default)]
    total_info: u64,
}

#[derive(Deserialize)]
struct Overall {
    #[serde(rename = "Controls")]
    controls: Option<Vec<Controls>>,
    #[serde(rename = "Totals")]
    totals: Totals,
}

#[derive(Deserialize)]
struct Controls {
    id: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    detected_version: Option<String>,
    #[serde(default)]
    text: String,
    node_type: String,
    tests: Option<Vec<Group>>,
    #[serde(flatten)]
    totals: Totals,
}

#[derive(Deserialize)]
struct Group {
    #[serde(default)]
    section: String,
    results: Option<Vec<Check>>,
}

#[derive(Deserialize)]
struct Check {
    test_number: String,
    #[serde(default)]
    test_desc: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    scored: bool,
}

struct Report {
    controls: Vec<Controls>,
    totals: Option<Totals>,
}

fn sniff(b: &[u8]) -> Sniff<Report> {
    if head_has(b, b'{', &["\"Controls\"", "\"Totals\""]) {
        return match serde_json::from_slice::<Overall>(b) {
            Ok(o) => Sniff::Mine(Report {
                controls: o.controls.unwrap_or_default(),
                totals: Some(o.totals),
            }),
            Err(e) => Sniff::Malformed(format!("not a kube-bench --json report: {e}")),
        };
    }
    if head_has(b, b'[', &["\"node_type\"", "\"tests\""]) {
        return match serde_json::from_slice::<Vec<Controls>>(b) {
            Ok(c) => Sniff::Mine(Report {
                controls: c,
                totals: None,
            }),
            Err(e) => Sniff::Malformed(format!("not a kube-bench --json --nototals report: {e}")),
        };
    }
    Sniff::NotMine
}

/// The sums of the controls' own totals (a `--nototals` report), saturating:
/// the counts are the report's, not bounded by anything.
fn summed_totals(controls: &[Controls]) -> Totals {
    controls.iter().fold(Totals::default(), |a, c| Totals {
        total_pass: a.total_pass.saturating_add(c.totals.total_pass),
        total_fail: a.total_fail.saturating_add(c.totals.total_fail),
        total_warn: a.total_warn.saturating_add(c.totals.total_warn),
        total_info: a.total_info.saturating_add(c.totals.total_info),
    })
}

fn check_json(section: &str, c: &Check) -> serde_json::Value {
    serde_json::json!({
        "id": clip(&c.test_number),
        "text": clip(&c.test_desc),
        "section": clip(section),
        "scored": c.scored,
    })
}

impl Attestor for KubeBenchAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn type_uri(&self) -> String {
        TYPE.to_string()
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let found = find_report(ctx, NAME, sniff)?;
        self.subjects = found.subjects();
        let r = found.parsed;
        let totals = r.totals.unwrap_or_else(|| summed_totals(&r.controls));
        let mut failed = BoundedList::default();
        let mut warned = BoundedList::default();
        let mut counts = BoundedMap::default();
        let mut sections = BoundedList::default();
        let mut node_types = BoundedSet::default();
        let mut detected = BoundedSet::default();
        for c in &r.controls {
            node_types.add(&c.node_type);
            detected.add(c.detected_version.as_deref().unwrap_or(""));
            sections.push(serde_json::json!({
                "id": clip(&c.id),
                "text": clip(&c.text),
                "node_type": clip(&c.node_type),
                "version": clip(&c.version),
                "total_pass": c.totals.total_pass,
                "total_fail": c.totals.total_fail,
                "total_warn": c.totals.total_warn,
                "total_info": c.totals.total_info,
            }));
            for g in c.tests.iter().flatten() {
                for chk in g.results.iter().flatten() {
                    counts.count(&chk.status);
                    match chk.status.as_str() {
                        "FAIL" => failed.push(check_json(&g.section, chk)),
                        "WARN" => warned.push(check_json(&g.section, chk)),
                        _ => {}
                    }
                }
            }
        }
        Ok(serde_json::json!({
            "report_file": found.rel,
            "report_digest_set": found.digest,
            "benchmark_version": r.controls.first().map(|c| clip(&c.version)).unwrap_or_default(),
            "detected_version": detected.to_vec().first().cloned().unwrap_or_default(),
            "node_types": node_types.to_vec(),
            "totals_from_report": r.totals.is_some(),
            "summary": {
                "total_pass": totals.total_pass,
                "total_fail": totals.total_fail,
                "total_warn": totals.total_warn,
                "total_info": totals.total_info,
                "failed_checks": failed.items,
                "failed_checks_truncated": failed.truncated,
                "warned_checks": warned.items,
                "warned_checks_truncated": warned.truncated,
            },
            "result_counts": counts.items,
            "sections": sections.items,
            "sections_truncated": sections.truncated,
        }))
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.subjects.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(matches!(sniff(b"{\"a\":1}"), Sniff::NotMine));
        assert!(matches!(sniff(b"[1,2]"), Sniff::NotMine));
        assert!(matches!(
            sniff(br#"{"Controls": 5, "Totals": {}}"#),
            Sniff::Malformed(_)
        ));
        assert!(matches!(
            sniff(br#"[{"id":"1","node_type":"master","tests":"x"}]"#),
            Sniff::Malformed(_)
        ));
        let Sniff::Mine(r) = sniff(br#"{"Controls": null, "Totals": {"total_fail": 2}}"#) else {
            panic!()
        };
        assert!(r.controls.is_empty());
        assert_eq!(r.totals.unwrap().total_fail, 2);
    }

    #[test]
    fn summed_totals_saturate() {
        let c = r#"{"id":"1","node_type":"master","tests":[],"total_fail":18446744073709551615}"#;
        let Sniff::Mine(r) = sniff(format!("[{c},{c}]").as_bytes()) else {
            panic!()
        };
        assert_eq!(summed_totals(&r.controls).total_fail, u64::MAX);
    }
}
