//! Walking and hashing a working tree, shared by the material and product
//! attestors.
//!
//! The walk follows Witness (go-witness `RecordArtifacts` on main):
//! - keys are paths relative to the root, with `/` separators;
//! - symbolic links are followed only when they resolve inside the root
//!   (links pointing outside, and broken links, are skipped and reported);
//! - a linked directory is not walked again under the link's name: the
//!   directory is walked where it is (this also breaks link cycles);
//! - anything that is not a regular file (fifos, sockets, devices) is
//!   skipped, so the walk never blocks on a fifo.
//!
//! cilock walks only by descriptor ([`walk`]): the working directory is
//! opened once ([`AttestationContext::workdir_fd`] or the path, at the start),
//! every directory and file is opened relative to its parent's descriptor
//! with `O_NOFOLLOW`, links are resolved with `openat2(RESOLVE_BENEATH)`, and
//! the depth, the number of entries and the size of hashed files are bounded
//! (what is cut is listed in `skipped`, never silently dropped).
//!
//! Files are hashed in parallel on scoped threads as the walk finds them.
//! When stderr is a terminal and the tree is large, an `indicatif` progress
//! bar is shown.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use globset::{Glob, GlobSet, GlobSetBuilder};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{safeio, AttestError, AttestationContext};
use crate::digest::{DigestSet, HashAlg};

/// Trees with at least this many files show a progress bar (on a terminal).
pub const PROGRESS_THRESHOLD: usize = 2000;

/// A file the walk did not record, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedPath {
    /// Path relative to the root.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The result of a walk: relative path → digest set, and what was skipped.
#[derive(Clone, Debug, Default)]
pub struct TreeSnapshot {
    /// Recorded files.
    pub files: BTreeMap<String, DigestSet>,
    /// Paths that were not recorded.
    pub skipped: Vec<SkippedPath>,
}

/// Include/exclude globs over relative paths. Patterns follow Witness
/// (gobwas/glob without separators): `*` also matches `/`.
#[derive(Clone, Debug, Default)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

fn build_globset(patterns: &[String], what: &str) -> Result<Option<GlobSet>, AttestError> {
    let patterns: Vec<&String> = patterns.iter().filter(|p| !p.is_empty()).collect();
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = Glob::new(p)
            .map_err(|e| AttestError::Invalid(format!("invalid {what} glob {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| AttestError::Invalid(format!("invalid {what} globs: {e}")))
}

impl PathFilter {
    /// A filter from include and exclude patterns. An empty include list
    /// includes everything (Witness's default include glob is `*`).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, AttestError> {
        Ok(PathFilter {
            include: build_globset(include, "include")?,
            exclude: build_globset(exclude, "exclude")?,
        })
    }

    /// True when `rel` is included and not excluded.
    pub fn matches(&self, rel: &str) -> bool {
        if let Some(inc) = &self.include {
            if !inc.is_match(rel) {
                return false;
            }
        }
        if let Some(exc) = &self.exclude {
            if exc.is_match(rel) {
                return false;
            }
        }
        true
    }

    /// True when the filter lets everything through.
    pub fn is_pass_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }
}

/// Files larger than this are not hashed by default (listed as skipped).
pub const DEFAULT_MAX_HASH_FILE_SIZE: u64 = 4 << 30;
/// Directories deeper than this below the root are not walked (listed as
/// skipped).
pub const MAX_WALK_DEPTH: usize = 256;
/// The walk stops after this many directory entries (the truncation is
/// listed as skipped).
pub const MAX_WALK_ENTRIES: usize = 1_000_000;
/// Jobs waiting for a hashing thread; each holds its directory's descriptor,
/// so this bounds the descriptors the walk keeps open (with the depth).
const JOB_QUEUE: usize = 128;

/// Bounds of a walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// Deepest directory walked (the root is depth 0).
    pub max_depth: usize,
    /// Most directory entries looked at.
    pub max_entries: usize,
    /// Largest file handed to the visitor (bigger ones are skipped).
    pub max_file_size: u64,
    /// Threads running the visitor (0: one per CPU, at most 8; 1: the
    /// walking thread itself, in walk order).
    pub threads: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_depth: MAX_WALK_DEPTH,
            max_entries: MAX_WALK_ENTRIES,
            max_file_size: DEFAULT_MAX_HASH_FILE_SIZE,
            threads: 0,
        }
    }
}

