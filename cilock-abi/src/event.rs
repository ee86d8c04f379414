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
    /// A connect/sendto/bind of a step process: [`super::NetEvent`].
    pub const NET: u32 = 6;
    /// Payload bytes of a step socket (DNS datagrams, the first bytes of a
    /// TCP stream): [`super::PayloadEvent`] + bytes.
    pub const PAYLOAD: u32 = 7;
    /// A suspicious syscall: [`super::SyscallRecord`] + strings + path.
    pub const SYSCALL: u32 = 8;
    /// A process came into a step from outside it (moved into the step's
    /// cgroup, or created there by `clone3(CLONE_INTO_CGROUP)` from
    /// outside): [`super::CgroupJoinEvent`], `step_cgroup` = the step it
    /// joined.
    pub const CGROUP_JOIN: u32 = 9;
    /// A step process let go of a file it had open for writing (close,
    /// dup2/dup3 over its fd, close_range, exit): [`super::CloseEvent`].
    pub const CLOSE: u32 = 10;
    /// Number of kinds (array sizes); kinds are `1..COUNT`.
    pub const COUNT: usize = 11;
    /// Mask the kernel applies to a kind before indexing counters (the
    /// next power of two minus one above every kind).
    pub const MASK: u32 = 15;

    /// Human-readable name of a kind, as used in attestation counters.
    pub const fn name(kind: u32) -> &'static str {
        match kind {
            EXEC => "exec",
            FORK => "fork",
            EXIT => "exit",
            OPEN => "open",
            CGROUP_MOVE => "cgroup_move",
            NET => "net",
            PAYLOAD => "payload",
            SYSCALL => "syscall",
            CGROUP_JOIN => "cgroup_join",
            CLOSE => "close",
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

/// Flags of a [`CgroupMoveEvent`] / [`CgroupJoinEvent`].
pub mod move_flags {
    /// The process was created directly in the destination cgroup
    /// (`clone3(CLONE_INTO_CGROUP)`); the header is its parent's.
    pub const AT_FORK: u32 = 1 << 0;
    /// The kernel could not tell the destination's step (cgroup offsets
    /// absent on this kernel): user space decides.
    pub const DST_UNKNOWN: u32 = 1 << 1;
}

/// `kind::CGROUP_MOVE`: a process of the step `hdr.step_cgroup` was moved
/// into a cgroup outside the step (by itself, by another process, or at
/// birth by `clone3(CLONE_INTO_CGROUP)`). The header is the mover's
/// (current), which after a self-move is no longer in the step: the source
/// step comes from the kernel's table of step processes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupMoveEvent {
    /// Common header (of the task doing the move).
    pub hdr: Header,
    /// The destination cgroup id.
    pub dst_cgroup: u64,
    /// The moved task's tgid.
    pub moved_tgid: u32,
    /// [`move_flags`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupMoveEvent>() == 64);

/// `kind::CGROUP_JOIN`: a process came into the step `hdr.step_cgroup` from
/// outside it. The header is the mover's (current).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupJoinEvent {
    /// Common header (of the task doing the move, or the parent).
    pub hdr: Header,
    /// The destination cgroup id (in the step).
    pub dst_cgroup: u64,
    /// The step the process came from (0: not a step process).
    pub src_step: u64,
    /// The moved (or created) process's tgid.
    pub moved_tgid: u32,
    /// [`move_flags`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupJoinEvent>() == 72);

/// What the kernel remembers of a step process (value of the `PROCS` map,
/// keyed by tgid), so that the step a process leaves is known even when the
/// mover is the moved process (already outside the step when the
/// `cgroup_attach_task` tracepoint fires).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStep {
    /// The step cgroup id.
    pub step: u64,
    /// Start time of the thread-group leader (tells reused pids apart).
    pub leader_start: u64,
}
const _: () = assert!(core::mem::size_of::<ProcStep>() == 16);

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
    pub hdr: Header,
    /// The fd.
    pub fd: i32,
    /// One of [`close_how`].
    pub how: u32,
    /// The file's inode at that moment.
    pub inode: InodeStamp,
}
const _: () = assert!(core::mem::size_of::<CloseEvent>() == 48 + 8 + 48);

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

