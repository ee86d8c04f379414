//! lockfiles, system-packages and the scanner attestors (falco, kube-bench,
//! prowler, testssl) through the lifecycle, on the tools' own sample
//! outputs (`fixtures/scanners/README.md`): the step "writes" the report
//! between before() and after(), as the scanner would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cilock_evidence::attestors::lifecycle::{AttestorOptions, Lifecycle};
use cilock_evidence::attestors::scanners::falco::FalcoAttestor;
use cilock_evidence::attestors::{run_one, AttestError, AttestationContext, CompletedAttestation};
use cilock_evidence::digest::{DigestSet, HashAlg};
use serde_json::{json, Value};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scanners")
        .join(rel)
}

fn sha(data: &[u8]) -> String {
    DigestSet::from_bytes(data, &[HashAlg::Sha256])
        .get_sha256()
        .unwrap()
        .to_string()
}

fn push_command_run(ctx: &mut AttestationContext) {
    ctx.completed.push(CompletedAttestation {
        name: "command-run".into(),
        type_uri: "https://witness.dev/attestations/command-run/v0.1".into(),
        json: json!({"cmd": ["sh", "-c", "scan"], "exitcode": 0}),
        subjects: BTreeMap::new(),
        backrefs: BTreeMap::new(),
        starttime: String::new(),
        endtime: String::new(),
    });
}

/// A step in a fresh working directory with `-a <names>`: `before`, then
/// `step` writes its outputs, then `after`.
struct Step {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    lc: Lifecycle,
    ctx: AttestationContext,
}

fn step(
    names: &[&str],
    prepare: impl FnOnce(&Path),
    step: impl FnOnce(&Path),
) -> (Step, Result<(), AttestError>) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    prepare(&ws);
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut lc = Lifecycle::new(&names, AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), Vec::new());
    lc.before(&mut ctx).unwrap();
    step(&ws);
    push_command_run(&mut ctx);
    let r = lc.after(&mut ctx);
    (
        Step {
            _tmp: tmp,
            ws,
            lc,
            ctx,
        },
        r,
    )
}

