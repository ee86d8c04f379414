//! Program load/attach helpers shared by the probe families: one way to
//! find a program in the object by name, load it and attach it, with the
//! error saying which program and which step failed.

use std::path::{Path, PathBuf};

use aya::programs::{Program, ProgramError, RawTracePoint, TracePoint};
use aya::Ebpf;

use super::EbpfError;

/// Where tracefs is mounted (`None`: not mounted).
pub(super) fn tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Maps a program error to [`EbpfError::Program`] saying `what` failed.
pub(super) fn prog_err(what: impl Into<String>) -> impl FnOnce(ProgramError) -> EbpfError {
    let what = what.into();
    move |source| EbpfError::Program { what, source }
}

/// Maps a map error to [`EbpfError::Map`] saying `what` failed.
pub(super) fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map { what, source }
}

/// The error for a program the object lacks.
pub(super) fn missing(name: &str) -> EbpfError {
    EbpfError::Program {
        what: name.to_string(),
        source: ProgramError::UnexpectedProgramType,
    }
}

/// The program `name` of the object, as its type `P`.
pub(super) fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| missing(name))?
        .try_into()
        .map_err(prog_err(name))
}

/// Loads the raw tracepoint program `prog` and attaches it to `hook`.
pub(super) fn raw_tracepoint(ebpf: &mut Ebpf, prog: &str, hook: &str) -> Result<(), EbpfError> {
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load().map_err(prog_err(format!("load {prog}")))?;
    p.attach(hook)
        .map_err(prog_err(format!("attach raw_tp {hook}")))?;
    Ok(())
}

/// Loads the program `name` and attaches it to the syscall tracepoint of
/// the same name (`syscalls/<name>`). `Ok(false)`: this kernel has no such
/// tracepoint (not every architecture has every call); nothing loaded.
pub(super) fn syscall_tracepoint(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    name: &str,
) -> Result<bool, EbpfError> {
    if !tracefs.join("events/syscalls").join(name).is_dir() {
        return Ok(false);
    }
    let tp: &mut TracePoint = program(ebpf, name)?;
    tp.load().map_err(prog_err(format!("load {name}")))?;
    tp.attach("syscalls", name)
        .map_err(prog_err(format!("attach syscalls/{name}")))?;
    Ok(true)
}
