//! The programs' `.rodata` syscall configuration ([`SysConfig`]): the
//! `sys_enter_*` record layout read from tracefs, the daemon's pid, and the
//! inode of the daemon's pidfd (pidfs only), which lets the kernel side
//! recognise a `pidfd_send_signal` aimed at the daemon.

use std::path::Path;

use cilock_abi::SysConfig;

use super::EbpfError;

const PIDFS_MAGIC: i64 = 0x5049_4446;

/// The `.rodata` constants of the programs: the `sys_enter_*` record layout
/// (from tracefs), the daemon's pid and its pidfd inode (pidfs only).
pub fn sys_config(tracefs: &Path) -> Result<SysConfig, EbpfError> {
    let fmt = tracefs.join("events/syscalls/sys_enter_connect/format");
    let text = std::fs::read_to_string(&fmt).map_err(|e| {
        EbpfError::Offsets(super::offsets::OffsetsError::Format {
            path: fmt.clone(),
            what: e.to_string(),
        })
    })?;
    let args = first_arg_offset(&text).ok_or_else(|| {
        EbpfError::Offsets(super::offsets::OffsetsError::Format {
            path: fmt.clone(),
            what: "no argument field after __syscall_nr".into(),
        })
    })?;
    Ok(SysConfig {
        tp_enter_args: args,
        daemon_tgid: std::process::id(),
        // Without pidfs (< 6.9) every pidfd shares one anonymous inode, so
        // the inode cannot tell the daemon's pidfd from another: match none
        // rather than all (stated in the limitations).
        daemon_pidfd_ino: daemon_pidfd_inode().unwrap_or(u64::MAX),
    })
}

/// Offset of the first field after `__syscall_nr` in a format file.
fn first_arg_offset(text: &str) -> Option<u32> {
    let mut after_nr = false;
    for line in text.lines() {
        let Some(decl) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let name = decl.split(';').next()?.split_whitespace().last()?;
        if after_nr {
            return line
                .split(';')
                .find_map(|p| p.trim().strip_prefix("offset:"))
                .and_then(|v| v.trim().parse().ok());
        }
        after_nr = name == "__syscall_nr";
    }
    None
}

/// The inode of this process's pidfd (`own_pidfd_inode`), computed once.
pub fn daemon_pidfd_inode() -> Option<u64> {
    static INO: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *INO.get_or_init(own_pidfd_inode)
}

/// The inode of a pidfd of this process when pidfds live on pidfs (where
/// every pidfd of one process shares its inode).
fn own_pidfd_inode() -> Option<u64> {
    // SAFETY: plain syscalls on a fd we own and close.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
        if fd < 0 {
            return None;
        }
        let mut sfs: libc::statfs = std::mem::zeroed();
        let mut st: libc::stat = std::mem::zeroed();
        let ok = libc::fstatfs(fd, &mut sfs) == 0
            && sfs.f_type as i64 == PIDFS_MAGIC
            && libc::fstat(fd, &mut st) == 0;
        libc::close(fd);
        ok.then_some(st.st_ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_first_arg() {
        let f = "name: sys_enter_connect\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\n\
                 \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
                 \tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n";
        assert_eq!(first_arg_offset(f), Some(16));
        assert_eq!(first_arg_offset("format:\n"), None);
    }
}
