//! Suspicious syscalls, typed: [`SuspiciousCall`] has one variant per call
//! the backends flag, with its arguments as typed fields, and ONE
//! description ([`SuspiciousCall::describe`]) for the evidence's
//! `syscallEvents` (`syscall`, `detail`, `args`, `path`), whichever backend
//! saw the call. The eBPF decoder builds it from a `kind::SYSCALL` record
//! ([`SuspiciousCall::from_record`]); the ptrace tracer builds the variants
//! from the registers it read.
//!
//! What the pure crate cannot know is passed in as values: the daemon's pid
//! (the fold's), which pid a pidfd refers to (the backend resolves it, from
//! the kernel's pidfs inode match or `/proc`).
//!
//! # Adding a suspicious syscall touches four files
//!
//! 1. `cilock-abi/src/syscall.rs` (`syscall::what`): its number, its name and
//!    its place in `what::ALL` (the eBPF loader attaches one
//!    `sys_enter_<name>` program per entry);
//! 2. `cilock-ebpf/src/probes/syscall.rs`: the tracepoint program that fills
//!    the record;
//! 3. this file: the variant, its name, args, path and description, and its
//!    arm in [`SuspiciousCall::from_record`];
//! 4. `cilock-daemon/src/backend/ptrace/syscalls.rs`: the `Sys` entry, its
//!    numbers per ABI, its arm in `suspicious` (the tracer only calls it) and
//!    its name in `SUSPICIOUS_HOOK`.

use cilock_abi::SyscallRecord;
use serde::Serialize;

/// `BPF_PROG_LOAD`.
pub const BPF_PROG_LOAD: i64 = 5;

