//! The probes, one module per event family (the same names as in
//! `cilock-abi` and `cilock-ebpf`): what each family attaches at load (and,
//! for net, per step cgroup), and the hooks it reports.
//!
//! The payload family (captured packets) is attached with the net family's
//! socket hooks, in [`net`].

pub mod cgroup;
pub mod file;
pub mod net;
pub mod process;
pub mod syscall;
