//! The file family: opens ([`OpenEvent`]) and the state a writer leaves a
//! file in ([`CloseEvent`]), plus the two pieces other families reuse to
//! name a file: a walked path ([`PathInfo`], [`path_flags`]) and an inode's
//! identity ([`InodeStamp`]).

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

/// Byte budget of one walked path.
pub const PATH_MAX_BYTES: usize = 4096;

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
    pub hdr: crate::Header,
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

/// How a [`CloseEvent`]'s file was let go of.
pub mod close_how {
    /// close(2).
    pub const CLOSE: u32 = 1;
    /// dup2(2)/dup3(2) over the fd.
    pub const DUP: u32 = 2;
    /// close_range(2).
    pub const CLOSE_RANGE: u32 = 3;
    /// The process exited with the fd open (its last thread, before the
    /// kernel closes its files).
    pub const EXIT: u32 = 4;
}

/// `kind::CLOSE`: a step process lets go of a regular file open for
/// writing; the inode as the process left it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloseEvent {
    /// Common header.
    pub hdr: crate::Header,
    /// The fd.
    pub fd: i32,
    /// One of [`close_how`].
    pub how: u32,
    /// The file's inode at that moment.
    pub inode: InodeStamp,
}
const _: () = assert!(core::mem::size_of::<CloseEvent>() == 48 + 8 + 48);

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(InodeStamp, PathInfo, OpenEvent, CloseEvent);
crate::ring_record!(OpenEvent => crate::kind::OPEN, CloseEvent => crate::kind::CLOSE);