/// The step writes `fixture` as `name` (under `out/`).
fn run_with(attestor: &str, fix: &str, name: &str) -> (Step, CompletedAttestation) {
    let data = std::fs::read(fixture(fix)).unwrap();
    let (s, r) = step(
        &[attestor],
        |_| {},
        |ws| {
            std::fs::create_dir_all(ws.join("out")).unwrap();
            std::fs::write(ws.join("out").join(name), &data).unwrap();
            // Another product that is no report: passed over.
            std::fs::write(ws.join("out/notes.txt"), b"scan done\n").unwrap();
        },
    );
    r.unwrap();
    let c = s
        .ctx
        .completed
        .iter()
        .find(|c| c.name == attestor)
        .unwrap_or_else(|| panic!("{attestor} not recorded; skipped: {:?}", s.lc.skipped()))
        .clone();
    let rel = format!("out/{name}");
    let mut want_subjects = BTreeMap::new();
    want_subjects.insert(
        format!("report_file:{rel}"),
        DigestSet::from_bytes(&data, &[HashAlg::Sha256]),
    );
    assert_eq!(c.subjects, want_subjects);
    (s, c)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// What python3 computes from a fixture (an independent count).
fn python(script: &str, fix: &str) -> Value {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(fixture(fix))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn falco_events_from_falcos_own_test_output() {
    let (_s, c) = run_with(
        "falco",
        "falco/single_rule_with_cat_write.json",
        "events.json",
    );
    assert_eq!(c.type_uri, "https://aflock.ai/attestations/falco/v0.1");
    let data = std::fs::read(fixture("falco/single_rule_with_cat_write.json")).unwrap();
    let j = &c.json;
    assert_eq!(
        keys(j),
        set(&[
            "report_file",
            "report_digest_set",
            "summary",
            "hostnames",
            "sources",
            "tags",
            "k8s_namespaces",
            "k8s_pods",
            "container_images",
            "lists_truncated",
            "skipped_lines"
        ])
    );
    assert_eq!(j["report_file"], "out/events.json");
    assert_eq!(j["report_digest_set"], json!({"sha256": sha(&data)}));
    assert_eq!(
        j["summary"],
        json!({
            "total_events": 8,
            "priorities": {"emergency": 0, "alert": 0, "critical": 0, "error": 0,
                           "warning": 8, "notice": 0, "informational": 0, "debug": 0},
            "rule_hits": [{"rule": "open_from_cat", "count": 8, "highest_priority": "Warning",
                           "priorities": {"warning": 8}}],
            "rule_hits_truncated": false,
            "distinct_rules": 1,
            "distinct_hosts": 1,
            "window_start": "2016-08-04T16:17:57.881781397Z",
            "window_end": "2016-08-04T16:17:57.882054739Z",
        })
    );
    assert_eq!(j["hostnames"], json!(["test-falco-hostname"]));
    assert_eq!(j["sources"], json!(["syscall"]));
    assert_eq!(j["tags"], json!(["filesystem", "process", "testing"]));
    assert_eq!(j["k8s_namespaces"], json!([]));
    assert_eq!(j["skipped_lines"], 0);
    assert_eq!(j["lists_truncated"], false);
}

#[test]
fn falco_kubernetes_events_per_rule_and_priority() {
    let (_s, c) = run_with("falco", "falco/k8s-events-constructed.jsonl", "falco.jsonl");
    let j = &c.json;
    let s = &j["summary"];
    assert_eq!(s["total_events"], 4);
    assert_eq!(s["priorities"]["notice"], 2);
    assert_eq!(s["priorities"]["warning"], 1);
    assert_eq!(s["priorities"]["critical"], 1);
    assert_eq!(
        s["rule_hits"],
        json!([
            {"rule": "Drop and execute new binary in container", "count": 1,
             "highest_priority": "Critical", "priorities": {"critical": 1}},
            {"rule": "Read sensitive file untrusted", "count": 1,
             "highest_priority": "Warning", "priorities": {"warning": 1}},
            {"rule": "Terminal shell in container", "count": 2,
             "highest_priority": "Notice", "priorities": {"notice": 2}},
        ])
    );
    assert_eq!(s["distinct_rules"], 3);
    assert_eq!(s["distinct_hosts"], 2);
    assert_eq!(s["window_start"], "2026-03-02T10:00:01.000000000Z");
    assert_eq!(s["window_end"], "2026-03-02T10:00:09.000000000Z");
    assert_eq!(j["hostnames"], json!(["node-1", "node-2"]));
    assert_eq!(j["k8s_namespaces"], json!(["prod", "staging"]));
    assert_eq!(j["k8s_pods"], json!(["api-5d8", "web-7c9"]));
    assert_eq!(
        j["container_images"],
        json!(["nginx:1.25", "python:3.12-slim"])
    );
    // Independent count.
    let py = python(
        "import json,sys,collections; ev=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; \
         print(json.dumps({'n': len(ev), 'p': collections.Counter(e['priority'].lower() for e in ev)}))",
        "falco/k8s-events-constructed.jsonl",
    );
    assert_eq!(py["n"], s["total_events"]);
    for (k, v) in py["p"].as_object().unwrap() {
        assert_eq!(&s["priorities"][k], v, "{k}");
    }
}

#[test]
fn kube_bench_json_with_and_without_totals() {
    let (_s, c) = run_with("kube-bench", "kube-bench/result.json", "kube-bench.json");
    assert_eq!(c.type_uri, "https://aflock.ai/attestations/kube-bench/v0.1");
    let j = &c.json;
    let data = std::fs::read(fixture("kube-bench/result.json")).unwrap();
    assert_eq!(j["report_file"], "out/kube-bench.json");
    assert_eq!(j["report_digest_set"], json!({"sha256": sha(&data)}));
    assert_eq!(j["totals_from_report"], true);
    assert_eq!(j["benchmark_version"], "1.5");
    assert_eq!(j["detected_version"], "");
    assert_eq!(j["node_types"], json!(["controlplane", "etcd", "master"]));
    let warned = json!([{
        "id": "3.1.1",
        "text": "Client certificate authentication should not be used for users (Not Scored)",
        "section": "3.1",
        "scored": false,
    }]);
    assert_eq!(
        j["summary"],
        json!({
            "total_pass": 49, "total_fail": 12, "total_warn": 14, "total_info": 0,
            "failed_checks": [], "failed_checks_truncated": false,
            "warned_checks": warned, "warned_checks_truncated": false,
        })
    );
    // The fixture lists 3 results; its totals count more.
    assert_eq!(j["result_counts"], json!({"PASS": 2, "WARN": 1}));
    assert_eq!(
        j["sections"],
        json!([
            {"id": "1", "text": "Master Node Security Configuration", "node_type": "master",
             "version": "1.5", "total_pass": 42, "total_fail": 12, "total_warn": 11, "total_info": 0},
            {"id": "2", "text": "Etcd Node Configuration", "node_type": "etcd",
             "version": "1.15", "total_pass": 7, "total_fail": 0, "total_warn": 0, "total_info": 0},
            {"id": "3", "text": "Control Plane Configuration", "node_type": "controlplane",
             "version": "1.5", "total_pass": 0, "total_fail": 0, "total_warn": 3, "total_info": 0},
        ])
    );
    let py = python(
        "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['Totals']))",
        "kube-bench/result.json",
    );
    for k in ["total_pass", "total_fail", "total_warn", "total_info"] {
        assert_eq!(j["summary"][k], py[k], "{k}");
    }

    let (_s, c) = run_with("kube-bench", "kube-bench/result_no_totals.json", "kb.json");
    let j = &c.json;
    assert_eq!(j["totals_from_report"], false);
    assert_eq!(j["summary"]["total_pass"], 49);
    assert_eq!(j["summary"]["total_fail"], 12);
    assert_eq!(j["summary"]["total_warn"], 14);
    assert_eq!(j["summary"]["warned_checks"], warned);
    assert_eq!(j["result_counts"], json!({"PASS": 2, "WARN": 1}));
}

const PROWLER_PY: &str = "import json,sys,collections
d=json.load(open(sys.argv[1]))
bs=collections.defaultdict(lambda: {'pass':0,'fail':0,'manual':0})
for x in d: bs[x['severity'].lower()][x['status_code'].lower()]+=1
print(json.dumps({'bySeverity': bs, 'n': len(d), 'fail': sorted(x['metadata']['event_code'] for x in d if x['status_code']=='FAIL')}))";

fn failed_ids(j: &Value) -> Vec<String> {
    let mut v: Vec<String> = j["summary"]["failedChecks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["checkId"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn prowler_ocsf_examples() {
    let (_s, c) = run_with(
        "prowler",
        "prowler/example_output_aws.ocsf.json",
        "prowler.ocsf.json",
    );
    assert_eq!(c.type_uri, "https://aflock.ai/attestations/prowler/v0.1");
    let j = &c.json;
    let s = &j["summary"];
    let data = std::fs::read(fixture("prowler/example_output_aws.ocsf.json")).unwrap();
    assert_eq!(keys(j), set(&["summary"]));
    assert_eq!(s["reportFile"], "out/prowler.ocsf.json");
    assert_eq!(s["reportDigest"], json!({"sha256": sha(&data)}));
    assert_eq!(s["format"], "ocsf");
    assert_eq!(s["provider"], "aws");
    assert_eq!(s["accountId"], "<account_uid>");
    assert_eq!(s["totalChecks"], 5);
    assert_eq!(s["distinctChecks"], 5);
    assert_eq!(
        (
            &s["passCount"],
            &s["failCount"],
            &s["manualCount"],
            &s["mutedCount"]
        ),
        (&json!(0), &json!(2), &json!(3), &json!(0))
    );
    assert_eq!(s["statusCounts"], json!({"FAIL": 2, "MANUAL": 3}));
    assert_eq!(
        s["bySeverity"],
        json!({"low": {"pass": 0, "fail": 1, "manual": 0}, "medium": {"pass": 0, "fail": 1, "manual": 3}})
    );
    assert_eq!(
        s["failedChecks"][0],
        json!({
            "checkId": "accessanalyzer_enabled",
            "checkTitle": "Check if IAM Access Analyzer is enabled",
            "severity": "Low",
            "serviceName": "accessanalyzer",
            "region": "<region>",
            "resourceId": "<resource_name>",
            "resourceArn": "<resource_uid>",
            "statusExtended": "IAM Access Analyzer in account <account_uid> is not enabled.",
            "muted": false,
        })
    );
    assert_eq!(
        s["byCheck"]["accessanalyzer_enabled"],
        json!({"pass": 0, "fail": 1, "manual": 0, "severity": "Low",
               "title": "Check if IAM Access Analyzer is enabled"})
    );
    assert_eq!(s["accounts"], json!(["<account_uid>"]));
    assert_eq!(s["regions"], json!(["<region>"]));
    let py = python(PROWLER_PY, "prowler/example_output_aws.ocsf.json");
    assert_eq!(s["bySeverity"], py["bySeverity"]);
    assert_eq!(json!(failed_ids(j)), py["fail"]);

    for (fix, n, pass, fail, provider) in [
        ("prowler/example_output_gcp.ocsf.json", 5, 3, 2, "gcp"),
        ("prowler/example_output_kubernetes.ocsf.json", 6, 1, 5, ""),
    ] {
        let (_s, c) = run_with("prowler", fix, "p.json");
        let s = &c.json["summary"];
        assert_eq!(
            (
                &s["totalChecks"],
                &s["passCount"],
                &s["failCount"],
                &s["manualCount"]
            ),
            (&json!(n), &json!(pass), &json!(fail), &json!(0)),
            "{fix}"
        );
        assert_eq!(s["provider"], provider, "{fix}");
        let py = python(PROWLER_PY, fix);
        assert_eq!(s["bySeverity"], py["bySeverity"], "{fix}");
        assert_eq!(json!(failed_ids(&c.json)), py["fail"], "{fix}");
    }
    let (_s, c) = run_with("prowler", "prowler/example_output_gcp.ocsf.json", "p.json");
    let s = &c.json["summary"];
    assert_eq!(s["distinctChecks"], 3);
    assert_eq!(
        s["byCheck"]["compute_firewall_rdp_access_from_the_internet_allowed"],
        json!({"pass": 2, "fail": 1, "manual": 0, "severity": "Critical",
               "title": "Ensure That RDP Access Is Restricted From the Internet"})
    );
    assert_eq!(s["accounts"], json!(["<project_id>"]));
    assert_eq!(s["regions"], json!(["global"]));
    let (_s, c) = run_with(
        "prowler",
        "prowler/example_output_kubernetes.ocsf.json",
        "p.json",
    );
    assert_eq!(c.json["summary"]["namespaces"], json!(["<namespace>"]));
    assert_eq!(c.json["summary"]["accounts"], json!([]));
}

#[test]
fn prowler_asff() {
    let (_s, c) = run_with(
        "prowler",
        "prowler/asff-constructed.asff.json",
        "prowler.asff.json",
    );
    let s = &c.json["summary"];
    assert_eq!(s["format"], "asff");
    assert_eq!(s["provider"], "aws");
    assert_eq!(s["accountId"], "123456789012");
    assert_eq!(s["totalChecks"], 4);
    assert_eq!(
        (
            &s["passCount"],
            &s["failCount"],
            &s["manualCount"],
            &s["mutedCount"]
        ),
        (&json!(1), &json!(2), &json!(0), &json!(1))
    );
    assert_eq!(s["statusCounts"], json!({"FAIL": 2, "MUTED": 1, "PASS": 1}));
    assert_eq!(
        s["bySeverity"],
        json!({"critical": {"pass": 1, "fail": 1, "manual": 0},
               "high": {"pass": 0, "fail": 0, "manual": 0},
               "low": {"pass": 0, "fail": 1, "manual": 0}})
    );
    assert_eq!(
        json!(failed_ids(&c.json)),
        json!(["accessanalyzer_enabled", "iam_root_mfa_enabled"])
    );
    assert_eq!(
        s["failedChecks"][1],
        json!({
            "checkId": "iam_root_mfa_enabled",
            "checkTitle": "Ensure MFA is enabled for the root account",
            "severity": "CRITICAL",
            "serviceName": "Other",
            "region": "us-east-1",
            "resourceId": "root",
            "resourceArn": "arn:aws:iam::123456789012:root",
            "statusExtended": "MFA is not enabled for root account.",
            "muted": false,
        })
    );
    assert_eq!(s["regions"], json!(["eu-west-1", "us-east-1"]));
}

const TESTSSL_PY: &str = "import json,sys,collections
d=json.load(open(sys.argv[1]))
if isinstance(d, dict):
    f=[x for k,v in d.items() if isinstance(v,list) and k!='scanResult' for x in v]
    f+=[x for t in d['scanResult'] for v in t.values() if isinstance(v,list) for x in v]
else:
    f=d
c=collections.Counter(x['severity'] for x in f)
print(json.dumps({'n': len(f), 'counts': c, 'problems': sorted({x['id'] for x in f if x['severity'] in ('LOW','MEDIUM','HIGH','CRITICAL','WARN','FATAL')})}))";

#[test]
fn testssl_flat_and_pretty() {
    let problems = json!([
        "DNS_CAArecord",
        "cert_chain_of_trust",
        "cert_expirationStatus",
        "cert_notAfter",
        "cert_revocation",
        "cert_subjectAltName",
        "cert_trust",
        "cipherlist_AVERAGE",
        "engine_problem",
        "sessionresumption_ticket"
    ]);
    let (_s, c) = run_with("testssl", "testssl/localhost-4433.json", "tls.json");
    assert_eq!(c.type_uri, "https://aflock.ai/attestations/testssl/v0.1");
    let j = &c.json;
    let data = std::fs::read(fixture("testssl/localhost-4433.json")).unwrap();
    assert_eq!(
        keys(j),
        set(&[
            "reportFile",
            "reportDigest",
            "format",
            "targets",
            "totalFindings",
            "severityCounts",
            "problemIds",
            "problemIdsTruncated",
            "findings",
            "findingsTruncated"
        ])
    );
    assert_eq!(j["reportFile"], "out/tls.json");
    assert_eq!(j["reportDigest"], json!({"sha256": sha(&data)}));
    assert_eq!(j["format"], "json");
    assert_eq!(
        j["targets"],
        json!([{"host": "localhost", "ip": "127.0.0.1", "port": "4433", "service": "HTTP"}])
    );
    assert_eq!(j["totalFindings"], 56);
    assert_eq!(
        j["severityCounts"],
        json!({"CRITICAL": 1, "HIGH": 5, "MEDIUM": 0, "LOW": 2, "OK": 11, "INFO": 35,
               "WARN": 2, "FATAL": 0, "DEBUG": 0})
    );
    assert_eq!(j["problemIds"], problems);
    assert_eq!(j["findings"].as_array().unwrap().len(), 56);
    let proto = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "SSLv3")
        .unwrap();
    assert_eq!(
        proto,
        &json!({"id": "SSLv3", "severity": "OK", "finding": "not offered", "cve": "", "cwe": "",
                "host": "localhost", "port": "4433"})
    );
    let py = python(TESTSSL_PY, "testssl/localhost-4433.json");
    assert_eq!(py["n"], j["totalFindings"]);
    for (k, v) in py["counts"].as_object().unwrap() {
        assert_eq!(&j["severityCounts"][k], v, "{k}");
    }
    assert_eq!(py["problems"], problems);

    let (_s, c) = run_with("testssl", "testssl/localhost-4433-pretty.json", "tls.json");
    let j = &c.json;
    assert_eq!(j["format"], "json-pretty");
    assert_eq!(j["version"], "3.0.8  from ");
    assert_eq!(j["openssl"], "OpenSSL 3.0.19 from Apr  3 12:29:32 2026");
    assert_eq!(j["startTime"], "1796396217");
    assert_eq!(j["scanTime"], "25");
    assert_eq!(
        j["targets"],
        json!([{"host": "localhost", "ip": "127.0.0.1", "port": "4433", "service": "HTTP"}])
    );
    assert_eq!(j["totalFindings"], 54);
    assert_eq!(j["problemIds"], problems);
    let py = python(TESTSSL_PY, "testssl/localhost-4433-pretty.json");
    assert_eq!(py["n"], 54);
    for (k, v) in py["counts"].as_object().unwrap() {
        assert_eq!(&j["severityCounts"][k], v, "{k}");
    }
    let engine = &j["findings"][0];
    assert_eq!(engine["section"], "clientProblem1");
    assert_eq!(engine["id"], "engine_problem");
    assert_eq!(engine["host"], "");
}

#[test]
fn no_report_is_skipped_with_the_reason() {
    let (s, r) = step(
        &["falco", "kube-bench", "prowler", "testssl"],
        |_| {},
        |ws| {
            std::fs::write(ws.join("report.json"), br#"{"unrelated": true}"#).unwrap();
        },
    );
    r.unwrap();
    let skipped: BTreeMap<&str, &str> =
        s.lc.skipped()
            .iter()
            .map(|k| (k.name.as_str(), k.reason.as_str()))
            .collect();
    assert_eq!(
        skipped,
        BTreeMap::from([
            ("falco", "falco: no falco report among the step's products"),
            (
                "kube-bench",
                "kube-bench: no kube-bench report among the step's products"
            ),
            (
                "prowler",
                "prowler: no prowler report among the step's products"
            ),
            (
                "testssl",
                "testssl: no testssl report among the step's products"
            ),
        ])
    );
    for n in ["falco", "kube-bench", "prowler", "testssl"] {
        assert!(s.ctx.completed_json(n).is_none());
    }
}

#[test]
fn malformed_reports_are_clear_errors() {
    for (attestor, body, want) in [
        (
            "kube-bench",
            &br#"{"Controls": 5, "Totals": {}}"#[..],
            "kube-bench: no usable report: bad.json: not a kube-bench --json report: invalid type",
        ),
        (
            "falco",
            br#"{"time": 1, "rule": "r", "priority": "Warning", "output": "o"}"#,
            "falco: no usable report: bad.json: its first line names Falco's fields",
        ),
        (
            "prowler",
            br#"[{"status_code": "FAIL", "severity": "Low", "metadata": {"event_code": 7}, "finding_info": {}}]"#,
            "prowler: no usable report: bad.json: not a Prowler JSON-OCSF report",
        ),
        (
            "testssl",
            br#"{"scanResult": [{"targetHost": "h", "protocols": [{"severity": "OK"}]}]}"#,
            "testssl: no usable report: bad.json: not a testssl.sh --json-pretty report: scanResult[0].protocols[0]: missing field `id`",
        ),
    ] {
        let (_s, r) = step(&[attestor], |_| {}, |ws| {
            std::fs::write(ws.join("bad.json"), body).unwrap();
        });
        let e = r.unwrap_err();
        assert!(matches!(e, AttestError::Invalid(_)), "{e:?}");
        assert!(e.to_string().starts_with(want), "{attestor}: {e}");
    }
    // Deep nesting where a value is built: serde_json's recursion limit.
    let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let deep = format!("{{\"scanResult\": {}}}", nest(100_000));
    let (_s, r) = step(
        &["testssl"],
        |_| {},
        |ws| {
            std::fs::write(ws.join("deep.json"), &deep).unwrap();
        },
    );
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("deep.json") && e.contains("recursion limit exceeded"),
        "{e}"
    );
    // Deep nesting in a field that is skipped: skipped without recursion.
    let deep = format!(
        "[{{\"status_code\":\"FAIL\",\"severity\":\"Low\",\"metadata\":{{\"event_code\":\"x\"}},\
         \"finding_info\":{{}},\"unmapped\":{}}}]",
        nest(100_000)
    );
    let (s, r) = step(
        &["prowler"],
        |_| {},
        |ws| {
            std::fs::write(ws.join("deep.json"), &deep).unwrap();
        },
    );
    r.unwrap();
    assert_eq!(
        s.ctx.completed_json("prowler").unwrap()["summary"]["failCount"],
        1
    );
}

#[test]
fn huge_products_are_not_read() {
    let (s, r) = step(
        &["testssl"],
        |_| {},
        |ws| {
            let mut big = b"[{\"id\":\"service\",\"ip\":\"h/1.2.3.4\",\"port\":\"443\",\"severity\":\"INFO\",\"finding\":\"HTTP\"}".to_vec();
            big.resize((64 << 20) + 1, b' ');
            std::fs::write(ws.join("huge.json"), &big).unwrap();
        },
    );
    r.unwrap();
    assert_eq!(s.lc.skipped().len(), 1);
    assert_eq!(
        s.lc.skipped()[0].reason,
        "testssl: no testssl report among the step's products \
         (huge.json: 67108865 bytes, more than the 67108864-byte limit)"
    );
    assert!(s.ws.join("huge.json").exists());
}

#[test]
fn a_report_changed_after_hashing_is_refused() {
    let data = std::fs::read(fixture("falco/single_rule_with_cat_write.json")).unwrap();
    let (mut s, r) = step(
        &[],
        |_| {},
        |ws| {
            std::fs::write(ws.join("events.json"), &data).unwrap();
        },
    );
    r.unwrap();
    // The product attestor hashed it; now it changes.
    let mut changed = data.clone();
    changed.extend_from_slice(&data[..data.iter().position(|b| *b == b'\n').unwrap() + 1]);
    std::fs::write(s.ws.join("events.json"), &changed).unwrap();
    let mut a = FalcoAttestor::new(&AttestorOptions::default()).unwrap();
    let e = run_one(&mut s.ctx, &mut a).unwrap_err();
    assert!(matches!(e, AttestError::Invalid(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "falco: no usable report: events.json: changed since the product attestor hashed it"
    );
    assert!(s.ctx.completed_json("falco").is_none());
    // Restored: recorded.
    std::fs::write(s.ws.join("events.json"), &data).unwrap();
    run_one(&mut s.ctx, &mut a).unwrap();
    assert_eq!(
        s.ctx.completed_json("falco").unwrap()["summary"]["total_events"],
        8
    );
}

#[test]
fn lockfiles_and_system_packages_before_materials() {
    let cargo_lock = b"version = 3\n\n[[package]]\nname = \"a\"\nversion = \"0.1.0\"\n";
    let (s, r) = step(
        &["lockfiles", "system-packages"],
        |ws| {
            std::fs::write(ws.join("Cargo.lock"), cargo_lock).unwrap();
            std::fs::write(ws.join("package-lock.json"), b"{\"lockfileVersion\": 3}\n").unwrap();
        },
        |_| {},
    );
    r.unwrap();
    let names: Vec<&str> = s.ctx.completed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lockfiles",
            "system-packages",
            "material",
            "command-run",
            "product"
        ]
    );
    let l = &s.ctx.completed[0];
    assert_eq!(
        l.type_uri,
        "https://witness.dev/attestations/lockfiles/v0.1"
    );
    assert_eq!(
        l.json,
        json!({"lockfiles": [
            {"filename": "package-lock.json", "content": "{\"lockfileVersion\": 3}\n",
             "digest": {"sha256": sha(b"{\"lockfileVersion\": 3}\n")}},
            {"filename": "Cargo.lock", "content": String::from_utf8_lossy(cargo_lock),
             "digest": {"sha256": sha(cargo_lock)}},
        ]})
    );
    assert_eq!(
        l.subjects.keys().map(String::as_str).collect::<Vec<_>>(),
        ["file:Cargo.lock", "file:package-lock.json"]
    );
    let p = &s.ctx.completed[1];
    assert_eq!(
        p.type_uri,
        "https://witness.dev/attestations/system-packages/v0.1"
    );
    assert_eq!(
        keys(&p.json),
        set(&[
            "os",
            "distribution",
            "version",
            "packages",
            "digest",
            "backend"
        ])
    );
    // Exactly what dpkg-query lists (all installed on this machine).
    let q = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Version}\n"])
        .output()
        .unwrap();
    let want: BTreeSet<String> = String::from_utf8(q.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let got: BTreeSet<String> = p.json["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(got, want);
    let st = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}\n"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8(st.stdout)
            .unwrap()
            .lines()
            .all(|l| l == "ii "),
        "this machine has packages not installed; the comparison above would need the status"
    );
}

#[test]
fn no_lockfile_is_skipped() {
    let (s, r) = step(&["lockfiles"], |_| {}, |_| {});
    r.unwrap();
    assert_eq!(s.lc.skipped().len(), 1);
    assert!(s.lc.skipped()[0]
        .reason
        .starts_with("lockfiles: no lockfile at the top of the working directory"));
}
