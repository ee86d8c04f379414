//! File records: opens and the closes of written files.
//!
//! The bytes after the fixed part are data from the traced job: every
//! length is checked against the record (see the parent module).

use super::*;

pub(super) const PIPEFS_MAGIC: u32 = 0x5049_5045;
const SOCKFS_MAGIC: u32 = 0x534f_434b;
const ANON_INODE_FS_MAGIC: u32 = 0x0904_1934;
pub(super) const NSFS_MAGIC: u32 = 0x6e73_6673;

/// Rebuilds a path from leaf-first components. Returns the path and, when
/// it is not a plain absolute path, why.
pub fn rebuild_path(info: &PathInfo, bytes: &[u8], ino: u64) -> (String, Option<String>) {
    // Each component losslessly (`trace::pathname`): a `/` is never part
    // of a component, so splitting the bytes first is exact.
    let mut comps: Vec<String> = bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(escape)
        .collect();
    comps.reverse();
    if info.flags & path_flags::ESCAPED != 0 && comps.len() <= 1 {
        let name = comps.first().map(String::as_str).unwrap_or("");
        let p = match info.magic {
            PIPEFS_MAGIC => format!("pipe:[{ino}]"),
            SOCKFS_MAGIC => format!("socket:[{ino}]"),
            ANON_INODE_FS_MAGIC => format!("anon_inode:{name}"),
            NSFS_MAGIC => format!("{name}:[{ino}]"),
            _ => format!("/{name} (deleted)"),
        };
        return (p, Some("pseudo file".to_string()));
    }
    let mut path = String::with_capacity(bytes.len() + 1);
    let truncated =
        info.flags & (path_flags::TRUNC_LEN | path_flags::TRUNC_STEPS | path_flags::READ_ERR) != 0;
    if truncated {
        path.push_str("/…");
    }
    for c in &comps {
        path.push('/');
        path.push_str(c);
    }
    if path.is_empty() {
        path.push('/');
    }
    let mut why = None;
    if truncated {
        why = Some(truncation_reason(info.flags));
    } else if info.flags & path_flags::ESCAPED != 0 {
        why = Some("disconnected dentry".to_string());
    } else if info.flags & path_flags::NS_ROOT == 0 {
        why = Some("path not resolved to a root".to_string());
    }
    if info.flags & path_flags::DELETED != 0 {
        path.push_str(" (deleted)");
        why.get_or_insert_with(|| "deleted at open".to_string());
    }
    (path, why)
}

/// The kernel's name of a memfd (`/memfd:NAME (deleted)`, as `d_path`
/// and `/proc/PID/exe` print it) when the walk ended at a disconnected
/// dentry named `memfd:…` (memfd_create's files are pseudo dentries on the
/// internal shmem or hugetlbfs mount; NAME may contain `/`).
pub fn memfd_name(info: &PathInfo, bytes: &[u8]) -> Option<String> {
    if info.flags & path_flags::ESCAPED == 0 {
        return None;
    }
    // An escaped walk stops at the pseudo dentry: its name is all there is.
    let name = bytes.strip_suffix(b"/").unwrap_or(bytes);
    name.starts_with(b"memfd:")
        .then(|| format!("/{} (deleted)", escape(name)))
}

/// Why a path was cut (`/…/` in front of what was kept).
fn truncation_reason(flags: u32) -> String {
    if flags & path_flags::TRUNC_LEN != 0 {
        "path truncated: longer than PATH_MAX (4096 bytes); its leading components are elided as /…/".into()
    } else if flags & path_flags::TRUNC_STEPS != 0 {
        "path truncated: deeper than the in-kernel walk's step limit; its leading components are elided as /…/".into()
    } else {
        "path truncated: the in-kernel walk could not read a component; its leading components are elided as /…/".into()
    }
}

/// Kernel `dev_t` (major << 20 | minor) → user-space `st_dev`.
pub fn user_dev(kdev: u32) -> u64 {
    libc::makedev(kdev >> 20, kdev & 0xf_ffff)
}

/// Nanoseconds of an inode time: ≥6.13 keeps a flag in the high bits of
/// `i_ctime_nsec` (multigrain timestamps, I_CTIME_QUERIED); nanoseconds
/// never exceed 30 bits.
const NSEC_MASK: u32 = 0x3fff_ffff;

pub(super) fn file_stamp(s: &InodeStamp) -> FileStamp {
    let (mtime_nsec, ctime_nsec) = (s.mtime_nsec & NSEC_MASK, s.ctime_nsec & NSEC_MASK);
    FileStamp {
        dev: user_dev(s.dev),
        ino: s.ino,
        size: s.size,
        mtime_ns: s.mtime_sec as i128 * 1_000_000_000 + mtime_nsec as i128,
        ctime_ns: s.ctime_sec as i128 * 1_000_000_000 + ctime_nsec as i128,
        mode: s.mode,
    }
}

/// A `kind::OPEN` record.
pub(super) fn open(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: OpenEvent = read(b, k)?;
    let bytes = slice(b, size_of::<OpenEvent>(), e.path.len as usize, k)?;
    let (path, unresolved) = rebuild_path(&e.path, bytes, e.inode.ino);
    Ok(r.ev(TraceEvent::Open {
        pid: hdr.tgid,
        path,
        flags: e.f_flags,
        stamp: Some(file_stamp(&e.inode)),
        unresolved,
        time,
    }))
}

/// A `kind::CLOSE` record.
pub(super) fn close(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: CloseEvent = read(b, k)?;
    Ok(r.ev(TraceEvent::Close {
        pid: hdr.tgid,
        stamp: file_stamp(&e.inode),
        time,
    }))
}
