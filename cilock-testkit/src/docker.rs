//! A private Docker engine for one test ([`Dockerd`]): its own `dockerd`
//! (which starts its own `containerd`) with its own data and exec roots,
//! pidfile, socket, `vfs` storage, no bridge and no iptables, and its own
//! daemon-wide cgroup parent (`/cilock-dockerd.<pid>.<n>`), so containers
//! of different tests, and of other engines on the machine, never share a
//! cgroup. It is stopped by pid at drop, after which every process it left
//! (containers, shims, its containerd) is killed by pid and every cgroup
//! directory runc left for it, in the v1 hierarchies and in cgroup2, is
//! removed.
//!
//! Also: the busybox image every container test uses (a rootfs of
//! `/bin/busybox` from `busybox-static` plus applet links, imported with
//! `ENV PATH=/bin`), the two docker CLIs of the machine, and reading the
//! cgroups of processes.
//!
//! A dockerd that cannot start is an error carrying the tail of its log
//! (tests fail on it, they never skip).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bin::tempdir;

/// The docker 20.10 CLI of Debian's `docker.io`.
pub const CLI_20_10: &str = "/usr/bin/docker";
/// The docker 28.2 CLI (legacy builder only: no buildx), preinstalled on
/// these machines.
pub const CLI_28: &str = "/usr/local/bin/docker";
/// The tag of the busybox image [`Dockerd::import_busybox`] imports.
pub const BUSYBOX_IMAGE: &str = "bb:local";

/// The busybox applets the image links (`/bin/<applet>` → `busybox`).
const APPLETS: &[&str] = &[
    "sh", "cat", "ls", "sleep", "echo", "readlink", "true", "false", "id",
];

/// A private `dockerd` (stopped and cleaned at drop).
pub struct Dockerd {
    child: Option<Child>,
    /// Its API socket (`<dir>/docker.sock`, root:docker 0660 as dockerd
    /// makes it).
    pub socket: PathBuf,
    /// Its daemon-wide cgroup parent, absolute (`/cilock-dockerd.<pid>.<n>`):
    /// a container created without a `CgroupParent` runs in
    /// `<cgroup_parent>/<id>`, a BuildKit RUN in `<cgroup_parent>/buildkit/<x>`.
    pub cgroup_parent: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Its directory (data root, exec root, pidfile, socket, CLI config).
    pub dir: PathBuf,
    /// Further cgroups (relative to each hierarchy's root) removed at stop
    /// when empty, e.g. a client-chosen parent a test used.
    extra_cgroups: Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts a private dockerd and waits until `GET /_ping` answers `OK`;
    /// `Err` with the tail of its log when it exits first or does not
    /// answer within 60 s.
    pub fn start() -> Result<Dockerd, String> {
        Self::start_with_args(&[])
    }

