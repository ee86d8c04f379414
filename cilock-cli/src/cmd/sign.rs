//! `cilock sign`: wraps any file (a policy by default) in a DSSE envelope.

use anyhow::Context;
use cilock_evidence::dsse;
use cilock_evidence::keys::Signer;
use cilock_evidence::limits;

fn read_file(path: &std::path::Path, max: u64, what: &str) -> std::io::Result<Vec<u8>> {
    limits::read_file(path, max, what, limits::any_start)
}

use crate::cli::SignArgs;

/// Signs `--infile` with `--key` into `--outfile` (compact JSON plus a
/// newline, as `witness sign` writes it). With `--certificate`, the
/// signature carries the certificate and `--intermediates` (as PEM text,
/// as Witness's file signer writes them).
pub fn sign(a: SignArgs) -> anyhow::Result<u8> {
    let signer = Signer::from_file(&a.key)
        .with_context(|| format!("loading signing key {}", a.key.display()))?;
    let payload = read_file(&a.infile, limits::MAX_SIGN_INPUT_BYTES, "file to sign")
        .with_context(|| format!("reading {}", a.infile.display()))?;
    let env = match &a.certificate {
        Some(cert) => {
            let cert_bytes = read_file(cert, limits::MAX_KEY_BYTES, "certificate")
                .with_context(|| format!("reading certificate {}", cert.display()))?;
            let mut inters = Vec::new();
            for i in &a.intermediates {
                inters.push(
                    read_file(i, limits::MAX_KEY_BYTES, "certificate")
                        .with_context(|| format!("reading intermediate {}", i.display()))?,
                );
            }
            dsse::sign_with_certificate(&a.datatype, payload, &signer, &cert_bytes, &inters)
                .with_context(|| format!("signing with certificate {}", cert.display()))?
        }
        None => dsse::sign(&a.datatype, payload, &signer).context("signing")?,
    };
    let mut out = env.to_json();
    out.push(b'\n');
    std::fs::write(&a.outfile, out).with_context(|| format!("writing {}", a.outfile.display()))?;
    eprintln!(
        "signed {} as {} with key {}{}",
        a.infile.display(),
        a.datatype,
        signer.key_id(),
        if a.certificate.is_some() {
            " (with its certificate)"
        } else {
            ""
        }
    );
    Ok(0)
}