/// The names of the `CLONE_NEW*` flags set in `flags`.
pub fn clone_new_names(flags: u64) -> Vec<&'static str> {
    let table: [(u64, &str); 8] = [
        (libc::CLONE_NEWNS as u64, "CLONE_NEWNS"),
        (libc::CLONE_NEWCGROUP as u64, "CLONE_NEWCGROUP"),
        (libc::CLONE_NEWUTS as u64, "CLONE_NEWUTS"),
        (libc::CLONE_NEWIPC as u64, "CLONE_NEWIPC"),
        (libc::CLONE_NEWUSER as u64, "CLONE_NEWUSER"),
        (libc::CLONE_NEWPID as u64, "CLONE_NEWPID"),
        (libc::CLONE_NEWNET as u64, "CLONE_NEWNET"),
        (0x80, "CLONE_NEWTIME"),
    ];
    table
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Which signal call a [`SuspiciousCall::Signal`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalCall {
    /// kill(2)
    Kill,
    /// tkill(2)
    Tkill,
    /// tgkill(2)
    Tgkill,
}

/// A suspicious syscall with its arguments (strings are escaped, see
/// [`crate::pathname`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "syscall", rename_all = "snake_case")]
pub enum SuspiciousCall {
    /// ptrace(2) on another process.
    Ptrace {
        /// The request (`PTRACE_ATTACH`, …).
        request: i64,
        /// The target pid.
        target: i64,
    },
    /// memfd_create(2): a file that lives only in memory.
    MemfdCreate {
        /// Its name.
        name: String,
        /// `MFD_*` flags.
        flags: u32,
    },
    /// mount(2).
    Mount {
        /// The source.
        source: String,
        /// The mount point.
        target: Option<String>,
        /// The filesystem type.
        fstype: String,
        /// `MS_*` flags.
        flags: u64,
    },
    /// fsopen(2).
    Fsopen {
        /// The filesystem type.
        fstype: String,
        /// Flags.
        flags: u32,
    },
    /// fsmount(2).
    Fsmount {
        /// The filesystem context fd.
        fsfd: i32,
        /// Flags.
        flags: u32,
    },
    /// move_mount(2).
    MoveMount {
        /// The `from_pathname`.
        from: String,
        /// The `to_pathname`.
        to: Option<String>,
        /// Flags.
        flags: u32,
    },
    /// open_tree(2).
    OpenTree {
        /// The path.
        path: Option<String>,
        /// Flags.
        flags: u32,
    },
    /// unshare(2) of namespaces.
    Unshare {
        /// `CLONE_*` flags.
        flags: u64,
    },
    /// setns(2).
    Setns {
        /// The namespace fd.
        fd: i32,
        /// `nstype`.
        nstype: u32,
        /// The file behind the fd.
        ns: Option<String>,
    },
    /// clone(2) creating namespaces.
    Clone {
        /// `CLONE_*` flags.
        flags: u64,
    },
    /// clone3(2) creating namespaces.
    Clone3 {
        /// `clone_args.flags`.
        flags: u64,
    },
    /// bpf(2).
    Bpf {
        /// The command.
        cmd: i64,
        /// `prog_type` of a `BPF_PROG_LOAD` (meaningless for other commands).
        prog_type: u32,
    },
    /// init_module(2).
    InitModule {
        /// Image length.
        len: u64,
        /// Module parameters.
        params: String,
    },
    /// finit_module(2).
    FinitModule {
        /// The module file's fd.
        fd: i32,
        /// Flags.
        flags: u32,
        /// Module parameters.
        params: String,
        /// The file behind the fd.
        file: Option<String>,
    },
    /// io_uring_setup(2): later operations bypass the syscall hooks.
    IoUringSetup {
        /// Ring entries.
        entries: u32,
    },
    /// process_vm_readv(2) / process_vm_writev(2).
    ProcessVm {
        /// `process_vm_writev`.
        write: bool,
        /// The target pid.
        target: i64,
    },
    /// kill/tkill/tgkill aimed at the daemon, or kill(-1) (every process).
    Signal {
        /// Which call.
        call: SignalCall,
        /// The target pid (-1: every process).
        target: i64,
        /// The signal.
        signal: i64,
    },
    /// pidfd_send_signal(2).
    PidfdSendSignal {
        /// The pid the pidfd refers to (-1 when unknown), as the backend
        /// resolved it.
        target: i64,
        /// The signal.
        signal: i64,
    },
    /// A write of a pid into a `cgroup.procs`-like file outside the step
    /// (ptrace: the eBPF backend sees the move itself): evidence name
    /// `cgroup_leave`.
    CgroupWrite {
        /// The pid written (0: the writer itself).
        written: i64,
        /// The traced process it moved.
        moved: u32,
        /// The file written.
        file: String,
    },
    /// A record of a kind this build does not know.
    Unknown {
        /// `sys_what` number.
        what: u32,
        /// Raw arguments.
        args: [u64; 6],
    },
}

/// What the decoder of a syscall record needs and cannot know itself; the
/// eBPF backend passes it in.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    /// The daemon's pid.
    pub daemon_pid: u32,
    /// The inode of the daemon's pidfd on pidfs, when known.
    pub daemon_pidfd_inode: Option<u64>,
    /// Which pid `fd` of process `pid` refers to (the backend reads /proc).
    pub pidfd_target: &'a dyn Fn(u32, i64) -> Option<i64>,
}

fn no_pidfd_target(_: u32, _: i64) -> Option<i64> {
    None
}

impl Host<'static> {
    /// A host that knows nothing (tests, fuzzing): daemon pid 0, no pidfs
    /// inode, no pidfd resolves.
    pub fn detached() -> Self {
        Host {
            daemon_pid: 0,
            daemon_pidfd_inode: None,
            pidfd_target: &no_pidfd_target,
        }
    }
}

