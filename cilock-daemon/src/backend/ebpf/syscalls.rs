//! Suspicious-syscall records (`kind::SYSCALL`) → the name, detail, numeric
//! arguments and path of a [`crate::trace::TraceEvent::Syscall`]. The shapes
//! (which arguments, in which order) are the ptrace backend's, so policies
//! and tests read the same evidence from both backends; `detail` is free
//! text.

use cilock_abi::SyscallRecord;

use crate::backend::ptrace::syscalls::clone_new_names;

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: u64 = 5;

/// Name, detail, args and path of a syscall record. `strs` are its string
/// arguments (see `cilock-ebpf/src/syscalls.rs` for which), `fd_path` the
/// file behind its fd argument, `pid` the caller.
pub fn describe(
    e: &SyscallRecord,
    strs: [Option<String>; 3],
    fd_path: Option<String>,
    pid: u32,
) -> (String, String, Vec<i64>, Option<String>) {
    let a = e.args;
    let i32a = |i: usize| a[i] as i32 as i64;
    let name = cilock_abi::syscall::what::name(e.what).to_string();
    let [s0, s1, s2] = strs;
    let daemon = std::process::id() as i64;
    // As the ptrace backend words it.
    let at_daemon = |target: i64| {
        if target == daemon {
            " (aimed at the cilock daemon)"
        } else {
            ""
        }
    };
    let (detail, args, path) = match e.what {
        cilock_abi::syscall::what::PTRACE => (
            format!(
                "ptrace request={} target_pid={}{}",
                a[0] as i64,
                i32a(1),
                at_daemon(i32a(1))
            ),
            vec![a[0] as i64, i32a(1)],
            None,
        ),
        cilock_abi::syscall::what::MEMFD_CREATE => {
            let n = s0.unwrap_or_default();
            (
                format!("anonymous memory file: {n} (flags: {})", a[1] as u32),
                vec![a[1] as u32 as i64],
                Some(n),
            )
        }
        cilock_abi::syscall::what::MOUNT => (
            format!(
                "mount source={} type={} flags={:#x}",
                s0.unwrap_or_default(),
                s2.unwrap_or_default(),
                a[3]
            ),
            vec![a[3] as i64],
            s1,
        ),
        cilock_abi::syscall::what::FSOPEN => (
            format!("fsopen {}", s0.unwrap_or_default()),
            vec![a[1] as u32 as i64],
            None,
        ),
        cilock_abi::syscall::what::FSMOUNT => (
            format!("fsmount fsfd={} flags={:#x}", i32a(0), a[1] as u32),
            vec![i32a(0), a[1] as u32 as i64],
            None,
        ),
        cilock_abi::syscall::what::MOVE_MOUNT => (
            format!(
                "move_mount from={:?} flags={:#x}",
                s0.unwrap_or_default(),
                a[4] as u32
            ),
            vec![a[4] as u32 as i64],
            s1,
        ),
        cilock_abi::syscall::what::OPEN_TREE => (
            format!("open_tree flags={:#x}", a[2] as u32),
            vec![a[2] as u32 as i64],
            s0,
        ),
        cilock_abi::syscall::what::UNSHARE => (
            format!("unshare {}", clone_new_names(a[0]).join("|")),
            vec![a[0] as i64],
            None,
        ),
        cilock_abi::syscall::what::SETNS => (
            format!("setns nstype={:#x}", a[1] as u32),
            vec![i32a(0), a[1] as u32 as i64],
            fd_path,
        ),
        cilock_abi::syscall::what::CLONE => (
            format!("clone with {}", clone_new_names(a[0]).join("|")),
            vec![a[0] as i64],
            None,
        ),
        cilock_abi::syscall::what::CLONE3 => (
            format!("clone3 with {}", clone_new_names(e.extra).join("|")),
            vec![e.extra as i64],
            None,
        ),
        cilock_abi::syscall::what::BPF => (
            if a[0] == BPF_PROG_LOAD {
                format!("bpf BPF_PROG_LOAD prog_type={}", e.extra as u32)
            } else {
                format!("bpf cmd={}", a[0] as i64)
            },
            vec![a[0] as i64],
            None,
        ),
        cilock_abi::syscall::what::INIT_MODULE => (
            format!("init_module len={} params={:?}", a[1], s0.unwrap_or_default()),
            vec![a[1] as i64],
            None,
        ),
        cilock_abi::syscall::what::FINIT_MODULE => (
            format!("finit_module flags={:#x} params={:?}", a[2] as u32, s0.unwrap_or_default()),
            vec![i32a(0), a[2] as u32 as i64],
            fd_path,
        ),
        cilock_abi::syscall::what::IO_URING_SETUP => (
            format!(
                "io_uring_setup entries={}: operations submitted through io_uring (opens, reads, writes) \
                 do not pass the syscall tracepoints and are not recorded (its connects and packets still \
                 pass the cgroup socket hooks)",
                a[0] as u32
            ),
            vec![a[0] as u32 as i64],
            None,
        ),
        cilock_abi::syscall::what::PROCESS_VM_READV | cilock_abi::syscall::what::PROCESS_VM_WRITEV => (
            format!("{name} target_pid={}{}", i32a(0), at_daemon(i32a(0))),
            vec![i32a(0)],
            None,
        ),
        cilock_abi::syscall::what::KILL | cilock_abi::syscall::what::TKILL | cilock_abi::syscall::what::TGKILL => {
            let target = i32a(0);
            let sig = if e.what == cilock_abi::syscall::what::TGKILL { i32a(2) } else { i32a(1) };
            let detail = if target == -1 {
                format!("{name} signal {sig} to every process (the cilock daemon included)")
            } else {
                format!("{name} signal {sig} aimed at the cilock daemon (pid {target})")
            };
            (detail, vec![target, sig], None)
        }
        cilock_abi::syscall::what::PIDFD_SEND_SIGNAL => {
            // On pidfs the kernel matched the pidfd's inode (in `extra`)
            // against the daemon's: that is the target. Without pidfs ask
            // /proc which pid the fd refers to (the fd may be gone by now).
            let target = if e.extra != 0 && Some(e.extra) == super::network::daemon_pidfd_inode() {
                daemon
            } else {
                crate::backend::ptrace::paths::pidfd_target(pid, i32a(0)).unwrap_or(-1)
            };
            (
                format!(
                    "pidfd_send_signal signal {} to pid {target}{}",
                    i32a(1),
                    if target == daemon { " (the cilock daemon)" } else { "" }
                ),
                vec![target, i32a(1)],
                None,
            )
        }
        _ => (format!("syscall {}", e.what), a.iter().map(|&x| x as i64).collect(), None),
    };
    (name, detail, args, path)
}
