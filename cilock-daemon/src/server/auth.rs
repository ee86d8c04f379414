//! Who may use the socket: root, and members of the configured group.
//!
//! The peer's uid and primary gid come from `SO_PEERCRED`. Its supplementary
//! groups come from `SO_PEERGROUPS` (a snapshot taken by the kernel at
//! `connect()`, like `SO_PEERCRED`), or, where that option is unavailable,
//! from the `Groups:` line of `/proc/<pid>/status` of the peer process.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use cilock_api::Peer;

/// Access policy of the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Root and members of this group.
    Group {
        /// Group name (as configured).
        name: String,
        /// Its gid.
        gid: u32,
    },
    /// Root only (the configured group does not exist).
    RootOnly,
}

impl Access {
    /// Resolves a configured group (name, or numeric gid) to a policy:
    /// [`Access::Group`] when the group exists, else [`Access::RootOnly`].
    pub fn for_group(group: &str) -> io::Result<Access> {
        match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => {
                return Ok(Access::Group {
                    name: group.to_string(),
                    gid: g.gid.as_raw(),
                })
            }
            Ok(None) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
        if let Ok(gid) = group.parse::<u32>() {
            return Ok(Access::Group {
                name: group.to_string(),
                gid,
            });
        }
        Ok(Access::RootOnly)
    }

    /// The gid that owns the socket under this policy (None: leave as is).
    pub fn gid(&self) -> Option<u32> {
        match self {
            Access::Group { gid, .. } => Some(*gid),
            Access::RootOnly => None,
        }
    }
}

/// Why a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// Not root and not a member of the group.
    #[error("uid {uid} (gid {gid}) is neither root nor a member of group {group}")]
    NotMember {
        /// Peer uid.
        uid: u32,
        /// Peer primary gid.
        gid: u32,
        /// The group that is allowed.
        group: String,
    },
    /// Not root and the socket is root-only.
    #[error("uid {uid} is not root and the socket is root-only (group {group:?} does not exist)")]
    RootOnly {
        /// Peer uid.
        uid: u32,
        /// The configured group.
        group: String,
    },
    /// The peer's groups could not be determined.
    #[error("cannot determine the groups of pid {pid}: {reason}")]
    Unknown {
        /// Peer pid.
        pid: u32,
        /// Why.
        reason: String,
    },
}

/// Decides whether `peer` (connected on `sock`) may use the daemon.
/// `configured_group` is only used in messages.
pub fn authorize(
    sock: BorrowedFd<'_>,
    peer: &Peer,
    access: &Access,
    configured_group: &str,
) -> Result<(), Denied> {
    if peer.uid == 0 {
        return Ok(());
    }
    let (name, gid) = match access {
        Access::RootOnly => {
            return Err(Denied::RootOnly {
                uid: peer.uid,
                group: configured_group.to_string(),
            })
        }
        Access::Group { name, gid } => (name, *gid),
    };
    if peer.gid == gid {
        return Ok(());
    }
    let groups = match peer_groups(sock) {
        Ok(g) => g,
        Err(_) => proc_groups(peer.pid).map_err(|e| Denied::Unknown {
            pid: peer.pid,
            reason: e.to_string(),
        })?,
    };
    if groups.contains(&gid) {
        Ok(())
    } else {
        Err(Denied::NotMember {
            uid: peer.uid,
            gid: peer.gid,
            group: name.clone(),
        })
    }
}

/// `SO_PEERGROUPS` (Linux ≥ 4.13); the value differs on a few architectures.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
))]
const SO_PEERGROUPS: Option<libc::c_int> = Some(59);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
)))]
const SO_PEERGROUPS: Option<libc::c_int> = None;

/// The peer's supplementary groups as captured at `connect()`.
pub fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let Some(opt) = SO_PEERGROUPS else {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    };
    let mut buf: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (buf.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: buf is valid for `len` bytes; the kernel writes at most len.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            buf.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the buffer is too small and `len` holds the needed size.
        let have = buf.len() * std::mem::size_of::<libc::gid_t>();
        let need = len as usize;
        if err.raw_os_error() == Some(libc::ERANGE) && need > have && need <= 65536 * 4 {
            buf = vec![0; need.div_ceil(std::mem::size_of::<libc::gid_t>())];
            continue;
        }
        return Err(err);
    }
}

/// Supplementary groups of `pid` from `/proc/<pid>/status` (`Groups:`).
pub fn proc_groups(pid: u32) -> io::Result<Vec<u32>> {
    if pid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the peer's pid is unknown",
        ));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_groups(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no Groups: line in /proc/{pid}/status"),
        )
    })
}

/// Parses the `Groups:` line of a `/proc/<pid>/status` text.
pub fn parse_status_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_groups() {
        let s = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_eq!(parse_status_groups(s), Some(vec![4, 24, 27, 1000]));
        assert_eq!(parse_status_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_status_groups("Name: x\n"), None);
        assert_eq!(parse_status_groups("Groups: 1 x\n"), None);
    }
}