impl SuspiciousCall {
    /// The syscall's name, as the evidence's `syscall` field has it.
    pub fn name(&self) -> &'static str {
        use SuspiciousCall::*;
        match self {
            Ptrace { .. } => "ptrace",
            MemfdCreate { .. } => "memfd_create",
            Mount { .. } => "mount",
            Fsopen { .. } => "fsopen",
            Fsmount { .. } => "fsmount",
            MoveMount { .. } => "move_mount",
            OpenTree { .. } => "open_tree",
            Unshare { .. } => "unshare",
            Setns { .. } => "setns",
            Clone { .. } => "clone",
            Clone3 { .. } => "clone3",
            Bpf { .. } => "bpf",
            InitModule { .. } => "init_module",
            FinitModule { .. } => "finit_module",
            IoUringSetup { .. } => "io_uring_setup",
            ProcessVm { write: false, .. } => "process_vm_readv",
            ProcessVm { write: true, .. } => "process_vm_writev",
            Signal {
                call: SignalCall::Kill,
                ..
            } => "kill",
            Signal {
                call: SignalCall::Tkill,
                ..
            } => "tkill",
            Signal {
                call: SignalCall::Tgkill,
                ..
            } => "tgkill",
            PidfdSendSignal { .. } => "pidfd_send_signal",
            CgroupWrite { .. } => "cgroup_leave",
            Unknown { what, .. } => cilock_abi::syscall::what::name(*what),
        }
    }

    /// The numeric arguments, as the evidence's `args` has them.
    pub fn args(&self) -> Vec<i64> {
        use SuspiciousCall::*;
        match self {
            Ptrace { request, target } => vec![*request, *target],
            MemfdCreate { flags, .. } => vec![*flags as i64],
            Mount { flags, .. } => vec![*flags as i64],
            Fsopen { flags, .. } => vec![*flags as i64],
            Fsmount { fsfd, flags } => vec![*fsfd as i64, *flags as i64],
            MoveMount { flags, .. } => vec![*flags as i64],
            OpenTree { flags, .. } => vec![*flags as i64],
            Unshare { flags } | Clone { flags } | Clone3 { flags } => vec![*flags as i64],
            Setns { fd, nstype, .. } => vec![*fd as i64, *nstype as i64],
            Bpf { cmd, .. } => vec![*cmd],
            InitModule { len, .. } => vec![*len as i64],
            FinitModule { fd, flags, .. } => vec![*fd as i64, *flags as i64],
            IoUringSetup { entries } => vec![*entries as i64],
            ProcessVm { target, .. } => vec![*target],
            Signal { target, signal, .. } | PidfdSendSignal { target, signal } => {
                vec![*target, *signal]
            }
            CgroupWrite { moved, .. } => vec![*moved as i64],
            Unknown { args, .. } => args.iter().map(|&x| x as i64).collect(),
        }
    }

    /// The path argument, as the evidence's `path` has it.
    pub fn path(&self) -> Option<&str> {
        use SuspiciousCall::*;
        match self {
            MemfdCreate { name, .. } => Some(name),
            Mount { target, .. } => target.as_deref(),
            MoveMount { to, .. } => to.as_deref(),
            OpenTree { path, .. } => path.as_deref(),
            Setns { ns, .. } => ns.as_deref(),
            FinitModule { file, .. } => file.as_deref(),
            CgroupWrite { file, .. } => Some(file),
            _ => None,
        }
    }

    /// The process the call acts on, for calls aimed at one.
    pub fn target_pid(&self) -> Option<i64> {
        use SuspiciousCall::*;
        match self {
            Ptrace { target, .. }
            | ProcessVm { target, .. }
            | Signal { target, .. }
            | PidfdSendSignal { target, .. } => Some(*target),
            _ => None,
        }
    }

    /// Whether the call is aimed at the daemon `daemon` (kill(-1) is: it
    /// signals every process).
    pub fn aimed_at(&self, daemon: Option<u32>) -> bool {
        let Some(d) = daemon else {
            return false;
        };
        match (self, self.target_pid()) {
            (SuspiciousCall::Signal { target: -1, .. }, _) => true,
            (_, Some(t)) => t == d as i64,
            _ => false,
        }
    }

    /// The evidence's `detail`: one text per call, the same from both
    /// backends. `daemon` is the daemon's pid (calls aimed at it say so).
    pub fn describe(&self, daemon: Option<u32>) -> String {
        use SuspiciousCall::*;
        let aimed = self.aimed_at(daemon);
        let at_daemon = if aimed {
            " (aimed at the cilock daemon)"
        } else {
            ""
        };
        match self {
            Ptrace { request, target } => {
                format!("ptrace request={request} target_pid={target}{at_daemon}")
            }
            MemfdCreate { name, flags } => {
                format!("anonymous memory file: {name} (flags: {flags})")
            }
            Mount {
                source,
                fstype,
                flags,
                ..
            } => format!("mount source={source} type={fstype} flags={flags:#x}"),
            Fsopen { fstype, .. } => format!("fsopen {fstype}"),
            Fsmount { fsfd, flags } => format!("fsmount fsfd={fsfd} flags={flags:#x}"),
            MoveMount { from, flags, .. } => format!("move_mount from={from:?} flags={flags:#x}"),
            OpenTree { flags, .. } => format!("open_tree flags={flags:#x}"),
            Unshare { flags } => format!("unshare {}", clone_new_names(*flags).join("|")),
            Setns { nstype, .. } => format!("setns nstype={nstype:#x}"),
            Clone { flags } => format!("clone with {}", clone_new_names(*flags).join("|")),
            Clone3 { flags } => format!("clone3 with {}", clone_new_names(*flags).join("|")),
            Bpf { cmd, prog_type } => {
                if *cmd == BPF_PROG_LOAD {
                    format!("bpf BPF_PROG_LOAD prog_type={prog_type}")
                } else {
                    format!("bpf cmd={cmd}")
                }
            }
            InitModule { len, params } => format!("init_module len={len} params={params:?}"),
            FinitModule { flags, params, .. } => {
                format!("finit_module flags={flags:#x} params={params:?}")
            }
            IoUringSetup { entries } => format!(
                "io_uring_setup entries={entries}: operations submitted through io_uring (opens, \
                 reads, writes) do not pass the syscall hooks and are not recorded (what each \
                 backend still sees of it: the trace's limitations, \"io_uring\")"
            ),
            ProcessVm { target, .. } => {
                format!("{} target_pid={target}{at_daemon}", self.name())
            }
            Signal {
                target: -1, signal, ..
            } => format!(
                "{} signal {signal} to every process (the cilock daemon included)",
                self.name()
            ),
            Signal { target, signal, .. } if aimed => format!(
                "{} signal {signal} aimed at the cilock daemon (pid {target})",
                self.name()
            ),
            Signal { target, signal, .. } => {
                format!("{} signal {signal} to pid {target}", self.name())
            }
            PidfdSendSignal { target, signal } => format!(
                "pidfd_send_signal signal {signal} to pid {target}{}",
                if aimed { " (the cilock daemon)" } else { "" }
            ),
            CgroupWrite {
                written,
                moved,
                file,
            } => format!(
                "wrote pid {written} into {file}: traced pid {moved} moved to another cgroup"
            ),
            Unknown { what, .. } => format!("syscall {what}"),
        }
    }

    /// The call of an eBPF `kind::SYSCALL` record. `strs` are its string
    /// arguments (see the kernel's syscall probes for which), `fd_path` the
    /// file behind its fd argument, `pid` the caller.
    pub fn from_record(
        e: &SyscallRecord,
        strs: [Option<String>; 3],
        fd_path: Option<String>,
        pid: u32,
        cx: &Host<'_>,
    ) -> SuspiciousCall {
        use SuspiciousCall::*;
        let a = e.args;
        let i32a = |i: usize| a[i] as i32 as i64;
        let [s0, s1, s2] = strs;
        match e.what {
            cilock_abi::syscall::what::PTRACE => Ptrace {
                request: a[0] as i64,
                target: i32a(1),
            },
            cilock_abi::syscall::what::MEMFD_CREATE => MemfdCreate {
                name: s0.unwrap_or_default(),
                flags: a[1] as u32,
            },
            cilock_abi::syscall::what::MOUNT => Mount {
                source: s0.unwrap_or_default(),
                target: s1,
                fstype: s2.unwrap_or_default(),
                flags: a[3],
            },
            cilock_abi::syscall::what::FSOPEN => Fsopen {
                fstype: s0.unwrap_or_default(),
                flags: a[1] as u32,
            },
            cilock_abi::syscall::what::FSMOUNT => Fsmount {
                fsfd: a[0] as i32,
                flags: a[1] as u32,
            },
            cilock_abi::syscall::what::MOVE_MOUNT => MoveMount {
                from: s0.unwrap_or_default(),
                to: s1,
                flags: a[4] as u32,
            },
            cilock_abi::syscall::what::OPEN_TREE => OpenTree {
                path: s0,
                flags: a[2] as u32,
            },
            cilock_abi::syscall::what::UNSHARE => Unshare { flags: a[0] },
            cilock_abi::syscall::what::SETNS => Setns {
                fd: a[0] as i32,
                nstype: a[1] as u32,
                ns: fd_path,
            },
            cilock_abi::syscall::what::CLONE => Clone { flags: a[0] },
            cilock_abi::syscall::what::CLONE3 => Clone3 { flags: e.extra },
            cilock_abi::syscall::what::BPF => Bpf {
                cmd: a[0] as i64,
                prog_type: e.extra as u32,
            },
            cilock_abi::syscall::what::INIT_MODULE => InitModule {
                len: a[1],
                params: s0.unwrap_or_default(),
            },
            cilock_abi::syscall::what::FINIT_MODULE => FinitModule {
                fd: a[0] as i32,
                flags: a[2] as u32,
                params: s0.unwrap_or_default(),
                file: fd_path,
            },
            cilock_abi::syscall::what::IO_URING_SETUP => IoUringSetup {
                entries: a[0] as u32,
            },
            cilock_abi::syscall::what::PROCESS_VM_READV
            | cilock_abi::syscall::what::PROCESS_VM_WRITEV => ProcessVm {
                write: e.what == cilock_abi::syscall::what::PROCESS_VM_WRITEV,
                target: i32a(0),
            },
            cilock_abi::syscall::what::KILL
            | cilock_abi::syscall::what::TKILL
            | cilock_abi::syscall::what::TGKILL => Signal {
                call: match e.what {
                    cilock_abi::syscall::what::KILL => SignalCall::Kill,
                    cilock_abi::syscall::what::TKILL => SignalCall::Tkill,
                    _ => SignalCall::Tgkill,
                },
                target: i32a(0),
                signal: if e.what == cilock_abi::syscall::what::TGKILL {
                    i32a(2)
                } else {
                    i32a(1)
                },
            },
            cilock_abi::syscall::what::PIDFD_SEND_SIGNAL => {
                // On pidfs the kernel matched the pidfd's inode (in
                // `extra`) against the daemon's: that is the target.
                // Without pidfs the backend asks /proc which pid the fd
                // refers to (the fd may be gone by now).
                let target = if e.extra != 0 && Some(e.extra) == cx.daemon_pidfd_inode {
                    cx.daemon_pid as i64
                } else {
                    (cx.pidfd_target)(pid, i32a(0)).unwrap_or(-1)
                };
                PidfdSendSignal {
                    target,
                    signal: i32a(1),
                }
            }
            what => Unknown { what, args: a },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_names() {
        assert_eq!(
            clone_new_names(libc::CLONE_NEWUSER as u64),
            ["CLONE_NEWUSER"]
        );
    }

    #[test]
    fn signals_name_their_target() {
        let kill = |target| SuspiciousCall::Signal {
            call: SignalCall::Kill,
            target,
            signal: 9,
        };
        assert_eq!(
            kill(-1).describe(Some(7)),
            "kill signal 9 to every process (the cilock daemon included)"
        );
        assert_eq!(
            kill(7).describe(Some(7)),
            "kill signal 9 aimed at the cilock daemon (pid 7)"
        );
        assert_eq!(kill(8).describe(Some(7)), "kill signal 9 to pid 8");
        assert!(kill(-1).aimed_at(Some(7)));
        assert!(!kill(8).aimed_at(Some(7)));
        assert_eq!(kill(7).args(), vec![7, 9]);
    }

    #[test]
    fn ptrace_and_pidfd() {
        let p = SuspiciousCall::Ptrace {
            request: 16,
            target: 7,
        };
        assert_eq!(
            p.describe(Some(7)),
            "ptrace request=16 target_pid=7 (aimed at the cilock daemon)"
        );
        assert_eq!(p.describe(None), "ptrace request=16 target_pid=7");
        let s = SuspiciousCall::PidfdSendSignal {
            target: 7,
            signal: 0,
        };
        assert_eq!(
            s.describe(Some(7)),
            "pidfd_send_signal signal 0 to pid 7 (the cilock daemon)"
        );
    }

    #[test]
    fn io_uring_says_what_is_missed() {
        let d = SuspiciousCall::IoUringSetup { entries: 8 }.describe(None);
        assert!(d.starts_with("io_uring_setup entries=8"), "{d}");
        assert!(d.contains("not recorded"), "{d}");
    }
}
