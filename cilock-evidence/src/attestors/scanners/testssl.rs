//! The testssl attestor: a testssl.sh JSON report among the step's
//! products, in either of its JSON outputs (testssl.sh's manual, `--json` /
//! `--jsonfile` and `--json-pretty` / `--jsonfile-pretty`; `testssl.sh`
//! `fileout_json_finding`):
//! - flat: an array of findings `{id, ip ("host/ip"), port, severity, cve,
//!   cwe, finding}` (and `hint` with `--hints`);
//! - pretty: an object with `Invocation`, `at`, `version`, `openssl`,
//!   `startTime`, `scanResult` (one entry per target: `targetHost`, `ip`,
//!   `port`, `rDNS`, `service`, then one array of `{id, severity, cve, cwe,
//!   finding}` per test section) and `scanTime`.
//!
//! Severities: OK, INFO, LOW, MEDIUM, HIGH, CRITICAL, and WARN (a scanning
//! problem), FATAL, DEBUG. Recorded (camelCase; rookery has no testssl
//! attestor (its catalogue sends testssl.sh to sarif), so the shape is
//! cilock's, under the CI/lock namespace like the other scanners): `reportFile`, `reportDigest`,
//! `format` (`json` or `json-pretty`), `version`, `openssl`, `startTime`,
//! `scanTime` (pretty only), `targets` (`host`, `ip`, `port`, `service`),
//! `totalFindings`, `severityCounts` (every severity, zero included),
//! `problemIds` (ids of findings LOW or worse, or WARN/FATAL, sorted,
//! unique) and `findings` (`id`, `severity`, `finding`, `cve`, `cwe`,
//! `host`, `port`, `section` for pretty), each bounded.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};
use super::{clip, find_report, head_has, BoundedList, BoundedMap, BoundedSet, Sniff};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "testssl";
/// Type URI (the CI/lock namespace; neither Witness nor rookery defines it).
pub const TYPE: &str = "https://aflock.ai/attestations/testssl/v0.1";

/// testssl.sh's severities.
pub const SEVERITIES: &[&str] = &[
    "CRITICAL", "HIGH", "MEDIUM", "LOW", "OK", "INFO", "WARN", "FATAL", "DEBUG",
];

const PROBLEMS: &[&str] = &["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "FATAL"];

/// The testssl attestor.
#[derive(Debug, Default)]
pub struct TestsslAttestor {
    subjects: BTreeMap<String, DigestSet>,
}

impl TestsslAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(TestsslAttestor::default())
    }
}

#[derive(Deserialize)]
struct FlatFinding {
    id: String,
    ip: String,
    port: String,
    severity: String,
    finding: String,
    #[serde(default)]
    cve: Option<String>,
    #[serde(default)]
    cwe: Option<String>,
}

#[derive(Deserialize)]
struct PrettyFinding {
    id: String,
    severity: String,
    #[serde(default)]
    finding: Option<String>,
    #[serde(default)]
    cve: Option<String>,
    #[serde(default)]
    cwe: Option<String>,
}

struct Finding {
    id: String,
    severity: String,
    finding: String,
    cve: String,
    cwe: String,
    host: String,
    port: String,
    section: String,
}

struct Report {
    format: &'static str,
    meta: BTreeMap<&'static str, String>,
    targets: Vec<[String; 4]>,
    findings: Vec<Finding>,
}

