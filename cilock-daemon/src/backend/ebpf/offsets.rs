//! Computes [`Offsets`] for the running kernel: struct members from BTF,
//! tracepoint record fields from tracefs format files.

use std::path::{Path, PathBuf};

use cilock_abi::Offsets;

use super::btf::{Btf, BtfError};

/// Why the offsets could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetsError {
    /// BTF lookup failed.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// A tracepoint format file could not be read or lacks a field.
    #[error("tracepoint format {path}: {what}")]
    Format {
        /// The format file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Offsets of the running kernel.
pub fn compute(btf: &Btf, tracefs: &Path) -> Result<Offsets, OffsetsError> {
    let o = |s: &str, m: &str| btf.offset(s, m);
    // Inode times: split seconds/nanoseconds fields on ≥6.7 (i_mtime_sec),
    // struct timespec64 (i_mtime / __i_ctime / i_ctime) before.
    let (mtime_sec, mtime_nsec) = match btf.try_offset("inode", "i_mtime_sec") {
        Some(s) => (s, o("inode", "i_mtime_nsec")?),
        None => {
            let t = o("inode", "i_mtime")?;
            (t, t + 8)
        }
    };
    let (ctime_sec, ctime_nsec) = match btf.try_offset("inode", "i_ctime_sec") {
        Some(s) => (s, o("inode", "i_ctime_nsec")?),
        None => {
            let t = btf
                .try_offset("inode", "__i_ctime")
                .map_or_else(|| o("inode", "i_ctime"), Ok)?;
            (t, t + 8)
        }
    };
    let fmt = tracefs.join("events/syscalls/sys_exit_openat/format");
    let (tp_exit_nr, tp_exit_ret) = exit_format(&fmt)?;
    Ok(Offsets {
        task_files: o("task_struct", "files")?,
        task_fs: o("task_struct", "fs")?,
        task_mm: o("task_struct", "mm")?,
        task_tgid: o("task_struct", "tgid")?,
        task_pid: o("task_struct", "pid")?,
        task_real_parent: o("task_struct", "real_parent")?,
        task_signal: o("task_struct", "signal")?,
        task_exit_code: o("task_struct", "exit_code")?,
        signal_live: o("signal_struct", "live")?,
        files_fdt: o("files_struct", "fdt")?,
        fdtable_fd: o("fdtable", "fd")?,
        file_f_path: o("file", "f_path")?,
        file_f_flags: o("file", "f_flags")?,
        file_f_inode: o("file", "f_inode")?,
        path_mnt: o("path", "mnt")?,
        path_dentry: o("path", "dentry")?,
        dentry_d_parent: o("dentry", "d_parent")?,
        dentry_d_name: o("dentry", "d_name")?,
        dentry_d_inode: o("dentry", "d_inode")?,
        dentry_d_sb: o("dentry", "d_sb")?,
        dentry_d_hash_pprev: o("dentry", "d_hash")? + o("hlist_bl_node", "pprev")?,
        qstr_len: o("qstr", "len")?,
        qstr_name: o("qstr", "name")?,
        vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
        mount_mnt_parent: o("mount", "mnt_parent")?,
        mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
        mount_mnt: o("mount", "mnt")?,
        fs_root: o("fs_struct", "root")?,
        fs_pwd: o("fs_struct", "pwd")?,
        mm_exe_file: o("mm_struct", "exe_file")?,
        mm_arg_start: o("mm_struct", "arg_start")?,
        mm_arg_end: o("mm_struct", "arg_end")?,
        bprm_file: o("linux_binprm", "file")?,
        bprm_filename: o("linux_binprm", "filename")?,
        inode_i_ino: o("inode", "i_ino")?,
        inode_i_mode: o("inode", "i_mode")?,
        inode_i_size: o("inode", "i_size")?,
        inode_i_sb: o("inode", "i_sb")?,
        inode_mtime_sec: mtime_sec,
        inode_mtime_nsec: mtime_nsec,
        inode_ctime_sec: ctime_sec,
        inode_ctime_nsec: ctime_nsec,
        sb_s_dev: o("super_block", "s_dev")?,
        sb_s_magic: o("super_block", "s_magic")?,
        cgroup_kn: o("cgroup", "kn")?,
        kernfs_node_id: o("kernfs_node", "id")?,
        task_group_leader: o("task_struct", "group_leader")?,
        task_start_time: o("task_struct", "start_time")?,
        inode_i_generation: o("inode", "i_generation")?,
        inode_i_private: btf
            .try_offset("inode", "i_private")
            .unwrap_or(Offsets::ABSENT),
        ns_common_ops: btf
            .try_offset("ns_common", "ops")
            .unwrap_or(Offsets::ABSENT),
        proc_ns_operations_name: btf
            .try_offset("proc_ns_operations", "name")
            .unwrap_or(Offsets::ABSENT),
        tp_exit_nr,
        tp_exit_ret,
        // Leaving and joining steps: without these the kernel cannot place
        // a cgroup in a step and user space decides (see `move_flags`).
        task_cgroups: btf
            .try_offset("task_struct", "cgroups")
            .unwrap_or(Offsets::ABSENT),
        css_set_dfl_cgrp: btf
            .try_offset("css_set", "dfl_cgrp")
            .unwrap_or(Offsets::ABSENT),
        cgroup_level: btf.try_offset("cgroup", "level").unwrap_or(Offsets::ABSENT),
        cgroup_ancestors: btf
            .try_offset("cgroup", "ancestors")
            .unwrap_or(Offsets::ABSENT),
        cgroup_ancestor_ids: btf
            .try_offset("cgroup", "ancestor_ids")
            .unwrap_or(Offsets::ABSENT),
        cgroup_root: btf.try_offset("cgroup", "root").unwrap_or(Offsets::ABSENT),
        cgroup_root_hierarchy_id: btf
            .try_offset("cgroup_root", "hierarchy_id")
            .unwrap_or(Offsets::ABSENT),
        qstr_hash: btf.try_offset("qstr", "hash").unwrap_or(Offsets::ABSENT),
        fdtable_max_fds: btf
            .try_offset("fdtable", "max_fds")
            .unwrap_or(Offsets::ABSENT),
        task_nsproxy: btf
            .try_offset("task_struct", "nsproxy")
            .unwrap_or(Offsets::ABSENT),
        nsproxy_mnt_ns: btf
            .try_offset("nsproxy", "mnt_ns")
            .unwrap_or(Offsets::ABSENT),
        mnt_namespace_inum: match (
            btf.try_offset("mnt_namespace", "ns"),
            btf.try_offset("ns_common", "inum"),
        ) {
            (Some(a), Some(b)) => a + b,
            _ => Offsets::ABSENT,
        },
    })
}

/// Offsets of `__syscall_nr` and `ret` in a `sys_exit_*` format file.
fn exit_format(path: &Path) -> Result<(u32, u32), OffsetsError> {
    let err = |what: String| OffsetsError::Format {
        path: path.to_path_buf(),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let field = |name: &str| -> Result<u32, OffsetsError> {
        for line in text.lines() {
            let line = line.trim();
            let Some(decl) = line.strip_prefix("field:") else {
                continue;
            };
            let decl_name = decl
                .split(';')
                .next()
                .and_then(|d| d.split_whitespace().last())
                .unwrap_or("");
            if decl_name != name {
                continue;
            }
            let off = line
                .split(';')
                .find_map(|p| p.trim().strip_prefix("offset:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| err(format!("no offset for {name}")))?;
            return Ok(off);
        }
        Err(err(format!("no field {name}")))
    };
    Ok((field("__syscall_nr")?, field("ret")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_places_moves_in_the_kernel() {
        // Leaving and joining steps read a task's cgroup2 cgroup and a
        // cgroup's ancestor at the step level (pointers from 6.0, ids
        // before); each is optional (ABSENT), but every kernel cilock
        // targets has one of them.
        let btf = Btf::from_sys().expect("this test needs /sys/kernel/btf/vmlinux");
        for (s, m) in [
            ("task_struct", "cgroups"),
            ("css_set", "dfl_cgrp"),
            ("cgroup", "level"),
            ("cgroup", "root"),
            ("cgroup_root", "hierarchy_id"),
        ] {
            assert!(btf.try_offset(s, m).is_some(), "{s}.{m}");
        }
        assert!(
            btf.try_offset("cgroup", "ancestors").is_some()
                || btf.try_offset("cgroup", "ancestor_ids").is_some()
        );
        assert!(btf.try_offset("cgroup", "no_such_member").is_none());
        // A task's mount namespace inode (ExecEvent.mnt_ns).
        for (s, m) in [
            ("task_struct", "nsproxy"),
            ("nsproxy", "mnt_ns"),
            ("mnt_namespace", "ns"),
            ("ns_common", "inum"),
        ] {
            assert!(btf.try_offset(s, m).is_some(), "{s}.{m}");
        }
    }

    #[test]
    fn parses_exit_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("format");
        std::fs::write(
            &p,
            "name: sys_exit_openat\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
             \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n",
        )
        .unwrap();
        assert_eq!(exit_format(&p).unwrap(), (8, 16));
        std::fs::write(&p, "format:\n\tfield:int __syscall_nr;\toffset:8;\n").unwrap();
        assert!(exit_format(&p).is_err());
    }
}