/// A regular file met by the walk, already opened (read-only, non-blocking)
/// and checked with `fstat`.
#[derive(Debug)]
pub struct WalkFile<'a> {
    /// Path relative to the root, `/`-separated (lossy for non-UTF-8 names).
    pub rel: &'a str,
    /// The opened file.
    pub file: &'a std::fs::File,
    /// Its `fstat`.
    pub meta: &'a std::fs::Metadata,
}

/// Counters of a walk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Directories opened (the root included).
    pub dirs: usize,
    /// Directory entries looked at.
    pub entries: usize,
    /// True when a bound stopped part of the walk.
    pub truncated: bool,
}

/// What [`walk`] returns.
#[derive(Debug)]
pub struct WalkOutput<T> {
    /// What the visitor returned, by relative path.
    pub files: BTreeMap<String, T>,
    /// Paths not visited, and why (sorted by path).
    pub skipped: Vec<SkippedPath>,
    /// Counters.
    pub stats: WalkStats,
}

/// The visitor of [`walk`]: `Ok(Some(v))` records `v`, `Ok(None)` records
/// nothing, `Err(reason)` lists the file as skipped.
pub type Visitor<'v, T> = dyn Fn(&WalkFile<'_>) -> Result<Option<T>, String> + Sync + 'v;

fn rel_string(rel: &Path) -> String {
    // Non-UTF-8 names are recorded lossily (U+FFFD), as Go's JSON encoder
    // does for invalid UTF-8 in strings.
    rel.to_string_lossy().into_owned()
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

enum JobKind {
    /// A regular file (by `d_type`).
    File,
    /// A symbolic link.
    Link,
}

/// A file to open relative to its directory's descriptor.
struct Job {
    dir: Arc<OwnedFd>,
    name: OsString,
    rel_path: PathBuf,
    rel: String,
    kind: JobKind,
}

struct Shared<'a, T> {
    root: BorrowedFd<'a>,
    /// Absolute spellings of the root, for absolute in-tree links.
    abs_roots: &'a [PathBuf],
    limits: &'a WalkLimits,
    visit: &'a Visitor<'a, T>,
    files: Mutex<BTreeMap<String, T>>,
    skipped: Mutex<Vec<SkippedPath>>,
    bar: Option<indicatif::ProgressBar>,
}

