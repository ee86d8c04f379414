//! Everything the tracer learns from `/proc` about a (stopped) tracee:
//! resolving an fd to the absolute path the kernel has for it (exact for
//! dirfd-relative and chdir'd opens, since it is the tracee's view), file
//! stamps, exe/cwd/argv/comm at exec, tgid/ppid of a tid, and socket
//! details through `pidfd_getfd`.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;

use crate::trace::FileStamp;

/// Result of resolving an fd of a tracee to a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The path (lossy UTF-8 if it was not UTF-8).
    pub path: String,
    /// Why the path is not a plain absolute path, if it is not.
    pub unresolved: Option<String>,
}

/// Converts a raw link target into a [`Resolved`].
pub fn classify(target: OsString) -> Resolved {
    let bytes = target.into_vec();
    let (path, mut unresolved) = match String::from_utf8(bytes) {
        Ok(s) => (s, None),
        Err(e) => (
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            Some("path is not valid UTF-8".to_string()),
        ),
    };
    if unresolved.is_none() {
        if !path.starts_with('/') {
            unresolved = Some(format!("pseudo file ({path})"));
        } else if path.ends_with(" (deleted)") {
            unresolved = Some("file deleted (or O_TMPFILE) at open".to_string());
        }
    }
    Resolved { path, unresolved }
}

/// `readlink /proc/TID/fd/FD`.
pub fn fd_path(tid: u32, fd: i64) -> Option<Resolved> {
    std::fs::read_link(format!("/proc/{tid}/fd/{fd}"))
        .ok()
        .map(|p| classify(p.into_os_string()))
}

/// A stamp from metadata.
pub fn stamp_of(m: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size() as i64,
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        mode: m.mode(),
    }
}

/// Stamp of the file open as `fd` in `tid` (stat through the magic link, so
/// it is the opened inode even if the path was replaced since).
pub fn fd_stamp(tid: u32, fd: i64) -> Option<FileStamp> {
    std::fs::metadata(format!("/proc/{tid}/fd/{fd}"))
        .ok()
        .map(|m| stamp_of(&m))
}

/// The inode of the socket behind `fd`, from the `socket:[N]` link.
pub fn socket_inode(tid: u32, fd: i64) -> Option<u64> {
    let t = std::fs::read_link(format!("/proc/{tid}/fd/{fd}")).ok()?;
    let s = t.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// `readlink /proc/PID/exe` and its stamp.
pub fn exe(pid: u32) -> (Option<String>, Option<FileStamp>) {
    let p = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| classify(p.into_os_string()).path);
    let st = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| stamp_of(&m));
    (p, st)
}

/// `readlink /proc/PID/cwd`.
pub fn cwd(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|p| classify(p.into_os_string()).path)
}

/// argv from `/proc/PID/cmdline`.
pub fn cmdline(pid: u32) -> Vec<String> {
    let Ok(b) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    let b = b.strip_suffix(&[0]).unwrap_or(&b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `/proc/PID/comm` without the newline.
pub fn comm(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/comm"))
        .map(|b| String::from_utf8_lossy(b.strip_suffix(b"\n").unwrap_or(&b)).into_owned())
        .unwrap_or_default()
}

/// `(Tgid, PPid)` of a tid from `/proc/TID/status`.
pub fn tgid_ppid(tid: u32) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let mut tgid = None;
    let mut ppid = None;
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("Tgid:") {
            tgid = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        }
        if tgid.is_some() && ppid.is_some() {
            break;
        }
    }
    Some((tgid?, ppid?))
}

/// The `AT_EXECFN` auxv entry: where the kernel put the filename passed to
/// execve (as given, possibly relative) on the new stack.
pub fn auxv_execfn(pid: u32) -> Option<u64> {
    let b = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    for e in b.chunks_exact(16) {
        let k = u64::from_ne_bytes(e[..8].try_into().ok()?);
        let v = u64::from_ne_bytes(e[8..].try_into().ok()?);
        if k == libc::AT_EXECFN {
            return Some(v);
        }
        if k == 0 {
            break;
        }
    }
    None
}

/// The pid a pidfd (`fd` of `pid`) refers to, from `/proc/PID/fdinfo/FD`.
pub fn pidfd_target(pid: u32, fd: i64) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What the tracer knows about a tracee's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// `SO_TYPE` (SOCK_STREAM, SOCK_DGRAM, …).
    pub sock_type: i32,
    /// Inode, to notice fd reuse.
    pub inode: u64,
}

/// Duplicates `fd` of `pid` into the tracer with `pidfd_getfd` (Linux 5.6;
/// allowed because we trace the process) and reads `SO_TYPE`.
pub fn socket_info(pid: u32, fd: i64) -> Option<SocketInfo> {
    let inode = socket_inode(pid, fd)?;
    // SAFETY: raw syscalls; returned fds are wrapped in OwnedFd at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Some(SocketInfo {
            sock_type: -1,
            inode,
        });
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0) };
    if dup < 0 {
        return Some(SocketInfo {
            sock_type: -1,
            inode,
        });
    }
    let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
    let mut t: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            dup.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut t as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    Some(SocketInfo {
        sock_type: if r == 0 { t } else { -1 },
        inode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_variants() {
        assert_eq!(classify("/etc/hosts".into()).unresolved, None);
        assert!(classify("pipe:[123]".into()).unresolved.is_some());
        assert!(classify("/tmp/x (deleted)".into()).unresolved.is_some());
        let bad = OsString::from_vec(vec![b'/', 0xff, b'a']);
        let r = classify(bad);
        assert!(r.unresolved.unwrap().contains("UTF-8"));
    }

    #[test]
    fn own_proc_info() {
        let me = std::process::id();
        assert!(auxv_execfn(me).is_some());
        assert!(!cmdline(me).is_empty());
        let (tg, _) = tgid_ppid(me).unwrap();
        assert_eq!(tg, me);
        let f = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let r = fd_path(me, f.as_raw_fd() as i64).unwrap();
        assert!(r.path.ends_with("/status"), "{r:?}");
    }
}
