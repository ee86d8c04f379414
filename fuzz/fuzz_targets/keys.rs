//! PEM / DER key parsing (private and public keys, certificates).
#![no_main]

use cilock_evidence::keys::{Signer, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Verifier::from_pem(data);
    let _ = Signer::from_pem(data);
    // The same bytes as the DER inside a PEM block.
    for label in ["PUBLIC KEY", "PRIVATE KEY", "EC PRIVATE KEY", "CERTIFICATE"] {
        let pem = cilock_evidence::keys::encode_pem(label, data);
        let _ = Verifier::from_pem(pem.as_bytes());
        let _ = Signer::from_pem(pem.as_bytes());
    }
});
