//! Kernel struct member offsets, computed by the daemon from the running
//! kernel's BTF and injected into the eBPF object as the `.rodata` global
//! `OFFSETS`. Rust eBPF has no CO-RE, so this is how one object serves every
//! kernel. A field that does not exist on a kernel is [`Offsets::ABSENT`].

/// Byte offsets of the kernel struct members the probes read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(missing_docs, reason = "each field is named `<struct>_<member>`")]
pub struct Offsets {
    pub task_files: u32,
    pub task_fs: u32,
    pub task_mm: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_real_parent: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub signal_live: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub file_f_path: u32,
    pub file_f_flags: u32,
    pub file_f_inode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    pub dentry_d_hash_pprev: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub mount_mnt: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub bprm_file: u32,
    pub bprm_filename: u32,
    pub inode_i_ino: u32,
    pub inode_i_mode: u32,
    pub inode_i_size: u32,
    pub inode_i_sb: u32,
    /// Seconds of mtime (`i_mtime_sec` on ≥6.7, `i_mtime.tv_sec` before).
    pub inode_mtime_sec: u32,
    pub inode_mtime_nsec: u32,
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    pub sb_s_dev: u32,
    pub sb_s_magic: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub task_group_leader: u32,
    pub task_start_time: u32,
    pub inode_i_generation: u32,
    /// `inode.i_private`, `ns_common.ops`, `proc_ns_operations.name`: the
    /// type of a namespace file (nsfs dentries have no name).
    pub inode_i_private: u32,
    pub ns_common_ops: u32,
    pub proc_ns_operations_name: u32,
    /// `__syscall_nr` in the `syscalls/sys_exit_*` tracepoint record (from its format file).
    pub tp_exit_nr: u32,
    /// `ret` in the `syscalls/sys_exit_*` tracepoint record (from its format file).
    pub tp_exit_ret: u32,
    /// `task_struct.cgroups` (the task's `css_set`).
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp` (the task's cgroup2 cgroup).
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.level` (depth below the hierarchy root).
    pub cgroup_level: u32,
    /// `cgroup.ancestors` (≥6.0: `struct cgroup *[]`, indexed by level),
    /// ABSENT before.
    pub cgroup_ancestors: u32,
    /// `cgroup.ancestor_ids` (<6.0: `u64[]` of kernfs ids, indexed by
    /// level), ABSENT from 6.0.
    pub cgroup_ancestor_ids: u32,
    /// `cgroup.root` and `cgroup_root.hierarchy_id` (0 = cgroup2): moves
    /// in cgroup v1 hierarchies do not change a task's step.
    pub cgroup_root: u32,
    pub cgroup_root_hierarchy_id: u32,
    /// `qstr.hash` (the name hash of a dentry's `d_name`; ABSENT: not
    /// part of the de-duplication key).
    pub qstr_hash: u32,
    /// `fdtable.max_fds` (ABSENT: fds are not bounds-checked and files
    /// open at exit are not stamped).
    pub fdtable_max_fds: u32,
    /// `task_struct.nsproxy`, `nsproxy.mnt_ns`, and `mnt_namespace.ns` +
    /// `ns_common.inum` (one offset): a task's mount namespace inode
    /// (ABSENT: `ExecEvent.mnt_ns` is 0).
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_namespace_inum: u32,
}

impl Offsets {
    /// Marks a member the running kernel does not have.
    pub const ABSENT: u32 = u32::MAX;
}

// SAFETY: repr(C) and only u32 fields, so no padding; every bit pattern is
// a valid value.
crate::plain_old_data!(Offsets);
