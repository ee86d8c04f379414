//! The falco attestor: a Falco alert file among the step's products
//! (`json_output: true`, one JSON object per line with `time`, `rule`,
//! `priority`, `output`, and usually `source`, `hostname`, `tags`,
//! `output_fields`: Falco's `falco_formats::format_event`), summarized so
//! Rego can gate on it. Type and field names are rookery's
//! (`https://aflock.ai/attestations/falco/v0.1`: `report_file`,
//! `report_digest_set`, `summary.total_events`, `summary.priorities`,
//! `summary.rule_hits`, `summary.distinct_rules`, `summary.distinct_hosts`,
//! `summary.window_start`, `summary.window_end`), so one policy reads both;
//! cilock adds each rule's per-priority counts, the hosts, sources, tags,
//! Kubernetes namespaces and pods and container images the events name
//! (bounded), and `skipped_lines`. Events themselves are not copied (their
//! outputs carry command lines and file names; the report's digest binds
//! them).
//!
//! The report: the first text/JSON product whose first non-empty line is a
//! Falco event; later lines that are not events (a log line in a captured
//! stdout) are counted in `skipped_lines`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};
use super::{clip, find_report, head_has, BoundedMap, BoundedSet, Sniff};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "falco";
/// Type URI (rookery's).
pub const TYPE: &str = "https://aflock.ai/attestations/falco/v0.1";

/// Falco's priorities, highest first (`falco_common::priority_type`).
pub const PRIORITIES: &[&str] = &[
    "emergency",
    "alert",
    "critical",
    "error",
    "warning",
    "notice",
    "informational",
    "debug",
];

/// The falco attestor.
#[derive(Debug, Default)]
pub struct FalcoAttestor {
    subjects: BTreeMap<String, DigestSet>,
}

impl FalcoAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(FalcoAttestor::default())
    }
}

#[derive(Deserialize)]
struct Event {
    time: String,
    rule: String,
    priority: String,
    /// Required (part of the shape), not recorded.
    #[serde(rename = "output")]
    _output: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    output_fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Priority name as Falco prints it mapped to the summary key
/// (`Informational` and `Info` both count as informational).
fn priority_key(p: &str) -> Option<&'static str> {
    let p = p.to_ascii_lowercase();
    if p == "info" {
        return Some("informational");
    }
    PRIORITIES.iter().find(|k| **k == p).copied()
}

fn rank(p: &str) -> usize {
    priority_key(p)
        .and_then(|k| PRIORITIES.iter().position(|x| *x == k))
        .map(|i| PRIORITIES.len() - i)
        .unwrap_or(0)
}

fn zero_priorities() -> BTreeMap<&'static str, u64> {
    PRIORITIES.iter().map(|p| (*p, 0)).collect()
}

#[derive(Default)]
struct RuleHit {
    count: u64,
    highest: String,
    priorities: BTreeMap<&'static str, u64>,
}

/// What a Falco report says.
#[derive(Default)]
struct Summary {
    total: u64,
    priorities: BTreeMap<&'static str, u64>,
    rules: BoundedMap<RuleHit>,
    hosts: BoundedSet,
    sources: BoundedSet,
    tags: BoundedSet,
    namespaces: BoundedSet,
    pods: BoundedSet,
    images: BoundedSet,
    start: String,
    end: String,
    skipped_lines: u64,
}

impl Summary {
    fn add(&mut self, ev: Event) {
        self.total += 1;
        let key = priority_key(&ev.priority);
        if let Some(k) = key {
            *self.priorities.entry(k).or_default() += 1;
        }
        if let Some(hit) = self.rules.entry_or(&ev.rule, RuleHit::default) {
            hit.count += 1;
            if let Some(k) = key {
                *hit.priorities.entry(k).or_default() += 1;
            }
            if hit.highest.is_empty() || rank(&ev.priority) > rank(&hit.highest) {
                hit.highest = clip(&ev.priority);
            }
        }
        if let Some(h) = &ev.hostname {
            self.hosts.add(h);
        }
        if let Some(s) = &ev.source {
            self.sources.add(s);
        }
        for t in ev.tags.iter().flatten() {
            self.tags.add(t);
        }
        if let Some(f) = &ev.output_fields {
            let s = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or("");
            self.namespaces.add(s("k8s.ns.name"));
            self.pods.add(s("k8s.pod.name"));
            let repo = s("container.image.repository");
            let tag = s("container.image.tag");
            if !repo.is_empty() && !tag.is_empty() {
                self.images.add(&format!("{repo}:{tag}"));
            } else {
                self.images.add(repo);
            }
        }
        if !ev.time.is_empty() {
            if self.start.is_empty() || ev.time < self.start {
                self.start = clip(&ev.time);
            }
            if self.end.is_empty() || ev.time > self.end {
                self.end = clip(&ev.time);
            }
        }
    }
}

fn parse_event(line: &[u8]) -> Option<Event> {
    serde_json::from_slice::<Event>(line).ok()
}

