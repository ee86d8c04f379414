//! Ring-buffer records. Every record starts with [`Header`]; `Header::kind`
//! says which body follows, and `Header::size` is the whole record's length
//! (bodies with paths are variable-length).

/// Record kinds (stable numbers: they are written into attestations as counts).
pub mod kind {
    /// A successful `execve`/`execveat`: [`super::ExecEvent`] + bytes.
    pub const EXEC: u32 = 1;
    /// A new process (thread-group leader): [`super::ForkEvent`].
    pub const FORK: u32 = 2;
    /// A thread group died: [`super::ExitEvent`].
    pub const EXIT: u32 = 3;
    /// A successful open: [`super::OpenEvent`] + path bytes.
    pub const OPEN: u32 = 4;
    /// A step process was moved to a cgroup outside its step: [`super::CgroupMoveEvent`].
    pub const CGROUP_MOVE: u32 = 5;
    /// Number of kinds (array sizes); kinds are `1..COUNT`.
    pub const COUNT: usize = 6;

    /// Human-readable name of a kind, as used in attestation counters.
    pub const fn name(kind: u32) -> &'static str {
        match kind {
            EXEC => "exec",
            FORK => "fork",
            EXIT => "exit",
            OPEN => "open",
            CGROUP_MOVE => "cgroup_move",
            _ => "unknown",
        }
    }
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u32,
    /// Total size of the record in bytes, header included.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns()` when the event happened.
    pub ktime_ns: u64,
    /// The step cgroup (the ancestor at the step level) the task belongs to.
    pub step_cgroup: u64,
    /// Thread-group id (the process id user space sees).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// `current->comm`.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Header>() == 48);

/// Flags describing how a path was resolved by the in-kernel dentry walk.
pub mod path_flags {
    /// The walk reached the mount-namespace root: the path is absolute.
    pub const NS_ROOT: u32 = 1 << 0;
    /// The step budget ran out: only the leaf-most components are present.
    pub const TRUNC_STEPS: u32 = 1 << 1;
    /// The byte budget ran out: only the leaf-most components are present.
    pub const TRUNC_LEN: u32 = 1 << 2;
    /// The leaf dentry is unlinked (`d_path` would append " (deleted)").
    pub const DELETED: u32 = 1 << 3;
    /// A pseudo or disconnected dentry (pipe, socket, memfd, anon inode).
    pub const ESCAPED: u32 = 1 << 4;
    /// A kernel read failed during the walk.
    pub const READ_ERR: u32 = 1 << 5;
    /// The walk passed the task's root (chroot) at `root_off` bytes.
    pub const TASK_ROOT: u32 = 1 << 6;
}

/// Identity and timestamps of an inode, read in the kernel at open time so
/// user space can tell whether the file changed before it was hashed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeStamp {
    /// `inode->i_ino`.
    pub ino: u64,
    /// `inode->i_sb->s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// `inode->i_mode`.
    pub mode: u32,
    /// `inode->i_size`.
    pub size: i64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Change time, nanoseconds.
    pub ctime_nsec: u32,
    /// Change time, seconds.
    pub ctime_sec: i64,
}
const _: () = assert!(core::mem::size_of::<InodeStamp>() == 48);

/// A path produced by the dentry walk. The bytes that follow the fixed part
/// hold the components leaf first, each followed by `/`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PathInfo {
    /// [`path_flags`].
    pub flags: u32,
    /// Length of the walked bytes.
    pub len: u32,
    /// Byte offset, within the walked bytes, where the task root was crossed.
    pub root_off: u32,
    /// `s_magic` of the leaf's superblock (for pseudo files).
    pub magic: u32,
}
const _: () = assert!(core::mem::size_of::<PathInfo>() == 16);

/// `kind::OPEN`. Followed by `path.len` bytes of walked path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenEvent {
    /// Common header.
    pub hdr: Header,
    /// Syscall number (open, openat, openat2, creat, open_by_handle_at).
    pub syscall: u32,
    /// The fd returned.
    pub fd: i32,
    /// `file->f_flags` (O_ACCMODE, O_CREAT, ...).
    pub f_flags: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The opened inode.
    pub inode: InodeStamp,
    /// The walked path.
    pub path: PathInfo,
}
const _: () = assert!(core::mem::size_of::<OpenEvent>() == 48 + 16 + 48 + 16);

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
    /// Reserved, zero.
    pub _pad: u32,
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

/// `kind::CGROUP_MOVE`: a task of a step was moved into another cgroup by a
/// step process (an attempt to leave the step).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupMoveEvent {
    /// Common header (of the task doing the move).
    pub hdr: Header,
    /// The destination cgroup id.
    pub dst_cgroup: u64,
    /// The moved task's tgid.
    pub moved_tgid: u32,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupMoveEvent>() == 64);

/// Largest record the kernel side emits (fixed part + variable bytes).
pub const MAX_RECORD: usize = 16 * 1024;
/// Byte budget of one walked path.
pub const PATH_MAX_BYTES: usize = 4096;
/// Byte budget of argv.
pub const ARGS_MAX_BYTES: usize = 4096;
/// Byte budget of the exec filename.
pub const FILENAME_MAX_BYTES: usize = 512;

/// Per-kind counters kept by the kernel in a per-CPU array, indexed
/// `kind * 2 + {0: emitted, 1: lost}`; the per-step loss map uses the same
/// layout keyed by step cgroup id.
pub const COUNTER_SLOTS: usize = kind::COUNT * 2;

/// Per-step loss counters (value of the `STEP_LOSS` hash map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StepLoss {
    /// Lost records per kind (index = kind).
    pub lost: [u64; kind::COUNT],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), padding-free (asserted above) and
    // valid for every bit pattern.
    unsafe impl aya::Pod for super::StepLoss {}
    unsafe impl aya::Pod for super::super::Offsets {}
}
