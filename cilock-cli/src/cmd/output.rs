//! Writing envelopes.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes `envelope` (compact JSON, no trailing newline, like `witness run`)
/// to `path`, atomically (temp file + rename).
pub fn write_envelope(path: &Path, envelope: &serde_json::Value) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(envelope).context("encoding the envelope")?;
    write_bytes(path, &bytes)
}

/// Writes bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp =
        tempfile_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.1.write_all(bytes).context("writing the envelope")?;
    tmp.1.sync_all().ok();
    std::fs::rename(&tmp.0, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    for i in 0..100u32 {
        let p = dir.join(format!(".cilock-out.{}.{i}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no temporary file name available"))
}

/// Says on stderr that events were lost (they are counted in the attestation).
pub fn warn_lost(lost: u64) {
    if lost > 0 {
        eprintln!("cilock: warning: {lost} trace events were lost (counted in the attestation's trace.events)");
    }
}
