//! The programs, one module per event family, with the same family names
//! as the records in `cilock-abi` and the decoders in user space:
//!
//! | module | programs | records |
//! |---|---|---|
//! | `process` | `sched_process_{exec,fork,exit}` | EXEC, FORK, EXIT |
//! | `file` | `sys_exit_open`, `fexit_file_open`, `sys_enter_{close,dup2,dup3,close_range}`, `sys_exit_rename{,at,at2}` | OPEN, CLOSE |
//! | `cgroup` | `cgroup_attach_task` | CGROUP_MOVE, CGROUP_JOIN |
//! | `net` | `sys_enter_{connect,bind,sendto,sendmsg,sendmmsg}`, `sys_exit_sendmmsg`, `connect4/6`, `sendmsg4/6`, `bind4/6` | NET |
//! | `payload` | `skb_egress`, `skb_ingress` | PAYLOAD |
//! | `syscall` | `sys_enter_<name>` per suspicious syscall | SYSCALL |
//!
//! Program names are the ELF symbols the daemon loads and attaches by name
//! (`cilock-daemon/src/backend/ebpf`): renaming one means changing it
//! there too.

pub mod cgroup;
pub mod file;
pub mod net;
pub mod payload;
pub mod process;
pub mod syscall;
