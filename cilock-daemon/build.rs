//! Builds the eBPF programs (crate `cilock-ebpf`) with aya-build and the
//! pinned nightly, and puts the object at `$OUT_DIR/cilock`.
//!
//! `CILOCK_SKIP_EBPF=1` writes an empty object instead (for building the
//! user-space code on a machine without bpf-linker); the engine then reports
//! eBPF as unavailable at run time and falls back to ptrace. A fuzzing build
//! (`cargo fuzz` sets `--cfg fuzzing`) does the same: the fuzz targets use
//! the parsers only, and the sanitizer/coverage flags do not apply to the BPF
//! target.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CILOCK_SKIP_EBPF");
    let out_dir = std::env::var("OUT_DIR")?;
    if std::env::var_os("CILOCK_SKIP_EBPF").is_some_and(|v| v == "1")
        || std::env::var_os("CARGO_CFG_FUZZING").is_some()
    {
        std::fs::write(format!("{out_dir}/cilock"), b"")?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "cilock-ebpf")
        .ok_or_else(|| anyhow!("cilock-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .as_str();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
