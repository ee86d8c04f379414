//! `.rodata` constants of the net and syscall programs, set by the loader
//! ([`SysConfig`]; kept apart from [`crate::Offsets`], which come from BTF).

/// `.rodata` constants of the network and syscall programs, set by the
/// loader (kept apart from [`crate::Offsets`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysConfig {
    /// Offset of the first argument in a `syscalls/sys_enter_*` record.
    pub tp_enter_args: u32,
    /// tgid of the daemon (signals aimed at it are recorded).
    pub daemon_tgid: u32,
    /// Inode number of a pidfd of the daemon (pidfs gives every pidfd of
    /// one process the same inode; 0 = unknown).
    pub daemon_pidfd_ino: u64,
}
const _: () = assert!(core::mem::size_of::<SysConfig>() == 16);

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(SysConfig);
