//! The fold ([`cilock_trace::fold::Recorder`]) with real files and the
//! daemon's hasher ([`super::digest_cache`]): digests only for the file the
//! job opened, readable by the step's user, within the bounds; and the
//! process tree, network and moves it builds (moved here from the fold's
//! own tests when the fold became pure: they assert the same things).

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use cilock_evidence::attestors::command_run::ProcessInfo;
    use cilock_evidence::digest::{DigestSet, HashAlg};
    use cilock_trace::fold::*;
    use cilock_trace::proto::http_connect::{http_connect, Connect};
    use cilock_trace::syscall::SuspiciousCall;
    use cilock_trace::{FileStamp, NetCall, Running, SockAddr, TraceEvent};

    use crate::trace::digest_cache::{stamp_of, DigestCache, Reader};

    fn t() -> SystemTime {
        SystemTime::now()
    }

    fn stamp(p: impl AsRef<std::path::Path>) -> FileStamp {
        stamp_of(&std::fs::metadata(p).unwrap())
    }

    fn exec(pid: u32, filename: &str, exe: &str, argv: &[&str], cwd: &str) -> TraceEvent {
        TraceEvent::Exec {
            pid,
            ppid: Some(1),
            filename: filename.into(),
            exe: Some(exe.into()),
            exe_stamp: std::fs::metadata(exe).ok().map(|m| stamp_of(&m)),
            cwd: Some(cwd.into()),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            comm: "x".into(),
            mnt_ns: None,
            time: t(),
        }
    }

    fn open(pid: u32, path: &str, flags: u32) -> TraceEvent {
        TraceEvent::Open {
            pid,
            path: path.into(),
            flags,
            stamp: std::fs::metadata(path).ok().map(|m| stamp_of(&m)),
            unresolved: None,
            time: t(),
        }
    }

    fn sha(p: impl AsRef<std::path::Path>) -> String {
        DigestSet::from_reader(std::fs::File::open(p).unwrap(), &[HashAlg::Sha256])
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

    fn finish(r: Recorder) -> StepTrace {
        r.finish(
            &DigestCache::default().for_reader(Reader::root()),
            &[HashAlg::Sha256],
            &[],
        )
    }

    #[test]
    fn rename_over_after_exec_gives_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let tool = format!("{d}/tool");
        std::fs::write(&tool, b"#real tool\n").unwrap();
        std::fs::write(format!("{d}/.benign"), b"#benign\n").unwrap();
        let mut r = Recorder::new(None);
        r.push(exec(7, "./tool", &tool, &["./tool"], &d));
        std::fs::rename(format!("{d}/.benign"), &tool).unwrap();
        let out = finish(r);
        let p = &out.processes[0];
        assert_eq!(p.program, tool);
        assert_eq!(p.programdigest, None);
        assert_eq!(p.exedigest, None);
        assert_eq!(p.program_unhashed_reason, REASON_REPLACED);
        assert_eq!(p.exe_unhashed_reason, REASON_REPLACED);
        assert!(p.openedfiles[&tool].is_empty());
        assert_eq!(reason(p, &tool), REASON_REPLACED);
        // Without the rename: the digest of what ran.
        let mut r = Recorder::new(None);
        r.push(exec(7, "./tool", &tool, &["./tool"], &d));
        let out = finish(r);
        let want = sha(&tool);
        assert_eq!(
            out.processes[0]
                .programdigest
                .as_ref()
                .unwrap()
                .get_sha256(),
            Some(want.as_str())
        );
        assert_eq!(out.processes[0].exedigest, out.processes[0].programdigest);
    }

    #[test]
    fn a_symlinked_name_never_makes_the_link_target_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let prog = format!("{d}/prog");
        let secret = format!("{d}/secret");
        let link = format!("{d}/link");
        std::fs::write(&prog, b"prog").unwrap();
        std::fs::write(&secret, b"secret").unwrap();
        std::os::unix::fs::symlink(&prog, &link).unwrap();
        let mut r = Recorder::new(None);
        // The kernel ran prog through link; link then re-pointed.
        r.push(exec(8, &link, &prog, &[&link, &secret], "/"));
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        // A path the kernel reports is canonical; one with a symlink on the
        // way means it changed: no digest.
        r.push(TraceEvent::Open {
            pid: 8,
            path: link.clone(),
            flags: 0,
            stamp: Some(stamp(&secret)),
            unresolved: None,
            time: t(),
        });
        let out = finish(r);
        let p = &out.processes[0];
        assert_eq!(p.program, prog);
        assert_eq!(p.execs, vec![prog.clone()]);
        assert_eq!(
            p.programdigest.as_ref().unwrap().get_sha256(),
            Some(sha(&prog).as_str())
        );
        assert_eq!(reason(p, &link), "symbolic link");
        let text = serde_json::to_string(&out.processes).unwrap();
        assert!(
            !text.contains(&sha(&secret)),
            "digest of the link target leaked"
        );
    }

    #[test]
    fn a_script_needs_its_interpreters_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let script = format!("{d}/s.sh");
        std::fs::write(&script, b"#!/bin/sh\ntrue\n").unwrap();
        let sh = std::fs::canonicalize("/bin/sh")
            .unwrap()
            .display()
            .to_string();
        // argv as the kernel rewrote it: interpreter, script name.
        let mut r = Recorder::new(None);
        r.push(exec(
            9,
            "./sub/../s.sh",
            &sh,
            &["/bin/sh", "./sub/../s.sh"],
            &d,
        ));
        r.push(TraceEvent::Fork {
            parent: 9,
            child: 10,
            time: t(),
        });
        let out = finish(r);
        let p = &out.processes[0];
        assert_eq!(p.program, script);
        assert_eq!(p.programdigest, None);
        assert!(p.program_unhashed_reason.contains("script"), "{p:?}");
        assert!(
            p.exedigest.is_some(),
            "the interpreter is proven by its exec"
        );
        // The interpreter opened it read-only: proven, for the forked child too.
        let mut r = Recorder::new(None);
        r.push(exec(
            9,
            "./sub/../s.sh",
            &sh,
            &["/bin/sh", "./sub/../s.sh"],
            &d,
        ));
        r.push(open(9, &script, 0));
        r.push(TraceEvent::Fork {
            parent: 9,
            child: 10,
            time: t(),
        });
        let out = finish(r);
        for p in &out.processes {
            assert_eq!(p.program, script);
            assert_eq!(
                p.programdigest.as_ref().unwrap().get_sha256(),
                Some(sha(&script).as_str())
            );
        }
    }

    #[test]
    fn o_path_opens_are_never_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.pem").display().to_string();
        std::fs::write(&f, b"key").unwrap();
        let mut r = Recorder::new(None);
        r.push(open(3, &f, O_PATH));
        r.push(open(3, "/proc/3/environ", O_PATH));
        let cache = DigestCache::default();
        let out = r.finish(&cache.for_reader(Reader::root()), &[HashAlg::Sha256], &[]);
        let p = &out.processes[0];
        assert!(p.openedfiles[&f].is_empty());
        assert_eq!(reason(p, &f), REASON_O_PATH);
        assert!(
            p.syscall_events.is_empty(),
            "an O_PATH handle reads nothing"
        );
        assert_eq!(cache.stats(), (0, 0), "the file was read");
        // O_PATH then a real open: the real open counts.
        let mut r = Recorder::new(None);
        r.push(open(3, &f, O_PATH));
        r.push(open(3, &f, 0));
        assert!(!finish(r).processes[0].openedfiles[&f].is_empty());
    }

    #[test]
    fn only_files_the_steps_user_could_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret").display().to_string();
        std::fs::write(&f, b"s").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let user = Reader {
            uid: 4242,
            gid: 4242,
            groups: vec![],
        };
        let mut r = Recorder::with_limits(None, TraceLimits::default());
        r.push(open(3, &f, 0));
        let cache = DigestCache::default();
        let out = r.finish(&cache.for_reader(user.clone()), &[HashAlg::Sha256], &[]);
        assert_eq!(reason(&out.processes[0], &f), REASON_UNREADABLE);
        assert_eq!(cache.stats(), (0, 0));
        // An exec'd file with --x only: neither digest.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o711)).unwrap();
        let mut r = Recorder::with_limits(None, TraceLimits::default());
        r.push(exec(4, &f, &f, &["x"], "/"));
        let p = &r
            .finish(
                &DigestCache::default().for_reader(user),
                &[HashAlg::Sha256],
                &[],
            )
            .processes[0];
        assert_eq!((p.programdigest.clone(), p.exedigest.clone()), (None, None));
        assert_eq!(p.program_unhashed_reason, REASON_UNREADABLE);
    }

    #[test]
    fn write_opens_need_the_same_inode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("out").display().to_string();
        std::fs::write(&f, b"").unwrap();
        let close = |pid: u32, p: &str| TraceEvent::Close {
            pid,
            stamp: stamp(p),
            time: t(),
        };
        let mut r = Recorder::new(None);
        r.push(open(3, &f, (libc::O_WRONLY | libc::O_TRUNC) as u32));
        // The process writes and closes: the digest is of what it left.
        std::fs::write(&f, b"written").unwrap();
        r.push(close(3, &f));
        let out = finish(r);
        assert_eq!(
            out.processes[0].openedfiles[&f].get_sha256(),
            Some(sha(&f).as_str())
        );
        // No close seen (still open, or closed by an exec): no digest.
        let mut r = Recorder::new(None);
        r.push(open(3, &f, libc::O_WRONLY as u32));
        r.push(close(4, &f)); // another process's close is not its
        let out = finish(r);
        assert_eq!(reason(&out.processes[0], &f), REASON_WRITE_NOT_CLOSED);
        // Rewritten in place after the close (same inode, same size):
        // modified after the process left it.
        let mut r = Recorder::new(None);
        r.push(open(3, &f, libc::O_RDWR as u32));
        r.push(close(3, &f));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"WRITTEN").unwrap();
        let out = finish(r);
        assert_eq!(reason(&out.processes[0], &f), REASON_WRITE_MODIFIED);
        // A new write open after a close needs its own close.
        let mut r = Recorder::new(None);
        r.push(open(3, &f, libc::O_WRONLY as u32));
        r.push(close(3, &f));
        r.push(open(3, &f, libc::O_WRONLY as u32));
        let out = finish(r);
        assert_eq!(reason(&out.processes[0], &f), REASON_WRITE_NOT_CLOSED);
        // Another file now at the path (a rename over it, or the write went
        // to a private mount): no digest.
        let mut r = Recorder::new(None);
        r.push(open(3, &f, libc::O_WRONLY as u32));
        r.push(close(3, &f));
        let other = dir.path().join("other");
        std::fs::write(&other, b"host file").unwrap();
        std::fs::rename(&other, &f).unwrap();
        let out = finish(r);
        assert_eq!(reason(&out.processes[0], &f), REASON_WRITE_OTHER);
        // Written, not a regular file: no close needed, it is what it is.
        let mut r = Recorder::new(None);
        r.push(open(3, "/dev/null", libc::O_WRONLY as u32));
        let out = finish(r);
        assert_eq!(reason(&out.processes[0], "/dev/null"), "character device");
        // No identity recorded at all: no digest.
        let mut r = Recorder::new(None);
        r.push(TraceEvent::Open {
            pid: 3,
            path: f.clone(),
            flags: 0,
            stamp: None,
            unresolved: None,
            time: t(),
        });
        let out = finish(r);
        assert_eq!(reason(&out.processes[0], &f), REASON_NO_STAMP);
    }

    #[test]
    fn size_cap_and_time_budget_are_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ten").display().to_string();
        std::fs::write(&f, b"0123456789").unwrap();
        let limits = TraceLimits {
            max_hash_file_size: 4,
            ..Default::default()
        };
        let mut r = Recorder::with_limits(None, limits);
        r.push(open(3, &f, 0));
        assert_eq!(
            reason(&finish(r).processes[0], &f),
            "not hashed: 10 bytes exceeds the limit of 4"
        );
        let limits = TraceLimits {
            hash_time_budget: Duration::ZERO,
            ..Default::default()
        };
        let mut r = Recorder::with_limits(None, limits);
        r.push(open(3, &f, 0));
        r.push(open(3, "/etc/hostname", 0));
        let out = finish(r);
        for path in [f.as_str(), "/etc/hostname"] {
            assert_eq!(
                reason(&out.processes[0], path),
                "not hashed: the step's hashing time budget (0ns) ran out"
            );
        }
    }

    #[test]
    fn bounds_are_counted_not_silent() {
        let limits = TraceLimits {
            max_processes: 3,
            max_files: 5,
            ..Default::default()
        };
        let mut r = Recorder::with_limits(None, limits);
        for c in 2..12 {
            r.push(TraceEvent::Fork {
                parent: 1,
                child: c,
                time: t(),
            });
        }
        // An exited dropped pid that comes back is counted again.
        r.push(TraceEvent::Exit {
            pid: 11,
            code: 0,
            time: t(),
        });
        r.push(TraceEvent::Open {
            pid: 11,
            path: "/x".into(),
            flags: 0,
            stamp: None,
            unresolved: None,
            time: t(),
        });
        for n in 0..10 {
            r.push(TraceEvent::Open {
                pid: 2,
                path: format!("/f{n}"),
                flags: 0,
                stamp: None,
                unresolved: None,
                time: t(),
            });
        }
        let big: Vec<String> = (0..300).map(|i| format!("{i:0>1000}")).collect();
        r.push(TraceEvent::Exec {
            pid: 2,
            ppid: Some(1),
            filename: "/bin/true".into(),
            exe: Some("/usr/bin/true".into()),
            exe_stamp: None,
            cwd: None,
            argv: big,
            comm: "true".into(),
            mnt_ns: None,
            time: t(),
        });
        for _ in 0..MAX_SYSCALL_EVENTS_PER_PROCESS + 7 {
            r.push(TraceEvent::Syscall {
                pid: 2,
                call: SuspiciousCall::Ptrace {
                    request: 0,
                    target: 0,
                },
                time: t(),
            });
        }
        let out = finish(r);
        // Children 2, 3 and 4 are kept; 5…11 are counted, and 11 once more
        // when it comes back after its exit.
        assert_eq!(out.processes.len(), 3);
        assert_eq!(out.truncated["processes"], 8);
        // /f5…/f9, and the exec'd /usr/bin/true.
        assert_eq!(out.truncated["files"], 10 - 5 + 1, "{:?}", out.truncated);
        assert_eq!(out.truncated["argv"], 1);
        assert_eq!(out.truncated["syscallEvents"], 7);
        let p = out.processes.iter().find(|p| p.processid == 2).unwrap();
        assert!(p.cmdline.len() <= MAX_ARGV_BYTES);
        assert!(p.cmdline.len() > MAX_ARGV_BYTES - 1100);
        assert_eq!(p.syscall_events.len(), MAX_SYSCALL_EVENTS_PER_PROCESS);
        assert_eq!(p.openedfiles.len(), 5, "{:?}", p.openedfiles.keys());
    }

    #[test]
    fn builds_a_process_tree_with_programs_and_opens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("in.txt");
        std::fs::write(&f, b"hello\n").unwrap();
        let f = f.display().to_string();
        let mut r = Recorder::new(None);
        r.push(TraceEvent::Fork {
            parent: 10,
            child: 11,
            time: t(),
        });
        r.push(TraceEvent::Exec {
            pid: 11,
            ppid: Some(10),
            filename: "/bin/cat".into(),
            exe: Some("/usr/bin/cat".into()),
            exe_stamp: Some(stamp("/usr/bin/cat")),
            cwd: Some("/".into()),
            argv: vec!["cat".into(), f.clone()],
            comm: "cat".into(),
            mnt_ns: None,
            time: t(),
        });
        r.push(TraceEvent::Open {
            pid: 11,
            path: f.clone(),
            flags: 0,
            stamp: Some(stamp(&f)),
            unresolved: None,
            time: t(),
        });
        r.push(TraceEvent::Open {
            pid: 11,
            path: "/proc/11/environ".into(),
            flags: 0,
            stamp: None,
            unresolved: None,
            time: t(),
        });
        r.push(TraceEvent::Exit {
            pid: 11,
            code: 3,
            time: t(),
        });
        let out = r.finish(
            &DigestCache::default().for_reader(Reader::root()),
            &[HashAlg::Sha256],
            &[],
        );
        let cat = out.processes.iter().find(|p| p.processid == 11).unwrap();
        assert_eq!(cat.parentpid, 10);
        assert_eq!(
            cat.program,
            std::fs::canonicalize("/bin/cat")
                .unwrap()
                .display()
                .to_string()
        );
        assert_eq!(cat.cmdline, format!("cat {f}"));
        assert_eq!(cat.exitcode, Some(3));
        assert_eq!(
            cat.openedfiles[&f].get_sha256(),
            Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
        );
        assert!(cat.openedfiles.contains_key("/proc/self/environ"));
        assert!(cat
            .syscall_events
            .iter()
            .any(|s| s.detail.contains("own environment")));
        assert!(cat.programdigest.is_some() && cat.exedigest.is_some());
    }

    #[test]
    fn a_file_changed_after_a_read_only_open_gets_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"one").unwrap();
        let md = std::fs::metadata(&f).unwrap();
        let then = stamp_of(&md);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"two, longer").unwrap();
        let mut r = Recorder::new(None);
        let path = f.display().to_string();
        r.push(TraceEvent::Open {
            pid: 5,
            path: path.clone(),
            flags: 0,
            stamp: Some(then),
            unresolved: None,
            time: t(),
        });
        let out = r.finish(
            &DigestCache::default().for_reader(Reader::root()),
            &[HashAlg::Sha256],
            &[5],
        );
        let p = &out.processes[0];
        assert!(p.openedfiles[&path].is_empty());
        assert!(p.unhashed_opens[0].reason.contains("modified after"));
        assert!(p.alive_at_end);
    }

    fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn network_connects_dns_over_tcp_and_answers() {
        let mut r = Recorder::new(None);
        let srv: std::net::SocketAddr = "10.0.0.53:53".parse().unwrap();
        let web = SockAddr::Ip("10.0.0.1:443".parse().unwrap());
        // Two connections on the same fd to the same peer are two records.
        for _ in 0..2 {
            r.push(TraceEvent::Net {
                pid: 9,
                call: NetCall::Connect,
                fd: 4,
                addr: web.clone(),
                time: t(),
            });
        }
        // Repeated datagrams to one peer are one record.
        for _ in 0..3 {
            r.push(TraceEvent::Net {
                pid: 9,
                call: NetCall::SendTo,
                fd: 5,
                addr: SockAddr::Ip(srv),
                time: t(),
            });
        }
        // UDP query and its answer (matched by id and server).
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 5,
            dst: Some(srv),
            stream: false,
            bytes: dns_query(7, "a.example", 1),
            time: t(),
        });
        let mut ans = dns_query(7, "a.example", 1);
        ans[2] = 0x81;
        ans[3] = 0x80;
        ans[7] = 1;
        ans.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 9]);
        let ingress = |src: std::net::SocketAddr| TraceEvent::Ingress {
            pid: 9,
            src,
            stream: false,
            bytes: ans.clone(),
            time: t(),
        };
        r.push(ingress("10.0.0.99:53".parse().unwrap())); // another server: ignored
        r.push(ingress(srv));
        // Two TCP messages split across chunks at arbitrary points.
        let mut stream = Vec::new();
        for (id, name, qt) in [(8u16, "b.example", 16u16), (9, "c.example", 28)] {
            let q = dns_query(id, name, qt);
            stream.extend_from_slice(&(q.len() as u16).to_be_bytes());
            stream.extend(q);
        }
        for chunk in [&stream[..5], &stream[5..30], &stream[30..]] {
            r.push(TraceEvent::Egress {
                pid: 9,
                fd: 6,
                dst: Some(srv),
                stream: true,
                bytes: chunk.to_vec(),
                time: t(),
            });
        }
        let out = r.finish(
            &DigestCache::default().for_reader(Reader::root()),
            &[HashAlg::Sha256],
            &[9],
        );
        let net = out.processes[0].network.clone().unwrap();
        assert_eq!(
            net.connections
                .iter()
                .filter(|c| c.syscall == "connect")
                .count(),
            2
        );
        assert_eq!(
            net.connections
                .iter()
                .filter(|c| c.syscall == "sendto")
                .count(),
            1
        );
        let l: Vec<(&str, &str, &str)> = net
            .dns_lookups
            .iter()
            .map(|l| (l.name.as_str(), l.qtype.as_str(), l.transport.as_str()))
            .collect();
        assert_eq!(
            l,
            vec![
                ("a.example", "A", "udp"),
                ("b.example", "TXT", "tcp"),
                ("c.example", "AAAA", "tcp")
            ]
        );
        assert_eq!(net.dns_lookups[0].answers, vec!["A 10.0.0.9".to_string()]);
    }

    /// The first bytes of a ClientHello declared ~19 KB long (a padding
    /// extension after the server name): only the start is ever sent.
    fn cut_hello(name: &str) -> Vec<u8> {
        let mut sni = vec![0, 0];
        let entry_len = 3 + name.len();
        sni.extend_from_slice(&((2 + entry_len) as u16).to_be_bytes());
        sni.extend_from_slice(&(entry_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let pad = 19_000usize;
        let exts = sni.len() + 4 + pad;
        let m = 43 + exts;
        let mut b = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01];
        b.extend_from_slice(&(m as u32).to_be_bytes()[1..]);
        b.extend_from_slice(&[0x03, 0x03]);
        b.extend_from_slice(&[9u8; 32]);
        b.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        b.extend_from_slice(&(exts as u16).to_be_bytes());
        b.extend(sni);
        b.extend_from_slice(&[0, 21]);
        b.extend_from_slice(&(pad as u16).to_be_bytes());
        b.extend(std::iter::repeat_n(0, 600));
        b
    }

    #[test]
    fn network_cut_hello_dns_on_any_port_and_labels() {
        let mut r = Recorder::new(None);
        let net_ev = |fd: i32, call: NetCall, addr: SockAddr| TraceEvent::Net {
            pid: 9,
            call,
            fd,
            addr,
            time: t(),
        };
        let eg = |fd: i32, port: u16, bytes: &[u8]| TraceEvent::Egress {
            pid: 9,
            fd,
            dst: Some(std::net::SocketAddr::from(([10, 0, 0, 1], port))),
            stream: true,
            bytes: bytes.to_vec(),
            time: t(),
        };
        let ip = |port: u16| SockAddr::Ip(std::net::SocketAddr::from(([10, 0, 0, 1], port)));
        // A hello cut after its server name, in two writes.
        let h = cut_hello("big.example");
        r.push(net_ev(4, NetCall::Connect, ip(443)));
        r.push(eg(4, 443, &h[..50]));
        r.push(eg(4, 443, &h[50..]));
        // DNS over TCP on port 5353, the length written alone first; then
        // a second, pipelined query.
        let mut q = Vec::new();
        for (id, name) in [(1u16, "high.example"), (2, "high2.example")] {
            let m = dns_query(id, name, 1);
            q.extend_from_slice(&(m.len() as u16).to_be_bytes());
            q.extend(m);
        }
        r.push(net_ev(5, NetCall::Connect, ip(5353)));
        r.push(eg(5, 5353, &q[..2]));
        r.push(eg(5, 5353, &q[2..]));
        // HTTP on a high port is neither.
        r.push(net_ev(6, NetCall::Connect, ip(8080)));
        r.push(eg(6, 8080, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        // Families and call labels.
        r.push(net_ev(
            7,
            NetCall::SendMsg,
            SockAddr::Other(16, vec![0; 12]),
        ));
        r.push(net_ev(8, NetCall::SendMmsg, ip(53)));
        r.push(net_ev(8, NetCall::SendTo, ip(53)));
        let out = r.finish(
            &DigestCache::default().for_reader(Reader::root()),
            &[HashAlg::Sha256],
            &[9],
        );
        let net = out.processes[0].network.clone().unwrap();
        let c = |fd: i64| {
            net.connections
                .iter()
                .filter(|c| c.fd == fd)
                .map(|c| {
                    (
                        c.syscall.as_str(),
                        c.family.as_str(),
                        c.hostname.as_str(),
                        c.hello_truncated,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(c(4), vec![("connect", "AF_INET", "big.example", true)]);
        assert_eq!(c(6), vec![("connect", "AF_INET", "", false)]);
        assert_eq!(c(7), vec![("sendmsg", "AF_NETLINK", "", false)]);
        assert_eq!(
            c(8),
            vec![
                ("sendmmsg", "AF_INET", "", false),
                ("sendto", "AF_INET", "", false)
            ]
        );
        let l: Vec<(&str, &str, u16)> = net
            .dns_lookups
            .iter()
            .map(|l| (l.name.as_str(), l.transport.as_str(), l.server_port))
            .collect();
        assert_eq!(
            l,
            vec![
                ("high.example", "tcp", 5353),
                ("high2.example", "tcp", 5353)
            ]
        );
    }

    #[test]
    fn tls_through_an_http_proxy() {
        assert_eq!(http_connect(b"CONN"), Connect::Incomplete);
        assert_eq!(http_connect(b"\x16\x03\x01"), Connect::No);
        assert_eq!(
            http_connect(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a"),
            Connect::Incomplete
        );
        assert_eq!(
            http_connect(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\nX"),
            Connect::Target("2001:db8::1".into(), 38)
        );
        let mut r = Recorder::new(None);
        let proxy = SockAddr::Ip("10.0.0.3:3128".parse().unwrap());
        for fd in [4, 5] {
            r.push(TraceEvent::Net {
                pid: 9,
                call: NetCall::Connect,
                fd,
                addr: proxy.clone(),
                time: t(),
            });
        }
        let dst = Some("10.0.0.3:3128".parse().unwrap());
        let req =
            b"CONNECT registry.example:443 HTTP/1.1\r\nHost: registry.example:443\r\n\r\n".to_vec();
        // fd 4: the CONNECT alone (hello not sent yet); fd 5: CONNECT then a
        // non-TLS tunnel.
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 4,
            dst,
            stream: true,
            bytes: req[..10].to_vec(),
            time: t(),
        });
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 4,
            dst,
            stream: true,
            bytes: req[10..].to_vec(),
            time: t(),
        });
        let mut plain = req.clone();
        plain.extend_from_slice(b"GET / HTTP/1.1\r\n");
        r.push(TraceEvent::Egress {
            pid: 9,
            fd: 5,
            dst,
            stream: true,
            bytes: plain,
            time: t(),
        });
        let out = r.finish(
            &DigestCache::default().for_reader(Reader::root()),
            &[HashAlg::Sha256],
            &[9],
        );
        let c = &out.processes[0].network.as_ref().unwrap().connections;
        assert_eq!(c[0].hostname, "registry.example");
        assert_eq!(c[1].hostname, "registry.example");
    }

    #[test]
    fn root_seen_and_written_files() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::write(&out, b"x").unwrap();
        let out_s = out.to_str().unwrap();
        let mut r = Recorder::new(None);
        r.add_root(4242, Running::default());
        // Nothing seen yet.
        assert_eq!(r.root_seen(4242), RootSeen::default());
        r.push(exec(
            4242,
            "/bin/sh",
            "/bin/sh",
            &["sh", "-c", "exec true"],
            "/",
        ));
        r.push(exec(4242, "/bin/true", "/bin/true", &["true"], "/"));
        r.push(open(
            4242,
            out_s,
            libc::O_WRONLY as u32 | libc::O_CREAT as u32,
        ));
        r.push(open(4242, "/etc/hostname", 0));
        let mut unknown = open(4242, "/w/no-identity", libc::O_WRONLY as u32);
        if let TraceEvent::Open { stamp, .. } = &mut unknown {
            *stamp = None;
        }
        r.push(unknown);
        r.push(TraceEvent::Exit {
            pid: 4242,
            code: 3,
            time: t(),
        });
        // The argv of the first exec (the command), the exit status.
        assert_eq!(
            r.root_seen(4242),
            RootSeen {
                exit: Some(3),
                argv: Some(vec!["sh".into(), "-c".into(), "exec true".into()]),
            }
        );
        let w = r.written();
        let m = std::fs::metadata(&out).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            w.files.iter().copied().collect::<Vec<_>>(),
            [(m.dev(), m.ino())]
        );
        assert_eq!(
            w.paths.iter().cloned().collect::<Vec<_>>(),
            ["/w/no-identity"]
        );
        assert_eq!(r.root_seen(1), RootSeen::default());
    }
}

#[cfg(test)]
mod move_tests {
    use std::time::{Duration, SystemTime};

    use cilock_evidence::attestors::command_run::ProcessInfo;
    use cilock_evidence::digest::HashAlg;
    use cilock_trace::fold::*;
    use cilock_trace::syscall::SuspiciousCall;
    use cilock_trace::{Running, TraceEvent};

    use crate::trace::digest_cache::{DigestCache, Reader};

    fn t() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn fork(r: &mut Recorder, parent: u32, child: u32) {
        r.push(TraceEvent::Fork {
            parent,
            child,
            time: t(),
        });
    }

    fn finish(r: Recorder) -> Vec<ProcessInfo> {
        r.finish(
            &DigestCache::default().for_reader(Reader::root()),
            &[HashAlg::Sha256],
            &[],
        )
        .processes
    }

    fn get(ps: &[ProcessInfo], pid: i64) -> &ProcessInfo {
        ps.iter().find(|p| p.processid == pid).expect("process")
    }

    #[test]
    fn roots_and_their_children_are_the_steps_own() {
        let mut r = Recorder::new(None);
        r.add_root(10, Running::default());
        fork(&mut r, 10, 11);
        fork(&mut r, 11, 12);
        // An embedded ptrace root, known only by pid.
        r.push(TraceEvent::Comm {
            pid: 20,
            comm: "sh".into(),
        });
        r.mark_root(20);
        for p in finish(r) {
            assert!(!p.joined_step && p.joined_from.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn a_process_of_unknown_origin_is_marked_joined() {
        // Its fork record was lost, or it came in unseen: never one of the
        // step's own.
        let mut r = Recorder::new(None);
        r.add_root(10, Running::default());
        r.push(TraceEvent::Open {
            pid: 99,
            path: "/x".into(),
            flags: 0,
            stamp: None,
            unresolved: None,
            time: t(),
        });
        let ps = finish(r);
        let p = get(&ps, 99);
        assert!(p.joined_step);
        assert_eq!(p.joined_from, REASON_ORIGIN_UNKNOWN);
        assert!(!get(&ps, 10).joined_step);
    }

    #[test]
    fn joined_processes_and_their_children_are_marked_with_their_origin() {
        let mut r = Recorder::new(None);
        r.add_root(10, Running::default());
        r.push(TraceEvent::JoinedStep {
            pid: 50,
            by: 50,
            from: "another step (cgroup /cg/a)".into(),
            at_birth: false,
            cgroup: None,
            running: None,
            time: t(),
        });
        fork(&mut r, 50, 51);
        r.push(TraceEvent::JoinedStep {
            pid: 60,
            by: 7,
            from: "outside the daemon's steps".into(),
            at_birth: true,
            cgroup: None,
            running: None,
            time: t(),
        });
        let ps = finish(r);
        let j = get(&ps, 50);
        assert!(j.joined_step);
        assert_eq!(j.joined_from, "another step (cgroup /cg/a)");
        assert_eq!(j.parentpid, 0);
        assert_eq!(j.syscall_events.len(), 1);
        assert_eq!(j.syscall_events[0].syscall, "cgroup_join");
        assert_eq!(
            j.syscall_events[0].detail,
            "moved itself into the step's cgroup from another step (cgroup /cg/a)"
        );
        let c = get(&ps, 51);
        assert!(c.joined_step);
        assert_eq!(
            c.joined_from,
            "forked in the step by pid 50, which came from another step (cgroup /cg/a)"
        );
        let b = get(&ps, 60);
        assert!(b.joined_step);
        assert_eq!(b.parentpid, 7);
        assert!(b.syscall_events[0].detail.contains("CLONE_INTO_CGROUP"));
        assert!(!get(&ps, 10).joined_step);
        // The mover of 60 is not a process of the step: not invented.
        assert!(ps.iter().all(|p| p.processid != 7));
    }

    #[test]
    fn leaving_events_go_to_step_processes_only_and_once() {
        let mut r = Recorder::new(None);
        r.add_root(10, Running::default());
        fork(&mut r, 10, 11);
        fork(&mut r, 10, 12);
        fork(&mut r, 10, 13);
        // 11 moves itself; 10 moves 12; the daemon (pid 1) moves 13;
        // 10 creates 14 outside the step.
        r.push(TraceEvent::LeftStep {
            pid: 11,
            by: 11,
            time: t(),
        });
        r.push(TraceEvent::LeftStep {
            pid: 12,
            by: 10,
            time: t(),
        });
        r.push(TraceEvent::LeftStep {
            pid: 13,
            by: 1,
            time: t(),
        });
        fork(&mut r, 10, 14);
        r.push(TraceEvent::BornOutside {
            pid: 14,
            parent: 10,
            time: t(),
        });
        // ptrace reports the write itself, then the move: one event.
        r.push(TraceEvent::Syscall {
            pid: 11,
            call: SuspiciousCall::CgroupWrite {
                written: 0,
                moved: 11,
                file: "/cg/cgroup.procs".into(),
            },
            time: t(),
        });
        r.push(TraceEvent::LeftStep {
            pid: 11,
            by: 11,
            time: t(),
        });
        let ps = finish(r);
        assert!(ps.iter().all(|p| p.processid != 1));
        for pid in [11, 12, 13, 14] {
            assert!(get(&ps, pid).left_step, "{pid}");
            assert!(!get(&ps, pid).joined_step, "{pid}");
        }
        let ev = |pid: i64| -> Vec<String> {
            get(&ps, pid)
                .syscall_events
                .iter()
                .map(|e| e.detail.clone())
                .collect()
        };
        assert_eq!(
            ev(11),
            [
                "moved itself (pid 11) out of the step's cgroup",
                "wrote pid 0 into /cg/cgroup.procs: traced pid 11 moved to another cgroup"
            ]
        );
        assert_eq!(
            ev(10),
            [
                "moved pid 12 out of the step's cgroup",
                "created pid 14 directly in a cgroup outside the step (clone3 CLONE_INTO_CGROUP)"
            ]
        );
        assert_eq!(
            ev(13),
            ["moved out of the step's cgroup by pid 1, not a process of this step"]
        );
        assert_eq!(get(&ps, 14).parentpid, 10);
    }
}
