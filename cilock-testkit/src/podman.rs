//! Rootless podman for one test ([`PodmanUser`]): a throw-away user
//! (`useradd`, with the subordinate uid/gid ranges `useradd` allocates,
//! checked in `/etc/subuid` and `/etc/subgid`), its own home, runtime
//! directory and storage, and the flags podman needs on this kind of host
//! (no systemd, no journald: `--cgroup-manager=cgroupfs
//! --events-backend=file`; `vfs` storage). At drop every process of the
//! user (e.g. the `podman pause` process rootless podman leaves behind) is
//! killed by pid and the user and its files are removed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::bin::tempdir;
use crate::docker::{busybox_tar, BUSYBOX_IMAGE};
use crate::users::unique_name;

/// A user that runs rootless podman (deleted at drop).
pub struct PodmanUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home (0700, owned by it).
    pub home: PathBuf,
    /// Its `XDG_RUNTIME_DIR` (0700, owned by it).
    pub runtime: PathBuf,
    dir: tempfile::TempDir,
}

impl PodmanUser {
    /// `useradd` a new user (home and runtime directory in a temporary
    /// directory) and checks it has subordinate uid and gid ranges.
    pub fn create() -> PodmanUser {
        let dir = tempdir();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = unique_name("ctr");
        let home = dir.path().join("home");
        // useradd locks /etc/passwd: a test adding a user at the same
        // moment makes it fail with "cannot lock"; try again.
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..50 {
            let out = Command::new("useradd")
                .args(["-m", "-s", "/bin/sh", "-d"])
                .arg(&home)
                .arg(&name)
                .output()
                .expect("useradd");
            if out.status.success() {
                ok = true;
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ok, "useradd {name}: {last}");
        let uid = id(&name, "-u");
        let gid = id(&name, "-g");
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        for d in [&home, &runtime] {
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let user = PodmanUser {
            name,
            uid,
            gid,
            home,
            runtime,
            dir,
        };
        for f in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{}:", user.name))),
                "useradd gave {} no range in {f} (SUB_UID_COUNT/SUB_GID_COUNT in /etc/login.defs)",
                user.name
            );
        }
        user
    }

    /// The `podman` command line (program and global flags) this user runs:
    /// cgroupfs manager, file events, vfs storage in its home, runroot in
    /// its runtime directory.
    pub fn podman_argv(&self) -> Vec<String> {
        vec![
            "podman".into(),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
            "--storage-driver=vfs".into(),
            format!("--root={}", self.home.join("storage").display()),
            format!("--runroot={}", self.runtime.join("storage").display()),
        ]
    }

    /// A shell command prefix running what follows as this user with a
    /// clean environment (`setpriv … env -i HOME=… XDG_RUNTIME_DIR=…
    /// PATH=…`), then podman with [`PodmanUser::podman_argv`]: append
    /// podman's subcommand and arguments.
    pub fn shell_podman(&self) -> String {
        format!(
            "setpriv --reuid={} --regid={} --init-groups env -i HOME={} XDG_RUNTIME_DIR={} PATH=/usr/sbin:/usr/bin:/sbin:/bin {}",
            self.uid,
            self.gid,
            self.home.display(),
            self.runtime.display(),
            self.podman_argv().join(" ")
        )
    }

    /// Runs `podman ARGS` as this user (in its home); stdout, trimmed
    /// (panics with stderr on failure).
    pub fn podman(&self, args: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && {} {args}",
                self.home.display(),
                self.shell_podman()
            ))
            .output()
            .expect("podman");
        assert!(
            out.status.success(),
            "podman {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Imports the busybox image as [`BUSYBOX_IMAGE`] into this user's
    /// storage; returns its image id (podman's, hex without `sha256:`).
    pub fn import_busybox(&self) -> String {
        let tar = busybox_tar(self.dir.path());
        self.podman(&format!(
            "import --change 'ENV PATH=/bin' {} {BUSYBOX_IMAGE}",
            tar.display()
        ))
    }

    /// A file in a directory this user can read (`<tmp>/share/<name>`,
    /// world-readable), holding `content`.
    pub fn shared_file(&self, name: &str, content: &str) -> PathBuf {
        let d = self.dir.path().join("share");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, content).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    /// The live processes of this user.
    pub fn processes(&self) -> Vec<u32> {
        pids_of_uid(self.uid)
    }
}

impl Drop for PodmanUser {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = pids_of_uid(self.uid);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) of a process of the user this test made.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..50 {
            let ok = Command::new("userdel")
                .args(["-f", &self.name])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Storage layers are owned by subordinate ids: root removes them
        // with the TempDir.
    }
}

fn id(name: &str, flag: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(name).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Pids of the live (non-zombie) processes whose real uid is `uid`.
fn pids_of_uid(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        if real == Some(uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// The inode of `pid`'s mount namespace (`/proc/<pid>/ns/mnt` →
/// `mnt:[N]`).
pub fn mount_namespace(pid: u32) -> u64 {
    let l = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    parse_ns(l.to_str().unwrap()).unwrap()
}

/// `N` of a namespace link text `mnt:[N]`.
pub fn parse_ns(text: &str) -> Option<u64> {
    text.trim()
        .strip_prefix("mnt:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}
