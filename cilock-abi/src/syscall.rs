//! The syscall family: a suspicious syscall at entry ([`SyscallRecord`]),
//! which one ([`what`]), and the budget of its string arguments
//! ([`STR_MAX`]).
//!
//! Adding a suspicious syscall starts here: a new [`what`] number (never
//! reuse one), then the kernel program (`cilock-ebpf` `probes/syscall.rs`).

use crate::{Header, PathInfo};

/// Which syscall a [`SyscallRecord`] is (stable numbers, independent of
/// the architecture's syscall numbers).
pub mod what {
    #![expect(
        missing_docs,
        reason = "the constants are the syscalls of the same name"
    )]
    pub const PTRACE: u32 = 1;
    pub const MEMFD_CREATE: u32 = 2;
    pub const MOUNT: u32 = 3;
    pub const FSMOUNT: u32 = 4;
    pub const MOVE_MOUNT: u32 = 5;
    pub const OPEN_TREE: u32 = 6;
    pub const FSOPEN: u32 = 7;
    pub const UNSHARE: u32 = 8;
    pub const SETNS: u32 = 9;
    pub const CLONE: u32 = 10;
    pub const CLONE3: u32 = 11;
    pub const BPF: u32 = 12;
    pub const INIT_MODULE: u32 = 13;
    pub const FINIT_MODULE: u32 = 14;
    pub const IO_URING_SETUP: u32 = 15;
    pub const PROCESS_VM_READV: u32 = 16;
    pub const PROCESS_VM_WRITEV: u32 = 17;
    pub const KILL: u32 = 18;
    pub const TKILL: u32 = 19;
    pub const TGKILL: u32 = 20;
    pub const PIDFD_SEND_SIGNAL: u32 = 21;

    /// Every suspicious syscall, in number order: the eBPF loader attaches
    /// one `sys_enter_<name>` program per entry.
    pub const ALL: [u32; 21] = [
        PTRACE,
        MEMFD_CREATE,
        MOUNT,
        FSMOUNT,
        MOVE_MOUNT,
        OPEN_TREE,
        FSOPEN,
        UNSHARE,
        SETNS,
        CLONE,
        CLONE3,
        BPF,
        INIT_MODULE,
        FINIT_MODULE,
        IO_URING_SETUP,
        PROCESS_VM_READV,
        PROCESS_VM_WRITEV,
        KILL,
        TKILL,
        TGKILL,
        PIDFD_SEND_SIGNAL,
    ];

    /// The syscall's name.
    ///
    /// Evidence vocabulary: this is the `syscall` field of the
    /// attestation's syscall events.
    pub const fn name(what: u32) -> &'static str {
        match what {
            PTRACE => "ptrace",
            MEMFD_CREATE => "memfd_create",
            MOUNT => "mount",
            FSMOUNT => "fsmount",
            MOVE_MOUNT => "move_mount",
            OPEN_TREE => "open_tree",
            FSOPEN => "fsopen",
            UNSHARE => "unshare",
            SETNS => "setns",
            CLONE => "clone",
            CLONE3 => "clone3",
            BPF => "bpf",
            INIT_MODULE => "init_module",
            FINIT_MODULE => "finit_module",
            IO_URING_SETUP => "io_uring_setup",
            PROCESS_VM_READV => "process_vm_readv",
            PROCESS_VM_WRITEV => "process_vm_writev",
            KILL => "kill",
            TKILL => "tkill",
            TGKILL => "tgkill",
            PIDFD_SEND_SIGNAL => "pidfd_send_signal",
            _ => "unknown",
        }
    }
}

/// Byte budget of each string argument of a [`SyscallRecord`].
pub const STR_MAX: usize = 256;

/// `kind::SYSCALL`: a suspicious syscall at entry. Followed by
/// `str_len[0]`, `str_len[1]`, `str_len[2]` bytes of string arguments
/// (which arguments depends on `what`), then `path.len` bytes of the
/// walked path of an fd argument (finit_module, setns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallRecord {
    /// Common header.
    pub hdr: Header,
    /// One of [`what`].
    pub what: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The six raw arguments.
    pub args: [u64; 6],
    /// A value read through a pointer argument (clone3: `clone_args.flags`;
    /// bpf: `attr->prog_type`), zero otherwise.
    pub extra: u64,
    /// Lengths of the string arguments that follow.
    pub str_len: [u32; 3],
    /// Bit i set: string i could not be read.
    pub str_fault: u32,
    /// The walked path of the fd argument (zero length if none).
    pub path: PathInfo,
}
const _: () = assert!(core::mem::size_of::<SyscallRecord>() == 48 + 8 + 48 + 8 + 16 + 16);

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(SyscallRecord);
crate::ring_record!(SyscallRecord => crate::kind::SYSCALL);
