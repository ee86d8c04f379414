//! What the fold needs from `/proc`, read here so the fold stays pure: a
//! live process's comm, running file and parent ([`running`]), and which
//! pid a pidfd refers to ([`pidfd_target`]).
//!
//! Everything read is data about the traced job: absent or unparsable
//! entries give `None`, never an error.

use cilock_trace::{FileStamp, Running};

/// What `/proc/PID` shows of a live process now (nothing for a process
/// that is gone).
pub fn running(pid: u32) -> Running {
    Running {
        comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|s| s.trim().to_string()),
        exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
        // The kernel's own link: stat through it is the running file,
        // whatever is at the path now.
        exe_stamp: std::fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| FileStamp::from_metadata(&m)),
        ppid: std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .and_then(|v| v.trim().parse().ok())
            }),
        mnt_ns: crate::backend::ptrace::paths::mnt_ns_of(Some(pid)),
    }
}

/// The pid the pidfd `fd` of process `pid` refers to (`Pid:` of its
/// fdinfo), if it is still open.
pub fn pidfd_target(pid: u32, fd: i64) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}