    /// Like [`Dockerd::start`], with further dockerd arguments (after the
    /// defaults).
    pub fn start_with_args(extra: &[&str]) -> Result<Dockerd, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = tempdir();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
        let d = dir.path().to_path_buf();
        let cgroup_parent = format!(
            "/cilock-dockerd.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let socket = d.join("docker.sock");
        let log = d.join("dockerd.log");
        let logf = std::fs::File::create(&log).map_err(|e| format!("create log: {e}"))?;
        let logf2 = logf.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--storage-driver",
                "vfs",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ])
            .arg(format!("--cgroup-parent={cgroup_parent}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .map_err(|e| format!("cannot run dockerd: {e}"))?;
        std::fs::create_dir_all(d.join("cli")).map_err(|e| format!("cli dir: {e}"))?;
        let mut me = Dockerd {
            child: Some(child),
            socket,
            cgroup_parent,
            log,
            dir: d,
            extra_cgroups: Mutex::new(Vec::new()),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!(
                    "dockerd exited during start ({st}); log tail:\n{}",
                    me.log_tail(40)
                ));
            }
            if me.ping() {
                return Ok(me);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "dockerd did not answer within 60 s; log tail:\n{}",
                    me.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Dockerd::start`] and [`Dockerd::import_busybox`], panicking with
    /// dockerd's log tail on failure (a container test fails, never skips,
    /// when its engine cannot start).
    pub fn with_busybox() -> (Dockerd, String) {
        let d = Dockerd::start().unwrap_or_else(|e| panic!("private dockerd: {e}"));
        let image = d.import_busybox();
        (d, image)
    }

    /// dockerd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `unix://<socket>`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `<cgroup_parent>/buildkit` without the leading '/': where this engine
    /// runs BuildKit RUNs, relative to the cgroup2 root (the daemon's
    /// `docker_buildkit_cgroup`).
    pub fn buildkit_cgroup(&self) -> String {
        format!("{}/buildkit", self.cgroup_parent.trim_start_matches('/'))
    }

    /// Directory for a docker CLI's config (`DOCKER_CONFIG`), so root's
    /// `~/.docker` is neither read nor written.
    pub fn cli_config(&self) -> PathBuf {
        self.dir.join("cli")
    }

    /// `GET /_ping` on the socket answers 200 `OK`.
    pub fn ping(&self) -> bool {
        http_get(&self.socket, "/_ping")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("OK"))
    }

    /// The last `n` lines of dockerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A `cli` (e.g. [`CLI_20_10`]) command talking to this engine directly.
    pub fn cli(&self, cli: &str) -> Command {
        let mut c = Command::new(cli);
        c.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.cli_config())
            .env_remove("DOCKER_BUILDKIT");
        c
    }

    /// The 20.10 CLI against this engine directly.
    pub fn docker(&self) -> Command {
        self.cli(CLI_20_10)
    }

    /// Runs the 20.10 CLI with `args` against this engine directly; its
    /// stdout, trimmed (panics with stderr and the log tail on failure).
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.docker().args(args).output().expect("docker CLI");
        assert!(
            out.status.success(),
            "docker {args:?}: {}\ndockerd log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker inspect -f FORMAT ID` against this engine directly.
    pub fn inspect(&self, id: &str, format: &str) -> String {
        self.run(&["inspect", "-f", format, id])
    }

    /// Imports the busybox image as [`BUSYBOX_IMAGE`]; returns its image id
    /// (`sha256:…`, as the engine reports it).
    pub fn import_busybox(&self) -> String {
        let tar = busybox_tar(&self.dir);
        let out = self.run(&[
            "import",
            "-c",
            "ENV PATH=/bin",
            tar.to_str().unwrap(),
            BUSYBOX_IMAGE,
        ]);
        assert!(out.starts_with("sha256:"), "docker import said {out:?}");
        let id = self.run(&["image", "inspect", "-f", "{{.Id}}", BUSYBOX_IMAGE]);
        assert_eq!(id, out, "imported image id");
        id
    }

    /// Removes `cgroup` (relative to each hierarchy's root, e.g. a
    /// client-chosen `--cgroup-parent`) at stop, in every hierarchy, when
    /// empty.
    pub fn clean_at_stop(&self, cgroup: &str) {
        self.extra_cgroups
            .lock()
            .unwrap()
            .push(cgroup.trim_start_matches('/').to_string());
    }

    /// Stops the engine: removes every container (`rm -f`), SIGTERM to
    /// dockerd (SIGKILL after 20 s), then kills by pid every process left in
    /// its cgroups or naming its directories (shims, containerd), unmounts
    /// what it left mounted, and removes its cgroup directories in every
    /// hierarchy (v1 and v2). Returns what could not be cleaned (empty:
    /// all clean). Idempotent.
    pub fn stop(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        let Some(mut child) = self.child.take() else {
            return left;
        };
        if self.ping() {
            if let Ok(out) = self.docker().args(["ps", "-aq"]).output() {
                let ids = String::from_utf8_lossy(&out.stdout).to_string();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = self
                        .docker()
                        .args(["rm", "-f"])
                        .args(&ids)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        // SAFETY: a signal to the child this struct started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() >= deadline {
                left.push(format!("dockerd {} needed SIGKILL", child.id()));
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Processes left: in its cgroup subtree, or naming its directory
        // (containerd, containerd-shim-runc-v2 with `-address <exec root>`).
        let mounts = cgroup_mounts();
        let mut rels = vec![self.cgroup_parent.trim_start_matches('/').to_string()];
        rels.extend(self.extra_cgroups.lock().unwrap().iter().cloned());
        for _ in 0..50 {
            let mut pids = Vec::new();
            for m in &mounts {
                for rel in &rels {
                    procs_below(&m.join(rel), &mut pids);
                }
            }
            pids.extend(pids_naming(&self.dir));
            pids.sort_unstable();
            pids.dedup();
            pids.retain(|&p| p != std::process::id());
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                // SAFETY: plain kill(2) of a process this engine left.
                unsafe { libc::kill(*p as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unmount_below(&self.dir);
        for m in &mounts {
            for rel in &rels {
                let p = m.join(rel);
                if p.exists() {
                    remove_cgroup_tree(&p);
                    if p.exists() {
                        left.push(format!("cgroup {} not removed", p.display()));
                    }
                }
            }
        }
        left
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            eprintln!("private dockerd: not clean: {left:?}");
        }
        // vfs layers are plain directories; the TempDir removes the rest.
    }
}

/// A minimal HTTP/1.1 GET over a unix socket; the whole response (headers
/// and body), or None when the socket does not answer within 2 s.
pub fn http_get(socket: &Path, path: &str) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Writes `dir/busybox.tar`: a rootfs of `/bin/busybox` (the static one of
/// `busybox-static`) and `/bin/<applet>` links to it; returns its path.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (package busybox-static)");
    for a in APPLETS {
        let link = root.join("bin").join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    let tar = dir.join("busybox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar of the busybox rootfs");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    tar
}

/// The mount points of every cgroup hierarchy (v1 `cgroup` and v2
/// `cgroup2`), from /proc/self/mountinfo.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            matches!(f.get(sep + 1), Some(&"cgroup") | Some(&"cgroup2"))
                .then(|| PathBuf::from(f[4]))
        })
        .collect()
}

/// The cgroup2 mount point.
pub fn cgroup2_mount() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if let Some(sep) = f.iter().position(|x| *x == "-") {
            if f.get(sep + 1) == Some(&"cgroup2") {
                return PathBuf::from(f[4]);
            }
        }
    }
    panic!("no cgroup2 mount");
}