fn scalar(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn push_section(
    findings: &mut Vec<Finding>,
    section: &str,
    items: &[serde_json::Value],
    host: &str,
    port: &str,
) -> Result<(), String> {
    for (i, item) in items.iter().enumerate() {
        let f: PrettyFinding =
            serde_json::from_value(item.clone()).map_err(|e| format!("{section}[{i}]: {e}"))?;
        findings.push(Finding {
            id: f.id,
            severity: f.severity,
            finding: f.finding.unwrap_or_default(),
            cve: f.cve.unwrap_or_default(),
            cwe: f.cwe.unwrap_or_default(),
            host: host.to_string(),
            port: port.to_string(),
            section: section.to_string(),
        });
    }
    Ok(())
}

/// The pretty report: `scanResult` (an array of targets) and, outside it,
/// arrays of findings about the client (`clientProblem1`, …).
fn from_pretty(p: serde_json::Map<String, serde_json::Value>) -> Result<Report, String> {
    let Some(serde_json::Value::Array(results)) = p.get("scanResult") else {
        return Err("scanResult is not an array".into());
    };
    let mut meta = BTreeMap::new();
    meta.insert("version", scalar(p.get("version")));
    meta.insert("openssl", scalar(p.get("openssl")));
    meta.insert("startTime", scalar(p.get("startTime")));
    meta.insert("scanTime", scalar(p.get("scanTime")));
    let mut targets = Vec::new();
    let mut findings = Vec::new();
    for (section, v) in &p {
        if let (false, serde_json::Value::Array(items)) = (section == "scanResult", v) {
            push_section(&mut findings, section, items, "", "")?;
        }
    }
    for (n, t) in results.iter().enumerate() {
        let serde_json::Value::Object(t) = t else {
            return Err(format!("scanResult[{n}] is not an object"));
        };
        let host = scalar(t.get("targetHost"));
        let port = scalar(t.get("port"));
        if targets.len() < super::MAX_LIST {
            targets.push([
                host.clone(),
                scalar(t.get("ip")),
                port.clone(),
                scalar(t.get("service")),
            ]);
        }
        for (section, v) in t {
            if let serde_json::Value::Array(items) = v {
                push_section(&mut findings, section, items, &host, &port)
                    .map_err(|e| format!("scanResult[{n}].{e}"))?;
            }
        }
    }
    Ok(Report {
        format: "json-pretty",
        meta,
        targets,
        findings,
    })
}

fn from_flat(v: Vec<FlatFinding>) -> Report {
    let mut targets: Vec<[String; 4]> = Vec::new();
    let findings = v
        .into_iter()
        .map(|f| {
            let (host, ip) = match f.ip.split_once('/') {
                Some((h, i)) => (h.to_string(), i.to_string()),
                None => (f.ip.clone(), String::new()),
            };
            let service = if f.id == "service" {
                f.finding.clone()
            } else {
                String::new()
            };
            match targets
                .iter_mut()
                .filter(|_| !(host.is_empty() && ip.is_empty()))
                .find(|t| t[0] == host && t[1] == ip && t[2] == f.port)
            {
                Some(t) if t[3].is_empty() => t[3] = service,
                Some(_) => {}
                None => {
                    if targets.len() < super::MAX_LIST && !(host.is_empty() && ip.is_empty()) {
                        targets.push([host.clone(), ip, f.port.clone(), service]);
                    }
                }
            }
            Finding {
                id: f.id,
                severity: f.severity,
                finding: f.finding,
                cve: f.cve.unwrap_or_default(),
                cwe: f.cwe.unwrap_or_default(),
                host,
                port: f.port,
                section: String::new(),
            }
        })
        .collect();
    Report {
        format: "json",
        meta: BTreeMap::new(),
        targets,
        findings,
    }
}

fn sniff(b: &[u8]) -> Sniff<Report> {
    if head_has(b, b'{', &["\"scanResult\""]) {
        return match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(b)
            .map_err(|e| e.to_string())
        {
            Ok(p) => match from_pretty(p) {
                Ok(r) => Sniff::Mine(r),
                Err(e) => Sniff::Malformed(format!("not a testssl.sh --json-pretty report: {e}")),
            },
            Err(e) => Sniff::Malformed(format!("not a testssl.sh --json-pretty report: {e}")),
        };
    }
    if head_has(
        b,
        b'[',
        &[
            "\"id\"",
            "\"ip\"",
            "\"port\"",
            "\"severity\"",
            "\"finding\"",
        ],
    ) {
        return match serde_json::from_slice::<Vec<FlatFinding>>(b) {
            Ok(v) if !v.is_empty() => Sniff::Mine(from_flat(v)),
            Ok(_) => Sniff::NotMine,
            Err(e) => Sniff::Malformed(format!("not a testssl.sh --json report: {e}")),
        };
    }
    Sniff::NotMine
}

impl Attestor for TestsslAttestor {
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
        let mut counts = BoundedMap {
            items: SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect(),
            truncated: false,
        };
        let mut problems = BoundedSet::default();
        let mut findings = BoundedList::default();
        for f in &r.findings {
            let sev = f.severity.to_ascii_uppercase();
            counts.count(&sev);
            if PROBLEMS.contains(&sev.as_str()) {
                problems.add(&f.id);
            }
            let mut j = serde_json::json!({
                "id": clip(&f.id),
                "severity": clip(&f.severity),
                "finding": clip(&f.finding),
                "cve": clip(&f.cve),
                "cwe": clip(&f.cwe),
                "host": clip(&f.host),
                "port": clip(&f.port),
            });
            if r.format == "json-pretty" {
                j["section"] = clip(&f.section).into();
            }
            findings.push(j);
        }
        let targets: Vec<serde_json::Value> = r
            .targets
            .iter()
            .take(super::MAX_LIST)
            .map(|[h, i, p, s]| {
                serde_json::json!({"host": clip(h), "ip": clip(i), "port": clip(p), "service": clip(s)})
            })
            .collect();
        let mut out = serde_json::json!({
            "reportFile": found.rel,
            "reportDigest": found.digest,
            "format": r.format,
            "targets": targets,
            "totalFindings": r.findings.len(),
            "severityCounts": counts.items,
            "problemIds": problems.to_vec(),
            "problemIdsTruncated": problems.truncated,
            "findings": findings.items,
            "findingsTruncated": findings.truncated,
        });
        for (k, v) in &r.meta {
            out[*k] = clip(v).into();
        }
        Ok(out)
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
        assert!(matches!(sniff(b"[]"), Sniff::NotMine));
        assert!(matches!(sniff(b"{\"a\":[]}"), Sniff::NotMine));
        assert!(matches!(
            sniff(br#"{"scanResult": 1}"#),
            Sniff::Malformed(_)
        ));
        assert!(matches!(
            sniff(br#"{"scanResult": [{"targetHost": "h", "protocols": [{"id": 1}]}]}"#),
            Sniff::Malformed(_)
        ));
        assert!(matches!(
            sniff(br#"[{"id":"x","ip":"h/1.2.3.4","port":443,"severity":"OK","finding":"f"}]"#),
            Sniff::Malformed(_)
        ));
        let Sniff::Mine(r) = sniff(
            br#"[{"id":"service","ip":"h/1.2.3.4","port":"443","severity":"INFO","finding":"HTTP"},
                {"id":"SSLv3","ip":"h/1.2.3.4","port":"443","severity":"HIGH","finding":"offered"}]"#,
        ) else {
            panic!()
        };
        assert_eq!(
            r.targets,
            [[
                "h".to_string(),
                "1.2.3.4".into(),
                "443".into(),
                "HTTP".into()
            ]]
        );
    }
}
