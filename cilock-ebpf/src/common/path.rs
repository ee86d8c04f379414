//! Absolute paths from a `struct path`, and inode identity, read in the
//! kernel. The walk is the kernel's `prepend_path()` done by hand: follow
//! `d_parent` up to the mount's root, cross to the parent mount at its
//! mountpoint, stop at the namespace root. It runs in `bpf_loop`, so the
//! verifier cost does not grow with the step budget. Components are written
//! leaf first, each followed by `/`; user space reverses them.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel};
use cilock_abi::{InodeStamp, PATH_MAX_BYTES, PathInfo, path_flags};

use crate::common::maps::{MAX_WALK_STEPS, off, ro};
use crate::common::read::{rd, rd_ptr};
use crate::common::record::scratch;

const NAME_MAX: u32 = 255;

/// Largest `base` a walk may start at (records place paths after fixed parts
/// and other strings; the mask keeps every write inside the scratch buffer).
pub const BASE_MASK: u32 = 0x3fff;

#[repr(C)]
struct Walk {
    dentry: u64,
    vfsmnt: u64,
    mnt_root: u64,
    root_dentry: u64,
    root_mnt: u64,
    base: u32,
    off: u32,
    flags: u32,
    root_off: u32,
    done: u32,
    _pad: u32,
}

/// Walks the `struct path` at kernel address `path` of `task`, writing the
/// components at `scratch[base..]`; fills `info`. Returns `None` if the path
/// could not be read at all.
#[inline(always)]
pub fn walk_path(path: u64, task: u64, base: u32, info: &mut PathInfo) -> Option<()> {
    let mnt = rd_ptr(path, off!(path_mnt))?;
    let dentry = rd_ptr(path, off!(path_dentry))?;
    let (root_mnt, root_dentry) = match rd_ptr(task, off!(task_fs)) {
        Some(fs) => {
            let root = fs + off!(fs_root);
            (
                rd::<u64>(root + off!(path_mnt)).unwrap_or(0),
                rd::<u64>(root + off!(path_dentry)).unwrap_or(0),
            )
        }
        None => (0, 0),
    };
    let mnt_root = rd::<u64>(mnt + off!(vfsmount_mnt_root))?;
    let mut flags = 0;
    // d_unlinked(): unhashed and not a root.
    let pprev = rd::<u64>(dentry + off!(dentry_d_hash_pprev)).unwrap_or(1);
    let parent = rd::<u64>(dentry + off!(dentry_d_parent)).unwrap_or(0);
    if pprev == 0 && parent != dentry {
        flags |= path_flags::DELETED;
    }
    let magic = match rd_ptr(dentry, off!(dentry_d_sb)) {
        Some(sb) => rd::<u64>(sb + off!(sb_s_magic)).unwrap_or(0) as u32,
        None => 0,
    };
    let mut w = Walk {
        dentry,
        vfsmnt: mnt,
        mnt_root,
        root_dentry,
        root_mnt,
        base: base & BASE_MASK,
        off: 0,
        flags,
        root_off: 0,
        done: 0,
        _pad: 0,
    };
    unsafe {
        bpf_loop(
            ro(&MAX_WALK_STEPS),
            walk_cb as *mut c_void,
            &raw mut w as *mut c_void,
            0,
        )
    };
    if w.done == 0 {
        w.flags |= path_flags::TRUNC_STEPS;
    }
    // nsfs dentries have no useful name (empty, or "/" on newer kernels):
    // the kernel prints `<type>:[inode]`, the type being the namespace's
    // `ops->name`.
    if w.flags & path_flags::ESCAPED != 0 && magic == NSFS_MAGIC {
        if let Some(n) = ns_type_name(dentry, base) {
            w.off = n;
        }
    }
    info.flags = w.flags;
    info.len = w.off;
    info.root_off = w.root_off;
    info.magic = magic;
    Some(())
}

#[inline(never)]
unsafe extern "C" fn walk_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(ctx as *mut Walk) };
    match step(w) {
        Some(true) => 0,
        Some(false) => 1,
        None => {
            w.flags |= path_flags::READ_ERR;
            w.done = 1;
            1
        }
    }
}

