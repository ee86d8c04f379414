//! Opening and reading files a job controls: never blocking, never through a
//! symbolic link the job planted in the last component, regular files only,
//! bounded reads, and (for the working directory) only by descriptor.
//!
//! - [`open_workdir`] gives the working directory's descriptor: the one in
//!   [`AttestationContext::workdir_fd`] when the daemon opened it at step
//!   begin, otherwise the path opened once (`O_DIRECTORY`).
//! - [`open_beneath`] opens a relative path under a directory descriptor with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: in-tree symbolic
//!   links are followed, anything leaving the tree (`..` above it, absolute
//!   links, `/proc` magic links) fails with `EXDEV`/`ELOOP`.
//! - [`open_regular_nofollow`] opens a path given by the job (`GITHUB_OUTPUT`,
//!   `action.yml`) with `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY`, then `fstat`:
//!   a fifo opens without blocking and is refused, as are devices and
//!   directories.
//! - [`read_capped`] reads at most a given number of bytes and says whether
//!   there was more.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::{AttestError, AttestationContext};

/// Flags of every read-only open of job-controlled data.
pub fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

fn errno_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The working directory's descriptor: `ctx.workdir_fd` when set, otherwise
/// `ctx.workdir` opened once (`O_DIRECTORY | O_CLOEXEC`). Everything under the
/// working directory is then reached relative to this descriptor, so a later
/// swap of the path (for a symbolic link, say) changes nothing.
pub fn open_workdir(ctx: &AttestationContext) -> Result<Arc<OwnedFd>, AttestError> {
    if let Some(fd) = &ctx.workdir_fd {
        return Ok(fd.clone());
    }
    let fd = nix::fcntl::open(
        &ctx.workdir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| AttestError::Io {
        what: format!("opening working directory {}", ctx.workdir.display()),
        source: errno_io(e),
    })?;
    Ok(Arc::new(fd))
}

/// Opens `rel` (relative) under the directory `dir`, following symbolic
/// links only while they stay beneath `dir` (`RESOLVE_BENEATH |
/// RESOLVE_NO_MAGICLINKS`), read-only, non-blocking, without a controlling
/// terminal. The caller checks the type with `fstat`.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(read_flags())
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match nix::fcntl::openat2(dir, rel, how) {
            Ok(fd) => return Ok(fd),
            // openat2 asks to retry when a rename raced with RESOLVE_BENEATH.
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(errno_io(e)),
        }
    }
}

/// What a file type is called in messages.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a fifo"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// `fstat` of an opened file; an error message unless it is a regular file.
pub fn require_regular(f: &File) -> Result<std::fs::Metadata, String> {
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "not a regular file ({})",
            kind_of(meta.file_type())
        ));
    }
    Ok(meta)
}

/// Opens a path chosen by the job: no symbolic link in the last component,
/// no `/proc` magic link anywhere (`openat2(RESOLVE_NO_MAGICLINKS)`),
/// non-blocking (a fifo opens at once and is refused), regular files only,
/// and not on a pseudo filesystem (`/proc/<pid>/environ` is a "regular"
/// file there).
pub fn open_regular_nofollow(path: &Path) -> Result<(File, std::fs::Metadata), String> {
    let how = OpenHow::new()
        .flags(read_flags() | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = loop {
        match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how) {
            Ok(fd) => break fd,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ELOOP) => {
                return Err("a symbolic link (not followed) or a path through /proc".to_string())
            }
            Err(e) => return Err(format!("cannot open: {}", errno_io(e))),
        }
    };
    let f = File::from(fd);
    let meta = require_regular(&f)?;
    if is_pseudo_fs(f.as_fd()) {
        return Err("on a pseudo filesystem (proc, sysfs, ...): not read".to_string());
    }
    Ok((f, meta))
}

/// Reads at most `max` bytes of `r`; the flag is true when there was more.
pub fn read_capped(r: impl Read, max: u64) -> io::Result<(Vec<u8>, bool)> {
    read_capped_sized(r, max, 0)
}

/// [`read_capped`] with the expected size (from `fstat`) reserved up front,
/// never more than `max`.
pub fn read_capped_sized(r: impl Read, max: u64, size: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut buf =
        Vec::with_capacity(size.min(max).saturating_add(1).min(usize::MAX as u64) as usize);
    r.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    let more = buf.len() as u64 > max;
    if more {
        buf.truncate(max as usize);
    }
    Ok((buf, more))
}

/// [`open_regular_nofollow`] then [`read_capped`] (the size from `fstat`
/// bounds the initial allocation, never above `max`).
pub fn read_file_capped(path: &Path, max: u64) -> Result<(Vec<u8>, bool), String> {
    let (f, meta) = open_regular_nofollow(path)?;
    read_capped_sized(&f, max, meta.len()).map_err(|e| format!("cannot read: {e}"))
}