fn sniff(b: &[u8]) -> Sniff<Summary> {
    let mut lines = b
        .split(|c| *c == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return Sniff::NotMine;
    };
    let Some(ev) = parse_event(first) else {
        if head_has(
            first,
            b'{',
            &["\"rule\"", "\"priority\"", "\"output\"", "\"time\""],
        ) {
            return Sniff::Malformed(
                "its first line names Falco's fields but is not a Falco event \
                 (string time, rule, priority, output)"
                    .into(),
            );
        }
        return Sniff::NotMine;
    };
    let mut s = Summary {
        priorities: zero_priorities(),
        ..Default::default()
    };
    s.add(ev);
    for l in lines {
        match parse_event(l) {
            Some(ev) => s.add(ev),
            None => s.skipped_lines += 1,
        }
    }
    Sniff::Mine(s)
}

impl Attestor for FalcoAttestor {
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
        let s = found.parsed;
        let rule_hits: Vec<serde_json::Value> = s
            .rules
            .items
            .iter()
            .map(|(rule, h)| {
                serde_json::json!({
                    "rule": rule,
                    "count": h.count,
                    "highest_priority": h.highest,
                    "priorities": h.priorities,
                })
            })
            .collect();
        Ok(serde_json::json!({
            "report_file": found.rel,
            "report_digest_set": found.digest,
            "summary": {
                "total_events": s.total,
                "priorities": s.priorities,
                "rule_hits": rule_hits,
                "rule_hits_truncated": s.rules.truncated,
                "distinct_rules": s.rules.items.len(),
                "distinct_hosts": s.hosts.to_vec().len(),
                "window_start": s.start,
                "window_end": s.end,
            },
            "hostnames": s.hosts.to_vec(),
            "sources": s.sources.to_vec(),
            "tags": s.tags.to_vec(),
            "k8s_namespaces": s.namespaces.to_vec(),
            "k8s_pods": s.pods.to_vec(),
            "container_images": s.images.to_vec(),
            "lists_truncated": s.hosts.truncated || s.sources.truncated || s.tags.truncated
                || s.namespaces.truncated || s.pods.truncated || s.images.truncated,
            "skipped_lines": s.skipped_lines,
        }))
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.subjects.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine(b: &[u8]) -> Summary {
        match sniff(b) {
            Sniff::Mine(s) => s,
            Sniff::NotMine => panic!("not mine"),
            Sniff::Malformed(e) => panic!("malformed: {e}"),
        }
    }

    #[test]
    fn counts_rules_priorities_and_targets() {
        let ev = |t: &str, r: &str, p: &str, extra: &str| {
            format!(
                "{{\"time\":\"{t}\",\"rule\":\"{r}\",\"priority\":\"{p}\",\"output\":\"o\",\
                 \"hostname\":\"h1\",\"source\":\"syscall\",\"tags\":[\"container\"]{extra}}}\n"
            )
        };
        let text = [
            ev("2026-01-01T00:00:02.0Z", "A", "Warning", ""),
            "Falco initialized\n".to_string(),
            ev(
                "2026-01-01T00:00:01.0Z",
                "A",
                "Critical",
                r#","output_fields":{"k8s.ns.name":"prod","k8s.pod.name":"web-1","container.image.repository":"nginx","container.image.tag":"1.25"}"#,
            ),
            ev("2026-01-01T00:00:03.0Z", "B", "Info", ""),
            ev("2026-01-01T00:00:00.5Z", "C", "Bogus", ""),
        ]
        .concat();
        let s = mine(text.as_bytes());
        assert_eq!(s.total, 4);
        assert_eq!(s.skipped_lines, 1);
        assert_eq!(s.priorities["warning"], 1);
        assert_eq!(s.priorities["critical"], 1);
        assert_eq!(s.priorities["informational"], 1);
        assert_eq!(s.priorities.values().sum::<u64>(), 3);
        assert_eq!(s.rules.items["A"].count, 2);
        assert_eq!(s.rules.items["A"].highest, "Critical");
        assert_eq!(s.rules.items["C"].highest, "Bogus");
        assert_eq!(s.start, "2026-01-01T00:00:00.5Z");
        assert_eq!(s.end, "2026-01-01T00:00:03.0Z");
        assert_eq!(s.namespaces.to_vec(), ["prod"]);
        assert_eq!(s.pods.to_vec(), ["web-1"]);
        assert_eq!(s.images.to_vec(), ["nginx:1.25"]);
    }

    #[test]
    fn shapes_that_are_not_falco() {
        for b in [
            &b""[..],
            b"\n\n",
            b"hello\n",
            b"{\"rule\":\"x\"}\n",
            b"[{\"time\":\"t\",\"rule\":\"r\",\"priority\":\"p\",\"output\":\"o\"}]",
        ] {
            assert!(matches!(sniff(b), Sniff::NotMine), "{b:?}");
        }
        let bad = br#"{"time": 5, "rule": "r", "priority": "p", "output": "o"}"#;
        assert!(matches!(sniff(bad), Sniff::Malformed(_)));
    }
}
