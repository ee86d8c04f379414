//! Throw-away groups for one test (`groupadd`/`groupdel`), and commands run
//! as another user through `setpriv`. Names are unique per test (pid and a
//! counter), so tests of one binary can run side by side.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bin::shared_cilock;
use crate::daemon::Daemon;
use crate::fixtures::sh;

/// A name unique in this machine for now: `<prefix><pid>x<n>` (a group or
/// user name stays under 32 characters for prefixes up to 16).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A group that exists for one test (deleted at drop).
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl Group {
    /// `groupadd` a new group whose name starts with `prefix`.
    pub fn create(prefix: &str) -> Group {
        Self::add(prefix, &[])
    }

    /// Like [`Group::create`], a system group (`groupadd --system`).
    pub fn create_system(prefix: &str) -> Group {
        Self::add(prefix, &["--system"])
    }

    fn add(prefix: &str, flags: &[&str]) -> Group {
        let name = unique_name(prefix);
        let st = Command::new("groupadd")
            .args(flags)
            .arg(&name)
            .status()
            .expect("groupadd");
        assert!(st.success(), "groupadd {name}");
        let line = sh(&format!("getent group {name}"));
        let gid = line.split(':').nth(2).unwrap().trim().parse().unwrap();
        Group { name, gid }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// `setpriv` as `uid` with primary group `gid` and supplementary `groups`
/// (none: `--clear-groups`); the program to run follows as arguments.
pub fn setpriv(uid: u32, gid: u32, groups: &[u32]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", groups.join(",")));
    }
    c
}

/// `setpriv` as `uid` in group `gid` (primary and only supplementary).
pub fn as_user(uid: u32, gid: u32) -> Command {
    setpriv(uid, gid, &[gid])
}

/// Runs `cilock ARGS` against daemon `d` as `uid`, primary group `gid` and
/// supplementary `groups` (see [`setpriv`]), from the copy every user can
/// execute ([`shared_cilock`]).
pub fn cilock_as(d: &Daemon, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
    setpriv(uid, gid, groups)
        .arg(shared_cilock())
        .args(args)
        .env("CILOCK_SOCKET", &d.socket)
        .output()
        .expect("setpriv cilock")
}

/// Fails the test unless it runs as root (the end-to-end and daemon tests
/// need root: `cargo xtask test` runs them so). A test that needs root
/// never passes by skipping.
pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (cgroups, eBPF, root-owned keys): run the tests as root (cargo xtask test)"
    );
}
