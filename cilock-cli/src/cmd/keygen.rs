//! `cilock keygen`: a new signing key pair.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use cilock_evidence::keys::{KeyAlgorithm, Signer};

use crate::cli::{KeyType, KeygenArgs};

/// Writes the private key (PKCS#8 PEM, mode 0600) to `--outfile` and the
/// public key to `<outfile>.pub`; prints the key id. Existing files are not
/// overwritten.
pub fn keygen(a: KeygenArgs) -> anyhow::Result<u8> {
    let alg = match a.key_type {
        KeyType::EcdsaP256 => KeyAlgorithm::EcdsaP256,
        KeyType::Ed25519 => KeyAlgorithm::Ed25519,
    };
    let (signer, private_pem) = Signer::generate(alg).context("generating the key")?;
    let mut pub_path = a.outfile.clone().into_os_string();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&a.outfile)
        .with_context(|| format!("creating private key file {}", a.outfile.display()))?;
    f.write_all(private_pem.as_bytes())
        .with_context(|| format!("writing {}", a.outfile.display()))?;
    let mut p = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&pub_path)
        .with_context(|| format!("creating public key file {}", pub_path.display()))?;
    p.write_all(signer.public_key_pem().as_bytes())
        .with_context(|| format!("writing {}", pub_path.display()))?;
    println!("{}", signer.key_id());
    eprintln!(
        "wrote {} private key {} and public key {}",
        alg,
        a.outfile.display(),
        pub_path.display()
    );
    Ok(0)
}
