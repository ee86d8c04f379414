//! The sarif attestor (`https://witness.dev/attestations/sarif/v0.1`): the
//! step's SARIF report, in Witness's shape (go-witness
//! `attestation/sarif/sarif.go`) plus a summary Rego can gate on.
//!
//! The report is the first product, in path order, whose MIME type is
//! exactly `application/sarif+json` (cilock's SARIF detector, see
//! [`super::product`]; go-witness's MIME filter is a no-op and rookery
//! fixed it to an exact match). It is re-read beneath the working directory
//! and checked against the product digest.
//!
//! ```text
//! {
//!   "report": { …the SARIF log… },
//!   "reportFileName": "ruff.sarif",
//!   "reportDigestSet": {"sha256": "…"},
//!   "summary": {                       // cilock extension
//!     "tools": ["ruff"],               // distinct run.tool.driver.name, sorted
//!     "results": 4,                    // results in all runs
//!     "levels": {"error": 4, "warning": 0, "note": 0, "none": 0},
//!     "ruleIds": ["F401", "F841", "I001"]  // distinct, sorted
//!   }
//! }
//! ```
//!
//! A result's level is its `level`; without one, SARIF 2.1.0 §3.27.10: a
//! result whose `kind` is present and not `fail` is `none`; otherwise its
//! rule's `defaultConfiguration.level` (the rule found by `ruleIndex`,
//! `rule.index` or `ruleId` in `run.tool.driver.rules`), else `warning`.
//! A result's rule id is its `ruleId`, else `rule.id`, else the id of the
//! rule its index names. At most [`MAX_RUNS`] runs and [`MAX_RESULTS`]
//! results are summarised; a larger report is refused, not cut.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::lifecycle::AttestorOptions;
use super::product::SARIF_MIME;
use super::product_files;
use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "sarif";
/// Largest SARIF report read, in bytes (recorded whole: see
/// [`super::sbom::MAX_SBOM_BYTES`] for why it is below the helper's reply
/// bound).
pub const MAX_SARIF_BYTES: u64 = 24 << 20;
/// Most runs summarised.
pub const MAX_RUNS: usize = 1024;
/// Most results summarised (all runs together).
pub const MAX_RESULTS: usize = 1_000_000;

/// The SARIF levels, in the order the summary lists them.
pub const LEVELS: [&str; 4] = ["error", "warning", "note", "none"];

/// The sarif attestor.
#[derive(Debug)]
pub struct SarifAttestor {}

impl SarifAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SarifAttestor {})
    }
}

/// What a report holds, for policies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Distinct tool (driver) names.
    pub tools: BTreeSet<String>,
    /// Results in all runs.
    pub results: usize,
    /// Results by level (`error`, `warning`, `note`, `none`).
    pub levels: BTreeMap<&'static str, usize>,
    /// Distinct rule ids.
    pub rule_ids: BTreeSet<String>,
}

impl Summary {
    /// The summary's JSON (`tools`, `results`, `levels`, `ruleIds`).
    pub fn to_json(&self) -> Value {
        let levels: serde_json::Map<String, Value> = LEVELS
            .iter()
            .map(|l| {
                (
                    l.to_string(),
                    json!(self.levels.get(l).copied().unwrap_or(0)),
                )
            })
            .collect();
        json!({
            "tools": self.tools,
            "results": self.results,
            "levels": levels,
            "ruleIds": self.rule_ids,
        })
    }
}

fn rule_at<'a>(rules: Option<&'a Vec<Value>>, idx: Option<&Value>) -> Option<&'a Value> {
    let i = usize::try_from(idx?.as_u64()?).ok()?;
    rules?.get(i)
}

