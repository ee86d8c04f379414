//! The syscalls the ptrace backend stops on, their numbers per ABI,
//! decoding of a `(arch, nr)` pair from `PTRACE_GET_SYSCALL_INFO` into an
//! ABI-neutral [`Sys`], and the [`SuspiciousCall`] a suspicious one is
//! ([`suspicious`]: adding a suspicious syscall to the ptrace backend
//! touches only this file).

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_I386` (32-bit syscalls via `int 0x80` on x86_64).
pub const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
/// `AUDIT_ARCH_AARCH64`.
pub const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// x32 ABI marker bit in syscall numbers on x86_64.
pub const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// The audit arch of this build.
#[cfg(target_arch = "x86_64")]
pub const NATIVE_ARCH: u32 = AUDIT_ARCH_X86_64;
/// The audit arch of this build.
#[cfg(target_arch = "aarch64")]
pub const NATIVE_ARCH: u32 = AUDIT_ARCH_AARCH64;

/// The `trace.hooks` entry of the suspicious calls under ptrace (kept next
/// to the table and `suspicious`, so a new call is one file here).
pub const SUSPICIOUS_HOOK: &str = "ptrace+seccomp:ptrace,memfd_create,mount,fsopen,fsmount,move_mount,open_tree,unshare,setns,clone(CLONE_NEW*),clone3(CLONE_NEW*),bpf,init_module,finit_module,io_uring_setup,process_vm_readv,process_vm_writev,kill/tkill/tgkill/pidfd_send_signal(daemon pid)";

/// A traced syscall, independent of the ABI it was made through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs, reason = "each variant is the syscall of the same name")]
pub enum Sys {
    Open,
    OpenAt,
    OpenAt2,
    Creat,
    OpenByHandleAt,
    Connect,
    Bind,
    SendTo,
    SendMsg,
    SendMmsg,
    Write,
    Ptrace,
    MemfdCreate,
    Mount,
    Fsmount,
    MoveMount,
    OpenTree,
    Fsopen,
    Unshare,
    Setns,
    Clone,
    Clone3,
    Bpf,
    InitModule,
    FinitModule,
    IoUringSetup,
    ProcessVmReadv,
    ProcessVmWritev,
    Kill,
    Tkill,
    Tgkill,
    PidfdSendSignal,
    Close,
    Dup2,
    Dup3,
    CloseRange,
    Writev,
    RecvFrom,
    RecvMsg,
}

impl Sys {
    /// The syscall's name as in the man pages.
    pub fn name(self) -> &'static str {
        use Sys::*;
        match self {
            Open => "open",
            OpenAt => "openat",
            OpenAt2 => "openat2",
            Creat => "creat",
            OpenByHandleAt => "open_by_handle_at",
            Connect => "connect",
            Bind => "bind",
            SendTo => "sendto",
            SendMsg => "sendmsg",
            SendMmsg => "sendmmsg",
            Write => "write",
            Ptrace => "ptrace",
            MemfdCreate => "memfd_create",
            Mount => "mount",
            Fsmount => "fsmount",
            MoveMount => "move_mount",
            OpenTree => "open_tree",
            Fsopen => "fsopen",
            Unshare => "unshare",
            Setns => "setns",
            Clone => "clone",
            Clone3 => "clone3",
            Bpf => "bpf",
            InitModule => "init_module",
            FinitModule => "finit_module",
            IoUringSetup => "io_uring_setup",
            ProcessVmReadv => "process_vm_readv",
            ProcessVmWritev => "process_vm_writev",
            Kill => "kill",
            Tkill => "tkill",
            Tgkill => "tgkill",
            PidfdSendSignal => "pidfd_send_signal",
            Close => "close",
            Dup2 => "dup2",
            Dup3 => "dup3",
            CloseRange => "close_range",
            Writev => "writev",
            RecvFrom => "recvfrom",
            RecvMsg => "recvmsg",
        }
    }

    /// Whether this is one of the file-open calls.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Sys::Open | Sys::OpenAt | Sys::OpenAt2 | Sys::Creat | Sys::OpenByHandleAt
        )
    }
}

/// Native numbers of every [`Sys`] on this architecture (calls that do not
/// exist here, such as `open` on aarch64, are absent).
pub fn native_table() -> Vec<(Sys, i64)> {
    use libc::*;
    use Sys::*;
    let mut v = vec![
        (OpenAt, SYS_openat),
        (OpenAt2, SYS_openat2),
        (OpenByHandleAt, SYS_open_by_handle_at),
        (Connect, SYS_connect),
        (Bind, SYS_bind),
        (SendTo, SYS_sendto),
        (SendMsg, SYS_sendmsg),
        (SendMmsg, SYS_sendmmsg),
        (Write, SYS_write),
        (Ptrace, SYS_ptrace),
        (MemfdCreate, SYS_memfd_create),
        (Mount, SYS_mount),
        (Fsmount, SYS_fsmount),
        (MoveMount, SYS_move_mount),
        (OpenTree, SYS_open_tree),
        (Fsopen, SYS_fsopen),
        (Unshare, SYS_unshare),
        (Setns, SYS_setns),
        (Clone, SYS_clone),
        (Clone3, SYS_clone3),
        (Bpf, SYS_bpf),
        (InitModule, SYS_init_module),
        (FinitModule, SYS_finit_module),
        (IoUringSetup, SYS_io_uring_setup),
        (ProcessVmReadv, SYS_process_vm_readv),
        (ProcessVmWritev, SYS_process_vm_writev),
        (Kill, SYS_kill),
        (Tkill, SYS_tkill),
        (Tgkill, SYS_tgkill),
        (PidfdSendSignal, SYS_pidfd_send_signal),
        (Close, SYS_close),
        (Dup3, SYS_dup3),
        (CloseRange, SYS_close_range),
        (Writev, SYS_writev),
        (RecvFrom, SYS_recvfrom),
        (RecvMsg, SYS_recvmsg),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        v.push((Open, SYS_open));
        v.push((Creat, SYS_creat));
        v.push((Dup2, SYS_dup2));
    }
    v
}

/// i386 numbers (x86_64 kernels run 32-bit programs through this ABI). Only
/// the file opens, connect and the most telling suspicious calls are decoded;
/// see [`super::limitations`].
pub const I386_TABLE: &[(Sys, u64)] = &[
    (Sys::Open, 5),
    (Sys::Creat, 8),
    (Sys::OpenAt, 295),
    (Sys::OpenByHandleAt, 342),
    (Sys::OpenAt2, 437),
    (Sys::Connect, 362),
    (Sys::Bind, 361),
    (Sys::Ptrace, 26),
    (Sys::MemfdCreate, 356),
    (Sys::Mount, 21),
    (Sys::Unshare, 310),
    (Sys::Setns, 346),
    (Sys::Bpf, 357),
    (Sys::InitModule, 128),
    (Sys::FinitModule, 350),
    (Sys::IoUringSetup, 425),
    (Sys::ProcessVmReadv, 347),
    (Sys::ProcessVmWritev, 348),
    (Sys::Close, 6),
    (Sys::Dup2, 63),
    (Sys::Dup3, 330),
    (Sys::CloseRange, 436),
];

/// Decodes `(arch, nr)` as reported by `PTRACE_GET_SYSCALL_INFO`.
pub fn decode(arch: u32, nr: u64) -> Option<Sys> {
    if arch == NATIVE_ARCH {
        #[cfg(target_arch = "x86_64")]
        let nr = nr & !X32_SYSCALL_BIT;
        let nr = i64::try_from(nr).ok()?;
        return native_table()
            .into_iter()
            .find(|(_, n)| *n == nr)
            .map(|(s, _)| s);
    }
    if arch == AUDIT_ARCH_I386 {
        return I386_TABLE.iter().find(|(_, n)| *n == nr).map(|(s, _)| *s);
    }
    None
}

/// Namespace-creating clone/unshare flags (`CLONE_NEW*`).
pub const CLONE_NEW_MASK: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64
    | 0x80; // CLONE_NEWTIME

pub use cilock_trace::syscall::clone_new_names;
use cilock_trace::syscall::{SignalCall, SuspiciousCall};

use super::memory::{read_cstr, read_u32, read_u64};
use super::paths;

/// An escaped NUL-terminated string of the tracee (None for a NULL pointer).
fn read_str(tid: u32, addr: u64) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let (b, _) = read_cstr(tid, addr, 4096);
    Some(cilock_trace::pathname::escape(&b))
}

/// The suspicious call `sys` with arguments `a` is, read from the tracee
/// `tid` at its entry; None for a call that is not suspicious, or not aimed
/// at the daemon `dpid` where only that is (signals, pidfd signals), or a
/// clone without new namespaces. The kernel filters the same way for eBPF.
pub fn suspicious(sys: Sys, tid: u32, a: &[u64; 6], dpid: Option<i64>) -> Option<SuspiciousCall> {
    let fd_path = |fd: u64| paths::fd_path(tid, fd as i32 as i64).map(|r| r.path);
    Some(match sys {
        Sys::Ptrace => SuspiciousCall::Ptrace {
            request: a[0] as i64,
            target: a[1] as i32 as i64,
        },
        Sys::MemfdCreate => SuspiciousCall::MemfdCreate {
            name: read_str(tid, a[0]).unwrap_or_default(),
            flags: a[1] as u32,
        },
        Sys::Mount => SuspiciousCall::Mount {
            source: read_str(tid, a[0]).unwrap_or_default(),
            target: read_str(tid, a[1]),
            fstype: read_str(tid, a[2]).unwrap_or_default(),
            flags: a[3],
        },
        Sys::Fsopen => SuspiciousCall::Fsopen {
            fstype: read_str(tid, a[0]).unwrap_or_default(),
            flags: a[1] as u32,
        },
        Sys::Fsmount => SuspiciousCall::Fsmount {
            fsfd: a[0] as i32,
            flags: a[1] as u32,
        },
        Sys::MoveMount => SuspiciousCall::MoveMount {
            from: read_str(tid, a[1]).unwrap_or_default(),
            to: read_str(tid, a[3]),
            flags: a[4] as u32,
        },
        Sys::OpenTree => SuspiciousCall::OpenTree {
            path: read_str(tid, a[1]),
            flags: a[2] as u32,
        },
        Sys::Unshare => SuspiciousCall::Unshare { flags: a[0] },
        Sys::Setns => SuspiciousCall::Setns {
            fd: a[0] as i32,
            nstype: a[1] as u32,
            ns: fd_path(a[0]),
        },
        Sys::Clone if a[0] & CLONE_NEW_MASK != 0 => SuspiciousCall::Clone { flags: a[0] },
        Sys::Clone3 => {
            let flags = read_u64(tid, a[0]).unwrap_or(0);
            if flags & CLONE_NEW_MASK == 0 {
                return None;
            }
            SuspiciousCall::Clone3 { flags }
        }
        Sys::Bpf => {
            let cmd = a[0] as i64;
            let prog_type = if cmd == cilock_trace::syscall::BPF_PROG_LOAD {
                read_u32(tid, a[1]).unwrap_or(u32::MAX)
            } else {
                0
            };
            SuspiciousCall::Bpf { cmd, prog_type }
        }
        Sys::InitModule => SuspiciousCall::InitModule {
            len: a[1],
            params: read_str(tid, a[2]).unwrap_or_default(),
        },
        Sys::FinitModule => SuspiciousCall::FinitModule {
            fd: a[0] as i32,
            flags: a[2] as u32,
            params: read_str(tid, a[1]).unwrap_or_default(),
            file: fd_path(a[0]),
        },
        Sys::IoUringSetup => SuspiciousCall::IoUringSetup {
            entries: a[0] as u32,
        },
        Sys::ProcessVmReadv | Sys::ProcessVmWritev => SuspiciousCall::ProcessVm {
            write: sys == Sys::ProcessVmWritev,
            target: a[0] as i32 as i64,
        },
        Sys::Kill | Sys::Tkill | Sys::Tgkill => {
            // Signals aimed at the daemon, and kill(-1) (every process, the
            // daemon included).
            let target = a[0] as i32 as i64;
            if dpid != Some(target) && !(sys == Sys::Kill && target == -1) {
                return None;
            }
            SuspiciousCall::Signal {
                call: match sys {
                    Sys::Kill => SignalCall::Kill,
                    Sys::Tkill => SignalCall::Tkill,
                    _ => SignalCall::Tgkill,
                },
                target,
                signal: if sys == Sys::Tgkill { a[2] } else { a[1] } as i32 as i64,
            }
        }
        Sys::PidfdSendSignal => {
            let target = crate::trace::procfs::pidfd_target(tid, a[0] as i32 as i64);
            if dpid.is_none() || target != dpid {
                return None;
            }
            SuspiciousCall::PidfdSendSignal {
                target: target.unwrap_or(-1),
                signal: a[1] as i32 as i64,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_native_and_compat() {
        assert_eq!(
            decode(NATIVE_ARCH, libc::SYS_openat as u64),
            Some(Sys::OpenAt)
        );
        assert_eq!(decode(NATIVE_ARCH, libc::SYS_getpid as u64), None);
        assert_eq!(decode(AUDIT_ARCH_I386, 5), Some(Sys::Open));
        assert_eq!(decode(0x1234, 5), None);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            decode(NATIVE_ARCH, X32_SYSCALL_BIT | libc::SYS_connect as u64),
            Some(Sys::Connect)
        );
        assert_eq!(
            clone_new_names(libc::CLONE_NEWUSER as u64),
            ["CLONE_NEWUSER"]
        );
    }
}