impl<T> Shared<'_, T> {
    fn skip(&self, path: impl Into<String>, reason: impl Into<String>) {
        if let Ok(mut v) = self.skipped.lock() {
            v.push(SkippedPath {
                path: path.into(),
                reason: reason.into(),
            });
        }
    }

    fn run(&self, job: Job) {
        let opened = match job.kind {
            JobKind::File => {
                match nix::fcntl::openat(
                    job.dir.as_fd(),
                    job.name.as_os_str(),
                    safeio::read_flags() | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                ) {
                    Ok(fd) => Ok(fd),
                    // Replaced by a link since it was listed: a link now.
                    Err(Errno::ELOOP) => self.open_link(&job),
                    Err(e) => Err(format!("cannot open: {}", errno_io(e))),
                }
            }
            JobKind::Link => self.open_link(&job),
        };
        if let Some(pb) = &self.bar {
            pb.inc(1);
        }
        let fd = match opened {
            Ok(fd) => fd,
            Err(reason) if reason.is_empty() => return,
            Err(reason) => return self.skip(job.rel, reason),
        };
        let file = std::fs::File::from(fd);
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return self.skip(job.rel, format!("cannot stat: {e}")),
        };
        let ft = meta.file_type();
        if ft.is_dir() && matches!(job.kind, JobKind::Link) {
            // An in-tree link to a directory: the directory itself is walked
            // where it really is (this also breaks link cycles).
            return;
        }
        if !ft.is_file() {
            let what = if matches!(job.kind, JobKind::Link) {
                "symbolic link to something that is not a regular file".to_string()
            } else {
                format!("not a regular file ({})", safeio::kind_of(ft))
            };
            return self.skip(job.rel, what);
        }
        if meta.len() > self.limits.max_file_size {
            return self.skip(
                job.rel,
                format!(
                    "not hashed: {} bytes, above the {}-byte limit",
                    meta.len(),
                    self.limits.max_file_size
                ),
            );
        }
        let wf = WalkFile {
            rel: &job.rel,
            file: &file,
            meta: &meta,
        };
        match (self.visit)(&wf) {
            Ok(Some(v)) => {
                if let Ok(mut m) = self.files.lock() {
                    m.insert(job.rel, v);
                }
            }
            Ok(None) => {}
            Err(reason) => self.skip(job.rel, reason),
        }
    }

    /// Opens what the link `job` points to, beneath the root. `Err("")`:
    /// nothing to record and nothing to report.
    fn open_link(&self, job: &Job) -> Result<OwnedFd, String> {
        let outside = |target: &std::ffi::OsStr| {
            format!(
                "symbolic link to {} outside the working directory",
                Path::new(target).display()
            )
        };
        match safeio::open_beneath(self.root, &job.rel_path) {
            Ok(fd) => Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err("broken symbolic link".into()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Err("symbolic link loop (or a link through /proc)".into())
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // Absolute links into the tree are followed, beneath the root.
                let target = nix::fcntl::readlinkat(job.dir.as_fd(), job.name.as_os_str())
                    .map_err(|e| format!("cannot read symbolic link: {}", errno_io(e)))?;
                let t = Path::new(&target);
                if t.is_absolute() {
                    for root in self.abs_roots {
                        if let Ok(inner) = t.strip_prefix(root) {
                            if inner.as_os_str().is_empty() {
                                return Err(String::new());
                            }
                            return match safeio::open_beneath(self.root, inner) {
                                Ok(fd) => Ok(fd),
                                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                                    Err("broken symbolic link".into())
                                }
                                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                                    Err(outside(&target))
                                }
                                Err(e) => Err(format!("cannot open link target: {e}")),
                            };
                        }
                    }
                }
                Err(outside(&target))
            }
            Err(e) => Err(format!("cannot open link target: {e}")),
        }
    }
}

/// A directory waiting to be opened: by name, relative to its parent's
/// descriptor (kept alive by the `Arc`).
struct PendingDir {
    parent: Arc<OwnedFd>,
    parent_dev: u64,
    name: OsString,
    rel: PathBuf,
    depth: usize,
}

/// Walks the tree under the directory descriptor `root`, only by
/// descriptor: each directory is opened by name relative to its parent's
/// descriptor (`O_NOFOLLOW | O_DIRECTORY`), each file relative to its
/// directory's (`O_NOFOLLOW | O_NONBLOCK | O_NOCTTY`, then `fstat`: regular
/// files only), so no path is resolved again from the root and the cost is
/// linear in the size of the tree. A directory swapped for a symbolic link
/// once listed is reported, never followed; the root itself never changes.
///
/// Symbolic links are followed only beneath the root
/// (`openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the root, which
/// is where a link's own relative path is resolved); absolute links are
/// followed when they start with one of `abs_roots` (the root's absolute
/// spellings). Links to directories are not descended (the directory is
/// walked where it is). Fifos, sockets, devices, links leaving the tree,
/// broken links, directories on a pseudo filesystem, files above
/// `limits.max_file_size`, directories below `limits.max_depth` and every
/// entry after `limits.max_entries` are listed in `skipped`, with the reason.
///
/// `visit` runs on every regular file, on up to `limits.threads` threads.
pub fn walk<T: Send>(
    root: BorrowedFd<'_>,
    abs_roots: &[PathBuf],
    limits: &WalkLimits,
    visit: &Visitor<'_, T>,
) -> Result<WalkOutput<T>, AttestError> {
    let root_dir = nix::fcntl::openat(
        root,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| AttestError::Io {
        what: "opening the working directory for listing".into(),
        source: errno_io(e),
    })?;
    if safeio::is_pseudo_fs(root_dir.as_fd()) {
        return Err(AttestError::Invalid(
            "the working directory is on a pseudo filesystem (proc, sysfs, ...)".into(),
        ));
    }
    let (root_dev, _) = safeio::dev_ino(&root_dir).map_err(|e| AttestError::Io {
        what: "reading the working directory".into(),
        source: e,
    })?;
    let threads = match limits.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8),
        n => n.min(64),
    };
    let shared = Shared {
        root,
        abs_roots,
        limits,
        visit,
        files: Mutex::new(BTreeMap::new()),
        skipped: Mutex::new(Vec::new()),
        bar: None,
    };
    let mut shared = shared;
    let mut stats = WalkStats::default();
    if threads <= 1 {
        walk_dirs(
            &shared,
            Arc::new(root_dir),
            root_dev,
            &mut stats,
            &mut |job| shared.run(job),
        );
    } else {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(JOB_QUEUE);
        let rx = Mutex::new(rx);
        let want_bar = std::io::stderr().is_terminal();
        if want_bar {
            let pb = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("cilock: hashing {pos} files {spinner}")
            {
                pb.set_style(style);
            }
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            shared.bar = Some(pb);
        }
        let shared_ref = &shared;
        std::thread::scope(|s| {
            for _ in 0..threads {
                let rx = &rx;
                s.spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => break,
                    };
                    match job {
                        Ok(job) => shared_ref.run(job),
                        Err(_) => break,
                    }
                });
            }
            let mut sent = 0usize;
            walk_dirs(
                shared_ref,
                Arc::new(root_dir),
                root_dev,
                &mut stats,
                &mut |job| {
                    sent += 1;
                    if sent == PROGRESS_THRESHOLD {
                        if let Some(pb) = &shared_ref.bar {
                            pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                        }
                    }
                    // A send fails only when every worker is gone.
                    let _ = tx.send(job);
                },
            );
            drop(tx);
        });
        if let Some(pb) = &shared.bar {
            pb.finish_and_clear();
        }
    }
    let mut skipped = shared.skipped.into_inner().unwrap_or_default();
    skipped.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.reason.cmp(&b.reason)));
    Ok(WalkOutput {
        files: shared.files.into_inner().unwrap_or_default(),
        skipped,
        stats,
    })
}

