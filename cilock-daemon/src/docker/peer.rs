//! Who is on the other end of a proxy connection, and whether it could
//! have opened the engine's socket itself: access through the proxy never
//! widens access to the engine.
//!
//! The peer's pid, uid and primary gid come from `SO_PEERCRED`, its
//! supplementary groups from `SO_PEERGROUPS` (both snapshots the kernel
//! took at `connect()`), else from `/proc/<pid>/status`. The decision
//! mirrors the kernel's permission check on the real socket and on every
//! directory above it: root passes; the owner is judged by the user bits
//! only; a member of the file's group (primary or supplementary) by the
//! group bits; everyone else by the other bits. The socket needs read and
//! write, each directory search.

use std::io;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use tokio::net::UnixStream;

/// The credentials of a connected peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Its pid in the daemon's pid namespace (0: unknown).
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

/// Reads the peer's credentials and groups.
pub fn peer_of(stream: &UnixStream) -> io::Result<PeerCred> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    let groups = match crate::server::auth::peer_groups(stream.as_fd()) {
        Ok(g) => g,
        Err(_) => crate::server::auth::proc_groups(pid)?,
    };
    Ok(PeerCred {
        pid,
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
    })
}

/// Owner, group and mode of one file on the path to the engine's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// Mode bits.
    pub mode: u32,
}

/// The directories from `/` down to the socket's, then the socket itself.
pub fn socket_chain(socket: &Path) -> io::Result<Vec<Perm>> {
    let real = std::fs::canonicalize(socket)?;
    let mut chain = Vec::new();
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    dirs.reverse();
    for d in dirs {
        chain.push(perm(&std::fs::metadata(d)?));
    }
    chain.push(perm(&std::fs::metadata(&real)?));
    Ok(chain)
}

fn perm(m: &std::fs::Metadata) -> Perm {
    Perm {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
    }
}

/// Whether the peer may open the socket at the end of `chain` (see the
/// module docs); `Err` says why not.
pub fn may_open(peer: &PeerCred, chain: &[Perm]) -> Result<(), String> {
    if peer.uid == 0 {
        return Ok(());
    }
    let Some((sock, dirs)) = chain.split_last() else {
        return Err("the engine's socket is unknown".into());
    };
    for d in dirs {
        if !allowed(peer, d, 0o1) {
            return Err(format!(
                "uid {} cannot search a directory above the engine's socket (owner {}, group {}, mode {:04o})",
                peer.uid,
                d.uid,
                d.gid,
                d.mode & 0o7777
            ));
        }
    }
    if !allowed(peer, sock, 0o6) {
        return Err(format!(
            "uid {} (gid {}) has no read/write access to the engine's socket (owner {}, group {}, mode {:04o})",
            peer.uid,
            peer.gid,
            sock.uid,
            sock.gid,
            sock.mode & 0o7777
        ));
    }
    Ok(())
}

/// The kernel's owner / group / other choice for `want` (rwx bits, 0o7).
fn allowed(peer: &PeerCred, p: &Perm, want: u32) -> bool {
    let bits = if peer.uid == p.uid {
        (p.mode >> 6) & 0o7
    } else if peer.gid == p.gid || peer.groups.contains(&p.gid) {
        (p.mode >> 3) & 0o7
    } else {
        p.mode & 0o7
    };
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_DIR: Perm = Perm {
        uid: 0,
        gid: 0,
        mode: 0o40755,
    };
    /// `/var/run/docker.sock` as Debian ships it: root:docker 0660.
    const SOCK: Perm = Perm {
        uid: 0,
        gid: 998,
        mode: 0o140660,
    };

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerCred {
        PeerCred {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn access_mirrors_the_real_socket() {
        let chain = [ROOT_DIR, ROOT_DIR, SOCK];
        assert!(may_open(&peer(0, 0, &[]), &chain).is_ok());
        assert!(may_open(&peer(1000, 998, &[]), &chain).is_ok());
        assert!(may_open(&peer(1000, 1000, &[27, 998]), &chain).is_ok());
        let no = may_open(&peer(1000, 1000, &[27]), &chain).unwrap_err();
        assert!(no.contains("uid 1000") && no.contains("0660"), "{no}");
        // Other bits.
        let open = Perm {
            mode: 0o140666,
            ..SOCK
        };
        assert!(may_open(&peer(1000, 1000, &[]), &[ROOT_DIR, open]).is_ok());
        // The owner is judged by the user bits only, even when the group's allow.
        let owner_locked = Perm {
            uid: 1000,
            gid: 998,
            mode: 0o140060,
        };
        assert!(may_open(&peer(1000, 998, &[]), &[ROOT_DIR, owner_locked]).is_err());
        // Read-only is not enough.
        let ro = Perm {
            mode: 0o140640,
            ..SOCK
        };
        assert!(may_open(&peer(1000, 998, &[]), &[ROOT_DIR, ro]).is_err());
        // A directory the peer cannot search.
        let private = Perm {
            uid: 0,
            gid: 0,
            mode: 0o40700,
        };
        let e = may_open(&peer(1000, 998, &[]), &[ROOT_DIR, private, SOCK]).unwrap_err();
        assert!(e.contains("search"), "{e}");
        assert!(may_open(&peer(1000, 998, &[]), &[]).is_err());
    }

    #[test]
    fn the_chain_of_a_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let chain = socket_chain(&sock).unwrap();
        let depth = std::fs::canonicalize(&sock).unwrap().ancestors().count();
        assert_eq!(chain.len(), depth);
        assert_eq!(chain.last().unwrap().mode & 0o170000, 0o140000);
        assert!(socket_chain(&dir.path().join("absent")).is_err());
    }
}
