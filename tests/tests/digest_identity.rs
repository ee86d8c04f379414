//! Digests of opened and exec'd files are given only for the file the
//! kernel recorded at open/exec time, and only when the step's user could
//! read it (security review §4, §11, §12). A real unprivileged user runs
//! each job against the real daemon; every attack of the review is
//! reproduced and must now yield no digest, with a reason.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cilock_testkit::step::*;
use cilock_testkit::*;
use serde_json::Value;

/// A user and its own group, created for one test (removed at drop). The
/// daemon's socket group is that group.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn create(tag: &str) -> User {
        let name = format!("clk{tag}{}", std::process::id() % 100_000);
        let st = Command::new("groupadd").arg(&name).status().unwrap();
        assert!(st.success(), "groupadd {name}");
        let st = Command::new("useradd")
            .args(["-M", "-N", "-s", "/bin/sh", "-g", &name, &name])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
        let uid = sh(&format!("id -u {name}")).trim().parse().unwrap();
        let gid = sh(&format!("id -g {name}")).trim().parse().unwrap();
        User { name, uid, gid }
    }

    /// `cmd` run as this user (uid, gid, its groups).
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(program);
        c
    }

    /// A directory owned by this user.
    fn dir(&self) -> tempfile::TempDir {
        let d = tempdir();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(d.path(), Some(self.uid), Some(self.gid)).unwrap();
        d
    }

    fn chown(&self, p: &Path) {
        std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid)).unwrap();
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        let _ = Command::new("groupdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}

fn cilock_as(d: &Daemon, u: &User, args: &[&str]) -> Output {
    u.command(&shared_cilock())
        .args(args)
        .env("CILOCK_SOCKET", &d.socket)
        .output()
        .unwrap()
}

/// Runs `script` (sh) as a step of user `u` in `dir`; `before_end` runs
/// after the script and before `step end`. Returns command-run.
fn step(
    d: &Daemon,
    u: &User,
    name: &str,
    dir: &Path,
    script: &str,
    before_end: impl FnOnce(),
) -> Value {
    let sh_path = dir.join(format!("{name}.sh"));
    write_script(&sh_path, script);
    u.chown(&sh_path);
    let mut job = u
        .command(Path::new("/bin/sh"))
        .arg("-c")
        .arg(format!("read go; exec sh {}", sh_path.display()))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = job.id().to_string();
    // Begin once setpriv has become the user's shell.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|e| e.to_string_lossy().contains("setpriv"))
    {
        assert!(Instant::now() < deadline, "setpriv did not exec");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = cilock_as(
        d,
        u,
        &[
            "step",
            "begin",
            "--step",
            name,
            "--pid",
            &pid,
            "--workdir",
            dir.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "begin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    release(&mut job);
    let out = job.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "step script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    before_end();
    let att = dir.join(format!("{name}.att.json"));
    let t0 = Instant::now();
    let out = cilock_as(
        d,
        u,
        &["step", "end", "--step", name, "-o", att.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "end: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "step end took {:?}",
        t0.elapsed()
    );
    command_run(&att)
}

/// The reason a path of `p` has no digest ("" when it has one).
fn reason(p: &Value, path: &str) -> String {
    p["unhashedOpens"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["path"] == path))
        .map(|u| u["reason"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Every process that opened `path`.
fn openers<'a>(procs: &'a [Value], path: &str) -> Vec<&'a Value> {
    procs
        .iter()
        .filter(|p| p["openedfiles"].get(path).is_some())
        .collect()
}

/// A root-only directory (0700) holding `secret.txt`; returns the dir,
/// the file and its sha256.
fn root_only(parent: &Path) -> (PathBuf, PathBuf, String) {
    let dir = parent.join("rootonly");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, b"AKIAIOSFODNN7EXAMPLE root-only secret\n").unwrap();
    let sha = sha256sum(secret.to_str().unwrap()).unwrap();
    (dir, secret, sha)
}

/// A directory every user can traverse (the daemon's test dirs are 0700).
fn open_dir() -> tempfile::TempDir {
    let d = tempdir();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Review §4a: a file renamed over the exec'd program after the exec does
/// not lend it its digest.
fn rename_over_after_exec(d: &Daemon, u: &User) {
    let w = u.dir();
    let tool = w.path().join("tool");
    std::fs::copy("/usr/bin/id", &tool).unwrap();
    std::fs::copy("/usr/bin/true", w.path().join(".benign")).unwrap();
    for f in [&tool, &w.path().join(".benign")] {
        u.chown(f);
    }
    let tool_s = tool.to_str().unwrap().to_string();
    let true_sha = sha256sum("/usr/bin/true").unwrap();
    let id_sha = sha256sum(&tool_s).unwrap();
    let cr = step(d, u, "rename", w.path(), "./tool > /dev/null\n", || {
        // A helper outside the step swaps the file before `step end`.
        std::fs::rename(w.path().join(".benign"), &tool).unwrap();
    });
    let procs = processes(&cr);
    let ran: Vec<&Value> = procs.iter().filter(|p| p["program"] == tool_s).collect();
    assert_eq!(
        ran.len(),
        1,
        "{}",
        serde_json::to_string_pretty(&cr).unwrap()
    );
    let p = ran[0];
    assert!(
        p.get("programdigest").is_none() && p.get("exedigest").is_none(),
        "the swapped program got a digest: {p}"
    );
    let why = p["programUnhashedReason"].as_str().unwrap_or("");
    assert!(why.contains("not the one"), "reason: {why:?}");
    assert!(reason(p, &tool_s).contains("not the one"));
    let text = cr.to_string();
    assert!(
        !text.contains(&true_sha),
        "/usr/bin/true's digest is attested"
    );
    assert!(
        !text.contains(&id_sha),
        "the renamed-away file cannot be proven either"
    );
}

/// Review §4b: exec through a symlink that the program re-points (here
/// `ln` itself) at a root-only file: the program is what the kernel ran,
/// never the link's new target, and no byte of the secret is digested.
fn symlink_swap(d: &Daemon, u: &User) {
    let w = u.dir();
    let root = open_dir();
    let (_dir, secret, secret_sha) = root_only(root.path());
    let link = w.path().join("link");
    let script = format!(
        "for i in 1 2 3 4 5; do ln -sfn /usr/bin/ln {l}; {l} -sfn {s} {l}; done\n",
        l = link.display(),
        s = secret.display()
    );
    let cr = step(d, u, "symswap", w.path(), &script, || {});
    let procs = processes(&cr);
    let secret_s = secret.to_str().unwrap();
    let ln = std::fs::canonicalize("/usr/bin/ln").unwrap();
    let ln_sha = sha256sum(ln.to_str().unwrap()).unwrap();
    let through_link: Vec<&Value> = procs
        .iter()
        .filter(|p| {
            p["cmdline"]
                .as_str()
                .is_some_and(|c| c.starts_with(link.to_str().unwrap()))
        })
        .collect();
    assert_eq!(
        through_link.len(),
        5,
        "{}",
        serde_json::to_string_pretty(&cr).unwrap()
    );
    for p in &through_link {
        assert_eq!(p["program"], ln.to_str().unwrap(), "{p}");
        assert_eq!(p["programdigest"]["sha256"], ln_sha.as_str(), "{p}");
    }
    for p in &procs {
        assert_ne!(
            p["program"], secret_s,
            "the secret is attested as a program: {p}"
        );
    }
    assert!(
        !cr.to_string().contains(&secret_sha),
        "the root-only secret's digest is attested"
    );
}

/// Review §12: O_PATH opens of /etc/shadow and of the daemon's own key
/// give no digest (the daemon does not even open them).
fn o_path(d: &Daemon, u: &User) {
    let w = u.dir();
    let key = d.socket.parent().unwrap().join("signing-key.pem");
    let key_s = key.to_str().unwrap();
    let script = format!(
        "{py} -c 'import os\nfor p in [\"/etc/shadow\", \"{key_s}\", \"/etc/hostname\"]: os.close(os.open(p, os.O_PATH))\nos.close(os.open(\"/etc/hostname\", os.O_RDONLY))'\n",
        py = python()
    );
    let cr = step(d, u, "opath", w.path(), &script, || {});
    let procs = processes(&cr);
    let text = cr.to_string();
    for (path, sha) in [
        ("/etc/shadow", sha256sum("/etc/shadow").unwrap()),
        (key_s, sha256sum(key_s).unwrap()),
    ] {
        let who = openers(&procs, path);
        assert!(
            !who.is_empty(),
            "the O_PATH open of {path} was not recorded"
        );
        for p in who {
            assert_eq!(p["openedfiles"][path], serde_json::json!({}), "{path}");
            assert_eq!(
                reason(p, path),
                "opened with O_PATH: the job had no read access"
            );
        }
        assert!(!text.contains(&sha), "the digest of {path} is attested");
    }
    // An O_PATH handle, then a real open of a readable file: the real
    // open is recorded and hashed.
    let py = procs
        .iter()
        .find(|p| p["cmdline"].as_str().is_some_and(|c| c.contains("O_PATH")))
        .expect("python");
    assert_eq!(
        py["openedfiles"]["/etc/hostname"]["sha256"],
        sha256sum("/etc/hostname").unwrap().as_str(),
        "{py}"
    );
}

/// Review §12 / #4c: a write-open in a private user and mount namespace,
/// where a tmpfs hides a root-only directory, is not given the digest of
/// the host's file at that path; nor is a program bind-mounted over
/// another given the other's digest.
fn private_mount_write(d: &Daemon, u: &User) {
    let w = u.dir();
    let root = open_dir();
    let (dir, secret, secret_sha) = root_only(root.path());
    let script = format!(
        "unshare -Urm sh -c 'mount -t tmpfs none {dir} && echo hi > {secret} && mount --bind /usr/bin/id /usr/bin/true && /usr/bin/true'\n",
        dir = dir.display(),
        secret = secret.display()
    );
    let cr = step(d, u, "mntns", w.path(), &script, || {});
    let procs = processes(&cr);
    let secret_s = secret.to_str().unwrap();
    let who = openers(&procs, secret_s);
    assert!(
        !who.is_empty(),
        "the write-open was not recorded: {}",
        serde_json::to_string_pretty(&cr).unwrap()
    );
    for p in who {
        assert_eq!(p["openedfiles"][secret_s], serde_json::json!({}));
        assert!(!reason(p, secret_s).is_empty());
    }
    assert!(
        !cr.to_string().contains(&secret_sha),
        "the host's root-only file's digest is attested"
    );
    // Review #4c: `id` bind-mounted over /usr/bin/true in the namespace is
    // not attested as /usr/bin/true's content.
    let t = procs
        .iter()
        .find(|p| p["cmdline"] == "/usr/bin/true")
        .expect("the exec of /usr/bin/true");
    assert!(
        t.get("programdigest").is_none() && t.get("exedigest").is_none(),
        "{t}"
    );
    assert!(!t["programUnhashedReason"].as_str().unwrap_or("").is_empty());
}

/// Review §11: a 20 GiB sparse file read by the job is not hashed beyond
/// the configured 1 GiB cap; the reason says so and `step end` is quick.
fn sparse_over_the_cap(d: &Daemon, u: &User) {
    let w = u.dir();
    let data = u.dir();
    let big = data.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(20 << 30)
        .unwrap();
    u.chown(&big);
    let big_s = big.to_str().unwrap();
    let t0 = Instant::now();
    let cr = step(
        d,
        u,
        "sparse",
        w.path(),
        &format!("head -c1 {big_s} > /dev/null\n"),
        || {},
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let procs = processes(&cr);
    let who = openers(&procs, big_s);
    assert_eq!(who.len(), 1);
    assert_eq!(
        reason(who[0], big_s),
        "not hashed: 21474836480 bytes exceeds the limit of 1073741824"
    );
}

/// The common case still works: what the user could read, unchanged,
/// has its digest; exe and program digests of a plain binary.
fn plain(d: &Daemon, u: &User) {
    let w = u.dir();
    // A program the user may execute but not read (root's, mode 0711).
    let xonly = w.path().join("xonly");
    std::fs::copy("/usr/bin/true", &xonly).unwrap();
    std::fs::set_permissions(&xonly, std::fs::Permissions::from_mode(0o711)).unwrap();
    let cr = step(
        d,
        u,
        "plain",
        w.path(),
        "cat /etc/hostname > /dev/null\n./xonly\n",
        || {},
    );
    let procs = processes(&cr);
    let cat = procs
        .iter()
        .find(|p| p["program"].as_str().is_some_and(|x| x.ends_with("/cat")))
        .expect("cat");
    let cat_path = cat["program"].as_str().unwrap();
    let sha = sha256sum(cat_path).unwrap();
    assert_eq!(cat["programdigest"]["sha256"], sha.as_str());
    assert_eq!(cat["exedigest"]["sha256"], sha.as_str());
    assert_eq!(
        cat["openedfiles"]["/etc/hostname"]["sha256"],
        sha256sum("/etc/hostname").unwrap().as_str()
    );
    let x = procs
        .iter()
        .find(|p| p["program"] == xonly.to_str().unwrap())
        .expect("xonly");
    assert!(
        x.get("programdigest").is_none() && x.get("exedigest").is_none(),
        "{x}"
    );
    assert_eq!(
        x["programUnhashedReason"],
        "not readable by the step's user"
    );
}

/// Review §6/§10: beyond `max_processes_per_step` and
/// `max_files_per_step` the trace counts what it leaves out, in
/// `trace.truncated`; the attestation is still made.
fn bounded_trace(d: &Daemon, u: &User) {
    let w = u.dir();
    let files = w.path().join("many");
    std::fs::create_dir(&files).unwrap();
    for i in 0..4000 {
        std::fs::write(files.join(format!("f{i}")), b"x").unwrap();
    }
    let script = format!(
        "i=0; while [ $i -lt 60 ]; do /usr/bin/true; i=$((i+1)); done\n\
         for f in {}/f*; do : < $f; done\n",
        files.display()
    );
    let cr = step(d, u, "bounded", w.path(), &script, || {});
    let t = &cr["trace"]["truncated"];
    let procs = processes(&cr);
    assert_eq!(procs.len(), 40, "{t}");
    assert!(t["processes"].as_u64().unwrap_or(0) >= 20, "{t}");
    let paths: std::collections::BTreeSet<&str> = procs
        .iter()
        .flat_map(|p| p["openedfiles"].as_object().unwrap().keys())
        .map(String::as_str)
        .collect();
    assert!(paths.len() <= 3000, "{}", paths.len());
    assert!(t["files"].as_u64().unwrap_or(0) >= 1000, "{t}");
}

/// Files read through an overlay mount (containers) keep their digest:
/// the identity check accepts the device as the kernel and `stat` see it.
fn overlay_read(d: &Daemon, u: &User) {
    let w = u.dir();
    let o = open_dir();
    for sub in ["l", "u", "w", "m"] {
        std::fs::create_dir(o.path().join(sub)).unwrap();
    }
    std::fs::write(o.path().join("l/a"), b"lower\n").unwrap();
    let m = o.path().join("m");
    sh(&format!(
        "mount -t overlay overlay -o lowerdir={p}/l,upperdir={p}/u,workdir={p}/w {p}/m",
        p = o.path().display()
    ));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _um = Unmount(m.clone());
    let a = m.join("a");
    let a_s = a.to_str().unwrap();
    let cr = step(
        d,
        u,
        "overlay",
        w.path(),
        &format!("cat {a_s} > /dev/null\n"),
        || {},
    );
    let procs = processes(&cr);
    let who = openers(&procs, a_s);
    assert_eq!(who.len(), 1);
    assert_eq!(
        who[0]["openedfiles"][a_s]["sha256"],
        sha256sum(a_s).unwrap().as_str(),
        "{}",
        reason(who[0], a_s)
    );
}

fn all_attacks(backend: &str) {
    let u = User::create(&backend[..1]);
    let d = Daemon::start_with(
        backend,
        &format!(
            "group = {:?}\nmax_hash_file_size = \"1GiB\"\n\
             max_processes_per_step = 40\nmax_files_per_step = 3000",
            u.name
        ),
    );
    plain(&d, &u);
    rename_over_after_exec(&d, &u);
    symlink_swap(&d, &u);
    o_path(&d, &u);
    private_mount_write(&d, &u);
    sparse_over_the_cap(&d, &u);
    bounded_trace(&d, &u);
    overlay_read(&d, &u);
}

#[test]
fn ebpf_digests_only_what_the_job_opened_and_could_read() {
    all_attacks("ebpf");
}

#[test]
fn ptrace_digests_only_what_the_job_opened_and_could_read() {
    all_attacks("ptrace");
}