/// The directory part of the walk (on the calling thread): lists
/// directories, hands files and links to `job`.
fn walk_dirs<T>(
    shared: &Shared<'_, T>,
    root_dir: Arc<OwnedFd>,
    root_dev: u64,
    stats: &mut WalkStats,
    job: &mut dyn FnMut(Job),
) {
    let limits = shared.limits;
    let mut stack: Vec<PendingDir> = Vec::new();
    let mut current: Option<(Arc<OwnedFd>, u64, PathBuf, usize)> =
        Some((root_dir, root_dev, PathBuf::new(), 0));
    loop {
        let (dir, dev, rel_dir, depth) = match current.take() {
            Some(c) => c,
            None => {
                let Some(p) = stack.pop() else { break };
                let rel_s = rel_string(&p.rel);
                let fd = match nix::fcntl::openat(
                    p.parent.as_fd(),
                    p.name.as_os_str(),
                    OFlag::O_RDONLY
                        | OFlag::O_DIRECTORY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_NONBLOCK
                        | OFlag::O_NOCTTY
                        | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                        shared.skip(
                            rel_s,
                            "not walked: no longer a directory (changed during the walk)",
                        );
                        continue;
                    }
                    Err(e) => {
                        shared.skip(rel_s, format!("cannot read directory: {}", errno_io(e)));
                        continue;
                    }
                };
                let dev = match safeio::dev_ino(&fd) {
                    Ok((d, _)) => d,
                    Err(e) => {
                        shared.skip(rel_s, format!("cannot stat directory: {e}"));
                        continue;
                    }
                };
                if dev != p.parent_dev && safeio::is_pseudo_fs(fd.as_fd()) {
                    shared.skip(rel_s, "not walked: a pseudo filesystem (proc, sysfs, ...)");
                    continue;
                }
                (Arc::new(fd), dev, p.rel, p.depth)
            }
        };
        stats.dirs += 1;
        let rel_dir_s = rel_string(&rel_dir);
        let listing = match dir.try_clone().map(nix::dir::Dir::from_fd) {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                shared.skip(rel_dir_s, format!("cannot read directory: {}", errno_io(e)));
                continue;
            }
            Err(e) => {
                shared.skip(rel_dir_s, format!("cannot read directory: {e}"));
                continue;
            }
        };
        let mut listing = listing;
        let mut entries: Vec<(OsString, Option<nix::dir::Type>)> = Vec::new();
        let mut stop = false;
        for ent in listing.iter() {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    shared.skip(
                        rel_dir_s.clone(),
                        format!("cannot list directory entry: {}", errno_io(e)),
                    );
                    break;
                }
            };
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            stats.entries += 1;
            if stats.entries > limits.max_entries {
                stats.truncated = true;
                shared.skip(
                    rel_dir_s.clone(),
                    format!(
                        "walk truncated: more than {} directory entries; the rest of the tree was not recorded",
                        limits.max_entries
                    ),
                );
                stop = true;
                break;
            }
            entries.push((OsString::from_vec(name.to_vec()), ent.file_type()));
        }
        drop(listing);
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ty) in entries {
            let rel = rel_dir.join(&name);
            let ty = match ty {
                Some(t) => Some(t),
                None => nix::sys::stat::fstatat(
                    dir.as_fd(),
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ok()
                .and_then(|st| match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => Some(nix::dir::Type::Directory),
                    libc::S_IFREG => Some(nix::dir::Type::File),
                    libc::S_IFLNK => Some(nix::dir::Type::Symlink),
                    libc::S_IFIFO => Some(nix::dir::Type::Fifo),
                    libc::S_IFSOCK => Some(nix::dir::Type::Socket),
                    libc::S_IFCHR => Some(nix::dir::Type::CharacterDevice),
                    libc::S_IFBLK => Some(nix::dir::Type::BlockDevice),
                    _ => None,
                }),
            };
            match ty {
                Some(nix::dir::Type::Directory) => {
                    if depth + 1 > limits.max_depth {
                        stats.truncated = true;
                        shared.skip(
                            rel_string(&rel),
                            format!(
                                "not walked: deeper than {} directories below the working directory",
                                limits.max_depth
                            ),
                        );
                    } else {
                        stack.push(PendingDir {
                            parent: dir.clone(),
                            parent_dev: dev,
                            name,
                            rel,
                            depth: depth + 1,
                        });
                    }
                }
                Some(nix::dir::Type::File) | Some(nix::dir::Type::Symlink) => {
                    let kind = if ty == Some(nix::dir::Type::File) {
                        JobKind::File
                    } else {
                        JobKind::Link
                    };
                    let rel_s = rel_string(&rel);
                    job(Job {
                        dir: dir.clone(),
                        name,
                        rel_path: rel,
                        rel: rel_s,
                        kind,
                    });
                }
                Some(other) => shared.skip(
                    rel_string(&rel),
                    format!(
                        "not a regular file ({})",
                        match other {
                            nix::dir::Type::Fifo => "a fifo",
                            nix::dir::Type::Socket => "a socket",
                            nix::dir::Type::CharacterDevice => "a character device",
                            nix::dir::Type::BlockDevice => "a block device",
                            _ => "unknown type",
                        }
                    ),
                ),
                None => shared.skip(rel_string(&rel), "cannot stat"),
            }
        }
        if stop {
            break;
        }
    }
}

