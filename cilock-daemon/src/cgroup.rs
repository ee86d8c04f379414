//! cgroup v2: finding the hierarchy (hybrid hosts included) and managing one
//! cgroup per step.
//!
//! Step cgroups live at `<cgroup2 mount>/<parent>/<step>`; every step is at
//! the same depth, which the kernel programs use to find a task's step with
//! one `bpf_get_current_ancestor_cgroup_id()` call — cgroups a step creates
//! below its own are part of the step.
//!
//! A step cgroup holds no process itself: the step's own processes live in
//! its leaf `<step>/shell` ([`SHELL_LEAF`]), so that a container runtime
//! can enable controllers in `<step>` (cgroup v2's no-internal-process
//! rule) and put containers in `<step>/<container id>`. At the end the
//! leaf's processes go back where they came from; container cgroups still
//! populated stay (and the step cgroup with them) until they empty
//! ([`Cgroup::release`], [`remove_empty_tree`]). On hybrid hosts runc also
//! makes copies of the step's path in every v1 hierarchy ([`V1Mounts`]).
//!
//! When the steps' parent is a systemd slice (`<stem>.slice`), each step is
//! a slice below it (`<stem>-<escaped>.slice`, [`step_dir_name`]) so that an
//! engine on the systemd cgroup driver accepts it as a parent.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A cgroup error with the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// No cgroup2 mount.
    #[error("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    /// An I/O error on a cgroup file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The cgroup did not empty in time.
    #[error("cgroup {0} still has processes")]
    Busy(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup2 hierarchy as mounted here.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The mount's root within the hierarchy ("/" normally).
    pub root: PathBuf,
}

