//! The cgroup family: a step process leaving its step
//! ([`CgroupMoveEvent`]), a process coming into one ([`CgroupJoinEvent`]),
//! and what the kernel remembers of each step process to tell them apart
//! ([`ProcStep`]).

use crate::Header;

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

// SAFETY: repr(C), padding-free (asserted above), integers only.
crate::plain_old_data!(CgroupMoveEvent, CgroupJoinEvent, ProcStep);
crate::ring_record!(
    CgroupMoveEvent => crate::kind::CGROUP_MOVE,
    CgroupJoinEvent => crate::kind::CGROUP_JOIN,
);
