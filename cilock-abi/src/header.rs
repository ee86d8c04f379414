//! What every ring-buffer record shares: the [`Header`] it starts with, the
//! [`kind`] number that says which family's body follows, the size limits,
//! and the per-kind counters the kernel keeps.
//!
//! A record is a [`Header`] (`kind`, `size` = the whole record's length,
//! time, step, task) followed by the fixed body of its kind and, for some
//! kinds, variable-length bytes (paths, argv, payload). Every fixed part is
//! `#[repr(C)]`, padding-free (checked by `const` assertions next to it) and
//! valid for every bit pattern: see [`crate::Record`].

/// Record kinds (stable numbers: they are written into attestations as counts).
pub mod kind {
    /// A successful `execve`/`execveat`: [`crate::ExecEvent`] + bytes (process family).
    pub const EXEC: u32 = 1;
    /// A new process (thread-group leader): [`crate::ForkEvent`] (process family).
    pub const FORK: u32 = 2;
    /// A thread group died: [`crate::ExitEvent`] (process family).
    pub const EXIT: u32 = 3;
    /// A successful open: [`crate::OpenEvent`] + path bytes (file family).
    pub const OPEN: u32 = 4;
    /// A step process was moved to a cgroup outside its step:
    /// [`crate::CgroupMoveEvent`] (cgroup family).
    pub const CGROUP_MOVE: u32 = 5;
    /// A connect/sendto/bind of a step process: [`crate::NetEvent`] (net family).
    pub const NET: u32 = 6;
    /// Payload bytes of a step socket (DNS datagrams, the first bytes of a
    /// TCP stream): [`crate::PayloadEvent`] + bytes (payload family).
    pub const PAYLOAD: u32 = 7;
    /// A suspicious syscall: [`crate::SyscallRecord`] + strings + path
    /// (syscall family).
    pub const SYSCALL: u32 = 8;
    /// A process came into a step from outside it (moved into the step's
    /// cgroup, or created there by `clone3(CLONE_INTO_CGROUP)` from
    /// outside): [`crate::CgroupJoinEvent`], `step_cgroup` = the step it
    /// joined (cgroup family).
    pub const CGROUP_JOIN: u32 = 9;
    /// A step process let go of a file it had open for writing (close,
    /// dup2/dup3 over its fd, close_range, exit): [`crate::CloseEvent`]
    /// (file family).
    pub const CLOSE: u32 = 10;
    /// Number of kinds (array sizes); kinds are `1..COUNT`.
    pub const COUNT: usize = 11;
    /// Mask the kernel applies to a kind before indexing counters (the
    /// next power of two minus one above every kind).
    pub const MASK: u32 = 15;

    /// Human-readable name of a kind, as used in attestation counters.
    ///
    /// Evidence vocabulary: these strings are keys of the command-run's
    /// event counts, not ABI.
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

/// Largest record the kernel side emits (fixed part + variable bytes).
pub const MAX_RECORD: usize = 16 * 1024;

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
const _: () = assert!(core::mem::size_of::<StepLoss>() == 8 * kind::COUNT);

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(Header, StepLoss);
