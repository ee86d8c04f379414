//! Where envelopes go: a file (written atomically) or standard output
//! (`-o -`, as Witness users expect).
//!
//! An [`Outfile`] is prepared *before* anything irreversible happens (a
//! command runs, a step ends): preparing creates the temporary file beside
//! the destination, so a missing directory, a destination that is a
//! directory or a directory without write permission is refused up front
//! (exit 2) instead of after the evidence exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// A prepared destination for one envelope.
#[derive(Debug)]
pub enum Outfile {
    /// `-o -`: standard output.
    Stdout,
    /// An existing file that is not a regular file (`/dev/null`, a FIFO,
    /// a terminal): written in place, never replaced.
    Special {
        /// The destination.
        path: PathBuf,
        /// Open for writing.
        file: std::fs::File,
    },
    /// A file: the temporary file already exists beside it.
    File {
        /// The destination.
        path: PathBuf,
        /// The temporary file (renamed over `path` on commit).
        tmp: PathBuf,
        /// Open on `tmp`.
        file: std::fs::File,
    },
}

impl Outfile {
    /// Checks that `path` can be written and reserves a temporary file
    /// beside it (`-` means standard output).
    pub fn prepare(path: &Path) -> anyhow::Result<Outfile> {
        if path.as_os_str() == "-" {
            return Ok(Outfile::Stdout);
        }
        if path.as_os_str().is_empty() {
            bail!("the output path is empty");
        }
        match std::fs::metadata(path) {
            Ok(md) if md.is_dir() => bail!("output {} is a directory", path.display()),
            Ok(md) if !md.is_file() => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("output {}", path.display()))?;
                return Ok(Outfile::Special {
                    path: path.to_path_buf(),
                    file,
                });
            }
            _ => {}
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (tmp, file) = tempfile_in(dir).with_context(|| {
            format!(
                "output {}: cannot create a file in {}",
                path.display(),
                dir.display()
            )
        })?;
        Ok(Outfile::File {
            path: path.to_path_buf(),
            tmp,
            file,
        })
    }

    /// Where the envelope goes, for messages (`standard output` for `-`).
    pub fn describe(&self) -> String {
        match self {
            Outfile::Stdout => "standard output".to_string(),
            Outfile::File { path, .. } | Outfile::Special { path, .. } => {
                path.display().to_string()
            }
        }
    }

    /// The regular file the envelope is written to (`None` for standard
    /// output and special files: they keep no copy).
    pub fn regular_file(&self) -> Option<PathBuf> {
        match self {
            Outfile::File { path, .. } => Some(path.clone()),
            Outfile::Stdout | Outfile::Special { .. } => None,
        }
    }

    /// Writes `bytes` and puts them in place (rename over the destination).
    /// On error the temporary file is removed and the destination is
    /// untouched.
    pub fn commit(mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self {
            Outfile::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|_| out.flush())
                    .context("writing the envelope to standard output")?;
                Ok(())
            }
            Outfile::Special { path, file } => file
                .write_all(bytes)
                .with_context(|| format!("writing {}", path.display())),
            Outfile::File { path, tmp, file } => {
                file.write_all(bytes)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                file.sync_all().ok();
                std::fs::rename(&*tmp, &*path)
                    .with_context(|| format!("writing {}", path.display()))?;
                // Renamed: nothing left to clean up.
                *tmp = PathBuf::new();
                Ok(())
            }
        }
    }
}

impl Drop for Outfile {
    fn drop(&mut self) {
        if let Outfile::File { tmp, .. } = self {
            if !tmp.as_os_str().is_empty() {
                let _ = std::fs::remove_file(&*tmp);
            }
        }
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    create_new_in(dir, 0o644, |i| {
        format!(".cilock-out.{}.{i}", std::process::id())
    })
}

/// Creates a new file (`mode`) in `dir`, named `name(0)`, else `name(1)`,
/// … (the first 100 names).
fn create_new_in(
    dir: &Path,
    mode: u32,
    name: impl Fn(u32) -> String,
) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    for i in 0..100u32 {
        let p = dir.join(name(i));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "no free file name in {}",
        dir.display()
    )))
}

/// Says on stderr that events were lost (they are counted in the attestation).
pub fn warn_lost(lost: u64) {
    if lost > 0 {
        eprintln!("cilock: warning: {lost} trace events were lost (counted in the attestation's trace.events)");
    }
}

/// Writes `bytes` to a new owner-only file in the temporary directory
/// (`$TMPDIR/cilock-<step>-<pid>.<n>.json`) and returns its path.
pub fn keep_fallback(step: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir();
    let safe: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let (p, mut f) = create_new_in(&dir, 0o600, |i| {
        format!("cilock-{safe}-{}.{i}.json", std::process::id())
    })
    .context("creating a file in the temporary directory")?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Where the SLSA provenance export of `-o OUT` goes (Witness's rule:
/// `OUT-slsa.json`, e.g. `out.json-slsa.json`).
pub fn slsa_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push("-slsa.json");
    PathBuf::from(s)
}

/// Refuses `--attestor-slsa-export` with `-o -` (the export needs a file
/// next to `-o`), and a `-o` whose export file cannot be created, before
/// anything runs.
pub fn check_slsa_export(export: bool, out: &Path) -> anyhow::Result<()> {
    if !export {
        return Ok(());
    }
    if out.as_os_str() == "-" {
        bail!("--attestor-slsa-export writes the SLSA provenance next to -o (OUT-slsa.json): it cannot be used with -o - (standard output); give -o FILE");
    }
    // Prepared and dropped: the temporary file is removed.
    Outfile::prepare(&slsa_path(out))
        .map(drop)
        .context("--attestor-slsa-export")
}

/// Writes the SLSA provenance export envelope next to `out` and returns
/// where.
pub fn write_slsa(out: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let p = slsa_path(out);
    Outfile::prepare(&p)?.commit(bytes)?;
    Ok(p)
}
