//! DSSE envelope JSON → verification with a fixed key → statement and
//! collection decoding. Nothing here may panic.
#![no_main]

use cilock_evidence::collection::Collection;
use cilock_evidence::dsse::Envelope;
use cilock_evidence::intoto::Statement;
use cilock_evidence::keys::Verifier;
use libfuzzer_sys::fuzz_target;

const TESTPUB: &[u8] = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAf29oPP8UghByG852uBdOxrJKKn7MM5hTbP9esgOZ/k0=\n-----END PUBLIC KEY-----\n";

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::from_json(data) else {
        return;
    };
    if let Ok(v) = Verifier::from_pem(TESTPUB) {
        let _ = env.verify(&[v], 1);
    }
    let _ = env.to_json();
    if let Ok(st) = serde_json::from_slice::<Statement>(&env.payload) {
        let _ = serde_json::from_value::<Collection>(st.predicate);
    }
    for s in &env.signatures {
        if let Some(c) = &s.certificate {
            let _ = cilock_evidence::policy::x509::cert_der_from_pem_or_der(c);
            let _ = Verifier::from_pem(c);
        }
    }
});
