//! Walking and hashing a working tree, shared by the material and product
//! attestors.
//!
//! The walk follows Witness (go-witness `RecordArtifacts` on main):
//! - keys are paths relative to the root, with `/` separators;
//! - symbolic links are followed only when they resolve inside the root
//!   (links pointing outside, and broken links, are skipped and reported);
//! - a linked directory whose target was already walked is not walked again
//!   (this also breaks link cycles);
//! - anything that is not a regular file (fifos, sockets, devices) is
//!   skipped, so the walk never blocks on a fifo.
//!
//! Files are hashed in parallel on scoped threads. When stderr is a terminal
//! and the tree is large, an `indicatif` progress bar is shown.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::AttestError;
use crate::digest::{DigestSet, HashAlg};

/// Trees with at least this many files show a progress bar (on a terminal).
pub const PROGRESS_THRESHOLD: usize = 2000;

/// A file the walk did not record, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedPath {
    /// Path relative to the root.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The result of a walk: relative path → digest set, and what was skipped.
#[derive(Clone, Debug, Default)]
pub struct TreeSnapshot {
    /// Recorded files.
    pub files: BTreeMap<String, DigestSet>,
    /// Paths that were not recorded.
    pub skipped: Vec<SkippedPath>,
}

/// Include/exclude globs over relative paths. Patterns follow Witness
/// (gobwas/glob without separators): `*` also matches `/`.
#[derive(Clone, Debug, Default)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

fn build_globset(patterns: &[String], what: &str) -> Result<Option<GlobSet>, AttestError> {
    let patterns: Vec<&String> = patterns.iter().filter(|p| !p.is_empty()).collect();
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = Glob::new(p)
            .map_err(|e| AttestError::Invalid(format!("invalid {what} glob {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| AttestError::Invalid(format!("invalid {what} globs: {e}")))
}

impl PathFilter {
    /// A filter from include and exclude patterns. An empty include list
    /// includes everything (Witness's default include glob is `*`).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, AttestError> {
        Ok(PathFilter {
            include: build_globset(include, "include")?,
            exclude: build_globset(exclude, "exclude")?,
        })
    }

    /// True when `rel` is included and not excluded.
    pub fn matches(&self, rel: &str) -> bool {
        if let Some(inc) = &self.include {
            if !inc.is_match(rel) {
                return false;
            }
        }
        if let Some(exc) = &self.exclude {
            if exc.is_match(rel) {
                return false;
            }
        }
        true
    }

    /// True when the filter lets everything through.
    pub fn is_pass_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }
}

fn rel_string(rel: &Path) -> String {
    // Non-UTF-8 names are recorded lossily (U+FFFD), as Go's JSON encoder
    // does for invalid UTF-8 in strings.
    let s = rel.to_string_lossy();
    if std::path::MAIN_SEPARATOR == '/' {
        s.into_owned()
    } else {
        s.replace(std::path::MAIN_SEPARATOR, "/")
    }
}

/// Files to hash (relative path, path to read) and the paths skipped.
pub type FileList = (Vec<(String, PathBuf)>, Vec<SkippedPath>);

/// Lists the regular files under `root` (following in-root symlinks), as
/// (relative path, path to read) pairs, plus what was skipped.
pub fn list_files(root: &Path) -> Result<FileList, AttestError> {
    let croot = fs::canonicalize(root).map_err(|e| AttestError::Io {
        what: format!("resolving working directory {}", root.display()),
        source: e,
    })?;
    let meta = fs::metadata(&croot).map_err(|e| AttestError::Io {
        what: format!("reading working directory {}", croot.display()),
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(AttestError::Invalid(format!(
            "working directory {} is not a directory",
            croot.display()
        )));
    }

    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut visited: HashSet<PathBuf> = HashSet::new();
    visited.insert(croot.clone());
    // (path to read through, relative path)
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(croot.clone(), PathBuf::new())];
    // Linked directories are walked after every real directory so that the
    // real location of a directory always wins the dedup.
    let mut deferred: Vec<(PathBuf, PathBuf, PathBuf)> = Vec::new();
    let mut seen_files: HashSet<String> = HashSet::new();

    loop {
        let (dir, rel_dir) = match stack.pop() {
            Some(x) => x,
            None => match deferred.pop() {
                Some((target, path, rel)) => {
                    if !visited.insert(target) {
                        continue;
                    }
                    (path, rel)
                }
                None => break,
            },
        };
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                skipped.push(SkippedPath {
                    path: rel_string(&rel_dir),
                    reason: format!("cannot read directory: {e}"),
                });
                continue;
            }
        };
        let mut entries: Vec<fs::DirEntry> = Vec::new();
        for ent in rd {
            match ent {
                Ok(ent) => entries.push(ent),
                Err(e) => skipped.push(SkippedPath {
                    path: rel_string(&rel_dir),
                    reason: format!("cannot list directory entry: {e}"),
                }),
            }
        }
        entries.sort_by_key(|e| e.file_name());
        for ent in entries {
            let path = ent.path();
            let rel = rel_dir.join(ent.file_name());
            let rel_s = rel_string(&rel);
            let ft = match ent.file_type() {
                Ok(ft) => ft,
                Err(e) => {
                    skipped.push(SkippedPath {
                        path: rel_s,
                        reason: format!("cannot stat: {e}"),
                    });
                    continue;
                }
            };
            if ft.is_dir() {
                if let Ok(c) = fs::canonicalize(&path) {
                    visited.insert(c);
                }
                stack.push((path, rel));
            } else if ft.is_file() {
                if seen_files.insert(rel_s.clone()) {
                    files.push((rel_s, path));
                }
            } else if ft.is_symlink() {
                let target = match fs::canonicalize(&path) {
                    Ok(t) => t,
                    Err(_) => {
                        skipped.push(SkippedPath {
                            path: rel_s,
                            reason: "broken symbolic link".into(),
                        });
                        continue;
                    }
                };
                if !target.starts_with(&croot) {
                    skipped.push(SkippedPath {
                        path: rel_s,
                        reason: format!(
                            "symbolic link to {} outside the working directory",
                            target.display()
                        ),
                    });
                    continue;
                }
                match fs::metadata(&target) {
                    Ok(m) if m.is_dir() => deferred.push((target, path, rel)),
                    Ok(m) if m.is_file() => {
                        if seen_files.insert(rel_s.clone()) {
                            files.push((rel_s, target));
                        }
                    }
                    Ok(_) => skipped.push(SkippedPath {
                        path: rel_s,
                        reason: "symbolic link to something that is not a regular file".into(),
                    }),
                    Err(e) => skipped.push(SkippedPath {
                        path: rel_s,
                        reason: format!("cannot stat link target: {e}"),
                    }),
                }
            } else {
                skipped.push(SkippedPath {
                    path: rel_s,
                    reason: "not a regular file".into(),
                });
            }
        }
    }
    files.sort();
    Ok((files, skipped))
}

