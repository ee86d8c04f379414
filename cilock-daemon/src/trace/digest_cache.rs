//! Hashing the files a step opened, with a cache keyed on file identity
//! (device, inode, size, mtime, ctime) so a heavy build does not hash the
//! same headers thousands of times across steps.
//!
//! Paths come from the traced job. They are opened without following
//! symlinks (the kernel already gave canonical paths), non-blocking, and
//! only regular files are read; a file that changes while it is hashed is
//! reported, not given a digest.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cilock_evidence::digest::{DigestSet, HashAlg};

use super::event::FileStamp;

/// The outcome of hashing one path.
#[derive(Clone, Debug, PartialEq)]
pub enum Hashed {
    /// The digest, and the file's identity when it was hashed.
    Digest(DigestSet, FileStamp),
    /// Not a regular file (directory, device, fifo, socket).
    NotRegular(&'static str),
    /// The file changed while it was being read.
    ChangedWhileHashing,
    /// It could not be opened or read.
    Error(String),
}

type Key = (u64, u64, i64, i128, i128);

/// Cache of digests by file identity.
pub struct DigestCache {
    map: Mutex<HashMap<Key, DigestSet>>,
    capacity: usize,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

/// Identity of an open file from its metadata.
pub fn stamp_of(md: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size() as i64,
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
        mode: md.mode(),
    }
}

fn key(s: &FileStamp) -> Key {
    (s.dev, s.ino, s.size, s.mtime_ns, s.ctime_ns)
}

fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFLNK => "symbolic link",
        _ => "not a regular file",
    }
}

impl Default for DigestCache {
    fn default() -> Self {
        Self::new(500_000)
    }
}

impl DigestCache {
    /// A cache holding at most `capacity` digests (it is cleared when full).
    pub fn new(capacity: usize) -> Self {
        DigestCache {
            map: Mutex::new(HashMap::new()),
            capacity,
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
        }
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Hashes one path.
    pub fn hash(&self, path: &Path, algs: &[HashAlg]) -> Hashed {
        let file = match open_no_symlinks(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Hashed::NotRegular("symbolic link")
            }
            Err(e) => return Hashed::Error(e.to_string()),
        };
        if on_pseudo_fs(&file) {
            return Hashed::NotRegular("pseudo filesystem");
        }
        let before = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Hashed::Error(e.to_string()),
        };
        if !before.file_type().is_file() {
            return Hashed::NotRegular(kind_name(before.mode()));
        }
        let st = stamp_of(&before);
        if let Ok(map) = self.map.lock() {
            if let Some(d) = map.get(&key(&st)) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Hashed::Digest(d.clone(), st);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let d = match hash_file(file_reader(&file), algs) {
            Ok(d) => d,
            Err(e) => return Hashed::Error(e.to_string()),
        };
        match file.metadata() {
            Ok(after) if stamp_of(&after) == st => {}
            Ok(_) => return Hashed::ChangedWhileHashing,
            Err(e) => return Hashed::Error(e.to_string()),
        }
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(key(&st), d.clone());
        }
        Hashed::Digest(d, st)
    }

    /// Hashes many paths on `threads` threads.
    pub fn hash_all(&self, paths: &[&str], algs: &[HashAlg], threads: usize) -> Vec<Hashed> {
        let next = AtomicUsize::new(0);
        let out: Vec<Mutex<Option<Hashed>>> = paths.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads.max(1).min(paths.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    let h = self.hash(Path::new(p), algs);
                    if let Ok(mut slot) = out[i].lock() {
                        *slot = Some(h);
                    }
                });
            }
        });
        out.into_iter()
            .map(|m| {
                m.into_inner()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| Hashed::Error("not hashed".into()))
            })
            .collect()
    }
}

/// Opens `path` read-only without following any symlink on the way
/// (openat2 RESOLVE_NO_SYMLINKS; O_NOFOLLOW on kernels without openat2),
/// non-blocking so a fifo cannot stall the daemon.
fn open_no_symlinks(path: &Path) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: valid C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh fd we own.
        return Ok(unsafe { File::from_raw_fd(fd as i32) });
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// True for /proc, /sys and other kernel filesystems, whose contents are
/// not files to attest (and, for /proc/PID/mem, must not be read).
fn on_pseudo_fs(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-pointer.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
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
    PSEUDO.contains(&(st.f_type as i64))
}

fn file_reader(f: &File) -> impl Read + '_ {
    f
}

fn hash_file(r: impl Read, algs: &[HashAlg]) -> std::io::Result<DigestSet> {
    DigestSet::from_reader(r, algs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_caches_and_classifies() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, b"hello\n").unwrap();
        let c = DigestCache::default();
        let algs = [HashAlg::Sha256];
        let Hashed::Digest(d, _) = c.hash(&f, &algs) else {
            panic!("not hashed")
        };
        assert_eq!(
            d.get_sha256(),
            Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
        );
        assert!(matches!(c.hash(&f, &algs), Hashed::Digest(..)));
        assert_eq!(c.stats(), (1, 1));
        // A change of content changes the identity: no stale digest.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"other\n").unwrap();
        let Hashed::Digest(d2, _) = c.hash(&f, &algs) else {
            panic!()
        };
        assert_ne!(d, d2);
        assert_eq!(c.hash(dir.path(), &algs), Hashed::NotRegular("directory"));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(c.hash(&link, &algs), Hashed::NotRegular("symbolic link"));
        assert!(matches!(
            c.hash(&dir.path().join("missing"), &algs),
            Hashed::Error(_)
        ));
        assert_eq!(
            c.hash(Path::new("/dev/null"), &algs),
            Hashed::NotRegular("character device")
        );
        let many: Vec<String> = (0..20).map(|_| f.display().to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(c
            .hash_all(&refs, &algs, 4)
            .iter()
            .all(|h| matches!(h, Hashed::Digest(x, _) if *x == d2)));
    }
}