impl Hierarchy {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo`.
    pub fn find() -> Result<Hierarchy, CgroupError> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
        Self::from_mountinfo(&info).ok_or(CgroupError::NoCgroup2)
    }

    /// Parses mountinfo text; prefers a mount whose root is the hierarchy root.
    pub fn from_mountinfo(info: &str) -> Option<Hierarchy> {
        let mut best: Option<Hierarchy> = None;
        for line in info.lines() {
            // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            if post.split_whitespace().next() != Some("cgroup2") {
                continue;
            }
            let f: Vec<&str> = pre.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            let h = Hierarchy {
                root: PathBuf::from(unescape(f[3])),
                mount: PathBuf::from(unescape(f[4])),
            };
            let is_root = h.root == Path::new("/");
            if best.is_none()
                || (is_root && best.as_ref().is_some_and(|b| b.root != Path::new("/")))
            {
                best = Some(h);
            }
        }
        best
    }

    /// The level (depth below the hierarchy root) of a path under the mount.
    pub fn level_of(&self, path: &Path) -> Option<u32> {
        let rel = path.strip_prefix(&self.mount).ok()?;
        let depth = |p: &Path| {
            p.components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .count()
        };
        Some((depth(&self.root) + depth(rel)) as u32)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    id: u64,
}

impl Cgroup {
    /// Creates (or reuses) the directory `path`.
    pub fn create(path: &Path) -> Result<Cgroup, CgroupError> {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("mkdir", path)(e)),
        }
        Self::open(path)
    }

    /// Opens an existing cgroup directory.
    pub fn open(path: &Path) -> Result<Cgroup, CgroupError> {
        let md = fs::metadata(path).map_err(io_err("stat", path))?;
        Ok(Cgroup {
            path: path.to_path_buf(),
            // The cgroup id the kernel reports is the directory's inode number.
            id: md.ino(),
        })
    }

    /// Bounds the tree below this cgroup: at most `descendants` cgroups
    /// (`cgroup.max.descendants`) at most `depth` levels deep
    /// (`cgroup.max.depth`); the kernel refuses a mkdir past either with
    /// EAGAIN.
    pub fn bound_tree(&self, descendants: u32, depth: u32) -> Result<(), CgroupError> {
        for (file, n) in [
            ("cgroup.max.descendants", descendants),
            ("cgroup.max.depth", depth),
        ] {
            let p = self.path.join(file);
            fs::write(&p, n.to_string()).map_err(io_err("bound the cgroup tree: write", &p))?;
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cgroup id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Ends a step's cgroup: the processes of the cgroup itself and of its
    /// [`SHELL_LEAF`] subtree go to `to` (the cgroup they came from) and
    /// the leaf is removed; every other child (a container the step
    /// started) is removed when empty and kept, with its processes, while
    /// populated; the cgroup itself is removed when nothing is left.
    pub fn release(&self, to: &Path) -> Released {
        let shell = self.path.join(SHELL_LEAF);
        if let Ok(dest) = Cgroup::open(to) {
            for _ in 0..3 {
                let mut pids = Vec::new();
                if let Ok(s) = fs::read_to_string(self.path.join("cgroup.procs")) {
                    pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                }
                collect_pids(&shell, &mut pids, 0);
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = dest.add_pid(pid);
                }
            }
        }
        let mut out = Released::default();
        if let Err(e) = remove_tree(&shell) {
            out.error = Some(e);
        }
        if let Ok(rd) = fs::read_dir(&self.path) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && !remove_empty_tree(&e.path(), STEP_MAX_DEPTH - 1)
                {
                    out.kept.push(e.path());
                }
            }
        }
        out.kept.sort();
        out.removed = out.kept.is_empty() && out.error.is_none() && remove_tree(&self.path).is_ok();
        out
    }

    /// Moves process `pid` (its whole thread group) into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let p = self.path.join("cgroup.procs");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io_err("open", &p))?;
        f.write_all(pid.to_string().as_bytes())
            .map_err(io_err("write pid to", &p))
    }

    /// The processes in this cgroup and below it.
    pub fn pids_recursive(&self) -> Vec<u32> {
        let mut out = Vec::new();
        collect_pids(&self.path, &mut out, 0);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Ids of this cgroup and every cgroup below it.
    pub fn subtree_ids(&self) -> Vec<u64> {
        let mut out = vec![self.id];
        collect_ids(&self.path, &mut out, 0);
        out
    }

    /// True when a process is in this cgroup or below.
    pub fn populated(&self) -> bool {
        let p = self.path.join("cgroup.events");
        match fs::read_to_string(&p) {
            Ok(s) => s.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => !self.pids_recursive().is_empty(),
        }
    }

    /// Waits until no process is left in this cgroup or below
    /// (`cgroup.events` says `populated 0`), at most `timeout`. Sleeps in
    /// poll(2) on `cgroup.events` (the kernel wakes it with POLLPRI when the
    /// file changes), re-reading it at least every second. Returns whether
    /// the cgroup became empty.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        use std::io::{Read as _, Seek as _};
        use std::os::fd::AsRawFd as _;
        let deadline = Instant::now() + timeout;
        let mut f = match fs::File::open(self.path.join("cgroup.events")) {
            Ok(f) => f,
            Err(_) => {
                // No events file (not cgroup2?): check once a second.
                while self.populated() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    std::thread::sleep(left.min(Duration::from_secs(1)));
                }
                return true;
            }
        };
        let mut buf = String::new();
        loop {
            buf.clear();
            if f.rewind().is_err() || f.read_to_string(&mut buf).is_err() {
                return !self.populated();
            }
            if !buf.lines().any(|l| l.trim() == "populated 1") {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut p = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            let ms = left.min(Duration::from_secs(1)).as_millis().max(1) as i32;
            // SAFETY: one pollfd on the stack.
            unsafe { libc::poll(&mut p, 1, ms) };
        }
    }

    /// Kills everything in the cgroup (cgroup.kill, or SIGKILL per pid on
    /// kernels without it) and waits until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if fs::write(&kill, b"1").is_err() {
            for pid in self.pids_recursive() {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + timeout;
        while self.populated() {
            if Instant::now() > deadline {
                return Err(CgroupError::Busy(self.path.clone()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// True when `pid` is in this cgroup or below it (`mount`: the cgroup2
    /// mount, as in the daemon's /proc/PID/cgroup paths).
    pub fn holds(&self, mount: &Path, pid: u32) -> bool {
        cgroup_of(pid).is_some_and(|rel| {
            mount
                .join(rel.strip_prefix("/").unwrap_or(&rel))
                .starts_with(&self.path)
        })
    }

    /// Writes `cgroup.freeze` (1: freeze this cgroup and everything below,
    /// 0: thaw).
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let p = self.path.join("cgroup.freeze");
        fs::write(&p, if frozen { b"1" } else { b"0" }).map_err(io_err("write", &p))
    }

    /// Waits until `cgroup.events` says `frozen 1`, at most `timeout`.
    pub fn wait_frozen(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let p = self.path.join("cgroup.events");
        loop {
            match fs::read_to_string(&p) {
                Ok(s) if s.lines().any(|l| l.trim() == "frozen 1") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills every process in this cgroup and below except `spare` (and
    /// processes that are not this cgroup's), race-free against forks: the
    /// cgroup is frozen (nothing in it runs, so nothing forks), its
    /// processes are listed and each one not spared is pinned by a pidfd,
    /// checked to be still in this cgroup, and sent SIGKILL through the
    /// pidfd; once they are gone the list is taken again (a child a fork
    /// was creating during the listing shows up frozen), until only the
    /// spared are left, then the cgroup is thawed. Bounded by `timeout`
    /// and [`MAX_KILL_ROUNDS`]. On a kernel without `cgroup.freeze` the same
    /// rounds run unfrozen.
    pub fn kill_except(&self, mount: &Path, spare: &[PidFd], timeout: Duration) -> KillReport {
        let deadline = Instant::now() + timeout;
        let froze = self.set_frozen(true).is_ok();
        let frozen = froze && self.wait_frozen(Duration::from_secs(2));
        let spared = |pid: u32| spare.iter().any(|s| s.pid() == pid && !s.exited());
        let mut report = KillReport {
            frozen,
            ..Default::default()
        };
        let mut killed = std::collections::BTreeSet::new();
        'rounds: while report.rounds < MAX_KILL_ROUNDS {
            report.rounds += 1;
            let targets: Vec<u32> = self
                .pids_recursive()
                .into_iter()
                .filter(|&p| !spared(p))
                .collect();
            if targets.is_empty() {
                report.complete = true;
                break;
            }
            let mut pinned = Vec::new();
            for pid in targets {
                let Ok(fd) = PidFd::open(pid) else { continue };
                // The pid is pinned: it names this process until the fd is
                // closed, so the check below is about the process killed.
                if !self.holds(mount, pid) || fd.exited() {
                    continue;
                }
                if fd.send_signal(libc::SIGKILL).is_ok() {
                    killed.insert(pid);
                    pinned.push(fd);
                }
            }
            for fd in &pinned {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !fd.wait_exit(left) {
                    break 'rounds;
                }
            }
        }
        if froze {
            if let Err(e) = self.set_frozen(false) {
                tracing::error!("thawing {}: {e}", self.path.display());
            }
        }
        report.killed = killed.into_iter().collect();
        report
    }

    /// Moves every process out (into `to`) and removes the directory tree.
    pub fn remove(&self, to: &Path) -> Result<(), CgroupError> {
        let r = self.release(to);
        match r.error {
            Some(e) => Err(e),
            None if r.removed => Ok(()),
            None => Err(CgroupError::Busy(self.path.clone())),
        }
    }
}

/// The leaf of a step cgroup the step's own processes live in.
pub const SHELL_LEAF: &str = "shell";

/// At most this many cgroups below a step's (its leaf, its containers' and
/// whatever its jobs create), its `cgroup.max.descendants`: a job cannot
/// grow a tree the end and the sweep walk without bound.
pub const STEP_MAX_DESCENDANTS: u32 = 1024;

/// At most this many levels of cgroups below a step's, its
/// `cgroup.max.depth`; the walks that empty and remove a step's tree
/// ([`Cgroup::release`], the sweep's [`remove_empty_tree`]) reach this deep.
pub const STEP_MAX_DEPTH: u32 = 8;

/// What [`Cgroup::release`] did.
#[derive(Debug, Default)]
pub struct Released {
    /// The step cgroup is gone.
    pub removed: bool,
    /// Child cgroups still populated (containers), left in place.
    pub kept: Vec<PathBuf>,
    /// Why the leaf could not be removed.
    pub error: Option<CgroupError>,
}

/// Removes the cgroup `dir` and the cgroups below it (at most `depth`
/// levels), deepest first, without waiting: a populated cgroup (and so its
/// ancestors) stays. True when `dir` is gone.
pub fn remove_empty_tree(dir: &Path, depth: u32) -> bool {
    if depth > 0 {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_empty_tree(&e.path(), depth - 1);
                }
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// The cgroup v1 hierarchies mounted here (hybrid hosts), where runc makes
/// a copy of a container's cgroup path in each one and leaves the parents
/// it created behind.
#[derive(Clone, Debug, Default)]
pub struct V1Mounts(Vec<Hierarchy>);

impl V1Mounts {
    /// The v1 mounts in `/proc/self/mountinfo` (none when unreadable).
    pub fn find() -> V1Mounts {
        fs::read_to_string("/proc/self/mountinfo")
            .map(|s| Self::from_mountinfo(&s))
            .unwrap_or_default()
    }

    /// Parses mountinfo text: every `cgroup` (v1) mount, one per hierarchy
    /// (the first mount of each root seen).
    pub fn from_mountinfo(info: &str) -> V1Mounts {
        let mut out: Vec<Hierarchy> = Vec::new();
        let mut seen_super: Vec<String> = Vec::new();
        for line in info.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut p = post.split_whitespace();
            if p.next() != Some("cgroup") {
                continue;
            }
            let f: Vec<&str> = pre.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            // One entry per hierarchy (bind mounts share major:minor).
            if seen_super.iter().any(|d| d == f[2]) {
                continue;
            }
            seen_super.push(f[2].to_string());
            out.push(Hierarchy {
                root: PathBuf::from(unescape(f[3])),
                mount: PathBuf::from(unescape(f[4])),
            });
        }
        V1Mounts(out)
    }

    /// Where `rel` (a cgroup path relative to the hierarchy root, leading
    /// '/') is in each v1 hierarchy whose mount shows it.
    pub fn copies(&self, rel: &Path) -> Vec<PathBuf> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        self.0
            .iter()
            .filter_map(|h| {
                let root = h.root.strip_prefix("/").unwrap_or(&h.root);
                let under = rel.strip_prefix(root).ok()?;
                if under.as_os_str().is_empty() {
                    return None;
                }
                Some(h.mount.join(under))
            })
            .collect()
    }

    /// Removes the copies of `rel` that are empty (deepest first, without
    /// waiting); returns those still there.
    pub fn remove_empty(&self, rel: &Path) -> Vec<PathBuf> {
        self.copies(rel)
            .into_iter()
            .filter(|p| p.exists() && !remove_empty_tree(p, STEP_MAX_DEPTH))
            .collect()
    }
}

/// systemd's unit-name escaping (`systemd-escape`): '/' becomes '-';
/// ASCII letters, digits, ':', '_' and '.' (not leading) stay; every other
/// byte becomes `\xNN`.
pub fn systemd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i > 0 => out.push('.'),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The name of a step's cgroup directory under a parent whose last
/// component is `parent_leaf`: `base` itself, or, when the parent is a
/// systemd slice `<stem>.slice`, the slice `<stem>-<base escaped>.slice`
/// (a child slice of the parent, the only parent an engine on the systemd
/// driver accepts).
pub fn step_dir_name(parent_leaf: &str, base: &str) -> String {
    match parent_leaf.strip_suffix(".slice") {
        Some(stem) if !stem.is_empty() && stem != "-" => {
            format!("{stem}-{}.slice", systemd_escape(base))
        }
        _ => base.to_string(),
    }
}

/// What the directory names [`step_dir_name`] gives the steps of `uid`
/// named `name` under `parent_leaf` start with (`u<uid>.<name>.` before the
/// daemon's pid and serial; escaping is byte by byte, so a prefix of the
/// name escapes to a prefix of the escaped name).
pub fn step_dir_prefix(parent_leaf: &str, uid: u32, name: &str) -> String {
    let base = format!("u{uid}.{name}.");
    let full = step_dir_name(parent_leaf, &base);
    match full.strip_suffix(".slice") {
        Some(p) if full != base => p.to_string(),
        _ => full,
    }
}

/// The cgroup path (leading '/') systemd gives the slice `name`:
/// `a-b-c.slice` is `/a.slice/a-b.slice/a-b-c.slice`, `-.slice` is `/`.
/// `None` when `name` is not a valid slice name.
pub fn slice_path(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".slice")?;
    if stem == "-" {
        return Some("/".to_string());
    }
    if stem.is_empty()
        || name.contains('/')
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
    {
        return None;
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Some(path)
}

/// `cgroup_parent`, as a container engine's client wrote it, names `steps`
/// (the steps' parent, relative to the cgroup2 root with a leading '/') or
/// a cgroup below it. An absolute path is cleaned ('.', '..', '//'); a
/// systemd slice name is expanded as systemd does; a relative path is
/// resolved by the runtime against a cgroup cilock does not know, so it
/// counts when any of its components is the steps' parent's name.
pub fn names_inside(cgroup_parent: &str, steps: &str) -> bool {
    let comps = |p: &str| -> Vec<String> {
        cilock_trace::pathname::lexically_normal(p)
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let steps = comps(steps);
    let Some(name) = steps.last().cloned() else {
        return true;
    };
    let relative_inside = |p: &str| p.split('/').any(|c| c == name);
    let p = cgroup_parent.trim();
    if !p.contains('/') && p.ends_with(".slice") {
        return match slice_path(p) {
            Some(abs) => comps(&abs).starts_with(&steps),
            // Not a slice systemd would accept: judged as a relative path.
            None => relative_inside(p),
        };
    }
    if p.starts_with('/') {
        comps(p).starts_with(&steps)
    } else {
        relative_inside(p)
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<u32>, depth: u32) {
    if depth > 32 {
        return;
    }
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out, depth + 1);
            }
        }
    }
}

fn collect_ids(dir: &Path, out: &mut Vec<u64>, depth: u32) {
    if depth > 32 {
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(md) = e.metadata() {
                    out.push(md.ino());
                }
                collect_ids(&e.path(), out, depth + 1);
            }
        }
    }
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    // rmdir may briefly fail with EBUSY while exiting tasks are released.
    let mut last = None;
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(io_err("rmdir", dir)(
        last.unwrap_or_else(|| io::Error::other("busy")),
    ))
}

/// A process pinned by a pidfd: its pid cannot be reused for another
/// process without [`PidFd::exited`] saying so (a pidfd becomes readable
/// when its process exits).
#[derive(Debug)]
pub struct PidFd {
    fd: std::os::fd::OwnedFd,
    pid: u32,
}

impl PidFd {
    /// `pidfd_open(pid)`: pins the process that has `pid` now.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        use std::os::fd::FromRawFd as _;
        let p = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: plain syscall; the flags are 0.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor we own (O_CLOEXEC is
        // implied for pidfds).
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd { fd, pid })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `pidfd_send_signal`: signals the pinned process (never another one
    /// that reused its pid).
    pub fn send_signal(&self, sig: i32) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: plain syscall on our descriptor; no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits at most `timeout` for the pinned process to exit; true when it
    /// did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd as _;
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one pollfd on the stack.
            unsafe { libc::poll(&mut p, 1, ms) };
        }
    }

    /// The parent of the pinned process (from /proc/PID/status), pinned in
    /// turn; `None` when it cannot be told (the process exited, or its
    /// parent is outside this pid namespace).
    pub fn parent(&self) -> Option<PidFd> {
        let ppid = |pid: u32| -> Option<u32> {
            let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()
        };
        let before = ppid(self.pid).filter(|&p| p != 0)?;
        let parent = PidFd::open(before).ok()?;
        // Still this process's parent after it was pinned (a parent that
        // exited meanwhile would have made the child change parent), and
        // the status read was the pinned process's (it still runs).
        (ppid(self.pid) == Some(before) && !self.exited()).then_some(parent)
    }

    /// True when the pinned process has exited (zombies included), so its
    /// pid may now name another process. Errors count as exited.
    pub fn exited(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one pollfd, no wait.
            let r = unsafe { libc::poll(&mut p, 1, 0) };
            if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return r != 0;
        }
    }
}

/// Most listing rounds of [`Cgroup::kill_except`].
pub const MAX_KILL_ROUNDS: u32 = 64;

/// What [`Cgroup::kill_except`] did.
#[derive(Clone, Debug, Default)]
pub struct KillReport {
    /// Pids sent SIGKILL (sorted).
    pub killed: Vec<u32>,
    /// True when the cgroup was frozen while its processes were listed.
    pub frozen: bool,
    /// True when, at the end, only spared processes were left.
    pub complete: bool,
    /// Listing rounds taken.
    pub rounds: u32,
}

/// Where parent locks live: root-only, so no other user can take a lock
/// (a lock on the parent cgroup directory itself could be taken by any
/// user who can open that directory, and held across a daemon restart).
pub const LOCK_DIR: &str = "/run/cilock/locks";

/// An exclusive `flock(2)` on a root-only lock file named after a steps'
/// parent cgroup ([`LOCK_DIR`]), held for the life of the engine that owns
/// the parent: one daemon (or `cilock run`) per parent. The lock goes with
/// the descriptor (close-on-exec), so it is released when the holder exits,
/// however it exits.
#[derive(Debug)]
pub struct ParentLock {
    file: fs::File,
    path: PathBuf,
}

impl Drop for ParentLock {
    /// Removes the lock file while still holding the lock (an acquirer
    /// checks, once it holds a lock, that its file is still the one at the
    /// path), so lock files of per-run parents do not pile up.
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        let _ = fs::remove_file(&self.path);
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Why a parent could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the lock.
    #[error("cgroup parent {path} is in use by another cilock daemon or `cilock run`{}; \
             a parent serves one daemon: stop that one or give this one its own `cgroup_parent`",
             holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The parent.
        path: PathBuf,
        /// The holder's pid, from /proc/locks, when found.
        holder: Option<u32>,
    },
    /// Anything else.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl ParentLock {
    /// Locks the parent cgroup `path` without waiting (a lock file in
    /// [`LOCK_DIR`]), then creates the parent if needed.
    pub fn acquire(path: &Path) -> Result<(ParentLock, Cgroup), LockError> {
        Self::acquire_in(Path::new(LOCK_DIR), path)
    }

    /// [`ParentLock::acquire`] with the lock file in `dir` (created 0700,
    /// its parent 0755, if missing; refused unless both belong to this user
    /// and are writable by no one else).
    pub fn acquire_in(dir: &Path, path: &Path) -> Result<(ParentLock, Cgroup), LockError> {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let me = unsafe { libc::geteuid() };
        // The parent (`/run/cilock`) may also hold the socket: 0755 like
        // the server makes it; the lock directory itself is private.
        for (d, mode) in [
            (dir.parent().unwrap_or(Path::new("/")), 0o755),
            (dir, 0o700),
        ] {
            match fs::DirBuilder::new().mode(mode).create(d) {
                // The umask may have removed bits.
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt as _;
                    fs::set_permissions(d, fs::Permissions::from_mode(mode))
                        .map_err(io_err("chmod", d))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("mkdir", d)(e).into()),
            }
            let md = fs::symlink_metadata(d).map_err(io_err("stat", d))?;
            if !md.is_dir() || md.uid() != me || md.mode() & 0o022 != 0 {
                return Err(io_err("lock directory", d)(io::Error::other(format!(
                    "must be a directory of uid {me} writable by no one else (uid {}, mode {:o})",
                    md.uid(),
                    md.mode() & 0o7777
                )))
                .into());
            }
        }
        // The parent's absolute path, one file name ('%' and '/' escaped).
        let name = path
            .to_string_lossy()
            .replace('%', "%25")
            .replace('/', "%2F");
        let lock = dir.join(format!("{name}.lock"));
        for _ in 0..10 {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&lock)
                .map_err(io_err("open", &lock))?;
            // SAFETY: plain syscall on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let md = file.metadata().map_err(io_err("stat", &lock))?;
                    return Err(LockError::Held {
                        path: path.to_path_buf(),
                        holder: flock_holder(md.dev(), md.ino()),
                    });
                }
                return Err(io_err("flock", &lock)(e).into());
            }
            // A holder that was leaving removed the file after we opened
            // it: our lock is on a file nobody else will open; try again.
            let held = file.metadata().map_err(io_err("stat", &lock))?;
            match fs::symlink_metadata(&lock) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    let cg = Cgroup::create(path)?;
                    return Ok((ParentLock { file, path: lock }, cg));
                }
                _ => continue,
            }
        }
        Err(io_err("lock", &lock)(io::Error::other("the lock file keeps being removed")).into())
    }
}

/// The pid holding a `FLOCK` on the file `dev`/`ino`, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:1c:12 0 EOF`; the device in hex).
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    use std::io::BufRead as _;
    let f = fs::File::open("/proc/locks").ok()?;
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    // Line by line (any user can make the file long); bounded.
    io::BufReader::new(f)
        .lines()
        .take(1 << 20)
        .map_while(Result::ok)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1:" FLOCK ADVISORY WRITE pid dev:ino ...; blocked waiters have "->".
            if f.len() >= 6 && f[1] == "FLOCK" && f[5] == want {
                f[4].parse().ok()
            } else {
                None
            }
        })
}