/// Hashes `files` in parallel. Unreadable files are reported in the second
/// vector instead of failing the walk.
pub fn hash_files(
    files: &[(String, PathBuf)],
    hashes: &[HashAlg],
) -> (BTreeMap<String, DigestSet>, Vec<SkippedPath>) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let out: Mutex<BTreeMap<String, DigestSet>> = Mutex::new(BTreeMap::new());
    let errs: Mutex<Vec<SkippedPath>> = Mutex::new(Vec::new());
    let bar = if files.len() >= PROGRESS_THRESHOLD && std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(files.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "cilock: hashing {pos}/{len} files {wide_bar} {eta}",
        ) {
            pb.set_style(style);
        }
        Some(pb)
    } else {
        None
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((rel, path)) = files.get(i) else {
                    break;
                };
                match DigestSet::from_file(path, hashes) {
                    Ok(d) => {
                        if let Ok(mut m) = out.lock() {
                            m.insert(rel.clone(), d);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut v) = errs.lock() {
                            v.push(SkippedPath {
                                path: rel.clone(),
                                reason: format!("cannot hash: {e}"),
                            });
                        }
                    }
                }
                if let Some(pb) = &bar {
                    pb.inc(1);
                }
            });
        }
    });
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let mut errs = errs.into_inner().unwrap_or_default();
    errs.sort_by(|a, b| a.path.cmp(&b.path));
    (out.into_inner().unwrap_or_default(), errs)
}

/// Walks `root` and hashes every regular file (see the module docs).
pub fn snapshot(root: &Path, hashes: &[HashAlg]) -> Result<TreeSnapshot, AttestError> {
    let hashes: Vec<HashAlg> = hashes
        .iter()
        .copied()
        .filter(|h| *h != HashAlg::DirHash)
        .collect();
    if hashes.is_empty() {
        return Err(AttestError::Invalid(
            "no file hash algorithm selected".into(),
        ));
    }
    let (files, mut skipped) = list_files(root)?;
    let (files, errs) = hash_files(&files, &hashes);
    skipped.extend(errs);
    Ok(TreeSnapshot { files, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_semantics() {
        let f = PathFilter::new(&["*.txt".into()], &["secret/*".into()]).unwrap();
        assert!(f.matches("a.txt"));
        assert!(f.matches("dir/a.txt")); // `*` crosses `/`, as in Witness
        assert!(!f.matches("secret/a.txt"));
        assert!(!f.matches("a.bin"));
        assert!(PathFilter::new(&[], &[]).unwrap().is_pass_all());
        assert!(PathFilter::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn fifo_is_skipped_not_blocking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let snap = snapshot(dir.path(), &[HashAlg::Sha256]).unwrap();
        assert_eq!(snap.files.keys().collect::<Vec<_>>(), vec!["f"]);
        assert_eq!(snap.skipped[0].path, "pipe");
    }
}
