//! The seccomp filter installed in the traced child before exec: it returns
//! `SECCOMP_RET_TRACE` for the syscalls of interest (so the tracer gets a
//! `PTRACE_EVENT_SECCOMP` stop) and `SECCOMP_RET_ALLOW` for everything else,
//! which then runs at full speed.
//!
//! The BPF is written by hand rather than with `seccompiler`, because
//! seccompiler's programs kill the process on an architecture mismatch: a
//! 32-bit (`int 0x80`) program inside a CI step would die. Here foreign-ABI
//! syscalls are checked against the i386 table (x86_64) or traced.
//!
//! Installation uses the raw `seccomp(2)` call, never `seccompiler::apply_filter`
//! (which always sets `PR_SET_NO_NEW_PRIVS`): NNP is only set when the kernel
//! demands it (the child lacks CAP_SYS_ADMIN), so `sudo` and other setuid
//! programs keep working in privileged runs.

use super::syscalls::{
    native_table, Sys, AUDIT_ARCH_I386, CLONE_NEW_MASK, I386_TABLE, NATIVE_ARCH,
};

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// `SECCOMP_RET_TRACE`.
pub const RET_TRACE: u32 = 0x7ff0_0000;
/// `SECCOMP_RET_ALLOW`.
pub const RET_ALLOW: u32 = 0x7fff_0000;

/// What the filter should stop on.
#[derive(Clone, Debug)]
pub struct FilterSpec {
    /// Stop on `write` and `writev` (needed for egress capture of TLS
    /// ClientHellos and DNS over TCP written with them, and for cgroup.procs
    /// writes) and on `recvfrom`/`recvmsg` (DNS answers). Costs one stop per
    /// call (two for a recv on a socket that sent a DNS query).
    pub trace_write: bool,
    /// Stop on kill/tkill/tgkill only when aimed at this pid.
    pub daemon_pid: Option<u32>,
}

/// A compiled classic-BPF program.
pub type Program = Vec<libc::sock_filter>;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Builds the filter program.
pub fn build(spec: &FilterSpec) -> Program {
    let mut plain: Vec<u32> = Vec::new();
    let mut p: Program = Vec::new();
    // Arch check: native → main table; i386 → compat table; other → trace.
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARCH));
    let mut compat: Program = Vec::new();
    compat.push(jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 1, 0));
    compat.push(stmt(BPF_RET | BPF_K, RET_TRACE));
    compat.push(stmt(BPF_LD | BPF_W | BPF_ABS, OFF_NR));
    for (_, nr) in I386_TABLE {
        compat.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *nr as u32, 0, 1));
        compat.push(stmt(BPF_RET | BPF_K, RET_TRACE));
    }
    compat.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
    // jeq NATIVE → skip the compat block
    p.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        NATIVE_ARCH,
        compat.len() as u8,
        0,
    ));
    p.extend(compat);
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, OFF_NR));
    #[cfg(target_arch = "x86_64")]
    {
        // x32 ABI: trace everything, the tracer decodes with the bit masked.
        p.push(jump(
            BPF_JMP | BPF_JGE | BPF_K,
            super::syscalls::X32_SYSCALL_BIT as u32,
            0,
            1,
        ));
        p.push(stmt(BPF_RET | BPF_K, RET_TRACE));
    }
    let mut clone_nr = None;
    let mut kill_nrs = Vec::new();
    for (sys, nr) in native_table() {
        match sys {
            Sys::Write | Sys::Writev | Sys::RecvFrom | Sys::RecvMsg if !spec.trace_write => {}
            Sys::Clone => clone_nr = Some(nr as u32),
            Sys::Kill | Sys::Tkill | Sys::Tgkill => kill_nrs.push((sys, nr as u32)),
            _ => plain.push(nr as u32),
        }
    }
    for nr in plain {
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1));
        p.push(stmt(BPF_RET | BPF_K, RET_TRACE));
    }
    // Arg-checked blocks; each ends in two returns, so a non-matching nr
    // jumps over the whole block with the accumulator still holding nr.
    if let Some(nr) = clone_nr {
        // clone(flags, ...): only when namespace flags are set (the low 32
        // bits hold all CLONE_NEW* bits).
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4));
        p.push(stmt(BPF_LD | BPF_W | BPF_ABS, off_arg_lo(0)));
        p.push(jump(
            BPF_JMP | BPF_JSET | BPF_K,
            CLONE_NEW_MASK as u32,
            0,
            1,
        ));
        p.push(stmt(BPF_RET | BPF_K, RET_TRACE));
        p.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
    }
    for (sys, nr) in kill_nrs {
        // kill(pid), tkill(tid), tgkill(tgid, tid): arg0 is the target.
        // kill(-1) signals every process, the daemon included (as the
        // eBPF backend, whatever the daemon pid).
        let every = sys == Sys::Kill;
        match (spec.daemon_pid, every) {
            (Some(dpid), true) => {
                p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 5));
                p.push(stmt(BPF_LD | BPF_W | BPF_ABS, off_arg_lo(0)));
                p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, dpid, 1, 0));
                p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, u32::MAX, 0, 1));
                p.push(stmt(BPF_RET | BPF_K, RET_TRACE));
                p.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
            }
            (None, true) => {
                p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4));
                p.push(stmt(BPF_LD | BPF_W | BPF_ABS, off_arg_lo(0)));
                p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, u32::MAX, 0, 1));
                p.push(stmt(BPF_RET | BPF_K, RET_TRACE));
                p.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
            }
            (Some(dpid), false) => {
                p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4));
                p.push(stmt(BPF_LD | BPF_W | BPF_ABS, off_arg_lo(0)));
                p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, dpid, 0, 1));
                p.push(stmt(BPF_RET | BPF_K, RET_TRACE));
                p.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
            }
            (None, false) => {}
        }
    }
    p.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
    p
}

/// Installs `prog` in the calling process. Async-signal-safe (only raw
/// syscalls), for use between fork and exec. Tries without no_new_privs
/// first; when the kernel refuses (EACCES: no CAP_SYS_ADMIN), sets
/// `PR_SET_NO_NEW_PRIVS` and retries. Returns whether NNP was set.
pub fn install(prog: &Program) -> std::io::Result<bool> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points to a valid program that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        return Ok(false);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EACCES) {
        return Err(err);
    }
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(true)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_fits_and_ends_with_allow() {
        let p = build(&FilterSpec {
            trace_write: true,
            daemon_pid: Some(1234),
        });
        assert!(p.len() < 255, "jump offsets are u8");
        assert_eq!(p.last().unwrap().k, RET_ALLOW);
        let q = build(&FilterSpec {
            trace_write: false,
            daemon_pid: None,
        });
        assert!(q.len() < p.len());
    }
}
