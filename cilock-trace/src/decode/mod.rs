//! Decodes ring-buffer records (`cilock-abi`) into [`TraceEvent`]s.
//!
//! Records come from our own kernel programs, but their contents (paths,
//! argv, comm) are data from the traced job: every length is checked against
//! the record, and bad records are reported, never trusted.

use std::mem::size_of;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cilock_abi::{
    kind, net_call, path_flags, payload_flags, CgroupJoinEvent, CgroupMoveEvent, CloseEvent,
    ExecEvent, ExitEvent, ForkEvent, Header, InodeStamp, NetEvent, OpenEvent, PathInfo,
    PayloadEvent, SyscallRecord,
};

use crate::pathname::escape;
use crate::syscall::{Host, SuspiciousCall};
use crate::{FileStamp, NetCall, TraceEvent};

mod cgroup;
mod file;
mod net;
mod payload;
mod process;
pub mod sockaddr;
mod syscall;

use file::file_stamp;
pub use file::{memfd_name, rebuild_path, user_dev};
#[cfg(test)]
use file::{NSFS_MAGIC, PIPEFS_MAGIC};
pub use payload::Payload;
pub use process::exit_code;

/// One record being decoded: its bytes, header, kind and time, and what
/// the decoder cannot know ([`Host`]).
struct Raw<'a> {
    b: &'a [u8],
    k: u32,
    hdr: Header,
    time: SystemTime,
    host: &'a Host<'a>,
}

impl Raw<'_> {
    /// A [`TraceEvent`] of this record's step.
    fn ev(&self, event: TraceEvent) -> Record {
        Record::Event {
            step_cgroup: self.hdr.step_cgroup,
            kind: self.k,
            event,
        }
    }
}

/// A decoded record.
#[derive(Debug, PartialEq)]
pub enum Record {
    /// A trace event of the step `step_cgroup`.
    Event {
        /// The step cgroup id.
        step_cgroup: u64,
        /// The record kind.
        kind: u32,
        /// The event.
        event: TraceEvent,
    },
    /// A process of the step was moved into cgroup `dst`, outside the step
    /// (with `move_flags::DST_UNKNOWN` the caller decides whether `dst` is
    /// outside; with `move_flags::AT_FORK` it was created there by `by`).
    CgroupMove {
        /// The step cgroup id.
        step_cgroup: u64,
        /// The moved tgid.
        moved: u32,
        /// The tgid that moved it.
        by: u32,
        /// Destination cgroup id.
        dst: u64,
        /// When.
        time: SystemTime,
        /// `cilock_abi::move_flags`.
        flags: u32,
    },
    /// A process came into the step from outside it: moved into cgroup
    /// `dst` by `by`, or created there by `by` (`move_flags::AT_FORK`).
    CgroupJoin {
        /// The step cgroup id (the step it joined).
        step_cgroup: u64,
        /// The tgid that came in.
        moved: u32,
        /// The tgid that moved (or created) it.
        by: u32,
        /// Destination cgroup id.
        dst: u64,
        /// The step it came from (0: none).
        src_step: u64,
        /// `cilock_abi::move_flags`.
        flags: u32,
        /// When.
        time: SystemTime,
    },
    /// Payload bytes of a step socket (see [`Payload`]).
    Payload(Payload),
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed record (kind {kind}, {len} bytes): {what}")]
pub struct DecodeError {
    /// Record kind.
    pub kind: u32,
    /// Record length.
    pub len: usize,
    /// What is wrong.
    pub what: &'static str,
}

/// Converts kernel boot-time nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime − boottime, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// Samples both clocks now.
    pub fn now() -> Clock {
        let rt = clock_ns(libc::CLOCK_REALTIME);
        let bt = clock_ns(libc::CLOCK_BOOTTIME);
        Clock { offset_ns: rt - bt }
    }

