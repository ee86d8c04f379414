//! The syscall family: suspicious syscalls of step processes, at syscall entry (the attempt is
//! what counts: a denied ptrace or mount is still evidence).
//!
//! One small `syscalls/sys_enter_*` tracepoint program per syscall, all
//! built from [`suspicious`] with constant parameters. The syscalls are rare
//! except three, which are filtered before the step lookup:
//! - `clone`: only with `CLONE_NEW*` flags (a plain fork returns at once);
//! - `kill`/`tkill`/`tgkill`: only when aimed at the daemon (`kill(-1)`
//!   included); `pidfd_send_signal` only when the pidfd's inode is the
//!   daemon's pidfd inode (pidfs; on kernels without pidfs every pidfd
//!   shares one inode and user space resolves the target);
//! - `clone3`: step lookup first, then one 8-byte user read of the flags.

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_get_current_task, bpf_probe_read_user_str},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use cilock_abi::{
    SyscallRecord, path_flags,
    syscall::{STR_MAX, what},
};

use crate::common::maps::{current_step, off, syscfg};
use crate::common::path::walk_path;
use crate::common::read::{arg, file_of, rd, rd_ptr};
use crate::common::record;

/// No argument.
const NONE: u8 = 0xff;

/// `CLONE_NEW*` (NS, CGROUP, UTS, IPC, USER, PID, NET, TIME).
const CLONE_NEW_MASK: u64 = 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000
    | 0x80;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    /// A u64 read from the user pointer in argument `n`.
    U64At(usize),
    /// A u32 read from the user pointer in argument `n`.
    U32At(usize),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    /// Argument 0 has a `CLONE_NEW*` flag.
    CloneFlags,
    /// `extra` has a `CLONE_NEW*` flag.
    Clone3Flags,
    /// Argument 0 is the daemon's tgid (`kill`: or -1, every process).
    AtDaemon {
        all: bool,
    },
    /// Argument 0 is a pidfd of the daemon.
    PidfdAtDaemon,
}

macro_rules! sus {
    ($name:ident, $what:expr, $nargs:expr, [$s0:expr, $s1:expr, $s2:expr], $fdp:expr, $extra:expr, $filter:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = suspicious(&ctx, $what, $nargs, [$s0, $s1, $s2], $fdp, $extra, $filter);
            0
        }
    };
}

