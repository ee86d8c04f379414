//! The lockfiles attestor: package manager lockfiles of the working
//! directory, recorded like Witness's (`attestation/lockfiles`): for each
//! lockfile found, its file name, its content and its digest, and a
//! `file:<name>` subject with that digest.
//!
//! What is looked for, and where (Witness's behaviour, kept):
//! - the exact file names of [`LOCKFILE_NAMES`], in that order, at the top
//!   level of the working directory only (Witness globs each bare name in
//!   its current directory, which does not recurse). A monorepo's nested
//!   lockfiles are not recorded; they are materials all the same.
//! - cilock adds `uv.lock` (uv, today's common Python package manager, whose
//!   lockfile is the same kind of file as `poetry.lock`). It does not add
//!   `requirements*.txt`: those are not lockfiles (they may pin nothing),
//!   and a glob would make the set of recorded files depend on names the
//!   job picks.
//!
//! Reads go through the working directory's descriptor
//! ([`safeio::open_beneath`]): a lockfile that is a symbolic link leaving
//! the tree, a fifo or a directory is refused with an error naming it. Each
//! file is at most [`MAX_LOCKFILE_BYTES`] and all of them together at most
//! [`MAX_TOTAL_BYTES`] (the content is embedded in the signed attestation);
//! beyond, an error. Content that is not UTF-8 is recorded with U+FFFD in
//! place of the bad bytes (as Go's JSON encoding does for Witness); the
//! digest is always of the bytes on disk.
//!
//! No lockfile: [`AttestError::Absent`] (Witness records an empty list).

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;
use std::path::Path;

use serde::Serialize;

use super::lifecycle::AttestorOptions;
use super::safeio;
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "lockfiles";

/// The lockfile names looked for, in Witness's order, then cilock's
/// addition (`uv.lock`).
pub const LOCKFILE_NAMES: &[&str] = &[
    "Gemfile.lock",      // Ruby (Bundler)
    "package-lock.json", // Node.js (npm)
    "yarn.lock",         // Node.js (Yarn)
    "Cargo.lock",        // Rust
    "poetry.lock",       // Python (Poetry)
    "Pipfile.lock",      // Python (Pipenv)
    "composer.lock",     // PHP
    "go.sum",            // Go
    "Podfile.lock",      // CocoaPods
    "gradle.lockfile",   // Gradle
    "pnpm-lock.yaml",    // Node.js (pnpm)
    "uv.lock",           // Python (uv), cilock addition
];

/// Largest lockfile recorded.
pub const MAX_LOCKFILE_BYTES: u64 = 16 << 20;
/// Largest sum of the lockfiles recorded.
pub const MAX_TOTAL_BYTES: u64 = 32 << 20;

/// One lockfile, in Witness's shape.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LockfileInfo {
    /// The file name (no directory: the top level of the working directory).
    pub filename: String,
    /// The content.
    pub content: String,
    /// Digest of the bytes.
    pub digest: DigestSet,
}

/// The lockfiles attestor.
#[derive(Debug, Default)]
pub struct LockfilesAttestor {
    lockfiles: Vec<LockfileInfo>,
}

impl LockfilesAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(LockfilesAttestor::default())
    }

    /// The lockfiles found by the last `attest`.
    pub fn lockfiles(&self) -> &[LockfileInfo] {
        &self.lockfiles
    }
}

fn read_lockfile(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    budget: u64,
) -> Result<Option<Vec<u8>>, String> {
    let fd = match safeio::open_beneath(dir, Path::new(name)) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{name}: cannot open: {e}")),
    };
    let f = std::fs::File::from(fd);
    let meta = safeio::require_regular(&f).map_err(|e| format!("{name}: {e}"))?;
    let max = MAX_LOCKFILE_BYTES.min(budget);
    let too_big = |n: u64| {
        if max < MAX_LOCKFILE_BYTES {
            format!(
                "{name}: {n} bytes, past the {MAX_TOTAL_BYTES}-byte limit of all lockfiles together"
            )
        } else {
            format!("{name}: {n} bytes, more than the {MAX_LOCKFILE_BYTES}-byte limit")
        }
    };
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    let (bytes, more) = safeio::read_capped_sized(&f, max, meta.len())
        .map_err(|e| format!("{name}: cannot read: {e}"))?;
    if more {
        return Err(too_big(max + 1));
    }
    Ok(Some(bytes))
}