/// The cgroup2 path of `pid` as `/proc/<pid>/cgroup` says (`0::` line,
/// relative to the cgroup2 root, with its leading '/').
pub fn cgroup2_of(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/cgroup: {e}"));
    cgroup2_line(&s).unwrap_or_else(|| panic!("no cgroup2 line for {pid}: {s}"))
}

/// The path of the first `0::` cgroup line in `text` (e.g. a container's
/// own `cat /proc/self/cgroup`, possibly after a prefix such as BuildKit's
/// `#7 0.061 `).
pub fn cgroup2_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.find("0::/").map(|i| l[i + 3..].trim().to_string()))
}

/// Pids in the cgroup at `dir` and below.
fn procs_below(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                procs_below(&e.path(), out);
            }
        }
    }
}

/// Live (non-zombie) processes whose command line names a path under `dir`.
fn pids_naming(dir: &Path) -> Vec<u32> {
    let want = dir.to_str().unwrap().as_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.windows(want.len()).any(|w| w == want) {
            out.push(pid);
        }
    }
    out
}

/// Lazily unmounts every mount point under `dir` (deepest first).
fn unmount_below(dir: &Path) {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<String> = mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: umount2 with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Removes the cgroup directory `dir` and every directory below it,
/// deepest first (rmdir: a populated cgroup stays).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..20 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Removes the cgroup `rel` (relative to each hierarchy's root) and its
/// subtree, when empty, in every cgroup hierarchy (v1 and v2): e.g. the v1
/// copies of a daemon's steps tree that runc creates on hybrid hosts.
pub fn remove_cgroup_everywhere(rel: &str) {
    for m in cgroup_mounts() {
        let p = m.join(rel.trim_start_matches('/'));
        if p.exists() {
            remove_cgroup_tree(&p);
        }
    }
}
