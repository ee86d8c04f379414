//! Hashing the files a step opened, with a cache keyed on file identity
//! (device, inode, size, mtime, ctime) so a heavy build does not hash the
//! same headers thousands of times across steps.
//!
//! Paths come from the traced job and the daemon reads them as root, so a
//! file is read only when every one of these holds:
//! - it opens with `openat2(RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//!   `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY` (the kernel gave canonical paths:
//!   a symlink on the way means the path changed since);
//! - it is a regular file, not on a pseudo filesystem;
//! - it is the file the kernel recorded when the job opened or exec'd it
//!   (an [`Identity`]: device and inode, plus size and times for a
//!   read-only open; for a written file, size and times as the writer left
//!   it when it let go of the file: [`Identity::Closed`]);
//! - the step's user could read it (mode bits against the user's uid, gid
//!   and groups, see [`Reader`]);
//! - it is no larger than the size cap, and the step's hashing time budget
//!   has not run out (checked between files and inside long reads).
//!
//! A file that changes while it is hashed is reported, not given a digest.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cilock_evidence::digest::{DigestSet, HashAlg};

use cilock_evidence::attestors::safeio::MountDevs;
use cilock_trace::fold::hash::Hasher;
pub use cilock_trace::fold::hash::{Hashed, Identity, Seen};
use cilock_trace::FileStamp;

/// How often a long read looks at the clock.
const CLOCK_EVERY: u64 = 4 << 20;

/// The credentials a file must be readable with: the step owner's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Default for Reader {
    /// `nobody`: only world-readable files.
    fn default() -> Self {
        Reader {
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
        }
    }
}

impl Reader {
    /// Root (reads everything).
    pub fn root() -> Self {
        Reader {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    /// The user `uid` as the user database has it: primary gid and
    /// supplementary groups (getgrouplist). A uid without an entry gets no
    /// group at all.
    pub fn of_uid(uid: u32) -> Self {
        use nix::unistd::{getgrouplist, Uid, User};
        if uid == 0 {
            return Self::root();
        }
        match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(u)) => {
                let groups = std::ffi::CString::new(u.name.as_bytes())
                    .ok()
                    .and_then(|n| getgrouplist(&n, u.gid).ok())
                    .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                    .unwrap_or_default();
                Reader {
                    uid,
                    gid: u.gid.as_raw(),
                    groups,
                }
            }
            _ => Reader {
                uid,
                gid: u32::MAX,
                groups: Vec::new(),
            },
        }
    }

    /// The calling process's own credentials.
    pub fn current() -> Self {
        let uid = nix::unistd::geteuid().as_raw();
        Reader {
            uid,
            gid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether the mode bits let this user read a file with metadata `md`
    /// (owner bits for the owner, else group bits for a member, else the
    /// others' bits; ACLs are not consulted, so a file readable only
    /// through an ACL gets no digest).
    pub fn can_read(&self, md: &std::fs::Metadata) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = md.mode();
        if md.uid() == self.uid {
            mode & 0o400 != 0
        } else if md.gid() == self.gid || self.groups.contains(&md.gid()) {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        }
    }
}

/// What one step's hashing may read and spend.
#[derive(Clone, Debug)]
pub struct HashRules {
    /// Whose read permission a file needs.
    pub reader: Reader,
    /// Largest file hashed, in bytes.
    pub max_file_size: u64,
    /// The step's hashing time budget (for messages).
    pub budget: Duration,
    /// When the budget runs out.
    pub deadline: Instant,
}

impl HashRules {
    /// Rules for `reader` with a size cap and a budget starting now.
    pub fn new(reader: Reader, max_file_size: u64, budget: Duration) -> Self {
        let now = Instant::now();
        HashRules {
            reader,
            max_file_size,
            budget,
            deadline: now
                .checked_add(budget)
                .unwrap_or(now + Duration::from_secs(86400 * 365)),
        }
    }

    /// Root, no size cap, a day of time: for tests and tools.
    pub fn unbounded() -> Self {
        Self::new(Reader::root(), u64::MAX, Duration::from_secs(86400))
    }
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
    FileStamp::from_metadata(md)
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