    /// Wall-clock time of a boot-time timestamp.
    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = ktime_ns as i128 + self.offset_ns;
        if ns <= 0 {
            return UNIX_EPOCH;
        }
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// A kernel record that may be read from any bytes of its size:
/// plain-old-data, `repr(C)`, every bit pattern valid (integers and arrays
/// of integers only, explicit padding; `cilock-abi` asserts the sizes).
///
/// # Safety
///
/// Implement only for such types. (A local marker until `cilock-abi` has
/// one for every record.)
pub unsafe trait KernelRecord: Copy {}

// SAFETY: all are repr(C) records of integers and integer arrays with
// explicit padding (cilock-abi's event.rs, size-asserted there).
unsafe impl KernelRecord for Header {}
// SAFETY: as above.
unsafe impl KernelRecord for OpenEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for ExecEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for ExitEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for ForkEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for CloseEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for NetEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for PayloadEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for CgroupMoveEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for CgroupJoinEvent {}
// SAFETY: as above.
unsafe impl KernelRecord for SyscallRecord {}

fn read<T: KernelRecord>(b: &[u8], k: u32) -> Result<T, DecodeError> {
    if b.len() < size_of::<T>() {
        return Err(DecodeError {
            kind: k,
            len: b.len(),
            what: "shorter than its fixed part",
        });
    }
    // SAFETY: length checked; T: KernelRecord is plain-old-data, any bytes are
    // a valid T, and read_unaligned needs no alignment.
    Ok(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
}

fn slice(b: &[u8], start: usize, len: usize, k: u32) -> Result<&[u8], DecodeError> {
    b.get(start..start.saturating_add(len)).ok_or(DecodeError {
        kind: k,
        len: b.len(),
        what: "variable part exceeds the record",
    })
}

/// Decodes one record; `host` tells what the decoder cannot know (see
/// [`Host`]).
pub fn decode(b: &[u8], clock: &Clock, host: &Host<'_>) -> Result<Record, DecodeError> {
    let hdr: Header = read(b, 0)?;
    let k = hdr.kind;
    let time = clock.wall(hdr.ktime_ns);
    let r = Raw {
        b,
        k,
        hdr,
        time,
        host,
    };
    match k {
        kind::OPEN => file::open(&r),
        kind::CLOSE => file::close(&r),
        kind::EXEC => process::exec(&r),
        kind::FORK => process::fork(&r),
        kind::EXIT => process::exit(&r),
        kind::CGROUP_MOVE => cgroup::cgroup_move(&r),
        kind::CGROUP_JOIN => cgroup::cgroup_join(&r),
        kind::NET => net::net(&r),
        kind::PAYLOAD => payload::payload(&r),
        kind::SYSCALL => syscall::syscall(&r),
        _ => Err(DecodeError {
            kind: k,
            len: b.len(),
            what: "unknown kind",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flags: u32, len: usize) -> PathInfo {
        PathInfo {
            flags,
            len: len as u32,
            root_off: 0,
            magic: 0,
        }
    }

    #[test]
    fn rebuilds_leaf_first_paths() {
        let b = b"hostname/etc/";
        let (p, why) = rebuild_path(&info(path_flags::NS_ROOT, b.len()), b, 1);
        assert_eq!(p, "/etc/hostname");
        assert_eq!(why, None);
        let (p, why) = rebuild_path(&info(path_flags::NS_ROOT, 0), b"", 1);
        assert_eq!((p.as_str(), why), ("/", None));
        let (p, why) = rebuild_path(
            &info(path_flags::NS_ROOT | path_flags::DELETED, 6),
            b"x/tmp/",
            1,
        );
        assert_eq!(p, "/tmp/x (deleted)");
        assert!(why.is_some());
        let (p, why) = rebuild_path(&info(path_flags::TRUNC_STEPS, 4), b"c/b/", 1);
        assert_eq!(p, "/…/b/c");
        assert!(why.unwrap().starts_with("path truncated: deeper"));
        let (p, why) = rebuild_path(&info(path_flags::TRUNC_LEN, 4), b"c/b/", 1);
        assert_eq!(p, "/…/b/c");
        assert!(why.unwrap().contains("longer than PATH_MAX"));
        // Non-UTF-8 components, losslessly; the U+FFFD decoy stays apart.
        let b = b"coll-\xff.bin/w/";
        let (p, _) = rebuild_path(&info(path_flags::NS_ROOT, b.len()), b, 1);
        assert_eq!(p, "/w/coll-\\xff.bin");
        let raw: &[u8] = &[b'c', 0xff, b'/', b'w', b'/'];
        let (p, _) = rebuild_path(&info(path_flags::NS_ROOT, raw.len()), raw, 1);
        assert_eq!(p, "/w/c\\xff");
        let raw: &[u8] = "c\u{fffd}/w/".as_bytes();
        let (p, _) = rebuild_path(&info(path_flags::NS_ROOT, raw.len()), raw, 1);
        assert_eq!(p, "/w/c\u{fffd}");
        // A memfd exe.
        let m = b"memfd:a/b/";
        assert_eq!(
            memfd_name(&info(path_flags::ESCAPED, m.len()), m).as_deref(),
            Some("/memfd:a/b (deleted)")
        );
        assert_eq!(memfd_name(&info(path_flags::NS_ROOT, m.len()), m), None);
        let mut pi = info(path_flags::ESCAPED, 0);
        pi.magic = PIPEFS_MAGIC;
        assert_eq!(rebuild_path(&pi, b"", 77).0, "pipe:[77]");
        let mut ns = info(path_flags::ESCAPED, 4);
        ns.magic = NSFS_MAGIC;
        assert_eq!(rebuild_path(&ns, b"uts/", 4026531838).0, "uts:[4026531838]");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(9), 137);
        assert_eq!(exit_code(0x80 | 11), 139);
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a padding-free repr(C) record.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_network_payload_and_syscall_records() {
        use cilock_abi::SOCKADDR_MAX;
        let clock = Clock::now();
        let mut e = NetEvent {
            hdr: Header::default(),
            call: net_call::CONNECT,
            fd: 5,
            cookie: 9,
            source: cilock_abi::net_source::KERNEL,
            addr_len: 16,
            addr: [0; SOCKADDR_MAX],
        };
        e.hdr.kind = kind::NET;
        e.hdr.tgid = 7;
        e.addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        e.addr[2..4].copy_from_slice(&443u16.to_be_bytes());
        e.addr[4..8].copy_from_slice(&[10, 0, 0, 1]);
        match decode(&bytes_of(&e), &clock, &Host::detached()).unwrap() {
            Record::Event {
                event:
                    TraceEvent::Net {
                        pid,
                        call,
                        fd,
                        addr,
                        ..
                    },
                ..
            } => {
                assert_eq!((pid, call, fd), (7, NetCall::Connect, 5));
                assert_eq!(addr, crate::SockAddr::Ip("10.0.0.1:443".parse().unwrap()));
            }
            o => panic!("{o:?}"),
        }
        e.addr_len = 1;
        assert!(decode(&bytes_of(&e), &clock, &Host::detached()).is_err());

        let mut p = PayloadEvent::default();
        p.hdr.kind = kind::PAYLOAD;
        p.flags = payload_flags::EGRESS | payload_flags::TCP;
        p.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        p.dport = 443;
        p.stream_off = 10;
        p.len = 3;
        let mut b = bytes_of(&p);
        b.extend_from_slice(b"abc");
        match decode(&b, &clock, &Host::detached()).unwrap() {
            Record::Payload(x) => {
                assert!(x.egress && x.tcp);
                assert_eq!((x.stream_off, x.bytes.as_slice()), (10, &b"abc"[..]));
                assert_eq!(x.dst, "127.0.0.1:443".parse().unwrap());
            }
            o => panic!("{o:?}"),
        }
        b.pop();
        assert!(
            decode(&b, &clock, &Host::detached()).is_err(),
            "payload longer than the record"
        );

        let mut s = SyscallRecord::default();
        s.hdr.kind = kind::SYSCALL;
        s.what = cilock_abi::syscall::what::MEMFD_CREATE;
        s.args[1] = 1;
        s.str_len[0] = 6;
        let mut b = bytes_of(&s);
        b.extend_from_slice(b"stage2");
        match decode(&b, &clock, &Host::detached()).unwrap() {
            Record::Event {
                event: TraceEvent::Syscall { call, .. },
                ..
            } => {
                assert_eq!(call.name(), "memfd_create");
                assert_eq!(call.args(), vec![1]);
                assert_eq!(call.path(), Some("stage2"));
                assert!(call.describe(None).contains("stage2"));
            }
            o => panic!("{o:?}"),
        }
        b.truncate(b.len() - 1);
        assert!(
            decode(&b, &clock, &Host::detached()).is_err(),
            "string longer than the record"
        );
    }

    #[test]
    fn decodes_the_mount_namespace_of_an_exec() {
        let clock = Clock::now();
        let mut e = ExecEvent::default();
        e.hdr.kind = kind::EXEC;
        e.hdr.size = size_of::<ExecEvent>() as u32;
        e.hdr.tgid = 7;
        e.mnt_ns = 4026532174;
        let ns = |e: &ExecEvent| match decode(&bytes_of(e), &clock, &Host::detached()).unwrap() {
            Record::Event {
                event: TraceEvent::Exec { mnt_ns, pid, .. },
                ..
            } => {
                assert_eq!(pid, 7);
                mnt_ns
            }
            o => panic!("{o:?}"),
        };
        assert_eq!(ns(&e), Some(4026532174));
        // 0: the kernel could not read it.
        e.mnt_ns = 0;
        assert_eq!(ns(&e), None);
    }

    #[test]
    fn decodes_move_and_join_records() {
        use cilock_abi::move_flags;
        let clock = Clock::now();
        let mut m = CgroupMoveEvent::default();
        m.hdr.kind = kind::CGROUP_MOVE;
        m.hdr.step_cgroup = 5;
        m.hdr.tgid = 7;
        m.dst_cgroup = 9;
        m.moved_tgid = 8;
        m.flags = move_flags::AT_FORK;
        match decode(&bytes_of(&m), &clock, &Host::detached()).unwrap() {
            Record::CgroupMove {
                step_cgroup,
                moved,
                by,
                dst,
                flags,
                ..
            } => assert_eq!((step_cgroup, moved, by, dst, flags), (5, 8, 7, 9, 1)),
            r => panic!("{r:?}"),
        }
        let mut j = CgroupJoinEvent::default();
        j.hdr.kind = kind::CGROUP_JOIN;
        j.hdr.step_cgroup = 6;
        j.hdr.tgid = 7;
        j.dst_cgroup = 10;
        j.src_step = 5;
        j.moved_tgid = 8;
        match decode(&bytes_of(&j), &clock, &Host::detached()).unwrap() {
            Record::CgroupJoin {
                step_cgroup,
                moved,
                by,
                dst,
                src_step,
                flags,
                ..
            } => assert_eq!(
                (step_cgroup, moved, by, dst, src_step, flags),
                (6, 8, 7, 10, 5, 0)
            ),
            r => panic!("{r:?}"),
        }
        // A short join record is refused.
        assert!(decode(&bytes_of(&j)[..64], &clock, &Host::detached()).is_err());
    }

    #[test]
    fn decodes_close_records() {
        let clock = Clock::now();
        let mut e = CloseEvent::default();
        e.hdr.kind = kind::CLOSE;
        e.hdr.tgid = 42;
        e.fd = 3;
        e.how = cilock_abi::close_how::EXIT;
        e.inode = InodeStamp {
            ino: 77,
            dev: (8 << 20) | 1,
            mode: 0o100644,
            size: 12,
            mtime_sec: 5,
            mtime_nsec: 6,
            ctime_nsec: 8 | (1 << 31),
            ctime_sec: 7,
        };
        let Record::Event { event, kind: k, .. } =
            decode(&bytes_of(&e), &clock, &Host::detached()).unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!(k, kind::CLOSE);
        let TraceEvent::Close { pid, stamp, .. } = event else {
            panic!("{event:?}")
        };
        assert_eq!(pid, 42);
        assert_eq!(
            (
                stamp.dev,
                stamp.ino,
                stamp.size,
                stamp.mtime_ns,
                stamp.ctime_ns
            ),
            (libc::makedev(8, 1), 77, 12, 5_000_000_006, 7_000_000_008)
        );
        assert!(decode(&bytes_of(&e)[..60], &clock, &Host::detached()).is_err());
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        let clock = Clock::now();
        assert!(decode(&[1, 2, 3], &clock, &Host::detached()).is_err());
        let mut e = OpenEvent::default();
        e.hdr.kind = kind::OPEN;
        e.path.len = 100; // but no bytes follow
        let bytes: [u8; size_of::<OpenEvent>()] = unsafe { std::mem::transmute(e) };
        assert!(decode(&bytes, &clock, &Host::detached()).is_err());
        let h = Header {
            kind: 99,
            ..Default::default()
        };
        let bytes: [u8; size_of::<Header>()] = unsafe { std::mem::transmute(h) };
        assert!(decode(&bytes, &clock, &Host::detached()).is_err());
    }
}
