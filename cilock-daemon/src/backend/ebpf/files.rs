//! Attaching the written-file programs (`cilock-ebpf/src/files.rs`): the
//! close, dup2/dup3 and close_range tracepoints that stamp a written file
//! when a step process lets go of it, and the rename tracepoints that keep
//! the open de-duplication from hiding a reopen under a new name.

use std::path::Path;

use aya::programs::TracePoint;
use aya::Ebpf;

use crate::backend::{CaptureInfo, Concern};

/// Tracepoints stamping written files at close.
const CLOSES: [&str; 4] = [
    "sys_enter_close",
    "sys_enter_dup2",
    "sys_enter_dup3",
    "sys_enter_close_range",
];

/// Tracepoints bumping the step's rename epoch.
const RENAMES: [&str; 3] = ["sys_exit_rename", "sys_exit_renameat", "sys_exit_renameat2"];

fn attach(ebpf: &mut Ebpf, tracefs: &Path, name: &str) -> Result<bool, String> {
    // Not every architecture has every call (arm64: no rename, no dup2).
    if !tracefs.join("events/syscalls").join(name).is_dir() {
        return Ok(false);
    }
    let tp: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))?;
    tp.load().map_err(|e| format!("load {name}: {e}"))?;
    tp.attach("syscalls", name)
        .map_err(|e| format!("attach syscalls/{name}: {e}"))?;
    Ok(true)
}

/// Attaches both groups; sets their hooks in `info` (`written-files`,
/// `open-dedup`).
/// Returns whether the close stamps work (without them written files are
/// checked by their write-open identity only, which the limitations say).
pub fn load(ebpf: &mut Ebpf, tracefs: &Path, info: &mut CaptureInfo) -> bool {
    let mut group = |names: &[&str], prefix: &str| -> Result<Vec<String>, String> {
        let mut got = Vec::new();
        for n in names {
            if attach(ebpf, tracefs, n)? {
                got.push(n.trim_start_matches(prefix).to_string());
            }
        }
        Ok(got)
    };
    let closes = group(&CLOSES, "sys_enter_");
    let ok = closes.is_ok();
    info.set_hook(
        Concern::WrittenFiles,
        match closes {
            Ok(c) => format!(
                "tracepoint:syscalls/sys_enter_{{{}}} + the fds of an exiting process (raw_tp:sched_process_exit, before exit_files): \
                 the stamp of a regular file open for writing when the process lets go of it",
                c.join(",")
            ),
            Err(e) => {
                tracing::warn!("close stamps unavailable: {e}");
                format!("unavailable: {e}")
            }
        },
    );
    info.set_hook(
        Concern::OpenDedup,
        match group(&RENAMES, "sys_exit_") {
            Ok(r) => format!(
                "(process, step, dentry, parent, name hash, mount, inode, generation, access, rename epoch); \
                 the epoch is bumped by tracepoint:syscalls/sys_exit_{{{}}}",
                r.join(",")
            ),
            Err(e) => {
                tracing::warn!("rename epoch unavailable: {e}");
                format!("without rename epoch: {e}")
            }
        },
    );
    ok
}