    /// Number of digests held.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hashes one path, if the file there has one of the identities in
    /// `expect` and `rules` allow it (see the module documentation).
    pub fn hash(
        &self,
        path: &Path,
        algs: &[HashAlg],
        rules: &HashRules,
        mounts: &MountDevs,
        expect: &[Identity],
    ) -> Hashed {
        if Instant::now() >= rules.deadline {
            return Hashed::OutOfTime(rules.budget);
        }
        let file = match open_no_symlinks(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Hashed::NotRegular("symbolic link")
            }
            Err(e) => return Hashed::Error(e.to_string()),
        };
        // /proc, /sys and other kernel filesystems hold no files to attest
        // (and /proc/PID/mem must never be read).
        if cilock_evidence::attestors::safeio::is_pseudo_fs(std::os::fd::AsFd::as_fd(&file)) {
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
        let mut seen = Seen {
            stamp: st,
            sb_dev: None,
        };
        if expect.iter().any(|e| e.dev_ino().0 != st.dev) {
            seen.sb_dev = mounts.sb_dev(&file).filter(|&d| d != st.dev);
        }
        if !expect.iter().any(|e| e.matches(&seen)) {
            return Hashed::Mismatch(seen);
        }
        if !rules.reader.can_read(&before) {
            return Hashed::Unreadable;
        }
        // Every digest (gitoids too) is computed in one streaming pass.
        let cap = rules.max_file_size;
        if before.size() > cap {
            return Hashed::TooLarge(before.size(), cap);
        }
        if let Ok(map) = self.map.lock() {
            if let Some(d) = map.get(&key(&st)) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Hashed::Digest(d.clone(), seen);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let mut r = Bounded {
            inner: &file,
            read: 0,
            limit: cap,
            next_check: CLOCK_EVERY,
            deadline: rules.deadline,
            stop: None,
        };
        let d = DigestSet::from_sized_reader(&mut r, before.size(), algs);
        match (r.stop, d) {
            (Some(Stop::Time), _) => Hashed::OutOfTime(rules.budget),
            (Some(Stop::Size), _) => Hashed::ChangedWhileHashing,
            (None, Err(e)) => Hashed::Error(e.to_string()),
            (None, Ok(d)) => {
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
                Hashed::Digest(d, seen)
            }
        }
    }

    /// Hashes many paths on `threads` threads; each path with the
    /// identities recorded for it.
    pub fn hash_all(
        &self,
        jobs: &[(&str, Vec<Identity>)],
        algs: &[HashAlg],
        rules: &HashRules,
        threads: usize,
    ) -> Vec<Hashed> {
        let next = AtomicUsize::new(0);
        let mounts = MountDevs::default();
        let out: Vec<Mutex<Option<Hashed>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads.max(1).min(jobs.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((p, expect)) = jobs.get(i) else {
                        break;
                    };
                    // Paths are recorded escaped (trace::pathname): open
                    // the real bytes, never a lossy spelling of them.
                    let h = match cilock_trace::pathname::to_path(p) {
                        Some(path) => self.hash(&path, algs, rules, &mounts, expect),
                        None => Hashed::Error("the recorded path is not in escaped form".into()),
                    };
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

/// The digest cache hashing for one step's user: what the fold's
/// [`Hasher`] is in the daemon.
pub struct StepHasher<'a> {
    cache: &'a DigestCache,
    reader: Reader,
}

impl DigestCache {
    /// This cache, hashing only files `reader` could read.
    pub fn for_reader(&self, reader: Reader) -> StepHasher<'_> {
        StepHasher {
            cache: self,
            reader,
        }
    }
}

impl Hasher for StepHasher<'_> {
    fn hash_all(
        &self,
        jobs: &[(&str, Vec<Identity>)],
        algs: &[HashAlg],
        max_file_size: u64,
        budget: Duration,
    ) -> Vec<Hashed> {
        let rules = HashRules::new(self.reader.clone(), max_file_size, budget);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        self.cache.hash_all(jobs, algs, &rules, threads)
    }
}

/// Why a bounded read stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Time,
    Size,
}

/// A reader that stops at a byte limit (the file grew) or a deadline.
struct Bounded<'a> {
    inner: &'a File,
    read: u64,
    limit: u64,
    next_check: u64,
    deadline: Instant,
    stop: Option<Stop>,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read >= self.next_check {
            self.next_check = self.read.saturating_add(CLOCK_EVERY);
            if Instant::now() >= self.deadline {
                self.stop = Some(Stop::Time);
                return Err(std::io::Error::other("hashing time budget ran out"));
            }
        }
        let mut inner = self.inner;
        let n = inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.limit {
            self.stop = Some(Stop::Size);
            return Err(std::io::Error::other("the file grew past the size cap"));
        }
        Ok(n)
    }
}

