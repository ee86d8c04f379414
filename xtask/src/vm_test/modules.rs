//! The guest's kernel modules: the virtio and 9p modules
//! ([`GUEST_MODULES`]) and their dependencies, in load order, read from a
//! kernel package's `modules.dep`, decompressed for busybox `insmod`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// Modules the guest needs for the 9p share (with their dependencies).
pub(super) const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Modules the `@systemd` boot needs on top (its root is an overlay of the
/// 9p share); cached apart (`<release>/systemd-modules/`) so a kernel
/// cached before them keeps its files.
pub(super) const SYSTEMD_MODULES: &[&str] = &["overlay"];

/// The module files for `wanted` ([`GUEST_MODULES`] or [`SYSTEMD_MODULES`]),
/// dependencies first; modules that are built into the kernel are left out.
pub(super) fn module_order(
    moddir: &Path,
    config: &str,
    wanted: &[&str],
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = BTreeMap::new();
    collect_modules(&moddir.join("kernel"), &mut files)?;
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    pub(super) fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        order: &mut Vec<(String, PathBuf)>,
        depth: u32,
    ) -> anyhow::Result<()> {
        if order.iter().any(|(n, _)| n == name) || depth > 32 {
            return Ok(());
        }
        let Some(path) = files.get(name) else {
            return Ok(());
        };
        for dep in module_depends(path)? {
            visit(&dep, files, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for m in wanted {
        if !files.contains_key(*m) {
            // Built in (or missing: then mounting 9p fails in the guest
            // with a clear message).
            let _ = config;
            continue;
        }
        visit(m, &files, &mut order, 0)?;
    }
    Ok(order)
}

pub(super) fn collect_modules(
    dir: &Path,
    out: &mut BTreeMap<String, PathBuf>,
) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            collect_modules(&p, out)?;
        } else if let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) {
            for ext in [".ko", ".ko.xz", ".ko.zst"] {
                if let Some(stem) = name.strip_suffix(ext) {
                    out.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    Ok(())
}

pub(super) fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => Ok(std::fs::read(path)?),
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running {t} for {}", path.display()))?;
            if !out.status.success() {
                bail!("{t} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// `depends=` of a module's `.modinfo`.
pub(super) fn module_depends(path: &Path) -> anyhow::Result<Vec<String>> {
    let data = read_module(path)?;
    let key = b"depends=";
    let Some(at) = data.windows(key.len()).position(|w| w == key) else {
        return Ok(Vec::new());
    };
    let rest = &data[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Ok(String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect())
}

pub(super) fn decompress_module(src: &Path, out: &Path) -> anyhow::Result<()> {
    std::fs::write(out, read_module(src)?)?;
    Ok(())
}
