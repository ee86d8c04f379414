//! The prowler attestor: a Prowler report among the step's products, in
//! either of its JSON outputs:
//! - JSON-OCSF (`-M json-ocsf`, the default since v4): an array of OCSF
//!   Detection Findings, each with `status_code` (PASS, FAIL, MANUAL),
//!   `severity`, `metadata.event_code` (the check id), `finding_info`
//!   (`title`), `cloud` (`provider`, `account.uid`, `region`) and
//!   `resources` (`uid`, `name`, `region`, `namespace`, `group.name`);
//!   muted findings have `status` `Suppressed` (Prowler's
//!   `examples/output/*.ocsf.json`).
//! - JSON-ASFF (`-M json-asff`, AWS Security Hub): an array of ASFF
//!   findings, `GeneratorId` `prowler-<check id>`, `Compliance.Status`
//!   PASSED, FAILED, WARNING (muted) or NOT_AVAILABLE, `Severity.Label`,
//!   `AwsAccountId`, `Title`, `Description`, `Resources` (Prowler's
//!   `prowler/lib/outputs/asff/asff.py`). MANUAL findings are not in it.
//!
//! Type and field names are rookery's
//! (`https://aflock.ai/attestations/prowler/v0.1`: `summary.accountId`,
//! `provider`, `totalChecks` (the number of findings), `passCount`,
//! `failCount`, `bySeverity` (lower-case severity → `{pass, fail}`),
//! `failedChecks` of `{checkId, checkTitle, severity, serviceName, region,
//! resourceId, resourceArn, statusExtended}`, `reportFile`,
//! `reportDigest`), so one policy reads both. Unlike rookery, `failCount`
//! counts FAIL only (rookery counts MANUAL and muted findings as failures);
//! cilock adds `format`, `manualCount`, `mutedCount`, `statusCounts`,
//! `bySeverity[..].manual`, `byCheck` (check id → `{pass, fail, manual,
//! severity, title}`), `distinctChecks`, and the `providers`, `accounts`,
//! `regions` and `namespaces` the findings name (bounded).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::super::lifecycle::AttestorOptions;
use super::super::{AttestError, AttestationContext, Attestor, Stage};
use super::{clip, find_report, head_has, BoundedList, BoundedMap, BoundedSet, Sniff};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "prowler";
/// Type URI (rookery's).
pub const TYPE: &str = "https://aflock.ai/attestations/prowler/v0.1";

/// The prowler attestor.
#[derive(Debug, Default)]
pub struct ProwlerAttestor {
    subjects: BTreeMap<String, DigestSet>,
}

impl ProwlerAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(ProwlerAttestor::default())
    }
}

#[derive(Deserialize, Default)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct OcsfMetadata {
    event_code: String,
}

#[derive(Deserialize, Default)]
struct OcsfFindingInfo {
    #[serde(default)]
    title: Option<String>,
}

#[derive(Deserialize, Default)]
struct OcsfAccount {
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Deserialize, Default)]
struct OcsfCloud {
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    account: Option<OcsfAccount>,
}

#[derive(Deserialize, Default)]
struct OcsfResource {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    group: Option<Named>,
}

