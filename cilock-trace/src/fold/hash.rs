//! What the fold asks of a hasher, and what it gets back: the fold does no
//! I/O, the daemon's digest cache hashes (see [`Hasher`]).
//!
//! A digest is given for a path only when the file hashed there is the one
//! the job opened or exec'd: [`Identity`] is what the kernel recorded then,
//! [`Seen`] what the hasher found.

use std::time::Duration;

use cilock_evidence::digest::{DigestSet, HashAlg};

use crate::FileStamp;

/// Hashes the files of one step at its end (the daemon's digest cache, with
/// the step user's read permission).
pub trait Hasher {
    /// Hashes each path of `jobs` (escaped, see [`crate::pathname`]) if the
    /// file there has one of its identities; files larger than
    /// `max_file_size` are not read, and all of it stops after `budget`.
    /// One result per job, in order.
    fn hash_all(
        &self,
        jobs: &[(&str, Vec<Identity>)],
        algs: &[HashAlg],
        max_file_size: u64,
        budget: Duration,
    ) -> Vec<Hashed>;
}

/// The outcome of hashing one path.
#[derive(Clone, Debug, PartialEq)]
pub enum Hashed {
    /// The digest, and the file's identity when it was hashed.
    Digest(DigestSet, Seen),
    /// The file at the path is not one the job opened (none of the
    /// identities recorded at open/exec time matches it): not read.
    Mismatch(Seen),
    /// Not a regular file (directory, device, fifo, socket).
    NotRegular(&'static str),
    /// The step's user could not read it: not read.
    Unreadable,
    /// Larger than the cap: (size, cap).
    TooLarge(u64, u64),
    /// The step's hashing time budget ran out before or while reading it.
    OutOfTime(Duration),
    /// The file changed while it was being read.
    ChangedWhileHashing,
    /// It could not be opened or read.
    Error(String),
}

/// A file as the daemon found it when hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `fstat` of the open file.
    pub stamp: FileStamp,
    /// The device of its superblock (from the mount's `major:minor` in
    /// mountinfo), when it differs from `stamp.dev` (btrfs subvolumes,
    /// overlayfs) and was looked up.
    pub sb_dev: Option<u64>,
}

/// An identity the kernel recorded for a path when the job opened or
/// exec'd it; a digest is given only for a file that has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A read-only open or an exec: the content must be what it was then.
    Read(FileStamp),
    /// A write open: the same inode (its content is what the job left).
    Write {
        /// Device (user-space encoding).
        dev: u64,
        /// Inode number.
        ino: u64,
    },
    /// A written file as the writer left it (its last close, dup over the
    /// fd, close_range or exit): the same file with the same size and times.
    Closed(FileStamp),
}

impl Identity {
    /// Device and inode.
    pub fn dev_ino(&self) -> (u64, u64) {
        match self {
            Identity::Read(s) | Identity::Closed(s) => (s.dev, s.ino),
            Identity::Write { dev, ino } => (*dev, *ino),
        }
    }

    /// Same device and inode as `seen` (the device as `stat` reports it,
    /// or as the kernel's superblock has it: the eBPF backend records the
    /// latter, which btrfs subvolumes and overlayfs report differently).
    pub fn same_file(&self, seen: &Seen) -> bool {
        let (dev, ino) = self.dev_ino();
        dev != 0
            && ino != 0
            && ino == seen.stamp.ino
            && (dev == seen.stamp.dev || Some(dev) == seen.sb_dev)
    }

    /// The same file, and for a read-only open the same size and times.
    pub fn matches(&self, seen: &Seen) -> bool {
        if !self.same_file(seen) {
            return false;
        }
        match self {
            Identity::Read(then) | Identity::Closed(then) => {
                let now = &seen.stamp;
                then.size == now.size
                    && then.mtime_ns == now.mtime_ns
                    && then.ctime_ns == now.ctime_ns
            }
            Identity::Write { .. } => true,
        }
    }
}
