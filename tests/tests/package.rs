//! Issue #18: the Debian package, installed for real by `dpkg` on this
//! host's own system, seen through an overlay: in a private mount
//! namespace, an overlayfs whose lower layer is the host's `/` and whose
//! upper layer is a tmpfs, with `/proc`, `/sys` and `/dev` bound and fresh
//! `/tmp` and `/run`; every command runs chrooted into it (systemd is not
//! PID 1 there, as on this host). Whatever dpkg and the maintainer scripts
//! change lands in the upper layer, so after `dpkg --purge` that layer is
//! exactly what the package left behind.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// A chroot over an overlay of `/`, alive while the namespace's holder
/// process lives.
struct Root {
    holder: Child,
    /// Mount point of the tmpfs holding `upper/`, `work/`, `merged/`.
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = cilock_testkit::tempdir();
        let script = r#"set -e
T="$1"
mount -t tmpfs -o mode=0755 cilock-package-test "$T"
mkdir "$T/upper" "$T/work" "$T/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/merged"
for d in proc sys dev; do mount --rbind "/$d" "$T/merged/$d"; done
mount -t tmpfs -o mode=1777 tmp "$T/merged/tmp"
mount -t tmpfs -o mode=0755 run "$T/merged/run"
echo ready
exec sleep infinity
"#;
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the overlay root was not set up");
        Root { holder, dir }
    }

    fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }

    /// `nsenter` into the namespace (not chrooted).
    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["--target", &self.holder.id().to_string(), "--mount", "--"]);
        c
    }

    /// `sh -c script` chrooted into the overlay, with a clean environment.
    fn run(&self, script: &str) -> Output {
        let mut c = self.nsenter();
        c.arg("chroot")
            .arg(self.merged())
            .args(["/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "sh",
                "-c",
                script,
            ]);
        c.output().expect("nsenter")
    }

    /// Like [`Root::run`]; fails unless it exits 0; stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "{script}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copies a host file into the chroot's `/tmp` (a tmpfs, not the upper
    /// layer); returns its path inside.
    fn copy_in(&self, host: &Path) -> String {
        let name = host.file_name().unwrap().to_string_lossy().into_owned();
        let st = self
            .nsenter()
            .arg("cp")
            .arg(host)
            .arg(self.merged().join("tmp").join(&name))
            .status()
            .unwrap();
        assert!(st.success(), "copying {} in", host.display());
        format!("/tmp/{name}")
    }

    /// The upper layer: `(type, path)` of every entry that is not a
    /// directory (files, symlinks, whiteouts as `c`) and of every directory
    /// the host's `/` does not have (`find -printf '%y %P'`).
    fn upper(&self) -> BTreeSet<String> {
        let out = self
            .nsenter()
            .arg("find")
            .arg(self.dir.path().join("upper"))
            .args(["-mindepth", "1", "-printf", "%y /%P\n"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                let (ty, path) = l.split_once(' ').unwrap();
                ty != "d" || !Path::new(path).is_dir()
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // The namespace (and every mount in it) goes with its last process.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `(mode & 0o7777, uid, gid)` of a path inside the chroot (`stat`).
fn stat(root: &Root, path: &str) -> (u32, u32, u32) {
    let out = root.ok(&format!("stat -c '%a %u %g' {path}"));
    let f: Vec<&str> = out.split_whitespace().collect();
    (
        u32::from_str_radix(f[0], 8).unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
    )
}

/// Processes (on the whole host: the chroot shares its pid namespace)
/// running the packaged daemon.
fn packaged_daemons() -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if cmdline.split(|b| *b == 0).next() == Some(b"/usr/bin/cilock-daemon".as_slice()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// What the package installs (`dpkg -L`, directories left out): the
/// man pages are one per (sub)command, as `cilock manpages` writes them.
fn expected_files(root: &Root) -> BTreeSet<String> {
    let mut files: BTreeSet<String> = [
        "/usr/bin/cilock",
        "/usr/bin/cilock-daemon",
        "/usr/lib/systemd/system/cilock.service",
        "/etc/cilock/cilock.toml",
        "/usr/libexec/cilock/README.md",
        "/usr/libexec/cilock/cilock-hook-common.sh",
        "/usr/libexec/cilock/gha-job-completed.sh",
        "/usr/libexec/cilock/gha-job-started.sh",
        "/usr/libexec/cilock/gitlab-post-build.sh",
        "/usr/libexec/cilock/gitlab-pre-build-env.sh",
        "/usr/libexec/cilock/gitlab-pre-build.sh",
        "/usr/share/man/man8/cilock-daemon.8.gz",
        "/usr/share/bash-completion/completions/cilock",
        "/usr/share/zsh/vendor-completions/_cilock",
        "/usr/share/fish/vendor_completions.d/cilock.fish",
        "/usr/share/doc/cilock/copyright",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let pages = root.ok("d=$(mktemp -d) && cilock manpages \"$d\" >/dev/null && ls \"$d\"");
    let pages: Vec<&str> = pages.lines().collect();
    for must in [
        "cilock.1",
        "cilock-step-begin.1",
        "cilock-step-end.1",
        "cilock-verify.1",
    ] {
        assert!(pages.contains(&must), "no {must} among {pages:?}");
    }
    for p in pages {
        files.insert(format!("/usr/share/man/man1/{p}.gz"));
    }
    files
}

/// Files of the installed package (`dpkg -L`), without directories.
fn installed_files(root: &Root) -> BTreeSet<String> {
    root.ok("dpkg -L cilock")
        .lines()
        .filter(|p| {
            !root
                .run(&format!("test -d '{p}' && ! test -L '{p}'"))
                .status
                .success()
        })
        .map(str::to_owned)
        .collect()
}

/// Builds a copy of `deb` with version `version` (a real upgrade for dpkg).
fn with_version(deb: &Path, version: &str, work: &Path) -> PathBuf {
    let tree = work.join("tree");
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text = text.replace(
        &format!("\nVersion: {}\n", env!("CARGO_PKG_VERSION")),
        &format!("\nVersion: {version}\n"),
    );
    assert!(text.contains(&format!("\nVersion: {version}\n")), "{text}");
    std::fs::write(&control, text).unwrap();
    let out = work.join(format!("cilock_{version}.deb"));
    // No compression: only dpkg reads it, right away.
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "-b"])
        .arg(&tree)
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// Install without systemd, check what is there, upgrade, remove, purge:
/// nothing but dpkg's bookkeeping is left.
#[test]
fn install_upgrade_purge() {
    let started = std::time::Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "package: {what} at {:.1} s",
            started.elapsed().as_secs_f64()
        )
    };
    let deb = cilock_testkit::deb::package();
    phase("package built");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!(
            "cilock_{version}_{}.deb",
            cilock_testkit::sh("dpkg --print-architecture").trim()
        )
    );
    let work = cilock_testkit::tempdir();
    let upgrade = with_version(&deb, &format!("{version}+upgrade1"), work.path());

    phase("upgrade package made");
    let root = Root::new();
    assert!(
        !root.run("test -e /run/systemd/system").status.success(),
        "systemd must not look like PID 1 in the chroot"
    );
    assert!(
        !root.run("dpkg-query -W cilock").status.success(),
        "cilock is already installed on this host; the test needs a system without it"
    );
    assert!(
        !root.run("getent group cilock").status.success(),
        "group cilock exists on this host"
    );
    // A host that ran a daemon with the default paths (`cargo xtask
    // install`, a test's embedded run) has /var/lib/cilock: hidden here
    // (whiteouts in the upper layer, part of its baseline), so the package
    // meets a system it was never on.
    root.ok("rm -rf /etc/cilock /var/lib/cilock");
    let baseline = root.upper();
    let inside = root.copy_in(&deb);
    let out = root.ok(&format!("dpkg -i {inside} 2>&1"));
    assert!(
        out.contains("cilock: created the signing key /etc/cilock/signing-key.pem"),
        "{out}"
    );

    phase("installed");
    // Exactly the contract's files.
    assert_eq!(installed_files(&root), expected_files(&root));
    assert_eq!(
        root.ok("dpkg-query -W -f='${Status} ${Version}' cilock"),
        format!("install ok installed {version}")
    );

    phase("file list checked");
    // The group: a system group.
    let group = root.ok("getent group cilock");
    let gid: u32 = group.trim().split(':').nth(2).unwrap().parse().unwrap();
    assert!(gid < 1000, "not a system group: {group}");

    // The key pair: 0600 root:root, 0644 public; the daemon accepts it.
    assert_eq!(stat(&root, "/etc/cilock/signing-key.pem"), (0o600, 0, 0));
    assert_eq!(
        stat(&root, "/etc/cilock/signing-key.pem.pub"),
        (0o644, 0, 0)
    );
    root.ok("cilock-daemon --config /etc/cilock/cilock.toml --check-config");
    let key = root.ok("cat /etc/cilock/signing-key.pem");
    let public = root.ok("cat /etc/cilock/signing-key.pem.pub");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");

    // The conffile: dist/cilock.toml, registered with its md5.
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/cilock.toml")).unwrap();
    assert_eq!(
        root.ok("cat /etc/cilock/cilock.toml").as_bytes(),
        shipped.as_slice()
    );
    let md5 = cilock_testkit::sh(&format!(
        "md5sum {}/../dist/cilock.toml | cut -d' ' -f1",
        env!("CARGO_MANIFEST_DIR")
    ));
    assert_eq!(
        root.ok("dpkg-query -W -f='${Conffiles}' cilock"),
        format!(" /etc/cilock/cilock.toml {}", md5.trim())
    );

    // The unit: enabled (the wants symlink deb-systemd-helper made), not
    // started (no systemd here, no daemon anywhere), and valid.
    assert_eq!(
        root.ok("readlink /etc/systemd/system/multi-user.target.wants/cilock.service"),
        "/lib/systemd/system/cilock.service\n"
    );
    assert_eq!(
        root.ok("grep '^ExecStart=' /lib/systemd/system/cilock.service"),
        "ExecStart=/usr/bin/cilock-daemon --config /etc/cilock/cilock.toml\n"
    );
    assert_eq!(
        packaged_daemons(),
        Vec::<u32>::new(),
        "the daemon was started"
    );
    assert!(!root.run("test -e /run/cilock").status.success());
    let verify = root.run("systemd-analyze verify /lib/systemd/system/cilock.service 2>&1");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    phase("unit checked");
    // cilock doctor runs (root, the embedded engine: a step can be traced;
    // the installed key is found and fine).
    let doctor = root.run("cilock doctor --json --config /etc/cilock/cilock.toml");
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap_or_else(|e| {
        panic!(
            "cilock doctor --json ({}): {e}\n{}\n{}",
            doctor.status,
            String::from_utf8_lossy(&doctor.stdout),
            String::from_utf8_lossy(&doctor.stderr)
        )
    });
    assert_eq!(doctor.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ready"], true, "{report:#}");
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report:#}"))
            .clone()
    };
    assert_eq!(check("key")["status"], "ok", "{report:#}");

    phase("doctor ran");
    // Reinstall, then an upgrade (with an admin's edit of the conffile):
    // the same key bytes, the edit kept, the group and unit as before.
    root.ok(&format!("dpkg -i {inside} >/dev/null 2>&1"));
    root.ok("echo '# edited by the admin' >> /etc/cilock/cilock.toml");
    let upgrade_inside = root.copy_in(&upgrade);
    root.ok(&format!("dpkg -i {upgrade_inside} >/dev/null 2>&1"));
    assert_eq!(
        root.ok("dpkg-query -W -f='${Version}' cilock"),
        format!("{version}+upgrade1")
    );
    assert_eq!(root.ok("cat /etc/cilock/signing-key.pem"), key);
    assert_eq!(root.ok("cat /etc/cilock/signing-key.pem.pub"), public);
    assert_eq!(stat(&root, "/etc/cilock/signing-key.pem"), (0o600, 0, 0));
    assert!(root
        .ok("cat /etc/cilock/cilock.toml")
        .ends_with("# edited by the admin\n"));
    assert_eq!(root.ok("getent group cilock"), group);
    root.ok("test -L /etc/systemd/system/multi-user.target.wants/cilock.service");

    phase("upgraded");
    // Remove: files gone; the unit masked (debhelper's way to disable it on
    // remove: its enablement stays recorded until the purge, so a
    // reinstall restores it); config, key and group kept.
    root.ok("dpkg -r cilock >/dev/null 2>&1");
    for gone in [
        "/usr/bin/cilock",
        "/usr/bin/cilock-daemon",
        "/lib/systemd/system/cilock.service",
    ] {
        assert!(
            !root.run(&format!("test -e {gone}")).status.success(),
            "{gone}"
        );
    }
    assert_eq!(
        root.ok("readlink /etc/systemd/system/cilock.service"),
        "/dev/null\n"
    );
    assert_eq!(root.ok("cat /etc/cilock/signing-key.pem"), key);
    assert_eq!(root.ok("getent group cilock"), group);

    // What a daemon that ran leaves (no daemon runs here: systemd's
    // StateDirectory= and RuntimeDirectory= with something in them), so
    // the purge's removal of both is exercised, not only asserted.
    root.ok(
        "install -d -m 0700 /var/lib/cilock/kept && echo '{}' > /var/lib/cilock/kept/step.json \
         && install -d -m 0755 /run/cilock && : > /run/cilock/cilock.sock",
    );

    // Purge: nothing of the package is left; the group is gone.
    root.ok("rm -f /tmp/*.deb");
    root.ok("dpkg --purge cilock >/dev/null 2>&1");
    assert!(!root.run("getent group cilock").status.success());
    assert!(!root.run("dpkg-query -W cilock").status.success());
    for gone in ["/etc/cilock", "/var/lib/cilock", "/run/cilock"] {
        assert!(
            !root.run(&format!("test -e {gone}")).status.success(),
            "{gone}"
        );
    }
    phase("purged");
    let mut left = root.upper();
    // man-db's trigger (the package ships man pages) updated its cache, if
    // man-db is installed: its index and cache tags, nothing else. (Its
    // incremental update keeps the removed pages' `whatis` entries, as
    // observed here after the purge; `mandb -c` rebuilds the index. That is
    // man-db's cache, not a file of the package.)
    let man_cache: Vec<String> = left
        .iter()
        .filter(|e| e.starts_with("f /var/cache/man/"))
        .cloned()
        .collect();
    for e in &man_cache {
        assert!(
            e == "f /var/cache/man/index.db" || e.ends_with("/CACHEDIR.TAG"),
            "{e}"
        );
        left.remove(e);
    }
    if !man_cache.is_empty() {
        root.ok("dpkg-query -W man-db");
    }
    let expected: BTreeSet<String> = baseline
        .iter()
        .cloned()
        .chain(LEFT_AFTER_PURGE.iter().map(|s| (*s).to_owned()))
        .collect();
    assert_eq!(left, expected, "the upper layer after the purge");
    // The group files were rewritten (they are in the upper layer) without
    // the group.
    for f in ["/etc/group", "/etc/gshadow"] {
        let text = root.ok(&format!("cat {f}"));
        assert!(
            !text.lines().any(|l| l.starts_with("cilock:")),
            "{f}: {text}"
        );
    }
}

/// The upper layer after install, upgrade, remove and purge (`find
/// -printf '%y /%P'`; directories only where the host has none; besides
/// the baseline and man-db's cache): dpkg's database, its locks and log,
/// and the group files `groupadd`/`groupdel` rewrote (`/etc/group-` and
/// `/etc/gshadow-` are shadow's backups of the files before the
/// `groupdel`, so they still name the group; `/etc/.pwd.lock` is
/// `lckpwdf(3)`'s lock). No file of the package, no maintainer script, no
/// deb-systemd-helper state, no unit symlink, no directory is left.
const LEFT_AFTER_PURGE: &[&str] = &[
    "f /etc/.pwd.lock",
    "f /etc/group",
    "f /etc/group-",
    "f /etc/gshadow",
    "f /etc/gshadow-",
    "f /var/lib/dpkg/lock",
    "f /var/lib/dpkg/lock-frontend",
    "f /var/lib/dpkg/status",
    "f /var/lib/dpkg/status-old",
    "f /var/lib/dpkg/triggers/Lock",
    "f /var/log/dpkg.log",
];
