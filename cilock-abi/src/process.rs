//! The process family: a successful exec ([`ExecEvent`]), a new thread
//! group ([`ForkEvent`]) and the death of one ([`ExitEvent`]).

use crate::{Header, InodeStamp, PathInfo};

/// Byte budget of argv.
pub const ARGS_MAX_BYTES: usize = 4096;
/// Byte budget of the exec filename.
pub const FILENAME_MAX_BYTES: usize = 512;

/// `kind::EXEC`. Followed by `filename_len` bytes of the filename as passed
/// to execve, `args_len` bytes of NUL-separated argv, then the walked exe
/// path (`exe.len` bytes) and the walked cwd (`cwd.len` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecEvent {
    /// Common header.
    pub hdr: Header,
    /// The tid that called execve (differs from tgid for a non-leader thread).
    pub old_tid: u32,
    /// Length of the filename bytes.
    pub filename_len: u32,
    /// Length of the argv bytes.
    pub args_len: u32,
    /// Set when argv was longer than the capture limit.
    pub args_truncated: u32,
    /// Parent's tgid (`real_parent->tgid`).
    pub ppid: u32,
    /// Inode of the task's mount namespace after the exec
    /// (`task->nsproxy->mnt_ns->ns.inum`; 0: not read).
    pub mnt_ns: u32,
    /// The executed file (`bprm->file`).
    pub exe_inode: InodeStamp,
    /// Walked path of `bprm->file`.
    pub exe: PathInfo,
    /// Walked path of `current->fs->pwd`.
    pub cwd: PathInfo,
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 48 + 24 + 48 + 32);

/// `kind::FORK`: a new thread group was created by a step process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    /// Common header (of the parent).
    pub hdr: Header,
    /// The child's tgid.
    pub child_tgid: u32,
    /// `clone` flags are not visible here; reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 56);

/// `kind::EXIT`: the last thread of a thread group exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    /// Common header.
    pub hdr: Header,
    /// The wait status (`exit_code` of the task: `code << 8 | signal`).
    pub exit_code: u32,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 56);

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(ExecEvent, ForkEvent, ExitEvent);
crate::ring_record!(
    ExecEvent => crate::kind::EXEC,
    ForkEvent => crate::kind::FORK,
    ExitEvent => crate::kind::EXIT,
);