/// What a [`NetEvent`] is.
pub mod net_call {
    /// connect(2) (also io_uring connects, seen by the cgroup hooks).
    pub const CONNECT: u32 = 1;
    /// sendto(2) with a destination address (also a send whose syscall is
    /// not known, e.g. from io_uring).
    pub const SENDTO: u32 = 2;
    /// bind(2).
    pub const BIND: u32 = 3;
    /// sendmsg(2) with a destination address.
    pub const SENDMSG: u32 = 4;
    /// sendmmsg(2) with a destination address.
    pub const SENDMMSG: u32 = 5;
}

/// Where a [`NetEvent`]'s address comes from.
pub mod net_source {
    /// The kernel's copy (cgroup `connect4|6`, `sendmsg4|6`, `bind4|6`
    /// hooks): `addr` holds a `sockaddr_in`/`sockaddr_in6` built from it.
    pub const KERNEL: u32 = 1;
    /// The caller's memory at syscall entry (families without cgroup hooks,
    /// such as AF_UNIX): `addr` holds the first `addr_len` bytes as passed.
    pub const USER: u32 = 2;
}

/// Byte budget of a socket address (`sizeof(struct sockaddr_storage)`).
pub const SOCKADDR_MAX: usize = 128;

/// `kind::NET`: a connect, sendto or bind by a step process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    /// Common header.
    pub hdr: Header,
    /// One of [`net_call`].
    pub call: u32,
    /// The socket fd in the calling process (-1 when unknown, e.g. an
    /// io_uring connect).
    pub fd: i32,
    /// `bpf_get_socket_cookie()` of the socket (0 when unknown).
    pub cookie: u64,
    /// One of [`net_source`].
    pub source: u32,
    /// Valid bytes of `addr`.
    pub addr_len: u32,
    /// A `struct sockaddr` (native-endian family, network-order port).
    pub addr: [u8; SOCKADDR_MAX],
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 48 + 24 + 128);

/// Flags of a [`PayloadEvent`].
pub mod payload_flags {
    /// Sent by the process (cgroup_skb egress); else received.
    pub const EGRESS: u32 = 1 << 0;
    /// TCP (a stream: `stream_off` is meaningful); else UDP.
    pub const TCP: u32 = 1 << 1;
    /// IPv6 addresses; else IPv4 in the first 4 bytes.
    pub const IPV6: u32 = 1 << 2;
}

/// Byte budget of one payload record.
pub const PAYLOAD_MAX: usize = 8192;
/// Bytes of a TCP stream captured from its start (per direction).
pub const STREAM_CAPTURE: u32 = 8192;

/// `kind::PAYLOAD`: bytes of a packet of a socket a step process
/// connected or sent on, captured at the step cgroup's `cgroup_skb` hook
/// (before segmentation). Followed by `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PayloadEvent {
    /// Common header (`tgid` is the process that last connected or sent
    /// with an address on the socket; `tid` and `comm` are zero).
    pub hdr: Header,
    /// Socket cookie.
    pub cookie: u64,
    /// That process's fd for the socket (-1 when unknown).
    pub fd: i32,
    /// [`payload_flags`].
    pub flags: u32,
    /// TCP: offset of the first byte in the stream (0 = the first payload
    /// byte after the handshake); UDP: zero.
    pub stream_off: u32,
    /// Bytes that follow.
    pub len: u32,
    /// Source address (network order).
    pub saddr: [u8; 16],
    /// Destination address (network order).
    pub daddr: [u8; 16],
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 48 + 24 + 40);

/// Which syscall a [`SyscallRecord`] is (stable numbers, independent of
/// the architecture's syscall numbers).
pub mod sys_what {
    #![allow(missing_docs)]
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

    /// The syscall's name.
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
pub const SYS_STR_MAX: usize = 256;

/// `kind::SYSCALL`: a suspicious syscall at entry. Followed by
/// `str_len[0]`, `str_len[1]`, `str_len[2]` bytes of string arguments
/// (which arguments depends on `what`), then `path.len` bytes of the
/// walked path of an fd argument (finit_module, setns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallRecord {
    /// Common header.
    pub hdr: Header,
    /// One of [`sys_what`].
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

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SysConfig {}
    // SAFETY: all of these are repr(C), padding-free (asserted above) and
    // valid for every bit pattern.
    unsafe impl aya::Pod for super::StepLoss {}
    unsafe impl aya::Pod for super::super::Offsets {}
}
