//! `cilock keygen` through the built binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn keygen_writes_usable_keys() {
    let d = tempfile::tempdir().unwrap();
    for t in ["ecdsa-p256", "ed25519"] {
        let key = d.path().join(format!("{t}.pem"));
        let o = Command::new(crate::CILOCK)
            .args(["keygen", "-o", key.to_str().unwrap(), "-t", t])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{t}");
        let pubp = d.path().join(format!("{t}.pem.pub"));
        let pub_pem = std::fs::read(&pubp).unwrap();
        let keyid = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert_eq!(
            cilock_evidence::keys::key_id_of_public_pem(&pub_pem).unwrap(),
            keyid
        );
        let signer = cilock_evidence::keys::Signer::from_file(&key).unwrap();
        assert_eq!(signer.key_id(), keyid);
        // OpenSSL reads the private key and derives the same public key.
        let o = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.stdout, pub_pem);
        // Refuses to overwrite.
        let o = Command::new(crate::CILOCK)
            .args(["keygen", "-o", key.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
    }
}