/// The cgroup (within the hierarchy) a process is in, from /proc/PID/cgroup.
pub fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let s = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "25 18 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        let h = Hierarchy::from_mountinfo(hybrid).unwrap();
        assert_eq!(h.mount, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(
            h.level_of(Path::new("/sys/fs/cgroup/unified/cilock.steps/s1")),
            Some(2)
        );
        let unified = "30 20 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Hierarchy::from_mountinfo(unified).unwrap().mount,
            Path::new("/sys/fs/cgroup")
        );
        assert!(Hierarchy::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n").is_none());
        let escaped = "30 20 0:26 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(escaped).unwrap().mount,
            Path::new("/mnt/cg two")
        );
    }

    #[test]
    fn a_parent_is_locked_once_and_the_refusal_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("steps");
        let locks = dir.path().join("run").join("locks");
        let acquire = || ParentLock::acquire_in(&locks, &parent);
        let (held, _) = acquire().unwrap();
        // The lock directory is private: another user cannot take the lock.
        let md = std::fs::metadata(&locks).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700);
        match acquire() {
            Err(LockError::Held { path, holder }) => {
                assert_eq!(path, parent);
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("second lock: {other:?}"),
        }
        let msg = acquire().unwrap_err().to_string();
        assert!(
            msg.contains(&format!("(pid {})", std::process::id())),
            "{msg}"
        );
        drop(held);
        // Released and removed: lock files of per-run parents do not pile up.
        assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
        assert!(acquire().is_ok());
    }

    #[test]
    fn systemd_escaping_matches_systemd_escape() {
        // Ground truth: `systemd-escape` (systemd 252) on these inputs.
        assert_eq!(systemd_escape("u0.build.12.3"), "u0.build.12.3");
        assert_eq!(systemd_escape("u1000.a-b.7.0"), "u1000.a\\x2db.7.0");
        assert_eq!(systemd_escape("u0.x@y+z.1.2"), "u0.x\\x40y\\x2bz.1.2");
        assert_eq!(systemd_escape(".hidden"), "\\x2ehidden");
        assert_eq!(systemd_escape("a/b"), "a-b");
        assert_eq!(systemd_escape("a:b_c"), "a:b_c");
    }

    #[test]
    fn steps_under_a_slice_are_child_slices() {
        assert_eq!(step_dir_name("cilock.steps", "u0.x.12.3"), "u0.x.12.3");
        assert_eq!(
            step_dir_name("cilock.slice", "u0.x.12.3"),
            "cilock-u0.x.12.3.slice"
        );
        assert_eq!(
            step_dir_name("system-cilock.slice", "u5.a-b.1.0"),
            "system-cilock-u5.a\\x2db.1.0.slice"
        );
        // Recovery recognizes a step's directory by its prefix.
        for (parent, uid, name) in [
            ("cilock.steps", 0, "x"),
            ("cilock.slice", 0, "x"),
            ("cilock.slice", 1000, "a-b@c+d"),
        ] {
            let dir = step_dir_name(parent, &format!("u{uid}.{name}.4242.7"));
            let prefix = step_dir_prefix(parent, uid, name);
            assert!(dir.starts_with(&prefix), "{dir} {prefix}");
            assert!(!step_dir_name(parent, &format!("u{uid}.{name}x.1.2")).starts_with(&prefix));
        }
        assert_eq!(step_dir_prefix("cilock.steps", 5, "b"), "u5.b.");
        assert_eq!(
            step_dir_prefix("cilock.slice", 5, "a-b"),
            "cilock-u5.a\\x2db."
        );
        // The slice systemd would make of that name is the step's path.
        assert_eq!(
            slice_path("cilock-u0.x.12.3.slice").as_deref(),
            Some("/cilock.slice/cilock-u0.x.12.3.slice")
        );
        assert_eq!(
            slice_path("system-cilock-u5.a\\x2db.1.0.slice").as_deref(),
            Some("/system.slice/system-cilock.slice/system-cilock-u5.a\\x2db.1.0.slice")
        );
        assert_eq!(slice_path("-.slice").as_deref(), Some("/"));
        assert_eq!(slice_path("a--b.slice"), None);
        assert_eq!(slice_path("-a.slice"), None);
        assert_eq!(slice_path("a.scope"), None);
        assert_eq!(slice_path("a/b.slice"), None);
    }

    #[test]
    fn cgroup_parents_inside_the_steps_tree() {
        let steps = "/cilock.steps";
        for inside in [
            "/cilock.steps",
            "/cilock.steps/u0.x.1.2",
            "/cilock.steps/u0.x.1.2/shell",
            "//cilock.steps//u0.x.1.2/",
            "/a/../cilock.steps/u0.x.1.2",
            "/../../cilock.steps",
            "/./cilock.steps/.",
            "cilock.steps/u0.x.1.2",
            "../../cilock.steps/u0.x.1.2",
            "x/../cilock.steps",
        ] {
            assert!(names_inside(inside, steps), "{inside}");
        }
        for outside in [
            "",
            "/",
            "/docker",
            "/cilock.stepsX/a",
            "/cilock.steps/../docker",
            "/x/cilock.steps",
            "docker",
            "cilock.stepsX",
            "system.slice",
            "cilock-u0.x.1.2.slice",
        ] {
            assert!(!names_inside(outside, steps), "{outside}");
        }
        // Steps as slices: slice names expand as systemd expands them.
        let slices = "/cilock.slice";
        assert!(names_inside("cilock-u0.x.1.2.slice", slices));
        assert!(names_inside("cilock.slice", slices));
        assert!(names_inside("/cilock.slice/cilock-u0.x.1.2.slice", slices));
        assert!(!names_inside("system.slice", slices));
        assert!(!names_inside("cilockx-a.slice", slices));
        // Not a valid slice: judged as a relative path.
        assert!(names_inside("cilock.slice/x.slice", slices));
        // A nested parent: only its own name counts for relative paths.
        assert!(names_inside(
            "/system.slice/cilock.steps/s",
            "/system.slice/cilock.steps"
        ));
        assert!(!names_inside("system.slice", "/system.slice/cilock.steps"));
    }

    #[test]
    fn v1_copies_follow_each_hierarchy_root() {
        let info = "25 18 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                    29 25 0:26 /ns /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
                    30 25 0:24 / /mnt/cpu-again rw - cgroup cgroup rw,cpu,cpuacct\n";
        let v1 = V1Mounts::from_mountinfo(info);
        assert_eq!(
            v1.copies(Path::new("/cilock.steps/u0.x.1.2")),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/cilock.steps/u0.x.1.2"),
                PathBuf::from("/sys/fs/cgroup/memory/cilock.steps/u0.x.1.2"),
            ]
        );
        assert_eq!(
            v1.copies(Path::new("/ns/cilock.steps/s")),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/ns/cilock.steps/s"),
                PathBuf::from("/sys/fs/cgroup/memory/ns/cilock.steps/s"),
                PathBuf::from("/sys/fs/cgroup/pids/cilock.steps/s"),
            ]
        );
        assert!(
            V1Mounts::from_mountinfo("30 20 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
                .copies(Path::new("/a"))
                .is_empty()
        );
    }

    #[test]
    fn empty_trees_go_deepest_first_and_stop_at_what_stays() {
        // On a plain filesystem a file stands for a populated cgroup (rmdir
        // fails on it as on a cgroup with processes).
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("step");
        std::fs::create_dir_all(a.join("c1/x")).unwrap();
        std::fs::create_dir_all(a.join("c2")).unwrap();
        std::fs::write(a.join("c2/busy"), b"").unwrap();
        assert!(!remove_empty_tree(&a, 8));
        assert!(!a.join("c1").exists());
        assert!(a.join("c2").exists());
        std::fs::remove_file(a.join("c2/busy")).unwrap();
        assert!(remove_empty_tree(&a, 8));
        assert!(!a.exists());
        // Gone already: nothing left to remove.
        assert!(remove_empty_tree(&a, 8));
    }
}
