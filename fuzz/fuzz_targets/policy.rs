//! Policy JSON parsing and validation (keys, certificates, Rego
//! compilation), then Rego evaluation against a small input.
#![no_main]

use cilock_evidence::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Policy::from_json(data) {
        let input = serde_json::json!({"cmd": ["a"], "findings": [], "processes": []});
        for r in p.rego.values() {
            let _ = r.deny(&input);
        }
    }
});
