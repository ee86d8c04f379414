//! `cilock keygen`: a new signing key pair.

use std::io::Write;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cilock_evidence::keys::{KeyAlgorithm, Signer};

use crate::cli::{KeyType, KeygenArgs};

/// Writes the private key (PKCS#8 PEM, mode 0600) to `--outfile` and the
/// public key to `<outfile>.pub`; prints the key id.
///
/// Never leaves a private key beside a public key that does not match:
/// when either file exists (a dangling symlink included) nothing is
/// written. Both keys are written to temporary files in the same directory
/// first, then linked to their names without overwriting (`link(2)` fails
/// when the name exists): the public key first, then the private key. Any
/// failure removes what this run created, so a pair appears whole or not
/// at all (a crash between the two links leaves only a public key).
pub fn keygen(a: KeygenArgs) -> anyhow::Result<u8> {
    let alg = match a.key_type {
        KeyType::EcdsaP256 => KeyAlgorithm::EcdsaP256,
        KeyType::Ed25519 => KeyAlgorithm::Ed25519,
    };
    let key_path = a.outfile.clone();
    let mut pub_path = key_path.clone().into_os_string();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    for p in [&key_path, &pub_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            bail!(
                "{} exists: keygen writes a new pair ({} and {}) and overwrites neither; remove both or choose another -o",
                p.display(),
                key_path.display(),
                pub_path.display()
            );
        }
    }
    let (signer, private_pem) = Signer::generate(alg).context("generating the key")?;
    let public_pem = signer.public_key_pem();

    let pub_tmp = Temp::write(&pub_path, public_pem.as_bytes(), 0o644)?;
    let key_tmp = Temp::write(&key_path, private_pem.as_bytes(), 0o600)?;
    pub_tmp.link_to(&pub_path)?;
    if let Err(e) = key_tmp.link_to(&key_path) {
        // Remove the public key this run linked (only if it is still ours).
        pub_tmp.unlink_link(&pub_path);
        return Err(e);
    }
    drop((pub_tmp, key_tmp));
    println!("{}", signer.key_id());
    eprintln!(
        "wrote {} private key {} and public key {}",
        alg,
        key_path.display(),
        pub_path.display()
    );
    Ok(0)
}

/// A temporary file beside its final name; removed when dropped.
struct Temp {
    path: PathBuf,
    ino: (u64, u64),
}

impl Temp {
    /// Creates `.<name>.<pid>.<n>.tmp` in `dest`'s directory (never an
    /// existing file), writes `bytes` and syncs.
    fn write(dest: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<Temp> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .with_context(|| format!("{} is not a file name", dest.display()))?
            .to_string_lossy()
            .into_owned();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for n in 0..16u32 {
            let path = dir.join(format!(".{name}.{}.{stamp}.{n}.tmp", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
            {
                Ok(mut f) => {
                    let md = f.metadata();
                    let t = Temp {
                        path,
                        ino: md.as_ref().map_or((0, 0), |m| (m.dev(), m.ino())),
                    };
                    md.with_context(|| format!("creating a file in {}", dir.display()))?;
                    f.write_all(bytes)
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("writing {}", t.path.display()))?;
                    return Ok(t);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", dest.display()));
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
            .with_context(|| format!("creating a temporary file in {}", dir.display()))
    }

    /// Gives the file its final name; fails when that name exists.
    fn link_to(&self, dest: &Path) -> anyhow::Result<()> {
        std::fs::hard_link(&self.path, dest).with_context(|| {
            format!(
                "creating {} (nothing was overwritten; no new key was left behind)",
                dest.display()
            )
        })
    }

    /// Removes `dest` when it is still this file.
    fn unlink_link(&self, dest: &Path) {
        if std::fs::symlink_metadata(dest).is_ok_and(|m| (m.dev(), m.ino()) == self.ino) {
            let _ = std::fs::remove_file(dest);
        }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