/// Opens `path` read-only without following any symlink on the way
/// (openat2 RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS; O_NOFOLLOW on
/// kernels without openat2), non-blocking so a fifo cannot stall the
/// daemon.
fn open_no_symlinks(path: &Path) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(p: &Path) -> Identity {
        Identity::Read(stamp_of(&std::fs::metadata(p).unwrap()))
    }

    fn h(c: &DigestCache, p: &Path, rules: &HashRules, expect: &[Identity]) -> Hashed {
        c.hash(p, &[HashAlg::Sha256], rules, &MountDevs::default(), expect)
    }

    #[test]
    fn hashes_caches_and_classifies() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, b"hello\n").unwrap();
        let c = DigestCache::default();
        let rules = HashRules::unbounded();
        let Hashed::Digest(d, _) = h(&c, &f, &rules, &[id_of(&f)]) else {
            panic!("not hashed")
        };
        assert_eq!(
            d.get_sha256(),
            Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
        );
        assert!(matches!(
            h(&c, &f, &rules, &[id_of(&f)]),
            Hashed::Digest(..)
        ));
        assert_eq!(c.stats(), (1, 1));
        // A change of content changes the identity: the old open's
        // identity no longer matches, a write open's still does.
        let old = id_of(&f);
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"other\n").unwrap();
        assert!(matches!(h(&c, &f, &rules, &[old]), Hashed::Mismatch(_)));
        let md = std::fs::metadata(&f).unwrap();
        let w = Identity::Write {
            dev: md.dev(),
            ino: md.ino(),
        };
        let Hashed::Digest(d2, _) = h(&c, &f, &rules, &[w]) else {
            panic!()
        };
        assert_ne!(d, d2);
        assert_eq!(
            h(&c, dir.path(), &rules, &[id_of(dir.path())]),
            Hashed::NotRegular("directory")
        );
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(
            h(&c, &link, &rules, &[w]),
            Hashed::NotRegular("symbolic link")
        );
        // A symlinked directory on the way is refused as well.
        let dlink = dir.path().join("dl");
        std::os::unix::fs::symlink(dir.path(), &dlink).unwrap();
        assert_eq!(
            h(&c, &dlink.join("a.txt"), &rules, &[w]),
            Hashed::NotRegular("symbolic link")
        );
        assert!(matches!(
            h(&c, &dir.path().join("missing"), &rules, &[w]),
            Hashed::Error(_)
        ));
        assert_eq!(
            h(&c, Path::new("/dev/null"), &rules, &[w]),
            Hashed::NotRegular("character device")
        );
        let many: Vec<(&str, Vec<Identity>)> =
            (0..20).map(|_| (f.to_str().unwrap(), vec![w])).collect();
        assert!(c
            .hash_all(&many, &[HashAlg::Sha256], &rules, 4)
            .iter()
            .all(|h| matches!(h, Hashed::Digest(x, _) if *x == d2)));
    }

    #[test]
    fn no_identity_or_another_file_means_no_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let c = DigestCache::default();
        let rules = HashRules::unbounded();
        // Nothing recorded: nothing read.
        assert!(matches!(h(&c, &a, &rules, &[]), Hashed::Mismatch(_)));
        // b renamed over a after a was opened: a's identity is not b's.
        let then = id_of(&a);
        std::fs::rename(&b, &a).unwrap();
        assert!(matches!(h(&c, &a, &rules, &[then]), Hashed::Mismatch(_)));
        let Identity::Read(s) = then else { panic!() };
        let w = Identity::Write {
            dev: s.dev,
            ino: s.ino,
        };
        assert!(matches!(h(&c, &a, &rules, &[w]), Hashed::Mismatch(_)));
        // Another device, same inode: not the same file.
        let md = std::fs::metadata(&a).unwrap();
        let other_dev = Identity::Write {
            dev: md.dev() ^ 0x55,
            ino: md.ino(),
        };
        assert!(matches!(
            h(&c, &a, &rules, &[other_dev]),
            Hashed::Mismatch(_)
        ));
        assert_eq!(c.stats(), (0, 0));
    }

    #[test]
    fn only_what_the_steps_user_could_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, b"s").unwrap();
        std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = DigestCache::default();
        let user = Reader {
            uid: 4242,
            gid: 4242,
            groups: vec![4343],
        };
        let rules = HashRules::new(user.clone(), u64::MAX, Duration::from_secs(60));
        assert_eq!(h(&c, &f, &rules, &[id_of(&f)]), Hashed::Unreadable);
        // Group bits for a supplementary group, others' bits for the rest,
        // only the owner's bits for the owner.
        std::os::unix::fs::chown(&f, Some(0), Some(4343)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(user.can_read(&std::fs::metadata(&f).unwrap()));
        assert!(matches!(
            h(&c, &f, &rules, &[id_of(&f)]),
            Hashed::Digest(..)
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(!user.can_read(&std::fs::metadata(&f).unwrap()));
        std::os::unix::fs::chown(&f, Some(4242), Some(0)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o077)).unwrap();
        assert!(!user.can_read(&std::fs::metadata(&f).unwrap()));
        // Execute-only: no digest.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o111)).unwrap();
        assert_eq!(h(&c, &f, &rules, &[id_of(&f)]), Hashed::Unreadable);
        assert!(Reader::root().can_read(&std::fs::metadata(&f).unwrap()));
        // A uid without a passwd entry has no groups.
        let nobody = Reader::of_uid(3_999_999);
        assert!(nobody.groups.is_empty() && nobody.gid == u32::MAX);
        assert_eq!(Reader::of_uid(0), Reader::root());
    }

    #[test]
    fn size_cap_and_time_budget() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        let file = std::fs::File::create(&f).unwrap();
        file.set_len(2 << 30).unwrap(); // sparse
        drop(file);
        let c = DigestCache::default();
        let me = Reader::root();
        let capped = HashRules::new(me.clone(), 1 << 30, Duration::from_secs(60));
        assert_eq!(
            h(&c, &f, &capped, &[id_of(&f)]),
            Hashed::TooLarge(2 << 30, 1 << 30)
        );
        // No budget left: nothing is opened.
        let spent = HashRules::new(me.clone(), u64::MAX, Duration::ZERO);
        assert_eq!(
            h(&c, &f, &spent, &[id_of(&f)]),
            Hashed::OutOfTime(Duration::ZERO)
        );
        // A budget that runs out inside the read of 2 GiB of zeros.
        let t0 = Instant::now();
        let tiny = HashRules::new(me.clone(), u64::MAX, Duration::from_millis(30));
        assert_eq!(
            h(&c, &f, &tiny, &[id_of(&f)]),
            Hashed::OutOfTime(Duration::from_millis(30))
        );
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        // gitoids stream like the other digests: the size cap applies.
        let capped = HashRules::new(me, 1 << 30, Duration::from_secs(600));
        let g = c.hash(
            &f,
            &[HashAlg::GitoidSha256],
            &capped,
            &MountDevs::default(),
            &[id_of(&f)],
        );
        assert_eq!(g, Hashed::TooLarge(2 << 30, 1 << 30));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = DigestCache::new(3);
        let rules = HashRules::unbounded();
        for i in 0..10 {
            let f = dir.path().join(format!("f{i}"));
            std::fs::write(&f, format!("{i}")).unwrap();
            assert!(matches!(
                h(&c, &f, &rules, &[id_of(&f)]),
                Hashed::Digest(..)
            ));
            assert!(c.len() <= 3);
        }
    }
}
