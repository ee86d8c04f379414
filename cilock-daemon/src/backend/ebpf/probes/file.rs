//! The file family's probes: the file-open hook (fexit on
//! `security_file_open`, else the open-syscall exit tracepoints), and the
//! written-file programs (`cilock-ebpf/src/probes/file.rs`): the close,
//! dup2/dup3 and close_range tracepoints that stamp a written file when a
//! step process lets go of it, and the rename tracepoints that keep the
//! open de-duplication from hiding a reopen under a new name.

use std::path::Path;

use aya::programs::{FExit, TracePoint};
use aya::Ebpf;

use super::super::loader::{prog_err, program, syscall_tracepoint};
use super::super::EbpfError;
use crate::backend::{CaptureInfo, Concern};

/// Syscalls whose successful return installs a file the open probe reports.
const OPEN_SYSCALLS: [&str; 5] = [
    "sys_exit_open",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_exit_creat",
    "sys_exit_open_by_handle_at",
];

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
    syscall_tracepoint(ebpf, tracefs, name).map_err(|e| e.to_string())
}

/// Attaches both groups; sets their hooks in `info` (`written-files`,
/// `open-dedup`).
/// Returns whether the close stamps work (without them written files are
/// checked by their write-open identity only, which the limitations say).
pub(in crate::backend::ebpf) fn load_written(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    info: &mut CaptureInfo,
) -> bool {
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

/// Environment variable choosing the file-open hook: `auto` (default: fexit
/// where the kernel allows it, else tracepoints), `fexit` (fail if
/// refused) or `tracepoint`.
pub const FILE_OPEN_HOOK_ENV: &str = "CILOCK_EBPF_FILE_OPEN";

/// The file-open hook that attached.
pub(in crate::backend::ebpf) struct FileOpenHook {
    /// fexit on `security_file_open` (else the open-syscall tracepoints).
    pub(in crate::backend::ebpf) fexit: bool,
    /// Its `trace.hooks` entry.
    pub(in crate::backend::ebpf) how: String,
}

/// Loads and attaches the file-open program.
///
/// fexit on `security_file_open` is preferred: it sees every open that
/// reaches the VFS (io_uring's included) at one hook. It needs BPF
/// trampolines, which some kernels refuse (EPERM at load); then the
/// open-syscall exit tracepoints are used, which every kernel has.
pub(in crate::backend::ebpf) fn attach_open(
    ebpf: &mut Ebpf,
    tracefs: &Path,
) -> Result<FileOpenHook, EbpfError> {
    let want = std::env::var(FILE_OPEN_HOOK_ENV).unwrap_or_default();
    let mut refused = None;
    if want != "tracepoint" {
        match attach_fexit_open(ebpf) {
            Ok(()) => {
                return Ok(FileOpenHook {
                    fexit: true,
                    how: "fexit:security_file_open + dentry walk".to_string(),
                })
            }
            Err(e) if want == "fexit" => return Err(e),
            Err(e) => {
                tracing::info!("fexit file-open hook unavailable, using tracepoints: {e}");
                refused = Some(e.to_string());
            }
        }
    }
    let tp: &mut TracePoint = program(ebpf, "sys_exit_open")?;
    tp.load().map_err(prog_err("load sys_exit_open"))?;
    let mut attached = Vec::new();
    for name in OPEN_SYSCALLS {
        // open/creat do not exist on every architecture.
        if tracefs.join("events/syscalls").join(name).is_dir() {
            tp.attach("syscalls", name)
                .map_err(prog_err(format!("attach syscalls/{name}")))?;
            attached.push(name.trim_start_matches("sys_exit_"));
        }
    }
    let mut hook = format!(
        "tracepoint:syscalls/sys_exit_{{{}}} + dentry walk",
        attached.join(",")
    );
    if let Some(why) = refused {
        hook.push_str(&format!(" (fexit:security_file_open refused: {why})"));
    }
    Ok(FileOpenHook {
        fexit: false,
        how: hook,
    })
}

/// Loads `fexit_file_open` and attaches it to `security_file_open`.
pub(in crate::backend::ebpf) fn attach_fexit_open(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| EbpfError::Program {
        what: "kernel BTF for fexit".to_string(),
        source: aya::programs::ProgramError::Btf(e),
    })?;
    let p: &mut FExit = program(ebpf, "fexit_file_open")?;
    p.load("security_file_open", &btf)
        .map_err(prog_err("load fexit:security_file_open"))?;
    p.attach()
        .map_err(prog_err("attach fexit:security_file_open"))?;
    Ok(())
}

/// Whether fentry/fexit programs can be loaded here (they need BPF
/// trampolines, which some kernels refuse).
pub(in crate::backend::ebpf) fn probe_fentry() -> String {
    match aya::sys::is_program_supported(aya::programs::ProgramType::Tracing) {
        Ok(true) => {}
        Ok(false) => return "unavailable: tracing programs not supported".into(),
        Err(e) => return format!("unavailable: {e}"),
    }
    // Attaching needs a trampoline: ask the tracefs interface that backs it.
    match std::fs::File::open("/sys/kernel/tracing/available_filter_functions") {
        Ok(_) => "available (tracepoints are used: they cover every kernel)".into(),
        Err(e) => format!("unavailable: ftrace function patching refused ({e})"),
    }
}