/// The absolute spellings of the working directory, for absolute links
/// into the tree: the kernel's name of the descriptor and the path given.
pub fn abs_roots(ctx: &AttestationContext, root: BorrowedFd<'_>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())) {
        if p.is_absolute() {
            v.push(p);
        }
    }
    if ctx.workdir.is_absolute() && !v.contains(&ctx.workdir) {
        v.push(ctx.workdir.clone());
    }
    v
}

fn file_hashes(hashes: &[HashAlg]) -> Result<Vec<HashAlg>, AttestError> {
    let hashes: Vec<HashAlg> = hashes
        .iter()
        .copied()
        .filter(|h| *h != HashAlg::DirHash)
        .collect();
    if hashes.is_empty() {
        return Err(AttestError::Invalid(
            "no file hash algorithm selected".into(),
        ));
    }
    Ok(hashes)
}

/// Walks the working directory of `ctx` (by descriptor, see [`walk`]) and
/// applies `visit` to every regular file no larger than
/// `ctx.max_hash_file_size`.
pub fn walk_workdir<T: Send>(
    ctx: &AttestationContext,
    visit: &Visitor<'_, T>,
) -> Result<WalkOutput<T>, AttestError> {
    let root = safeio::open_workdir(ctx)?;
    let abs = abs_roots(ctx, root.as_fd());
    let limits = WalkLimits {
        max_file_size: ctx.max_hash_file_size,
        ..WalkLimits::default()
    };
    walk(root.as_fd(), &abs, &limits, visit).map_err(|e| match e {
        AttestError::Invalid(m) => AttestError::Invalid(format!("{m}: {}", ctx.workdir.display())),
        other => other,
    })
}