/// One step of the walk; `Some(false)` ends it.
#[inline(always)]
fn step(w: &mut Walk) -> Option<bool> {
    if w.dentry == w.root_dentry && w.vfsmnt == w.root_mnt && w.flags & path_flags::TASK_ROOT == 0 {
        w.flags |= path_flags::TASK_ROOT;
        w.root_off = w.off;
    }
    if w.dentry == w.mnt_root {
        let mount = w.vfsmnt - off!(mount_mnt);
        let parent = rd::<u64>(mount + off!(mount_mnt_parent))?;
        if parent == mount || parent == 0 {
            w.flags |= path_flags::NS_ROOT;
            w.done = 1;
            return Some(false);
        }
        w.dentry = rd::<u64>(mount + off!(mount_mnt_mountpoint))?;
        w.vfsmnt = parent + off!(mount_mnt);
        w.mnt_root = rd::<u64>(w.vfsmnt + off!(vfsmount_mnt_root))?;
        return Some(true);
    }
    let parent = rd::<u64>(w.dentry + off!(dentry_d_parent))?;
    if parent == w.dentry || parent == 0 {
        // A pseudo or disconnected dentry (pipe, socket, memfd, anon inode).
        w.flags |= path_flags::ESCAPED;
        w.done = 1;
        if w.off == 0 {
            append(w)?;
        }
        return Some(false);
    }
    if !append(w)? {
        return Some(false);
    }
    w.dentry = parent;
    Some(true)
}

const NSFS_MAGIC: u32 = 0x6e73_6673;

/// Writes the namespace type of an nsfs dentry (`mnt`, `uts`, …) followed by
/// `/` at `scratch[base..]`; returns the bytes written.
#[inline(always)]
fn ns_type_name(dentry: u64, base: u32) -> Option<u32> {
    if off!(proc_ns_operations_name) == cilock_abi::Offsets::ABSENT as u64 {
        return None;
    }
    let inode = rd_ptr(dentry, off!(dentry_d_inode))?;
    let ns = rd_ptr(inode, off!(inode_i_private))?;
    let ops = rd_ptr(ns, off!(ns_common_ops))?;
    let name = rd_ptr(ops, off!(proc_ns_operations_name))?;
    let buf = scratch()?;
    let pos = (base & BASE_MASK) as usize;
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
            buf.add(pos) as *mut c_void,
            32,
            name as *const c_void,
        )
    };
    if r <= 1 {
        return None;
    }
    // The NUL the helper wrote becomes the component separator.
    let len = ((r - 1) as u32) & 31;
    unsafe { *buf.add(pos + len as usize) = b'/' };
    Some(len + 1)
}

/// Appends the current dentry's name and a `/`; `Some(false)` when the byte
/// budget is exhausted.
#[inline(always)]
fn append(w: &mut Walk) -> Option<bool> {
    let q = w.dentry + off!(dentry_d_name);
    let len = rd::<u32>(q + off!(qstr_len))?;
    let name = rd::<u64>(q + off!(qstr_name))?;
    if len > NAME_MAX || w.off + len + 1 > PATH_MAX_BYTES as u32 - 1 {
        w.flags |= path_flags::TRUNC_LEN;
        w.done = 1;
        return Some(false);
    }
    let buf = scratch()?;
    let pos = ((w.base & BASE_MASK) + (w.off & 0xfff)) as usize;
    if len > 0 {
        let n = ((len - 1) & 0xff) + 1;
        let r =
            unsafe { bpf_probe_read_kernel(buf.add(pos) as *mut c_void, n, name as *const c_void) };
        if r != 0 {
            return None;
        }
    }
    unsafe { *buf.add(pos + (len & 0xff) as usize) = b'/' };
    w.off += len + 1;
    Some(true)
}

/// Reads the identity and times of `inode`.
#[inline(always)]
pub fn stamp(inode: u64, out: &mut InodeStamp) {
    out.ino = rd::<u64>(inode + off!(inode_i_ino)).unwrap_or(0);
    out.mode = rd::<u16>(inode + off!(inode_i_mode)).unwrap_or(0) as u32;
    out.size = rd::<i64>(inode + off!(inode_i_size)).unwrap_or(-1);
    out.mtime_sec = rd::<i64>(inode + off!(inode_mtime_sec)).unwrap_or(0);
    out.mtime_nsec = rd::<u32>(inode + off!(inode_mtime_nsec)).unwrap_or(0);
    out.ctime_sec = rd::<i64>(inode + off!(inode_ctime_sec)).unwrap_or(0);
    out.ctime_nsec = rd::<u32>(inode + off!(inode_ctime_nsec)).unwrap_or(0);
    out.dev = match rd_ptr(inode, off!(inode_i_sb)) {
        Some(sb) => rd::<u32>(sb + off!(sb_s_dev)).unwrap_or(0),
        None => 0,
    };
}