/// Summarises a parsed SARIF log; the error says what is wrong with it.
pub fn summarize(doc: &Value) -> Result<Summary, String> {
    let runs = doc
        .get("runs")
        .and_then(Value::as_array)
        .ok_or("no \"runs\" array (not a SARIF log)")?;
    if runs.len() > MAX_RUNS {
        return Err(format!(
            "{} runs, more than the {MAX_RUNS} summarised",
            runs.len()
        ));
    }
    let mut s = Summary::default();
    for (ri, run) in runs.iter().enumerate() {
        let driver = run.get("tool").and_then(|t| t.get("driver"));
        if let Some(name) = driver.and_then(|d| d.get("name")).and_then(Value::as_str) {
            s.tools.insert(name.to_string());
        }
        let rules = driver
            .and_then(|d| d.get("rules"))
            .and_then(Value::as_array);
        let results = match run.get("results") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(r)) => r,
            Some(_) => return Err(format!("run #{ri}: \"results\" is not an array")),
        };
        if s.results + results.len() > MAX_RESULTS {
            return Err(format!("more than the {MAX_RESULTS} results summarised"));
        }
        for (i, r) in results.iter().enumerate() {
            if !r.is_object() {
                return Err(format!("run #{ri}: result #{i} is not an object"));
            }
            let rule_ref = r.get("rule");
            let rule = rule_at(rules, r.get("ruleIndex"))
                .or_else(|| rule_at(rules, rule_ref.and_then(|x| x.get("index"))));
            let id = r
                .get("ruleId")
                .and_then(Value::as_str)
                .or_else(|| rule_ref.and_then(|x| x.get("id")).and_then(Value::as_str))
                .or_else(|| rule.and_then(|x| x.get("id")).and_then(Value::as_str));
            let rule = rule.or_else(|| {
                let id = id?;
                rules?
                    .iter()
                    .find(|x| x.get("id").and_then(Value::as_str) == Some(id))
            });
            let level = match r.get("level") {
                Some(l) => l
                    .as_str()
                    .ok_or_else(|| format!("run #{ri}: result #{i}: \"level\" is not a string"))?,
                None => match r.get("kind").and_then(Value::as_str) {
                    Some(k) if k != "fail" => "none",
                    _ => rule
                        .and_then(|x| x.get("defaultConfiguration"))
                        .and_then(|c| c.get("level"))
                        .and_then(Value::as_str)
                        .unwrap_or("warning"),
                },
            };
            let Some(level) = LEVELS.iter().find(|l| **l == level) else {
                return Err(format!(
                    "run #{ri}: result #{i}: level {level:?} is not error, warning, note or none"
                ));
            };
            *s.levels.entry(level).or_default() += 1;
            s.results += 1;
            if let Some(id) = id {
                s.rule_ids.insert(id.to_string());
            }
        }
    }
    Ok(s)
}

impl Attestor for SarifAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<Value, AttestError> {
        let (rel, product, report) = product_files::first_json_product(
            ctx,
            "sarif",
            "a SARIF report",
            |m| m == SARIF_MIME,
            MAX_SARIF_BYTES,
        )?;
        let summary =
            summarize(&report).map_err(|e| AttestError::Invalid(format!("sarif: {rel}: {e}")))?;
        Ok(json!({
            "report": report,
            "reportFileName": rel,
            "reportDigestSet": product.digest,
            "summary": summary.to_json(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_sarif_defaults() {
        let doc = json!({"version": "2.1.0", "runs": [
            {"tool": {"driver": {"name": "t1", "rules": [
                {"id": "R0", "defaultConfiguration": {"level": "error"}},
                {"id": "R1"},
                {"id": "R2", "defaultConfiguration": {"level": "note"}}]}},
             "results": [
                {"ruleId": "R0", "level": "warning"},
                {"ruleId": "R0"},
                {"ruleIndex": 1},
                {"rule": {"index": 2}},
                {"ruleId": "R2"},
                {"ruleId": "R0", "kind": "pass"},
                {"ruleId": "R0", "kind": "fail"},
                {"message": {"text": "no rule"}}]},
            {"tool": {"driver": {"name": "t0"}}, "results": [{"ruleId": "X", "level": "none"}]},
            {"tool": {"driver": {"name": "t1"}}}
        ]});
        let s = summarize(&doc).unwrap();
        assert_eq!(
            s.to_json(),
            json!({"tools": ["t0", "t1"], "results": 9,
                   "levels": {"error": 2, "warning": 3, "note": 2, "none": 2},
                   "ruleIds": ["R0", "R1", "R2", "X"]})
        );
    }

    #[test]
    fn malformed_reports_are_refused() {
        for (doc, msg) in [
            (
                json!({"version": "2.1.0"}),
                "no \"runs\" array (not a SARIF log)",
            ),
            (json!({"runs": {}}), "no \"runs\" array (not a SARIF log)"),
            (
                json!({"runs": [{"results": 3}]}),
                "run #0: \"results\" is not an array",
            ),
            (
                json!({"runs": [{"results": [1]}]}),
                "run #0: result #0 is not an object",
            ),
            (
                json!({"runs": [{"results": [{"level": "critical"}]}]}),
                "run #0: result #0: level \"critical\" is not error, warning, note or none",
            ),
            (
                json!({"runs": [{"results": [{"level": 3}]}]}),
                "run #0: result #0: \"level\" is not a string",
            ),
        ] {
            assert_eq!(summarize(&doc).unwrap_err(), msg);
        }
        let runs: Vec<Value> = (0..=MAX_RUNS).map(|_| json!({})).collect();
        assert_eq!(
            summarize(&json!({ "runs": runs })).unwrap_err(),
            "1025 runs, more than the 1024 summarised"
        );
        // A huge ruleIndex finds no rule rather than failing.
        let s = summarize(
            &json!({"runs": [{"tool": {"driver": {"name": "t", "rules": []}},
            "results": [{"ruleIndex": u64::MAX}]}]}),
        )
        .unwrap();
        assert_eq!(s.levels.get("warning"), Some(&1));
        assert!(s.rule_ids.is_empty());
    }
}