/// Lists the regular files of the working directory (relative paths) and
/// what was skipped, without reading them.
pub fn list_files(
    ctx: &AttestationContext,
) -> Result<(Vec<String>, Vec<SkippedPath>), AttestError> {
    let out = walk_workdir(ctx, &|_f: &WalkFile<'_>| Ok(Some(())))?;
    Ok((out.files.into_keys().collect(), out.skipped))
}

/// Hashes an opened file (streaming, see [`DigestSet::from_file_handle`]).
pub fn hash_walk_file(f: &WalkFile<'_>, hashes: &[HashAlg]) -> Result<DigestSet, String> {
    DigestSet::from_sized_reader(f.file, f.meta.len(), hashes)
        .map_err(|e| format!("cannot hash: {e}"))
}

/// Walks the working directory of `ctx` and hashes every regular file with
/// `ctx.hashes` (see the module docs).
pub fn snapshot(ctx: &AttestationContext) -> Result<TreeSnapshot, AttestError> {
    let hashes = file_hashes(&ctx.hashes)?;
    let out = walk_workdir(ctx, &|f: &WalkFile<'_>| {
        hash_walk_file(f, &hashes).map(Some)
    })?;
    Ok(TreeSnapshot {
        files: out.files,
        skipped: out.skipped,
    })
}