impl Attestor for LockfilesAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        self.lockfiles.clear();
        let dir = safeio::open_workdir(ctx)?;
        let mut budget = MAX_TOTAL_BYTES;
        for name in LOCKFILE_NAMES {
            let Some(bytes) = read_lockfile(dir.as_fd(), name, budget)
                .map_err(|e| AttestError::Invalid(format!("lockfiles: {e}")))?
            else {
                continue;
            };
            budget -= bytes.len() as u64;
            self.lockfiles.push(LockfileInfo {
                filename: name.to_string(),
                digest: DigestSet::from_bytes(&bytes, &ctx.hashes),
                content: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        if self.lockfiles.is_empty() {
            return Err(AttestError::Absent(format!(
                "lockfiles: no lockfile at the top of the working directory ({})",
                LOCKFILE_NAMES.join(", ")
            )));
        }
        Ok(serde_json::json!({ "lockfiles": self.lockfiles }))
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.lockfiles
            .iter()
            .map(|l| (format!("file:{}", l.filename), l.digest.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashAlg;
    use std::os::unix::fs::symlink;

    fn ctx(dir: &Path) -> AttestationContext {
        AttestationContext::new(dir.to_path_buf(), Vec::new())
    }

    #[test]
    fn top_level_lockfiles_in_witness_order_with_digests() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("go.sum"),
            b"golang.org/x/sys v0.1.0 h1:abc=\n",
        )
        .unwrap();
        std::fs::write(d.path().join("Cargo.lock"), b"version = 3\n").unwrap();
        std::fs::write(d.path().join("uv.lock"), b"version = 1\n").unwrap();
        std::fs::write(d.path().join("requirements.txt"), b"requests\n").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/yarn.lock"), b"nested\n").unwrap();
        std::fs::write(d.path().join("Gemfile.lock"), b"\xff\xfeGEM\n").unwrap();
        let mut a = LockfilesAttestor::default();
        let v = a.attest(&ctx(d.path())).unwrap();
        let names: Vec<&str> = v["lockfiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["filename"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Gemfile.lock", "Cargo.lock", "go.sum", "uv.lock"]);
        let go = &v["lockfiles"][2];
        assert_eq!(go["content"], "golang.org/x/sys v0.1.0 h1:abc=\n");
        let want = DigestSet::from_bytes(b"golang.org/x/sys v0.1.0 h1:abc=\n", &[HashAlg::Sha256]);
        assert_eq!(go["digest"], serde_json::to_value(&want).unwrap());
        assert_eq!(
            go.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["content", "digest", "filename"]
        );
        // Not UTF-8: replaced in the content, digest of the bytes.
        assert_eq!(v["lockfiles"][0]["content"], "\u{fffd}\u{fffd}GEM\n");
        assert_eq!(
            a.lockfiles()[0].digest,
            DigestSet::from_bytes(b"\xff\xfeGEM\n", &[HashAlg::Sha256])
        );
        let subj = a.subjects();
        assert_eq!(
            subj.keys().collect::<Vec<_>>(),
            [
                "file:Cargo.lock",
                "file:Gemfile.lock",
                "file:go.sum",
                "file:uv.lock"
            ]
        );
        assert_eq!(subj["file:go.sum"], want);
    }

    #[test]
    fn none_is_absent_and_bad_ones_are_errors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("requirements.txt"), b"x\n").unwrap();
        let e = LockfilesAttestor::default()
            .attest(&ctx(d.path()))
            .unwrap_err();
        assert!(
            matches!(&e, AttestError::Absent(m) if m.contains("no lockfile")),
            "{e:?}"
        );

        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("secret"), b"s").unwrap();
        symlink(out.path().join("secret"), d.path().join("Cargo.lock")).unwrap();
        let e = LockfilesAttestor::default()
            .attest(&ctx(d.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Cargo.lock: cannot open"), "{e}");
        std::fs::remove_file(d.path().join("Cargo.lock")).unwrap();

        nix::unistd::mkfifo(
            &d.path().join("yarn.lock"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let e = LockfilesAttestor::default()
            .attest(&ctx(d.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("yarn.lock: not a regular file (a fifo)"), "{e}");
        std::fs::remove_file(d.path().join("yarn.lock")).unwrap();

        let f = std::fs::File::create(d.path().join("package-lock.json")).unwrap();
        f.set_len(MAX_LOCKFILE_BYTES + 1).unwrap();
        let e = LockfilesAttestor::default()
            .attest(&ctx(d.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("package-lock.json: 16777217 bytes, more than the 16777216-byte limit"),
            "{e}"
        );
        f.set_len(MAX_LOCKFILE_BYTES).unwrap();
        let g = std::fs::File::create(d.path().join("yarn.lock")).unwrap();
        g.set_len(MAX_LOCKFILE_BYTES).unwrap();
        let h = std::fs::File::create(d.path().join("Cargo.lock")).unwrap();
        h.set_len(1).unwrap();
        let e = LockfilesAttestor::default()
            .attest(&ctx(d.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Cargo.lock: 1 bytes, past the 33554432-byte limit of all lockfiles"),
            "{e}"
        );
    }
}