#[derive(Deserialize)]
struct OcsfFinding {
    status_code: String,
    severity: String,
    metadata: OcsfMetadata,
    finding_info: OcsfFindingInfo,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_detail: Option<String>,
    #[serde(default)]
    cloud: Option<OcsfCloud>,
    #[serde(default)]
    resources: Option<Vec<OcsfResource>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AsffLabel {
    label: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AsffCompliance {
    status: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct AsffResource {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "Type")]
    type_: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AsffFinding {
    /// Required (part of the shape), not recorded.
    #[serde(rename = "SchemaVersion")]
    _schema_version: String,
    /// Required (part of the shape), not recorded.
    #[serde(rename = "ProductArn")]
    _product_arn: String,
    generator_id: String,
    aws_account_id: String,
    severity: AsffLabel,
    compliance: AsffCompliance,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    resources: Option<Vec<AsffResource>>,
}

/// One finding, whatever the format.
struct Finding {
    check_id: String,
    title: String,
    /// PASS, FAIL, MANUAL, MUTED or what the report says.
    status: String,
    muted: bool,
    severity: String,
    provider: String,
    account: String,
    region: String,
    namespace: String,
    service: String,
    resource_id: String,
    resource_uid: String,
    status_extended: String,
}

struct Report {
    format: &'static str,
    findings: Vec<Finding>,
}

fn s(o: &Option<String>) -> String {
    o.clone().unwrap_or_default()
}

fn from_ocsf(f: OcsfFinding) -> Finding {
    let cloud = f.cloud.unwrap_or_default();
    let res = f
        .resources
        .unwrap_or_default()
        .into_iter()
        .next()
        .unwrap_or_default();
    let region = res.region.clone().or(cloud.region).unwrap_or_default();
    Finding {
        check_id: f.metadata.event_code,
        title: s(&f.finding_info.title),
        status: f.status_code.to_ascii_uppercase(),
        muted: f.status.as_deref() == Some("Suppressed"),
        severity: f.severity,
        provider: s(&cloud.provider),
        account: cloud.account.and_then(|a| a.uid).unwrap_or_default(),
        region,
        namespace: s(&res.namespace),
        service: res.group.and_then(|g| g.name).unwrap_or_default(),
        resource_id: s(&res.name),
        resource_uid: s(&res.uid),
        status_extended: s(&f.status_detail),
    }
}

fn from_asff(f: AsffFinding) -> Finding {
    let res = f
        .resources
        .unwrap_or_default()
        .into_iter()
        .next()
        .unwrap_or_default();
    let (status, muted) = match f.compliance.status.as_str() {
        "PASSED" => ("PASS".to_string(), false),
        "FAILED" => ("FAIL".to_string(), false),
        "WARNING" => ("MUTED".to_string(), true),
        other => (other.to_string(), false),
    };
    let uid = s(&res.id);
    Finding {
        check_id: f
            .generator_id
            .strip_prefix("prowler-")
            .unwrap_or(&f.generator_id)
            .to_string(),
        title: s(&f.title),
        status,
        muted,
        severity: f.severity.label,
        provider: "aws".to_string(),
        account: f.aws_account_id,
        region: s(&res.region),
        namespace: String::new(),
        service: s(&res.type_),
        resource_id: uid.rsplit(['/', ':']).next().unwrap_or(&uid).to_string(),
        resource_uid: uid,
        status_extended: s(&f.description),
    }
}

fn sniff(b: &[u8]) -> Sniff<Report> {
    if head_has(
        b,
        b'[',
        &["\"status_code\"", "\"event_code\"", "\"finding_info\""],
    ) {
        return match serde_json::from_slice::<Vec<OcsfFinding>>(b) {
            Ok(v) if !v.is_empty() => Sniff::Mine(Report {
                format: "ocsf",
                findings: v.into_iter().map(from_ocsf).collect(),
            }),
            Ok(_) => Sniff::NotMine,
            Err(e) => Sniff::Malformed(format!("not a Prowler JSON-OCSF report: {e}")),
        };
    }
    if head_has(b, b'[', &["\"GeneratorId\"", "\"prowler", "\"Compliance\""]) {
        return match serde_json::from_slice::<Vec<AsffFinding>>(b) {
            Ok(v) if !v.is_empty() => Sniff::Mine(Report {
                format: "asff",
                findings: v.into_iter().map(from_asff).collect(),
            }),
            Ok(_) => Sniff::NotMine,
            Err(e) => Sniff::Malformed(format!("not a Prowler JSON-ASFF report: {e}")),
        };
    }
    Sniff::NotMine
}

#[derive(Default, serde::Serialize)]
struct Counts {
    pass: u64,
    fail: u64,
    manual: u64,
}

#[derive(serde::Serialize)]
struct CheckCounts {
    #[serde(flatten)]
    counts: Counts,
    severity: String,
    title: String,
}

impl Counts {
    fn add(&mut self, status: &str) {
        match status {
            "PASS" => self.pass += 1,
            "FAIL" => self.fail += 1,
            "MANUAL" => self.manual += 1,
            _ => {}
        }
    }
}

impl Attestor for ProwlerAttestor {
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
        let mut status_counts = BoundedMap::default();
        let mut by_sev = BoundedMap::<Counts>::default();
        let mut by_check = BoundedMap::default();
        let mut distinct = std::collections::BTreeSet::new();
        let mut failed = BoundedList::default();
        let (mut providers, mut accounts, mut regions, mut namespaces) = (
            BoundedSet::default(),
            BoundedSet::default(),
            BoundedSet::default(),
            BoundedSet::default(),
        );
        let (mut all, mut muted) = (Counts::default(), 0u64);
        for f in &r.findings {
            all.add(&f.status);
            if f.muted {
                muted += 1;
            }
            status_counts.count(&f.status);
            if let Some(c) = by_sev.entry_or(&f.severity.to_ascii_lowercase(), Counts::default) {
                c.add(&f.status);
            }
            // Borrowed from the parsed report: as many as its findings.
            distinct.insert(f.check_id.as_str());
            let check = || CheckCounts {
                counts: Counts::default(),
                severity: clip(&f.severity),
                title: clip(&f.title),
            };
            if let Some(c) = by_check.entry_or(&f.check_id, check) {
                c.counts.add(&f.status);
            }
            providers.add(&f.provider);
            accounts.add(&f.account);
            regions.add(&f.region);
            namespaces.add(&f.namespace);
            if f.status == "FAIL" {
                failed.push(serde_json::json!({
                    "checkId": clip(&f.check_id),
                    "checkTitle": clip(&f.title),
                    "severity": clip(&f.severity),
                    "serviceName": clip(&f.service),
                    "region": clip(&f.region),
                    "resourceId": clip(&f.resource_id),
                    "resourceArn": clip(&f.resource_uid),
                    "statusExtended": clip(&f.status_extended),
                    "muted": f.muted,
                }));
            }
        }
        let first_of = |get: fn(&Finding) -> &str| {
            r.findings
                .iter()
                .map(get)
                .find(|x| !x.is_empty())
                .map(clip)
                .unwrap_or_default()
        };
        Ok(serde_json::json!({
            "summary": {
                "format": r.format,
                "accountId": first_of(|f| &f.account),
                "provider": first_of(|f| &f.provider),
                "totalChecks": r.findings.len(),
                "distinctChecks": distinct.len(),
                "passCount": all.pass,
                "failCount": all.fail,
                "manualCount": all.manual,
                "mutedCount": muted,
                "statusCounts": status_counts.items,
                "bySeverity": by_sev.items,
                "byCheck": by_check.items,
                "byCheckTruncated": by_check.truncated,
                "failedChecks": failed.items,
                "failedChecksTruncated": failed.truncated,
                "providers": providers.to_vec(),
                "accounts": accounts.to_vec(),
                "regions": regions.to_vec(),
                "namespaces": namespaces.to_vec(),
                "reportFile": found.rel,
                "reportDigest": found.digest,
            }
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
        assert!(matches!(sniff(b"[]"), Sniff::NotMine));
        assert!(matches!(sniff(b"{\"status_code\":1}"), Sniff::NotMine));
        let bad = br#"[{"status_code": "FAIL", "severity": 3, "metadata": {"event_code": "x"}, "finding_info": {}}]"#;
        assert!(matches!(sniff(bad), Sniff::Malformed(_)));
        let asff = br#"[{"SchemaVersion":"2018-10-08","ProductArn":"arn:aws:securityhub:eu-west-1::product/prowler/prowler","GeneratorId":"prowler-s3_bucket_public_access","AwsAccountId":"123456789012","Severity":{"Label":"HIGH"},"Compliance":{"Status":"WARNING"},"Resources":[{"Id":"arn:aws:s3:::b1","Type":"AwsS3Bucket","Region":"eu-west-1"}]}]"#;
        let Sniff::Mine(r) = sniff(asff) else {
            panic!()
        };
        let f = &r.findings[0];
        assert_eq!(
            (&*f.check_id, &*f.status, f.muted, &*f.resource_id),
            ("s3_bucket_public_access", "MUTED", true, "b1")
        );
    }
}