/// The file hash algorithms of `hashes` (`dirHash` removed); an error when
/// none is left.
pub fn hashes_for_files(hashes: &[HashAlg]) -> Result<Vec<HashAlg>, AttestError> {
    file_hashes(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_semantics() {
        let f = PathFilter::new(&["*.txt".into()], &["secret/*".into()]).unwrap();
        assert!(f.matches("a.txt"));
        assert!(f.matches("dir/a.txt")); // `*` crosses `/`, as in Witness
        assert!(!f.matches("secret/a.txt"));
        assert!(!f.matches("a.bin"));
        assert!(PathFilter::new(&[], &[]).unwrap().is_pass_all());
        assert!(PathFilter::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn fifo_is_skipped_not_blocking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let ctx = AttestationContext::new(dir.path().to_path_buf(), vec![]);
        let snap = snapshot(&ctx).unwrap();
        assert_eq!(snap.files.keys().collect::<Vec<_>>(), vec!["f"]);
        assert_eq!(snap.skipped[0].path, "pipe");
        assert!(snap.skipped[0].reason.contains("fifo"));
    }

    fn names(out: &WalkOutput<()>) -> Vec<&str> {
        out.files.keys().map(String::as_str).collect()
    }

    fn list(root: &Path, limits: &WalkLimits) -> WalkOutput<()> {
        let f = std::fs::File::open(root).unwrap();
        walk(
            f.as_fd(),
            &[root.to_path_buf()],
            limits,
            &|_f: &WalkFile<'_>| Ok(Some(())),
        )
        .unwrap()
    }

    /// A chain of `depth` directories `d/d/d/...` under `root` (built by
    /// descriptor: the path is longer than PATH_MAX), with a file `f` in
    /// the directory at depth `file_at`.
    fn chain(root: &Path, depth: usize, file_at: usize) {
        let mut cur = std::fs::File::open(root).unwrap().into();
        for i in 1..=depth {
            nix::sys::stat::mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
            cur = nix::fcntl::openat(
                &cur,
                "d",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            if i == file_at {
                let fd = nix::fcntl::openat(
                    &cur,
                    "f",
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .unwrap();
                drop(fd);
            }
        }
        let _: OwnedFd = cur;
    }

    #[test]
    fn deep_chain_is_walked_once_per_directory_and_cut_at_the_depth_bound() {
        let dir = tempfile::tempdir().unwrap();
        chain(dir.path(), 2500, 100);
        let out = list(
            dir.path(),
            &WalkLimits {
                threads: 1,
                ..Default::default()
            },
        );
        // Linear: the root plus one open per directory down to the bound.
        assert_eq!(out.stats.dirs, MAX_WALK_DEPTH + 1);
        assert_eq!(out.stats.entries, MAX_WALK_DEPTH + 1 + 1);
        assert!(out.stats.truncated);
        let deep = format!("{}f", "d/".repeat(100));
        assert_eq!(names(&out), vec![deep.as_str()]);
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(out.skipped[0].path, vec!["d"; MAX_WALK_DEPTH + 1].join("/"));
        assert!(
            out.skipped[0].reason.contains("deeper than 256"),
            "{:?}",
            out.skipped
        );
    }

    #[test]
    fn entry_bound_truncates_visibly() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i:02}")), b"x").unwrap();
        }
        let out = list(
            dir.path(),
            &WalkLimits {
                max_entries: 10,
                ..Default::default()
            },
        );
        assert_eq!(out.files.len(), 10);
        assert!(out.stats.truncated);
        assert!(
            out.skipped[0].reason.contains("walk truncated"),
            "{:?}",
            out.skipped
        );
        // The size bound: files above it are listed, not visited.
        let out = list(
            dir.path(),
            &WalkLimits {
                max_file_size: 0,
                ..Default::default()
            },
        );
        assert!(out.files.is_empty());
        assert_eq!(out.skipped.len(), 20);
        assert!(out.skipped[0].reason.contains("above the 0-byte limit"));
    }

    #[test]
    fn directory_swapped_for_a_link_mid_walk_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let secret = tmp.path().join("rootonly");
        std::fs::create_dir_all(ws.join("a")).unwrap();
        std::fs::create_dir_all(ws.join("zzz")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(ws.join("a/mine.txt"), b"mine").unwrap();
        std::fs::write(ws.join("zzz/f"), b"f").unwrap();
        std::fs::write(secret.join("stolen.txt"), b"secret").unwrap();
        let root = std::fs::File::open(&ws).unwrap();
        // One thread: the visitor runs in walk order, after `a` was listed
        // in the root and before it is opened (the walk is LIFO: zzz first).
        let (ws2, secret2) = (ws.clone(), secret.clone());
        let out = walk(
            root.as_fd(),
            std::slice::from_ref(&ws),
            &WalkLimits {
                threads: 1,
                ..Default::default()
            },
            &move |f: &WalkFile<'_>| {
                if f.rel == "zzz/f" {
                    std::fs::rename(ws2.join("a"), ws2.join("a.real")).unwrap();
                    std::os::unix::fs::symlink(&secret2, ws2.join("a")).unwrap();
                }
                Ok(Some(()))
            },
        )
        .unwrap();
        assert_eq!(out.files.keys().collect::<Vec<_>>(), vec!["zzz/f"]);
        assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
        assert_eq!(out.skipped[0].path, "a");
        assert!(out.skipped[0].reason.contains("no longer a directory"));
    }

    #[test]
    fn links_inside_outside_absolute_and_loops() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/x"), b"x").unwrap();
        std::fs::write(tmp.path().join("out"), b"o").unwrap();
        let sl = |t: &Path, l: &str| std::os::unix::fs::symlink(t, ws.join(l)).unwrap();
        sl(Path::new("sub/x"), "rel");
        sl(&ws.join("sub/x"), "abs");
        sl(Path::new("../out"), "up");
        sl(&tmp.path().join("out"), "absout");
        sl(Path::new("loop"), "loop");
        sl(Path::new("sub"), "dirlink");
        sl(Path::new("/proc/self/root/etc/passwd"), "proc");
        let out = list(&ws, &WalkLimits::default());
        assert_eq!(names(&out), vec!["abs", "rel", "sub/x"]);
        let sk: BTreeMap<&str, &str> = out
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.as_str()))
            .collect();
        assert!(sk["up"].contains("outside the working directory"), "{sk:?}");
        assert!(sk["absout"].contains("outside the working directory"));
        assert!(sk["proc"].contains("outside the working directory"));
        assert!(sk["loop"].contains("loop"));
        assert_eq!(sk.len(), 4, "{sk:?}");
    }
}
