//! Everything the tracer learns from `/proc` about a (stopped) tracee:
//! resolving an fd to the absolute path the kernel has for it (exact for
//! dirfd-relative and chdir'd opens, since it is the tracee's view), file
//! stamps, exe/cwd/argv/comm at exec, tgid/ppid of a tid, and socket
//! details through `pidfd_getfd`.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;

use cilock_trace::pathname::escape;
use cilock_trace::FileStamp;

/// Inode of the mount namespace of `pid` (`/proc/PID/ns/mnt` is
/// `mnt:[INODE]`), or of the calling process for `None`.
pub fn mnt_ns_of(pid: Option<u32>) -> Option<u64> {
    let link = match pid {
        Some(p) => format!("/proc/{p}/ns/mnt"),
        None => "/proc/self/ns/mnt".to_string(),
    };
    let t = std::fs::read_link(link).ok()?;
    t.to_str()?
        .strip_prefix("mnt:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The mount namespace whose paths the daemon hashes: PID 1's (the
/// system's) when the daemon sees the same root directory as PID 1, else
/// the daemon's own.
///
/// Under systemd the daemon runs in a mount namespace of its own: any of
/// the unit's `ProtectSystem=`, `ReadWritePaths=`, `ProtectKernelModules=`,
/// `ProtectKernelLogs=`, `ProtectHostname=` makes one, a copy of PID 1's with
/// some mounts read-only or masked. Taking the daemon's own namespace as the
/// reference would make every process of every step "foreign" (no file
/// hashed, each process attested with `mountNamespace`). The paths of PID
/// 1's namespace name the same files in that copy; a file the copy masks
/// fails to open, and every digest still requires the file's identity
/// (device, inode) to match what the kernel recorded.
///
/// That holds only while both resolve paths from the same root: a daemon
/// in a container that sees the host's PID 1 (`--pid=host`), or chrooted
/// (`RootDirectory=`), names other files by the same paths, so there its
/// own namespace stays the reference (the host's processes are then
/// attested as foreign, which is what they are to it).
pub fn host_mnt_ns() -> Option<u64> {
    let own = mnt_ns_of(None);
    let root = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match root("/proc/1/root") {
        Some(r) if Some(r) == root("/") => mnt_ns_of(Some(1)).or(own),
        _ => own,
    }
}

/// Result of resolving an fd of a tracee to a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The path (escaped losslessly if it was not UTF-8).
    pub path: String,
    /// Why the path is not a plain absolute path, if it is not.
    pub unresolved: Option<String>,
}

/// Converts a raw link target into a [`Resolved`] (non-UTF-8 bytes are
/// escaped losslessly, see `trace::pathname`).
pub fn classify(target: OsString) -> Resolved {
    let path = escape(&target.into_vec());
    let mut unresolved = None;
    {
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

/// Longest path rebuilt for an fd `/proc` cannot show (longer than
/// PATH_MAX); longer ones keep their last components behind `/…`.
pub const MAX_LONG_PATH: usize = 16 * 1024;
/// Directory levels walked up, and entries read per directory, at most.
const MAX_LONG_LEVELS: usize = 4096;
const MAX_DIR_ENTRIES: usize = 100_000;

/// The path of an fd whose path is longer than PATH_MAX (readlink of
/// `/proc/TID/fd/FD` fails with ENAMETOOLONG). The fd is duplicated into
/// the tracer (pidfd_getfd) and its path rebuilt the way getcwd(3) does for
/// long paths: `..` upwards, each name found by (device, inode) in its
/// parent's listing, never following a name the job chose. A file's own
/// directory is one of the tracee's open directory fds (the dirfd of a
/// dirfd-relative open) or its cwd. Never an empty path: when the walk
/// cannot finish, the path says so (`/…/` in front, `?` for an unknown leaf).
pub fn long_fd_path(tid: u32, fd: i64) -> Option<Resolved> {
    let err = std::fs::read_link(format!("/proc/{tid}/fd/{fd}")).err()?;
    if err.raw_os_error() != Some(libc::ENAMETOOLONG) {
        return None;
    }
    let file = dup_from(tid, fd)?;
    let st = fstat(file.as_raw_fd())?;
    let root = std::fs::metadata(format!("/proc/{tid}/root"))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let (dir, leaf) = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        (file, None)
    } else {
        match parent_among_fds(tid, (st.st_dev, st.st_ino)) {
            Some((dir, name)) => (dir, Some(name)),
            None => {
                return Some(Resolved {
                    path: format!("/…/?(inode {})", st.st_ino),
                    unresolved: Some(
                        "path truncated: longer than PATH_MAX (4096 bytes), and its directory is not an open fd of the process; only the inode is known"
                            .into(),
                    ),
                })
            }
        }
    };
    let mut comps = walk_up(dir, root);
    let complete = comps.last().is_none_or(|c| c.is_some());
    let mut names: Vec<Vec<u8>> = comps.drain(..).flatten().collect();
    names.reverse();
    names.extend(leaf);
    // Keep the last components within MAX_LONG_PATH.
    let mut len = 0;
    let mut keep = names.len();
    while keep > 0 && len + names[keep - 1].len() < MAX_LONG_PATH {
        len += names[keep - 1].len() + 1;
        keep -= 1;
    }
    let whole = complete && keep == 0;
    let mut path = String::new();
    if !whole {
        path.push_str("/…");
    }
    for n in &names[keep..] {
        path.push('/');
        path.push_str(&escape(n));
    }
    let why = if whole {
        format!("path longer than PATH_MAX (4096 bytes): {len} bytes, rebuilt whole by walking up its directories; not hashed")
    } else {
        "path truncated: longer than PATH_MAX (4096 bytes); its leading components are elided as /…/".to_string()
    };
    Some(Resolved {
        path,
        unresolved: Some(why),
    })
}

fn fstat(fd: i32) -> Option<libc::stat> {
    // SAFETY: st is a valid out-pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

fn open_at(dir: i32, name: &std::ffi::CStr, flags: i32) -> Option<OwnedFd> {
    // SAFETY: valid C string; the fd is owned at once.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fd` of `pid`, duplicated into the tracer (pidfd_getfd, Linux 5.6).
fn dup_from(pid: u32, fd: i64) -> Option<OwnedFd> {
    // SAFETY: raw syscalls; returned fds are wrapped in OwnedFd at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return None;
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0) };
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

/// The entry of directory `dir` that is (dev, ino), without following it.
fn name_in(dir: &OwnedFd, (dev, ino): (u64, u64), scan_all: bool) -> Option<Vec<u8>> {
    let list = open_at(dir.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let rd = std::fs::read_dir(format!("/proc/self/fd/{}", list.as_raw_fd())).ok()?;
    use std::os::unix::fs::DirEntryExt;
    for e in rd.take(MAX_DIR_ENTRIES).flatten() {
        // A mount point's entry has the covered inode: stat those too.
        if !scan_all && e.ino() != ino {
            continue;
        }
        let name = e.file_name().into_vec();
        let Ok(c) = std::ffi::CString::new(name.clone()) else {
            continue;
        };
        // SAFETY: valid C string and out-pointer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 && st.st_dev == dev && st.st_ino == ino {
            return Some(name);
        }
    }
    None
}

/// The names from `dir` up to `root` (leaf first); a trailing `None` means
/// the walk stopped before the root (a bound, or a name not found).
fn walk_up(dir: OwnedFd, root: Option<(u64, u64)>) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut cur = dir;
    let mut bytes = 0;
    for _ in 0..MAX_LONG_LEVELS {
        let Some(st) = fstat(cur.as_raw_fd()) else {
            out.push(None);
            return out;
        };
        if Some((st.st_dev, st.st_ino)) == root {
            return out;
        }
        let Some(parent) = open_at(cur.as_raw_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY) else {
            out.push(None);
            return out;
        };
        let Some(pst) = fstat(parent.as_raw_fd()) else {
            out.push(None);
            return out;
        };
        if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino) {
            return out; // the tracer's root
        }
        let Some(name) = name_in(&parent, (st.st_dev, st.st_ino), pst.st_dev != st.st_dev) else {
            out.push(None);
            return out;
        };
        bytes += name.len() + 1;
        out.push(Some(name));
        if bytes > MAX_LONG_PATH {
            out.push(None);
            return out;
        }
        cur = parent;
    }
    out.push(None);
    out
}

/// The directory holding (dev, ino) among the tracee's open directory fds
/// and its cwd, with the file's name there.
fn parent_among_fds(tid: u32, id: (u64, u64)) -> Option<(OwnedFd, Vec<u8>)> {
    let cwd = std::fs::File::open(format!("/proc/{tid}/cwd"))
        .ok()
        .map(OwnedFd::from);
    let fds = std::fs::read_dir(format!("/proc/{tid}/fd")).ok()?;
    let dirs = fds.take(4096).flatten().filter_map(|e| {
        let n: i64 = e.file_name().to_str()?.parse().ok()?;
        let m = std::fs::metadata(e.path()).ok()?;
        m.is_dir().then(|| dup_from(tid, n)).flatten()
    });
    for d in cwd.into_iter().chain(dirs) {
        if let Some(name) = name_in(&d, id, false) {
            return Some((d, name));
        }
    }
    None
}

/// Stamp of the file open as `fd` in `tid` (stat through the magic link, so
/// it is the opened inode even if the path was replaced since).
pub fn fd_stamp(tid: u32, fd: i64) -> Option<FileStamp> {
    std::fs::metadata(format!("/proc/{tid}/fd/{fd}"))
        .ok()
        .map(|m| FileStamp::from_metadata(&m))
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
        .map(|m| FileStamp::from_metadata(&m));
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
    b.split(|&c| c == 0).map(escape).collect()
}

/// `/proc/PID/comm` without the newline.
pub fn comm(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/comm"))
        .map(|b| escape(b.strip_suffix(b"\n").unwrap_or(&b)))
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
        assert_eq!((r.path.as_str(), r.unresolved), ("/\\xffa", None));
    }

    #[test]
    fn paths_longer_than_path_max_are_rebuilt_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let me = std::process::id();
        let mut dir: OwnedFd = std::fs::File::open(&base).unwrap().into();
        let mut names = Vec::new();
        for i in 0..110 {
            let n = format!("{i:03}{}", "q".repeat(37));
            let c = std::ffi::CString::new(n.clone()).unwrap();
            assert_eq!(
                unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) },
                0
            );
            dir = open_at(dir.as_raw_fd(), &c, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
            names.push(n);
        }
        // A leaf name with a backslash and a non-UTF-8 byte.
        let leaf = open_at(
            dir.as_raw_fd(),
            c"le\\af\xff",
            libc::O_WRONLY | libc::O_CREAT,
        )
        .unwrap();
        let whole = format!("{}/{}", base.display(), names.join("/"));
        assert!(whole.len() > 4096);
        assert!(
            fd_path(me, dir.as_raw_fd() as i64).is_none(),
            "readlink fails"
        );
        let r = long_fd_path(me, dir.as_raw_fd() as i64).unwrap();
        assert_eq!(r.path, whole);
        assert!(r.unresolved.unwrap().contains("PATH_MAX"));
        let r = long_fd_path(me, leaf.as_raw_fd() as i64).unwrap();
        assert_eq!(r.path, format!("{whole}/le\\\\af\\xff"));
        // Short paths are not this function's business.
        let f = std::fs::File::open(&base).unwrap();
        assert_eq!(long_fd_path(me, f.as_raw_fd() as i64), None);
        drop((dir, leaf));
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