/// True when the descriptor is on a pseudo filesystem (proc, sysfs, cgroup,
/// debugfs, tracefs, devpts, securityfs, bpf, nsfs): never walked or hashed.
pub fn is_pseudo_fs(fd: BorrowedFd<'_>) -> bool {
    const PSEUDO: [i64; 10] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x6367_7270, // cgroup2
        0x0027_e0eb, // cgroup
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0x1cd1,      // devpts
        0x7363_6673, // securityfs
        0xcafe_4a11, // bpf
        0x6e73_6673, // nsfs
    ];
    // SAFETY: statfs is plain data; fstatfs writes it for a valid fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is valid for the duration of the call.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    rc == 0 && PSEUDO.contains(&(st.f_type as i64))
}

/// Device and inode of an opened descriptor.
pub fn dev_ino(fd: impl AsFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(errno_io)?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// The superblock device of each mount of this process's mount namespace
/// (`/proc/self/mountinfo`), read once when first needed.
#[derive(Default)]
pub struct MountDevs(OnceLock<HashMap<u64, u64>>);

/// Largest mountinfo read.
const MAX_MOUNTINFO: u64 = 16 << 20;

impl MountDevs {
    /// The superblock device of the mount `f` is on (it differs from
    /// `st_dev` on btrfs subvolumes and other filesystems with anonymous
    /// devices; the kernel's `inode->i_sb->s_dev` is this one).
    pub fn sb_dev(&self, f: &File) -> Option<u64> {
        let map = self.0.get_or_init(|| {
            let mut text = String::new();
            if let Ok(f) = File::open("/proc/self/mountinfo") {
                let _ = f.take(MAX_MOUNTINFO).read_to_string(&mut text);
            }
            parse_mountinfo(&text)
        });
        map.get(&mount_id(f)?).copied()
    }
}

/// The mount id → device number map of a `/proc/<pid>/mountinfo` text
/// (fields 1 and 3); lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> HashMap<u64, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let id = it.next()?.parse().ok()?;
            let _parent = it.next()?;
            let (maj, min) = it.next()?.split_once(':')?;
            Some((id, libc::makedev(maj.parse().ok()?, min.parse().ok()?)))
        })
        .collect()
}

/// The mount id of an open file (statx STATX_MNT_ID).
pub fn mount_id(f: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    const STATX_MNT_ID: u32 = 0x1000;
    // SAFETY: zeroed plain struct, valid fd, empty C string, out-pointer.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_MNT_ID,
            &mut st,
        )
    };
    (r == 0 && st.stx_mask & STATX_MNT_ID != 0).then_some(st.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn fifo_symlink_and_dir_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_regular_nofollow(&fifo).unwrap_err();
        assert!(e.contains("fifo"), "{e}");
        let f = dir.path().join("f");
        std::fs::write(&f, b"abcdef").unwrap();
        symlink(&f, dir.path().join("l")).unwrap();
        let e = open_regular_nofollow(&dir.path().join("l")).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(open_regular_nofollow(dir.path())
            .unwrap_err()
            .contains("directory"));
        assert!(open_regular_nofollow(Path::new("/dev/zero"))
            .unwrap_err()
            .contains("character device"));
        let e = open_regular_nofollow(Path::new("/proc/self/environ")).unwrap_err();
        assert!(e.contains("pseudo filesystem"), "{e}");
        let e = open_regular_nofollow(Path::new("/proc/self/root/etc/hostname")).unwrap_err();
        assert!(e.contains("/proc"), "{e}");
        assert_eq!(read_file_capped(&f, 4).unwrap(), (b"abcd".to_vec(), true));
        assert_eq!(
            read_file_capped(&f, 6).unwrap(),
            (b"abcdef".to_vec(), false)
        );
    }

    #[test]
    fn beneath_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(dir.path().join("outside"), b"x").unwrap();
        std::fs::write(ws.join("in"), b"y").unwrap();
        symlink("../outside", ws.join("up")).unwrap();
        symlink(dir.path().join("outside"), ws.join("abs")).unwrap();
        symlink("in", ws.join("ok")).unwrap();
        let root = File::open(&ws).unwrap();
        assert!(open_beneath(root.as_fd(), Path::new("ok")).is_ok());
        for p in ["up", "abs", "../outside", "/etc/passwd"] {
            let e = open_beneath(root.as_fd(), Path::new(p)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{p}: {e}");
        }
        assert!(is_pseudo_fs(File::open("/proc/self").unwrap().as_fd()));
        assert!(!is_pseudo_fs(root.as_fd()));
    }

    #[test]
    fn superblock_devices_from_mountinfo() {
        let m = parse_mountinfo(
            "22 1 0:21 / /sys rw shared:7 - sysfs sysfs rw\n\
             30 1 0:30 /@home /home\\040x rw - btrfs /dev/sda2 rw\nbad line\n",
        );
        assert_eq!(m[&22], libc::makedev(0, 21));
        assert_eq!(m[&30], libc::makedev(0, 30));
        assert_eq!(m.len(), 2);
        // The file's own mount is found.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"x").unwrap();
        let file = std::fs::File::open(&f).unwrap();
        let dev = MountDevs::default().sb_dev(&file);
        assert!(dev.is_some(), "mount id of {f:?} not in mountinfo");
    }
}
