//! secretscan over job-controlled text: the scanner's decoding (base64, hex,
//! percent-encoding, nested) directly, at the default depth and at the
//! highest depth a job may ask for, then the attestor itself over a
//! command-run attestation holding the text (as a value, a key and a
//! command argument), then redaction. Nothing here may panic.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use cilock_evidence::attestors::environment::{EnvOptions, SensitiveEnvFilter};
use cilock_evidence::attestors::secretscan::{
    SecretScanAttestor, SecretScanOptions, SecretScanner, DEFAULT_MAX_DECODE_LAYERS,
};
use cilock_evidence::attestors::{AttestationContext, Attestor as _, CompletedAttestation};
use cilock_evidence::digest::HashAlg;
use libfuzzer_sys::fuzz_target;

/// Largest input scanned (a run's stdout is bigger, but the decoders see
/// the same shapes in 64 KiB).
const MAX_INPUT: usize = 64 * 1024;
/// The deepest decoding a job may request (the options' hard bound).
const MAX_LAYERS: usize = 8;
/// A sensitive variable whose value the scanner looks for.
const SECRET: (&str, &str) = ("DEPLOY_TOKEN", "fuzz-s3cr3t-9f8e7d6c");

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let text = String::from_utf8_lossy(data).into_owned();
    let Ok(filter) = SensitiveEnvFilter::new(&EnvOptions::default()) else {
        panic!("default sensitive-variable filter");
    };
    let env = vec![(SECRET.0.to_string(), SECRET.1.to_string())];
    for layers in [0, DEFAULT_MAX_DECODE_LAYERS, MAX_LAYERS] {
        let s = SecretScanner::new(&env, &filter, layers, &[HashAlg::Sha256]);
        for f in s.scan_text(&text, "fuzz") {
            assert!(f.encoding_path.len() <= layers);
        }
    }

    let mut ctx = AttestationContext::new(PathBuf::from("/nonexistent/cilock-fuzz"), env);
    let mut obj = serde_json::Map::new();
    obj.insert("cmd".into(), serde_json::json!(["sh", "-c", text.clone()]));
    obj.insert("stdout".into(), serde_json::Value::String(text.clone()));
    obj.insert(text.clone(), serde_json::json!(0));
    ctx.completed.push(CompletedAttestation {
        name: "command-run".into(),
        type_uri: "https://witness.dev/attestations/command-run/v0.1".into(),
        json: serde_json::Value::Object(obj),
        subjects: BTreeMap::new(),
        backrefs: BTreeMap::new(),
        starttime: String::new(),
        endtime: String::new(),
    });
    for max_decode_layers in [DEFAULT_MAX_DECODE_LAYERS, MAX_LAYERS] {
        let opts = SecretScanOptions {
            max_decode_layers,
            ..SecretScanOptions::default()
        };
        let mut a = SecretScanAttestor::new(opts, filter.clone());
        let Ok(json) = a.attest(&ctx) else {
            continue;
        };
        assert!(json.is_object());
        let mut redacted = AttestationContext::new(ctx.workdir.clone(), ctx.env.clone());
        redacted.completed = ctx.completed.clone();
        a.redact_completed(&mut redacted);
        // The sensitive value never survives redaction.
        let out = serde_json::to_string(&redacted.completed[0].json).unwrap_or_default();
        assert!(!out.contains(SECRET.1), "secret left after redaction");
    }
});