sus!(
    sys_enter_ptrace,
    what::PTRACE,
    4,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_memfd_create,
    what::MEMFD_CREATE,
    2,
    [0, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_mount,
    what::MOUNT,
    5,
    [0, 1, 2],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_fsmount,
    what::FSMOUNT,
    3,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_move_mount,
    what::MOVE_MOUNT,
    5,
    [1, 3, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_open_tree,
    what::OPEN_TREE,
    3,
    [1, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_fsopen,
    what::FSOPEN,
    2,
    [0, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_unshare,
    what::UNSHARE,
    1,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_setns,
    what::SETNS,
    2,
    [NONE, NONE, NONE],
    0,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_clone,
    what::CLONE,
    5,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::CloneFlags
);
sus!(
    sys_enter_clone3,
    what::CLONE3,
    2,
    [NONE, NONE, NONE],
    NONE,
    Extra::U64At(0),
    Filter::Clone3Flags
);
sus!(
    sys_enter_bpf,
    what::BPF,
    3,
    [NONE, NONE, NONE],
    NONE,
    Extra::U32At(1),
    Filter::None
);
sus!(
    sys_enter_init_module,
    what::INIT_MODULE,
    3,
    [2, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_finit_module,
    what::FINIT_MODULE,
    3,
    [1, NONE, NONE],
    0,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_io_uring_setup,
    what::IO_URING_SETUP,
    2,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_process_vm_readv,
    what::PROCESS_VM_READV,
    6,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_process_vm_writev,
    what::PROCESS_VM_WRITEV,
    6,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::None
);
sus!(
    sys_enter_kill,
    what::KILL,
    2,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::AtDaemon { all: true }
);
sus!(
    sys_enter_tkill,
    what::TKILL,
    2,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::AtDaemon { all: false }
);
sus!(
    sys_enter_tgkill,
    what::TGKILL,
    3,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::AtDaemon { all: false }
);
sus!(
    sys_enter_pidfd_send_signal,
    what::PIDFD_SEND_SIGNAL,
    4,
    [NONE, NONE, NONE],
    NONE,
    Extra::None,
    Filter::PidfdAtDaemon
);

#[inline(always)]
fn suspicious(
    ctx: &TracePointContext,
    what: u32,
    nargs: usize,
    strs: [u8; 3],
    fd_path: u8,
    extra: Extra,
    filter: Filter,
) -> Option<()> {
    // Cheap filters first: these syscalls are frequent machine-wide.
    match filter {
        Filter::CloneFlags => {
            if arg(ctx, 0) & CLONE_NEW_MASK == 0 {
                return None;
            }
        }
        Filter::AtDaemon { all } => {
            let target = arg(ctx, 0) as i32;
            let daemon = syscfg!(daemon_tgid) as i32;
            if !(target == daemon && daemon != 0 || all && target == -1) {
                return None;
            }
        }
        _ => {}
    }
    let step = current_step()?;
    let task = unsafe { bpf_get_current_task() };
    let mut ex: u64 = 0;
    match extra {
        Extra::U64At(n) => {
            ex = unsafe { bpf_probe_read_user(arg(ctx, n) as *const u64) }.unwrap_or(0);
        }
        Extra::U32At(n) => {
            ex = unsafe { bpf_probe_read_user(arg(ctx, n) as *const u32) }.unwrap_or(0) as u64;
        }
        Extra::None => {}
    }
    match filter {
        Filter::Clone3Flags => {
            if ex & CLONE_NEW_MASK == 0 {
                return None;
            }
        }
        Filter::PidfdAtDaemon => {
            let file = file_of(task, arg(ctx, 0))?;
            let inode = rd_ptr(file, off!(file_f_inode))?;
            let ino = rd::<u64>(inode + off!(inode_i_ino)).unwrap_or(0);
            let want = syscfg!(daemon_pidfd_ino);
            if want != 0 && ino != want {
                return None;
            }
            ex = ino;
        }
        _ => {}
    }

    let (buf, ev) = record::start::<SyscallRecord>(step)?;
    ev.what = what;
    ev._pad = 0;
    let mut i = 0;
    while i < 6 {
        ev.args[i] = if i < nargs { arg(ctx, i) } else { 0 };
        i += 1;
    }
    ev.extra = ex;
    ev.str_fault = 0;
    ev.path = Default::default();

    let mut pos = size_of::<SyscallRecord>();
    let mut k = 0;
    while k < 3 {
        ev.str_len[k] = 0;
        let a = strs[k];
        if a != NONE {
            let p = arg(ctx, a as usize);
            if p != 0 {
                let r = unsafe {
                    bpf_probe_read_user_str(
                        buf.add(pos & 0x7ff) as *mut c_void,
                        STR_MAX as u32,
                        p as *const c_void,
                    )
                };
                if r > 0 {
                    let len = ((r - 1) as usize) & (STR_MAX - 1);
                    ev.str_len[k] = len as u32;
                    pos += len;
                } else {
                    ev.str_fault |= 1 << k;
                }
            }
        }
        k += 1;
    }
    if fd_path != NONE {
        if let Some(file) = file_of(task, arg(ctx, fd_path as usize)) {
            let ok = walk_path(file + off!(file_f_path), task, pos as u32, &mut ev.path).is_some();
            if !ok || ev.path.flags & path_flags::READ_ERR != 0 {
                warn!(
                    ctx,
                    "cilock: path walk of the fd of syscall record {} failed", what
                );
            }
        }
    }
    let size = (pos & 0x7ff) + (ev.path.len as usize & 0xfff);
    record::send::<SyscallRecord>(buf, size, step);
    Some(())
}
