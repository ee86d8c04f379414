//! A cgroup id (the kernfs node id the kernel records, `bpf_get_current_cgroup_id`,
//! `CgroupJoinEvent.dst_cgroup`) back to its directory while the cgroup
//! exists: `open_by_handle_at` on the cgroup2 mount with the 8-byte id as a
//! `FILEID_KERNFS` handle, then the opened directory's path. Needs
//! `CAP_DAC_READ_SEARCH` (the daemon is root).
//!
//! The path is the cgroup's name as the kernel has it; a job may name its
//! own sub-cgroups anything, so what is made of it ([`step_relative`]) is a
//! name under the step, never used to decide where the daemon writes.
//!
//! The last paths found are kept ([`MAX_CACHED`]): the processes of a
//! container all join its one cgroup. A kept path is used only while the
//! directory there still has the id (one stat): a removed cgroup is looked
//! up again, and fails (cgroup v2 directories cannot be renamed).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// `FILEID_KERNFS` (include/linux/exportfs.h).
const FILEID_KERNFS: i32 = 0xfe;

/// `struct file_handle` with the 8 bytes of a kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: [u8; 8],
}

/// Most paths a [`CgroupIds`] keeps (all are dropped when it is full).
pub const MAX_CACHED: usize = 256;

/// Resolves cgroup ids on one cgroup2 mount.
#[derive(Debug)]
pub struct CgroupIds {
    mount: OwnedFd,
    cache: HashMap<u64, PathBuf>,
}

impl CgroupIds {
    /// Opens the cgroup2 mount at `mount`.
    pub fn open(mount: &Path) -> io::Result<CgroupIds> {
        let c = CString::new(mount.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        Ok(CgroupIds {
            mount: unsafe { OwnedFd::from_raw_fd(fd) },
            cache: HashMap::new(),
        })
    }

    /// [`CgroupIds::path_of`], from the paths kept when the directory
    /// there still has the id `id`.
    pub fn path_of_cached(&mut self, id: u64) -> io::Result<PathBuf> {
        if let Some(p) = self.cache.get(&id) {
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.ino() == id) {
                return Ok(p.clone());
            }
        }
        let p = self.path_of(id)?;
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(id, p.clone());
        Ok(p)
    }

    /// The directory of the cgroup `id` (absolute, under the mount), while
    /// it exists.
    pub fn path_of(&self, id: u64) -> io::Result<PathBuf> {
        let mut h = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id: id.to_ne_bytes(),
        };
        // SAFETY: `h` is a valid file_handle of 8 bytes; the result is checked.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.mount.as_raw_fd(),
                &mut h as *mut KernfsHandle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }
}

/// The first component of the name of a cgroup below an alias (a cgroup
/// attributed to a step: the engine's BuildKit cgroup, whatever its path),
/// which makes its processes' container `buildkit:<name>`
/// (`cilock_trace::container::container_of_cgroup`).
pub const ALIAS_PREFIX: &str = "buildkit";

/// The name a join into `dst` gets (`TraceEvent::JoinedStep.cgroup`): `dst`
/// relative to `base`, the step's cgroup (`<container id>`, `shell`, …)
/// or, when `alias`, a cgroup attributed to a step, then prefixed with
/// [`ALIAS_PREFIX`] (`buildkit/<name>`). None for `base` itself and for a
/// `dst` outside it.
pub fn step_relative(base: &Path, alias: bool, dst: &Path) -> Option<String> {
    let rel = dst.strip_prefix(base).ok()?;
    if rel.as_os_str().is_empty() {
        return None;
    }
    let rel = if alias {
        Path::new(ALIAS_PREFIX).join(rel)
    } else {
        rel.to_path_buf()
    };
    rel.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_relative_to_the_step() {
        let step = Path::new("/sys/fs/cgroup/cilock.steps/u0.s.1.2");
        let id = "a".repeat(64);
        assert_eq!(
            step_relative(step, false, &step.join(&id)),
            Some(id.clone())
        );
        assert_eq!(
            step_relative(step, false, &step.join("shell")),
            Some("shell".into())
        );
        assert_eq!(step_relative(step, false, step), None);
        // An alias is named buildkit/… whatever its path is.
        for bk in ["/sys/fs/cgroup/docker/buildkit", "/sys/fs/cgroup/engine/bk"] {
            let bk = Path::new(bk);
            assert_eq!(
                step_relative(bk, true, &bk.join("u5mr")),
                Some("buildkit/u5mr".into())
            );
            assert_eq!(step_relative(bk, true, bk), None);
        }
        // Not below the base: no name (a last component `buildkit` is
        // nothing special).
        assert_eq!(
            step_relative(
                step,
                false,
                Path::new("/sys/fs/cgroup/docker/buildkit/u5mr")
            ),
            None
        );
        assert_eq!(
            step_relative(step, false, Path::new("/sys/fs/cgroup/x/y")),
            None
        );
    }

    /// For real: a cgroup created here, resolved from its id (the inode of
    /// its directory), and an id that names no cgroup. Needs root, like the
    /// other tests of real cgroups (`steps_layout`): without it the test
    /// fails saying so, it is never passed unchecked.
    #[test]
    fn resolves_a_real_cgroup_id() {
        assert!(
            nix_root(),
            "needs root (CAP_DAC_READ_SEARCH for open_by_handle_at, cgroup mkdir): run the tests as root (cargo xtask test)"
        );
        let h = crate::cgroup::Hierarchy::find().expect("a cgroup2 mount");
        let dir = h
            .mount
            .join(format!("cilock-test-ids.{}", std::process::id()));
        let sub = dir.join("b".repeat(64));
        std::fs::create_dir_all(&sub).unwrap();
        use std::os::unix::fs::MetadataExt;
        let id = std::fs::metadata(&sub).unwrap().ino();
        let mut ids = CgroupIds::open(&h.mount).unwrap();
        let got = ids.path_of(id);
        let missing = ids.path_of(u64::MAX - 1);
        let cached = ids.path_of_cached(id).and_then(|_| ids.path_of_cached(id));
        // Removed: the kept path is not used.
        let _ = std::fs::remove_dir(&sub);
        let gone = ids.path_of_cached(id);
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(got.unwrap(), sub);
        assert!(missing.is_err());
        assert_eq!(cached.unwrap(), sub);
        assert!(gone.is_err(), "{gone:?}");
        assert_eq!(
            step_relative(&dir, false, &sub).as_deref(),
            Some("b".repeat(64).as_str())
        );
    }

    fn nix_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
