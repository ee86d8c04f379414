//! Recorder tests for names that are not text (issue #12 item 7): fileless
//! programs, non-UTF-8 names hashed by their real bytes, and "another file"
//! never explained as "modified".

use std::os::unix::ffi::OsStrExt;
use std::time::SystemTime;

use cilock_evidence::attestors::command_run::ProcessInfo;
use cilock_evidence::digest::{DigestSet, HashAlg};

use cilock_trace::fold::{Recorder, REASON_FILELESS, REASON_MODIFIED, REASON_REPLACED};
use cilock_trace::pathname::escape;
use cilock_trace::{FileStamp, TraceEvent};

use super::digest_cache::{stamp_of, DigestCache, Reader};

const O_RDONLY: u32 = 0;

fn open(pid: u32, path: &str, stamp: Option<FileStamp>) -> TraceEvent {
    TraceEvent::Open {
        pid,
        path: path.into(),
        flags: O_RDONLY,
        stamp,
        unresolved: None,
        time: SystemTime::now(),
    }
}

fn finish(r: Recorder) -> Vec<ProcessInfo> {
    r.finish(
        &DigestCache::default().for_reader(Reader::root()),
        &[HashAlg::Sha256],
        &[],
    )
    .processes
}

fn sha(b: &[u8]) -> String {
    DigestSet::from_reader(b, &[HashAlg::Sha256])
        .unwrap()
        .get_sha256()
        .unwrap()
        .to_string()
}

fn reason<'a>(p: &'a ProcessInfo, path: &str) -> &'a str {
    p.unhashed_opens
        .iter()
        .find(|u| u.path == path)
        .map(|u| u.reason.as_str())
        .unwrap_or("")
}

#[test]
fn a_memfd_program_is_named_by_the_kernel_and_flagged() {
    let memfd = "/memfd:stage2 (deleted)";
    let mut r = Recorder::new(None);
    r.push(TraceEvent::Exec {
        pid: 9,
        ppid: Some(1),
        filename: "/dev/fd/3".into(),
        exe: Some(memfd.into()),
        exe_stamp: Some(FileStamp {
            dev: 1,
            ino: 1234,
            size: 10,
            ..Default::default()
        }),
        cwd: Some("/".into()),
        argv: vec!["stage2".into()],
        comm: "3".into(),
        mnt_ns: None,
        time: SystemTime::now(),
    });
    let out = finish(r);
    let p = &out[0];
    assert_eq!(p.program, memfd);
    assert_eq!(p.execs, vec![memfd.to_string()]);
    assert_eq!(p.programdigest, None);
    assert_eq!(p.program_unhashed_reason, REASON_FILELESS);
    assert_eq!(p.exe_unhashed_reason, REASON_FILELESS);
    assert_eq!(reason(p, memfd), REASON_FILELESS);
    let marks: Vec<_> = p
        .syscall_events
        .iter()
        .filter(|e| e.syscall == "fileless_exec")
        .collect();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].path, memfd);
}

#[test]
fn non_utf8_names_are_hashed_by_their_bytes_and_the_decoy_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().as_os_str().as_bytes().to_vec();
    let file = |name: &[u8]| {
        let mut p = d.clone();
        p.push(b'/');
        p.extend_from_slice(name);
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&p))
    };
    let real = file(b"coll-\xff.bin");
    let decoy = file("coll-\u{fffd}.bin".as_bytes());
    std::fs::write(&real, b"real\n").unwrap();
    std::fs::write(&decoy, b"decoy\n").unwrap();
    let (real_s, decoy_s) = (
        escape(real.as_os_str().as_bytes()),
        escape(decoy.as_os_str().as_bytes()),
    );
    assert!(real_s.ends_with("/coll-\\xff.bin"));
    let mut r = Recorder::new(None);
    let st = |p: &std::path::Path| Some(stamp_of(&std::fs::metadata(p).unwrap()));
    r.push(open(3, &real_s, st(&real)));
    r.push(open(3, &decoy_s, st(&decoy)));
    let out = finish(r);
    let p = &out[0];
    assert_eq!(p.openedfiles.len(), 2);
    assert_eq!(
        p.openedfiles[&real_s].get_sha256(),
        Some(sha(b"real\n").as_str())
    );
    assert_eq!(
        p.openedfiles[&decoy_s].get_sha256(),
        Some(sha(b"decoy\n").as_str())
    );
    // A text not in escaped form names no file: no digest, a reason.
    let bad = format!("{}/x\\q", dir.path().display());
    let mut r = Recorder::new(None);
    r.push(open(3, &bad, st(&real)));
    let out = finish(r);
    assert_eq!(out[0].openedfiles[&bad], DigestSet::default());
    assert!(
        reason(&out[0], &bad).contains("escaped form"),
        "{:?}",
        out[0]
    );
}

#[test]
fn another_file_is_never_called_modified() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"now\n").unwrap();
    let now = stamp_of(&std::fs::metadata(&f).unwrap());
    let path = f.display().to_string();
    let sec = 1_000_000_000i128;
    // The same (device, inode) but changed since the open: modified.
    let earlier = FileStamp {
        size: now.size + 1,
        ctime_ns: now.ctime_ns - 10 * sec,
        mtime_ns: now.mtime_ns - 10 * sec,
        ..now
    };
    // The same (device, inode) whose ctime is older than at the open: the
    // inode number was reused by another file.
    let reused = FileStamp {
        ctime_ns: now.ctime_ns + 10 * sec,
        ..earlier
    };
    // Another device: another mount (namespace).
    let other_dev = FileStamp {
        dev: now.dev ^ 0xfff,
        ..now
    };
    for (stamp, want) in [
        (earlier, REASON_MODIFIED),
        (reused, REASON_REPLACED),
        (other_dev, REASON_REPLACED),
    ] {
        let mut r = Recorder::new(None);
        r.push(open(3, &path, Some(stamp)));
        let out = finish(r);
        assert_eq!(reason(&out[0], &path), want, "{stamp:?}");
    }
}
