//! The adversarial suite: every attack of the security review
//! (`security-review.md`, attacks #0-#25) replayed against a real daemon
//! (eBPF backend) by a real unprivileged member of its group (`mallory`, the
//! CI job), with a second member (`bob`), an outsider (`eve`), root-only
//! data (a 0700 directory with secret files, the daemon's key, a root
//! process with secrets in its environment). Each test asserts that the
//! attack FAILS: no code runs as root for a job, no byte or digest of what
//! the job cannot read reaches an attestation, the daemon keeps serving root
//! and other users, nothing leaks.
//!
//! Every loop is bounded, every wait has a time limit, all traffic stays on
//! the daemon's Unix socket; users, groups, processes, cgroups and FIFOs are
//! removed by Drop guards even when a check fails.

mod adversary;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use adversary::*;
use cilock_testkit::*;
use serde_json::{json, Value};

const T20: Duration = Duration::from_secs(20);
const T60: Duration = Duration::from_secs(60);
const T120: Duration = Duration::from_secs(120);

fn mkdir_owned(u: &User, p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid)).unwrap();
}

fn write_owned(u: &User, p: &Path, content: &str) {
    std::fs::write(p, content).unwrap();
    std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid)).unwrap();
}

/// Lines `PREFIX rest` of a script's output.
fn line_after<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
}

/// Opens a FIFO for reading and writing again and again in a background
/// thread, so that every reader blocked on it (the daemon or its helper,
/// reading a job's `GITHUB_OUTPUT`), now or later, gets through and then
/// sees EOF. Stops (and removes the FIFO) at drop.
struct FifoRelease {
    path: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FifoRelease {
    fn start(path: &Path) -> FifoRelease {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, st) = (path.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes.
            for _ in 0..6000 {
                if st.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if let Ok(f) = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&p)
                {
                    std::thread::sleep(Duration::from_millis(50));
                    drop(f);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FifoRelease {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FifoRelease {
    fn drop(&mut self) {
        // A last second of releases for readers still blocked, then stop.
        std::thread::sleep(Duration::from_secs(1));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

use std::os::unix::fs::OpenOptionsExt;

// ---------------------------------------------------------------------------
// #0 git attestor: the job's PATH and the repository's config run as root.

#[test]
fn a00_git_attestor_runs_nothing_the_job_controls() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let marks = tempdir();
    std::fs::set_permissions(marks.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let base = w.workdir(m);
    let repo = base.path().join("repo");
    let evilbin = base.path().join("bin");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&evilbin).unwrap();
    // A genuine repository with one commit (made by the test with the
    // system git, before the job's config exists).
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    sh(&format!(
        "cd '{}' && git init -q && git -c user.name=t -c user.email=t@e -c core.hooksPath=/dev/null add README && git -c user.name=t -c user.email=t@e -c core.hooksPath=/dev/null commit -q -m init",
        repo.display()
    ));
    let head = sh(&format!("git -C '{}' rev-parse HEAD", repo.display()))
        .trim()
        .to_string();
    // What the job plants: a `git` first on its PATH, and commands in the
    // repository's config and hooks. Each leaves a marker naming its uid.
    let mark = |what: &str| {
        format!(
            "#!/bin/sh\necho \"$(id) {what} $*\" >> {}/{what}.$(id -u).$$\n",
            marks.path().display()
        )
    };
    write_script(
        &evilbin.join("git"),
        &format!("{}exec /usr/local/bin/git \"$@\"\n", mark("fake-git")),
    );
    write_script(
        &base.path().join("evil.sh"),
        &format!("{}exit 0\n", mark("config-cmd")),
    );
    let hooks = base.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for h in [
        "post-checkout",
        "pre-commit",
        "post-index-change",
        "reference-transaction",
        "fsmonitor-watchman",
        "pre-auto-gc",
    ] {
        write_script(&hooks.join(h), &mark("hook"));
        write_script(&repo.join(".git/hooks").join(h), &mark("hook"));
    }
    let evil = base.path().join("evil.sh");
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(repo.join(".git/config"))
        .unwrap();
    use std::io::Write;
    write!(
        cfg,
        "[core]\n\tfsmonitor = {evil}\n\thooksPath = {hooks}\n\tpager = {evil}\n\tsshCommand = {evil}\n\taskPass = {evil}\n[diff]\n\texternal = {evil}\n[gc]\n\tauto = 1\n",
        evil = evil.display(),
        hooks = hooks.display()
    )
    .unwrap();
    drop(cfg);
    chown_r(m, base.path());

    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", evilbin.display());
    let out = base.path().join("git.att.json");
    let r = w.user_step_full(
        m,
        "gitstep",
        &repo,
        &out,
        "",
        "-a git",
        &[("PATH", &path)],
        "true",
        T60,
    );
    let markers: Vec<String> = std::fs::read_dir(marks.path())
        .unwrap()
        .flatten()
        .map(|e| {
            format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                std::fs::read_to_string(e.path()).unwrap_or_default().trim()
            )
        })
        .collect();
    ck.check(markers.is_empty(), || {
        format!(
            "programs the job planted ran (external git / repository config / hooks): {markers:?}"
        )
    });
    ck.check(r.ran.ok() && out.exists(), || {
        format!(
            "the git step did not end with an envelope: {}",
            r.ran.text()
        )
    });
    if r.ran.ok() && out.exists() {
        let stmt = statement(&out);
        match find_attestation(&stmt, "/git/v0.1") {
            None => ck.fail("no git attestation in the envelope"),
            Some(g) => ck.check(g["commithash"] == head.as_str(), || {
                format!("git attestation's commithash is not HEAD {head}: {g}")
            }),
        }
    }
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #1 github-action: GITHUB_OUTPUT names a file the daemon reads as root.

#[test]
fn a01_github_output_reads_nothing_the_job_cannot_read() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let ro = RootOnly::create();
    let rp = RootProc::start();
    let wd = w.workdir(m);
    // Control: the job's own output file is recorded.
    let own = wd.path().join("own-output");
    let visible = token("visible");
    write_owned(m, &own, &format!("MYOUT={visible}\n"));
    let environ = format!("/proc/{}/environ", rp.pid());
    let mut secrets = vec![ro.dbpass.clone()];
    secrets.extend(rp.secrets.iter().cloned());
    for (i, target) in [ro.kv_env.to_str().unwrap(), &environ, own.to_str().unwrap()]
        .into_iter()
        .enumerate()
    {
        let env = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_ACTION_REPOSITORY", "a/b"),
            ("GITHUB_ACTION_REF", "v1"),
            ("GITHUB_OUTPUT", target),
        ];
        let r = w.user_step(
            m,
            &format!("ghout{i}"),
            wd.path(),
            "-a github-action",
            &env,
            "true",
            T60,
        );
        ck.check(r.envelope().is_some(), || {
            format!("GITHUB_OUTPUT={target}: no envelope: {}", r.ran.text())
        });
        let text = r.all_text();
        let l = leaked(&text, &secrets);
        ck.check(l.is_empty(), || {
            format!("GITHUB_OUTPUT={target}: root-only secrets in what the job got back: {l:?}")
        });
        if target == own.to_str().unwrap() && r.envelope().is_some() {
            ck.check(text.contains(&visible), || {
                "control: the job's own GITHUB_OUTPUT was not recorded (github-action did not run?)"
                    .to_string()
            });
        }
    }
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #2 secretscan: a job-chosen decode depth and deeply nested input.

#[test]
fn a02_secretscan_depth_is_capped_and_deep_input_is_harmless() {
    let mut w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let wd = w.workdir(m);
    write_owned(
        m,
        &wd.path().join("deep.txt"),
        &format!("x=%{}41\n", "25".repeat(5000)),
    );
    let script = r#"
wd = sys.argv[1]
r = req({"request": "begin-step", "step": "deep8", "pid": os.getpid(), "workdir": wd,
         "attestations": ["secretscan"], "options": {"secretscan": {"max_decode_layers": 8}}}, 30)
print("BEGIN8", json.dumps(r), flush=True)
r = req({"request": "end-step", "step": "deep8", "stdout": "x=%" + "25" * 2000 + "41"}, 120)
print("END8", kind(r), flush=True)
print("STATUS1", kind(req({"request": "status"}, 10)), flush=True)
r = req({"request": "begin-step", "step": "deepbig", "pid": os.getpid(), "workdir": wd,
         "attestations": ["secretscan"], "options": {"secretscan": {"max_decode_layers": 100000}}}, 30)
print("BEGINBIG", json.dumps(r), flush=True)
if kind(r) == "begun":
    r2 = req({"request": "end-step", "step": "deepbig", "stdout": "x=%" + "25" * 5000 + "41"}, 120)
    print("ENDBIG", kind(r2), flush=True)
print("STATUS2", kind(req({"request": "status"}, 10)), flush=True)
"#;
    let r = run_timeout(
        py_as(m, &w, script, &[wd.path().to_str().unwrap()]),
        Duration::from_secs(200),
    );
    let out = r.stdout.clone();
    let begin8: Value =
        serde_json::from_str(line_after(&out, "BEGIN8").unwrap_or("{}")).unwrap_or(json!({}));
    ck.check(kind(&begin8) == "begun", || {
        format!(
            "begin with max_decode_layers 8 (the allowed maximum) failed: {begin8} {}",
            r.text()
        )
    });
    ck.check(line_after(&out, "END8") == Some("ended"), || {
        format!(
            "end with 2 000-deep %25 input (8 layers) did not end: {}",
            r.text()
        )
    });
    ck.check(line_after(&out, "STATUS1") == Some("status"), || {
        format!(
            "daemon did not answer status after the deep input: {}",
            r.text()
        )
    });
    let big: Value =
        serde_json::from_str(line_after(&out, "BEGINBIG").unwrap_or("{}")).unwrap_or(json!({}));
    let msg = big["message"].as_str().unwrap_or("");
    ck.check(
        kind(&big) == "bad-request"
            && (msg.contains("max_decode_layers") || msg.contains("max-decode-layers")),
        || format!("max_decode_layers 100000 was not refused with a bad-request naming the option: {big}"),
    );
    ck.check(line_after(&out, "STATUS2") == Some("status"), || {
        format!("daemon did not answer status at the end: {}", r.text())
    });
    ck.check(w.alive(), || "the daemon died".to_string());
    ck.check(!w.log_text().contains("overflowed its stack"), || {
        "the daemon overflowed its stack".to_string()
    });
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #3 workdir swapped for a symlink to root-only data; the walk race.

#[test]
fn a03_workdir_swap_and_walk_race_never_reach_root_only_files() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let ro = RootOnly::create();
    let forbidden = ro.forbidden();

    // (a) Swap at end: ws → ws.orig, ws → symlink to the root-only dir.
    let base = w.workdir(m);
    let ws = base.path().join("ws");
    mkdir_owned(m, &ws);
    write_owned(m, &ws.join("m.txt"), "material\n");
    let out = base.path().join("swap.att.json");
    let body = format!(
        "echo product > out.txt\ncd /\nmv {ws} {ws}.orig && ln -s {ro} {ws} || exit 9\n",
        ws = ws.display(),
        ro = ro.dir.path().display()
    );
    let r = w.user_step_full(m, "swapwd", &ws, &out, "", "-a secretscan", &[], &body, T60);
    let text = r.all_text();
    let l = leaked(&text, &forbidden);
    ck.check(l.is_empty(), || {
        format!("workdir swap: root-only names/digests/secrets in the envelope: {l:?}")
    });
    if let Some(stmt) = r.statement() {
        let prods = find_attestation(&stmt, "/product/v0.1")
            .map(keys)
            .unwrap_or_default();
        let allowed: std::collections::BTreeSet<String> =
            ["m.txt", "out.txt"].iter().map(|s| s.to_string()).collect();
        ck.check(prods.is_subset(&allowed), || {
            format!("workdir swap: products are not the original tree's: {prods:?}")
        });
    } else {
        // Refusing to end (the workdir changed) is acceptable; leaking is not.
        eprintln!("swap: no envelope: {}", r.ran.text());
    }

    // (b) Walk race: directories a0..a7 swapped again and again with a
    // symlink to the root-only dir while begin and end walk the tree (deep
    // chains named to be walked first keep the a* entries waiting between
    // their listing and their reading).
    let base2 = w.workdir(m);
    let wr = base2.path().join("wr");
    for i in 0..8 {
        mkdir_owned(m, &wr.join(format!("a{i}")));
        write_owned(m, &wr.join(format!("a{i}/mine.txt")), "mine\n");
    }
    for chain in ["zz0", "zz1", "zz2", "zz3"] {
        let mut deep = wr.join(chain);
        for _ in 0..200 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
    }
    chown_r(m, &wr);
    let stop = base2.path().join("stop");
    let started = base2.path().join("started");
    let toggler = format!(
        r#"
import os, time, random
wr, target, stop, started = "{wr}", "{ro}", "{stop}", "{started}"
open(started, "w").close()
end = time.time() + 60
n = 0
while time.time() < end and not os.path.exists(stop) and n < 100000:
    i = random.randrange(8)
    a, real = "%s/a%d" % (wr, i), "%s/a%d.real" % (wr, i)
    try:
        if os.path.islink(a):
            os.unlink(a); os.rename(real, a)
        else:
            os.rename(a, real); os.symlink(target, a)
    except OSError:
        pass
    time.sleep(0.001)
    n += 1
"#,
        wr = wr.display(),
        ro = ro.dir.path().display(),
        stop = stop.display(),
        started = started.display()
    );
    let mut tc = m.command(python());
    tc.arg("-c").arg(toggler);
    let mut tog = w.spawn_bg(tc);
    let out2 = base2.path().join("race.att.json");
    let pre = format!(
        "i=0; while [ ! -e {} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
        started.display()
    );
    let r2 = w.user_step_full(m, "walkrace", &wr, &out2, &pre, "", &[], "sleep 1", T120);
    write_owned(m, &stop, "");
    let _ = tog.wait();
    let text2 = r2.all_text();
    let l2 = leaked(&text2, &forbidden);
    ck.check(l2.is_empty(), || {
        format!("walk race: root-only names/digests/secrets in the envelope: {l2:?}")
    });
    ck.check(r2.envelope().is_some(), || {
        format!(
            "walk race: the step did not end with an envelope: {}",
            r2.ran.text()
        )
    });
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #4 forged program identity (rename after exec; symlink re-pointed).

#[test]
fn a04_program_identity_cannot_be_forged() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let ro = RootOnly::create();
    let sha_true = sha256sum("/usr/bin/true").unwrap();

    // (a) ./tool is `id`; a helper outside the step renames a copy of
    // `true` over it once it ran.
    let base = w.workdir(m);
    let b = base.path().display().to_string();
    std::fs::copy("/usr/bin/id", base.path().join("tool")).unwrap();
    std::fs::copy("/usr/bin/true", base.path().join(".benign")).unwrap();
    chown_r(m, base.path());
    let pre = format!(
        "( i=0; while [ ! -e {b}/ran ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; mv {b}/.benign {b}/tool; touch {b}/swapped ) &"
    );
    let body = format!(
        "./tool > {b}/id.out\ntouch {b}/ran\ni=0; while [ ! -e {b}/swapped ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\n"
    );
    let out = base.path().join("forge.att.json");
    let r = w.user_step_full(m, "forge", base.path(), &out, &pre, "", &[], &body, T60);
    ck.check(
        std::fs::read_to_string(base.path().join("id.out")).is_ok_and(|s| s.contains("uid=")),
        || "./tool (id) did not run".to_string(),
    );
    match r.statement() {
        None => ck.fail(format!("forge: no envelope: {}", r.ran.text())),
        Some(stmt) => {
            let tools: Vec<Value> = processes(&stmt)
                .into_iter()
                .filter(|p| {
                    // The kernel's name of a replaced file may end in
                    // " (deleted)": match the path or the command line.
                    p["program"].as_str().is_some_and(|x| x.contains("/tool"))
                        || p["cmdline"]
                            .as_str()
                            .is_some_and(|c| c.starts_with("./tool"))
                })
                .collect();
            ck.check(!tools.is_empty(), || {
                "the `id` run (./tool) is not recorded".to_string()
            });
            for p in &tools {
                for f in ["programdigest", "exedigest"] {
                    ck.check(p[f]["sha256"] != sha_true.as_str(), || {
                        format!("`id` attested with /usr/bin/true's digest in {f}: {p}")
                    });
                }
            }
        }
    }

    // (b) A program that re-points the symlink it was run through at a
    // root-only file.
    let base2 = w.workdir(m);
    let b2 = base2.path().display().to_string();
    let src = base2.path().join("swapself.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(int c, char **v) { if (c < 3) return 2; unlink(v[2]); return symlink(v[1], v[2]) ? 1 : 0; }\n",
    )
    .unwrap();
    sh(&format!("cc -O1 -o {b2}/prog {b2}/swapself.c"));
    chown_r(m, base2.path());
    let secret = ro.secret_txt.display().to_string();
    let body2 = format!(
        "for i in 1 2 3 4 5 6 7 8; do ln -sfn {b2}/prog {b2}/link; {b2}/link {secret} {b2}/link; done\n"
    );
    let out2 = base2.path().join("race.att.json");
    let r2 = w.user_step_full(m, "execrace", base2.path(), &out2, "", "", &[], &body2, T60);
    let text2 = r2.all_text();
    ck.check(!text2.contains(&ro.sha_secret), || {
        "exec race: the digest of the root-only file is in the envelope".to_string()
    });
    match r2.statement() {
        None => ck.fail(format!("exec race: no envelope: {}", r2.ran.text())),
        Some(stmt) => {
            let procs = processes(&stmt);
            ck.check(
                procs
                    .iter()
                    .any(|p| p["cmdline"].as_str().is_some_and(|c| c.contains("/link "))),
                || "exec race: the runs of ./link are not recorded".to_string(),
            );
            for p in &procs {
                let execs: Vec<&str> = p["execs"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                ck.check(
                    p["program"] != secret.as_str() && !execs.contains(&secret.as_str()),
                    || format!("exec race: a process attested as running the root-only file: {p}"),
                );
            }
        }
    }
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #7 130 step ends hung on a FIFO GITHUB_OUTPUT.

#[test]
fn a07_hung_ends_do_not_lock_out_root_or_other_users() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let base = w.workdir(m);
    let fifo = base.path().join("fifo");
    sh(&format!("mkfifo '{}'", fifo.display()));
    std::os::unix::fs::chown(&fifo, Some(m.uid), Some(m.gid)).unwrap();
    let script = r#"
wd = sys.argv[1]
counts = {}; timeouts = 0
for i in range(130):
    r = req({"request": "begin-step", "step": "hang%d" % i, "pid": os.getpid(), "workdir": wd,
             "attestations": ["github-action"]}, 3)
    k = kind(r); counts[k] = counts.get(k, 0) + 1
    if k == "timeout":
        timeouts += 1
        if timeouts >= 3: break
        continue
    timeouts = 0
    if k == "begun":
        try:
            s = conn(3); send(s, {"request": "end-step", "step": "hang%d" % i}); time.sleep(0.05); s.close()
        except Exception:
            pass
print("COUNTS", json.dumps(counts), flush=True)
"#;
    let mut c = py_as(m, &w, script, &[base.path().to_str().unwrap()]);
    c.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_ACTION_REPOSITORY", "a/b")
        .env("GITHUB_ACTION_REF", "v1")
        .env("GITHUB_OUTPUT", &fifo);
    let r = run_timeout(c, Duration::from_secs(120));
    eprintln!("hang flood: {}", r.text());
    // While the ends hang: root and bob are served.
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || {
        format!("root's status while ends hang: {st:?}")
    });
    let rr = w.root_round_trip("rootstep", T20);
    ck.check(rr.is_ok(), || format!("{rr:?}"));
    let br = w.user_round_trip(&w.bob, "bobstep", T20);
    ck.check(br.is_ok(), || format!("{br:?}"));
    let _release = FifoRelease::start(&fifo);
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || {
        format!("root's status after the FIFO was released: {st:?}")
    });
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #8 connection starvation: idle and keep-alive connections of one user.

#[test]
fn a08_connection_flood_does_not_starve_root() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let script = r#"
idle, keep, errs = [], [], 0
def many(n, into):
    global errs
    t = 0
    for i in range(n):
        try:
            into.append(conn(2)); t = 0
        except Exception:
            errs += 1; t += 1
            if t >= 5: break
many(200, idle)
many(128, keep)
print("READY", len(idle), len(keep), errs, flush=True)
end = time.time() + 45
while time.time() < end and keep:
    for s in list(keep):
        try:
            send(s, {"request": "status"}); recv(s)
        except Exception:
            keep.remove(s)
    time.sleep(1)
print("DONE", flush=True)
"#;
    let (mut child, lines) = w.spawn_lines(py_as(m, &w, script, &[]));
    let ready = lines
        .recv_timeout(T60)
        .unwrap_or_else(|_| "no READY within 60 s".into());
    eprintln!("flood: {ready}");
    let t0 = Instant::now();
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || {
        format!("root's status during the flood: {st:?}")
    });
    let rr = w.root_round_trip("rootflood", T20);
    ck.check(rr.is_ok(), || format!("during the flood: {rr:?}"));
    eprintln!("root served in {:?}", t0.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || {
        format!("root's status after the flood: {st:?}")
    });
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #9 step flood: a per-user cap, no leaked fds or cgroups.

#[test]
fn a09_step_flood_hits_a_per_user_cap_and_leaks_nothing() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    // Warm-up, then the baseline.
    let _ = w.user_round_trip(m, "warm", T60);
    std::thread::sleep(Duration::from_millis(500));
    let fd0 = w.fds();
    let cg0 = w.cgroups().len();
    let base = w.workdir(m);
    let script = r#"
wd = sys.argv[1]
ok = 0; first = None
for i in range(1100):
    r = req({"request": "begin-step", "step": "flood%d" % i, "pid": os.getpid(), "workdir": wd}, 10)
    if kind(r) == "begun": ok += 1
    else:
        first = r; break
print("FIRST", ok, json.dumps(first), flush=True)
sys.stdin.readline()
fails = {}
for i in range(1500):
    r = req({"request": "begin-step", "step": "more%d" % i, "pid": os.getpid(), "workdir": wd}, 10)
    k = kind(r); fails[k] = fails.get(k, 0) + 1
print("MORE", json.dumps(fails), flush=True)
end = time.time() + 90
ended = 0
for i in range(ok):
    if time.time() > end: break
    r = req({"request": "end-step", "step": "flood%d" % i}, 30)
    if kind(r) == "ended": ended += 1
print("ENDED", ended, flush=True)
"#;
    let mut c = py_as(m, &w, script, &[base.path().to_str().unwrap()]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = c.spawn().unwrap();
    let pg = child.id() as i32;
    let mut stdin = child.stdin.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let so = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(so).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    struct KillPg(i32);
    impl Drop for KillPg {
        fn drop(&mut self) {
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
    let _kill = KillPg(pg);
    let first = lines.recv_timeout(T120).unwrap_or_default();
    eprintln!("flood: {first}");
    let mut parts = first
        .strip_prefix("FIRST ")
        .unwrap_or("0 null")
        .splitn(2, ' ');
    let ok: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let reply: Value = serde_json::from_str(parts.next().unwrap_or("null")).unwrap_or(Value::Null);
    ck.check(kind(&reply) == "too-many", || {
        format!("after {ok} steps the user's begin failed with {reply} instead of a too-many error")
    });
    ck.check((1..1024).contains(&ok), || {
        format!("the user began {ok} steps")
    });
    // Root and another user still begin (and end).
    let rr = w.root_round_trip("rootjob", T20);
    ck.check(rr.is_ok(), || {
        format!("root while the user is at its cap: {rr:?}")
    });
    let br = w.user_round_trip(&w.bob, "bobjob", T20);
    ck.check(br.is_ok(), || {
        format!("bob while mallory is at its cap: {br:?}")
    });
    // 1 500 more failed begins, then the user ends its steps.
    use std::io::Write;
    let _ = stdin.write_all(b"go\n");
    let more = lines.recv_timeout(T120).unwrap_or_default();
    eprintln!("flood: {more}");
    let ended = lines.recv_timeout(T120).unwrap_or_default();
    eprintln!("flood: {ended}");
    let _ = child.wait();
    // Back near the start: fds and cgroups (the daemon may take a moment).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut fds, mut cgs) = (w.fds(), w.cgroups().len());
    while (fds > fd0 + 16 || cgs > cg0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        fds = w.fds();
        cgs = w.cgroups().len();
    }
    ck.check(fds <= fd0 + 16, || {
        format!("daemon fds: {fd0} before the flood, {fds} after it")
    });
    ck.check(cgs <= cg0, || {
        format!(
            "cgroups under the daemon's parent: {cg0} before, {cgs} after ({:?}...)",
            w.cgroups().iter().take(3).collect::<Vec<_>>()
        )
    });
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || {
        format!("root's status after the flood: {st:?}")
    });
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #10 memory: big frames, a sparse GITHUB_OUTPUT, gitoid over a sparse file.

const MAX_HWM_KB: u64 = 600 * 1024;

fn reset_hwm(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[test]
fn a10_daemon_memory_stays_bounded() {
    let mut w = World::new("");
    let mut ck = Checks::default();
    let m = &w.mallory;
    let pid = w.pid;

    // (a) 8 connections announce 250 MiB frames and send all but one byte.
    reset_hwm(pid);
    let script = r#"
N = 250 << 20
socks, kinds = [], []
chunk = b"\0" * (1 << 20)
for i in range(8):
    try:
        s = conn(10); s.sendall(struct.pack(">I", N)); sent = 4
        try:
            left = N - 1
            while left > 0:
                k = min(len(chunk), left); s.sendall(chunk[:k]); left -= k
        except OSError:
            pass
        socks.append(s)
    except Exception as e:
        kinds.append("connect:%s" % e)
time.sleep(3)
for s in socks:
    try:
        s.settimeout(1); kinds.append(kind(recv(s)))
    except Exception as e:
        kinds.append("err")
print("FRAMES", json.dumps(kinds), flush=True)
"#;
    let r = run_timeout(py_as(m, &w, script, &[]), T120);
    eprintln!("frames: {}", r.text());
    let hwm = proc_status_kb(pid, "VmHWM");
    ck.check(hwm < MAX_HWM_KB, || {
        format!("8 × 250 MiB frames: daemon VmHWM {} MiB", hwm / 1024)
    });

    // (b) GITHUB_OUTPUT is a 2 GiB sparse file.
    reset_hwm(pid);
    let wd = w.workdir(m);
    let big = wd.path().join("big.out");
    sh(&format!("truncate -s 2G '{}'", big.display()));
    std::os::unix::fs::chown(&big, Some(m.uid), Some(m.gid)).unwrap();
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_ACTION_REPOSITORY", "a/b"),
        ("GITHUB_ACTION_REF", "v1"),
        ("GITHUB_OUTPUT", big.to_str().unwrap()),
    ];
    let wd_empty = w.workdir(m);
    let r = w.user_step(
        m,
        "bigout",
        wd_empty.path(),
        "-a github-action",
        &env,
        "true",
        T120,
    );
    eprintln!("bigout: {}", r.ran.text());
    let hwm = proc_status_kb(pid, "VmHWM");
    ck.check(hwm < MAX_HWM_KB, || {
        format!(
            "2 GiB sparse GITHUB_OUTPUT: daemon VmHWM {} MiB",
            hwm / 1024
        )
    });
    drop(wd);

    // (c) gitoid:sha256 over a 1 GiB sparse file in the workdir.
    reset_hwm(pid);
    let wd = w.workdir(m);
    sh(&format!(
        "truncate -s 1G '{}/sparse.bin'",
        wd.path().display()
    ));
    chown_r(m, wd.path());
    let out = tempdir();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = w.user_step_full(
        m,
        "gitoid",
        wd.path(),
        &out.path().join("gitoid.json"),
        "",
        "--hashes gitoid:sha256",
        &[],
        "true",
        T120,
    );
    eprintln!("gitoid: {}", r.ran.text());
    let hwm = proc_status_kb(pid, "VmHWM");
    ck.check(hwm < MAX_HWM_KB, || {
        format!(
            "gitoid over a 1 GiB sparse file: daemon VmHWM {} MiB",
            hwm / 1024
        )
    });
    ck.check(w.alive(), || "the daemon died".into());
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || format!("root's status: {st:?}"));
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #11 a 20 GiB sparse file opened in the step, with a hashing size cap.

#[test]
fn a11_huge_sparse_opened_file_is_not_hashed() {
    let w = World::new("max_hash_file_size = 1073741824");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let base = w.workdir(m);
    let ws = base.path().join("ws");
    mkdir_owned(m, &ws);
    let huge = base.path().join("huge.bin");
    sh(&format!("truncate -s 20G '{}'", huge.display()));
    std::os::unix::fs::chown(&huge, Some(m.uid), Some(m.gid)).unwrap();
    let h = huge.display().to_string();
    let out = base.path().join("huge.att.json");
    let t0 = Instant::now();
    let r = w.user_step_full(
        m,
        "huge",
        &ws,
        &out,
        "",
        "",
        &[],
        &format!("head -c1 {h} > /dev/null"),
        T120,
    );
    eprintln!("end after {:?}", t0.elapsed());
    match r.statement() {
        None => ck.fail(format!("no envelope: {}", r.ran.text())),
        Some(stmt) => {
            let procs = processes(&stmt);
            let with: Vec<&Value> = procs
                .iter()
                .filter(|p| p["openedfiles"].get(&h).is_some())
                .collect();
            ck.check(!with.is_empty(), || {
                format!("the open of {h} is not recorded")
            });
            for p in with {
                ck.check(
                    p["openedfiles"][&h]
                        .as_object()
                        .is_some_and(|o| o.is_empty()),
                    || format!("{h} has a digest: {}", p["openedfiles"][&h]),
                );
                ck.check(
                    p["unhashedOpens"]
                        .as_array()
                        .is_some_and(|u| u.iter().any(|x| x["path"] == h.as_str())),
                    || format!("{h} has no unhashedOpens reason: {}", p["unhashedOpens"]),
                );
            }
        }
    }
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #12 digest oracle: O_PATH opens; write-open in a private mount namespace.

#[test]
fn a12_no_digest_of_files_the_job_cannot_read() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let ro = RootOnly::create();
    let key = w.key_path().display().to_string();
    let sha_shadow = sha256sum("/etc/shadow").unwrap();
    let sha_key = sha256sum(&key).unwrap();

    let wd = w.workdir(m);
    let body = format!(
        "python3 -c 'import os, sys\nfor p in sys.argv[1:]: os.close(os.open(p, os.O_PATH))' /etc/shadow {key}\n"
    );
    let r = w.user_step(m, "opath", wd.path(), "", &[], &body, T60);
    let text = r.all_text();
    for (what, d) in [("/etc/shadow", &sha_shadow), ("the signing key", &sha_key)] {
        ck.check(!text.contains(d.as_str()), || {
            format!("O_PATH: the digest of {what} is in the envelope")
        });
    }
    match r.statement() {
        None => ck.fail(format!("O_PATH: no envelope: {}", r.ran.text())),
        Some(stmt) => {
            let procs = processes(&stmt);
            for path in ["/etc/shadow", key.as_str()] {
                let with: Vec<&Value> = procs
                    .iter()
                    .filter(|p| p["openedfiles"].get(path).is_some())
                    .collect();
                ck.check(!with.is_empty(), || {
                    format!("O_PATH open of {path} not recorded")
                });
                for p in with {
                    ck.check(
                        p["openedfiles"][path]
                            .as_object()
                            .is_some_and(|o| o.is_empty()),
                        || {
                            format!(
                                "O_PATH open of {path} has a digest: {}",
                                p["openedfiles"][path]
                            )
                        },
                    );
                    ck.check(
                        p["unhashedOpens"]
                            .as_array()
                            .is_some_and(|u| u.iter().any(|x| x["path"] == path)),
                        || format!("O_PATH open of {path}: no unhashedOpens reason"),
                    );
                }
            }
        }
    }

    // A write-open of the root-only file's path in a private mount
    // namespace where a tmpfs hides the root-only directory.
    let wd2 = w.workdir(m);
    let rod = ro.dir.path().display().to_string();
    let body2 = format!(
        "unshare -Urm sh -c 'mount -t tmpfs none {rod} && echo hi > {s}' || exit 9\n",
        s = ro.secret_txt.display()
    );
    let r2 = w.user_step(m, "mntns", wd2.path(), "", &[], &body2, T60);
    ck.check(r2.envelope().is_some(), || {
        format!("mount namespace: no envelope: {}", r2.ran.text())
    });
    let text2 = r2.all_text();
    ck.check(!text2.contains(&ro.sha_secret), || {
        "mount namespace: the digest of the host's root-only file is in the envelope".to_string()
    });
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #13 PID reuse between begin's owner check and the move into the step.

fn spawn_root_at_pid(want: u32) -> Option<std::process::Child> {
    for _ in 0..50 {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", want - 1));
        let mut c = Command::new("sleep");
        c.arg0("rootvictim")
            .arg("300")
            .stdin(std::process::Stdio::null())
            .process_group(0);
        let mut child = c.spawn().ok()?;
        if child.id() == want {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

#[test]
fn a13_pid_reuse_cannot_pull_a_root_process_into_a_step() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let base = w.workdir(m);
    // A slow material walk stretches begin (a 600-deep chain).
    let mut deep = base.path().join("slow");
    for _ in 0..600 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    chown_r(m, base.path());
    let mut vc = m.command("sleep");
    vc.arg("300");
    let mut victim = w.spawn_bg(vc);
    let p = victim.id();
    let sock = w.socket.clone();
    let cil = shared_cilock();
    let (muid, mgid) = (m.uid, m.gid);
    let wdp = base.path().to_path_buf();
    let begin = std::thread::spawn(move || {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={muid}"))
            .arg(format!("--regid={mgid}"))
            .arg("--init-groups")
            .arg(&cil)
            .args([
                "step",
                "begin",
                "--step",
                "pidrace",
                "--pid",
                &p.to_string(),
                "--workdir",
            ])
            .arg(&wdp)
            .env("CILOCK_SOCKET", &sock)
            .process_group(0);
        run_timeout(c, T120)
    });
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(p as i32, libc::SIGKILL) };
    let _ = victim.wait();
    let mut root = spawn_root_at_pid(p).expect("could not get a root process at the reused pid");
    let b = begin.join().unwrap();
    eprintln!("begin: {}", b.text());
    let parent_name = w.parent.file_name().unwrap().to_string_lossy().into_owned();
    let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
    ck.check(!cg.contains(&parent_name), || {
        format!("the root process with the reused pid {p} is in a step: {cg}")
    });
    let out = base.path().join("pidrace.att.json");
    let mut c = m.command(shared_cilock().to_str().unwrap());
    c.args(["step", "end", "--step", "pidrace", "--kill", "-o"])
        .arg(&out)
        .env("CILOCK_SOCKET", &w.socket);
    let e = run_timeout(c, T60);
    eprintln!("end: {}", e.text());
    ck.check(matches!(root.try_wait(), Ok(None)), || {
        "the root process was killed by the user's `step end --kill`".to_string()
    });
    if out.exists() {
        let stmt = statement(&out);
        ck.check(
            !processes(&stmt).iter().any(|x| {
                x["cmdline"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("rootvictim"))
            }),
            || "the root process is recorded in the user's step".to_string(),
        );
    }
    let _ = root.kill();
    let _ = root.wait();
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #14 step names are per user.

#[test]
fn a14_a_users_step_name_does_not_block_root_or_others() {
    let w = World::new("");
    let (m, b) = (&w.mallory, &w.bob);
    let mut ck = Checks::default();
    let begin_as = |u: &User, wd: &Path| {
        let pid = w.user_sleeper(u);
        let mut c = u.command(shared_cilock().to_str().unwrap());
        c.args([
            "step",
            "begin",
            "--step",
            "build",
            "--pid",
            &pid.to_string(),
            "--workdir",
        ])
        .arg(wd)
        .env("CILOCK_SOCKET", &w.socket);
        run_timeout(c, T20)
    };
    let end_as = |u: &User, out: &Path| {
        let mut c = u.command(shared_cilock().to_str().unwrap());
        c.args(["step", "end", "--step", "build", "--kill", "-o"])
            .arg(out)
            .env("CILOCK_SOCKET", &w.socket);
        run_timeout(c, T20)
    };
    let (wm, wb, wr) = (w.workdir(m), w.workdir(b), tempdir());
    let r = begin_as(m, wm.path());
    ck.check(r.ok(), || format!("mallory's begin of build: {}", r.text()));
    let r = w.root_begin("build", wr.path(), T20);
    ck.check(r.ok(), || {
        format!("root's begin of build after mallory's: {}", r.text())
    });
    let r = begin_as(b, wb.path());
    ck.check(r.ok(), || {
        format!("bob's begin of build after mallory's: {}", r.text())
    });
    let r = end_as(m, &wm.path().join("m.json"));
    ck.check(r.ok(), || format!("mallory's end of build: {}", r.text()));
    let r = w.root_end("build", &wr.path().join("r.json"), T20);
    ck.check(r.ok(), || format!("root's end of its build: {}", r.text()));
    let r = end_as(b, &wb.path().join("b.json"));
    ck.check(r.ok(), || format!("bob's end of its build: {}", r.text()));
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #15 environment attestor: what CI secrets look like in practice.

#[test]
fn a15_environment_secrets_are_not_recorded_in_clear() {
    let w = World::new("");
    let m = &w.mallory;
    let mut ck = Checks::default();
    let t = |p: &str| token(p);
    let db = t("DbPassw0rd");
    let vars: Vec<(String, String, String)> = vec![
        // (name, value, the secret part that must not appear)
        (
            "DATABASE_URL".into(),
            format!("postgres://app:{db}@db.internal:5432/app"),
            db.clone(),
        ),
        {
            let v = format!("ghp_{}", t("lowercase"));
            ("github_token".into(), v.clone(), v)
        },
        {
            let v = format!("-----BEGIN PRIVATE KEY-----{}", t("pk"));
            ("PRIVATE_KEY".into(), v.clone(), v)
        },
        {
            let v = t("sshpass");
            ("SSH_PASS".into(), v.clone(), v)
        },
        {
            let v = t("creds");
            ("MY_CREDENTIALS".into(), v.clone(), v)
        },
        {
            let a = t("dockerauth");
            (
                "DOCKER_AUTH_CONFIG".into(),
                format!("{{\"auths\":{{\"r.example\":{{\"auth\":\"{a}\"}}}}}}"),
                a,
            )
        },
        {
            let v = t("npmauth");
            ("NPM_CONFIG__AUTH".into(), v.clone(), v)
        },
        {
            let v = t("artkey");
            ("ARTIFACTORY_APIKEY".into(), v.clone(), v)
        },
        {
            let v = t("kubedata");
            ("KUBECONFIG_DATA".into(), v.clone(), v)
        },
        {
            let v = format!("ghs_{}", t("gh"));
            ("GITHUB_TOKEN".into(), v.clone(), v)
        },
    ];
    let plain = t("plainvalue");
    let mut env: Vec<(&str, &str)> = vars
        .iter()
        .map(|(k, v, _)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("CILOCK_PLAIN", plain.as_str()));
    let wd = w.workdir(m);
    let r = w.user_step(m, "envt", wd.path(), "-a environment", &env, "true", T60);
    match r.statement() {
        None => ck.fail(format!("no envelope: {}", r.ran.text())),
        Some(stmt) => {
            let text = envelope_text(&r.out);
            ck.check(
                find_attestation(&stmt, "/environment/v0.1").is_some(),
                || "no environment attestation".into(),
            );
            ck.check(text.contains(&plain), || {
                "control: a plain variable is not recorded".into()
            });
            for (k, _, secret) in &vars {
                ck.check(!text.contains(secret.as_str()), || {
                    format!("{k}'s secret value is recorded in clear")
                });
            }
        }
    }
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// #16-#25: the results that were already safe stay safe.

#[test]
fn a16_25_safe_results_stay_safe() {
    let mut w = World::new("");
    let mut ck = Checks::default();
    let (m, b, e) = (&w.mallory, &w.bob, &w.eve);

    // #16 an outsider cannot connect.
    let r = run_timeout(
        py_as(
            e,
            &w,
            "print('EVE', json.dumps(req({'request': 'status'}, 5)), flush=True)",
            &[],
        ),
        T20,
    );
    let eve: Value =
        serde_json::from_str(line_after(&r.stdout, "EVE").unwrap_or("{}")).unwrap_or(json!({}));
    ck.check(
        eve["errno"] == libc::EACCES || kind(&eve) == "forbidden",
        || format!("eve (not in the group) got {eve} ({})", r.text()),
    );

    // #17-#19 malformed frames, bad names, other users' pids and steps.
    let rootpid = w.root_sleeper();
    let bobpid = w.user_sleeper(b);
    let wr = tempdir();
    let rb = w.root_begin("rootowned", wr.path(), T20);
    ck.check(rb.ok(), || format!("root's begin: {}", rb.text()));
    let wd = w.workdir(m);
    let script = r#"
rootpid, bobpid, wd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def raw(prefix_len, body, t=10):
    try:
        s = conn(t); s.sendall(struct.pack(">I", prefix_len) + body); r = recv(s); s.close(); return r
    except Exception as e:
        return {"reply": "exc", "e": str(e)}
out = {}
out["garbage"] = kind(raw(9, b"{not json"))
out["unknown"] = kind(req({"request": "shell"}))
out["nesting"] = kind(raw(100000, b"[" * 100000))
out["len2g"] = kind(raw(1 << 31, b""))
out["len4g"] = kind(raw((1 << 32) - 1, b""))
for i, name in enumerate(["a\x00b", "../../x", "a" * 5000, "bad/name", ""]):
    out["name%d" % i] = kind(req({"request": "begin-step", "step": name, "pid": os.getpid(), "workdir": wd}))
out["rootpid"] = kind(req({"request": "begin-step", "step": "s1", "pid": rootpid, "workdir": wd}))
out["bobpid"] = kind(req({"request": "begin-step", "step": "s2", "pid": bobpid, "workdir": wd}))
out["pid1"] = kind(req({"request": "begin-step", "step": "s3", "pid": 1, "workdir": wd}))
out["rootwd"] = kind(req({"request": "begin-step", "step": "s4", "pid": os.getpid(), "workdir": "/root"}))
out["endroot"] = kind(req({"request": "end-step", "step": "rootowned", "kill": True}))
print("OUT", json.dumps(out), flush=True)
"#;
    let r = run_timeout(
        py_as(
            m,
            &w,
            script,
            &[
                &rootpid.to_string(),
                &bobpid.to_string(),
                wd.path().to_str().unwrap(),
            ],
        ),
        T60,
    );
    let out: Value =
        serde_json::from_str(line_after(&r.stdout, "OUT").unwrap_or("{}")).unwrap_or(json!({}));
    eprintln!("protocol abuse: {out}");
    for k in ["garbage", "unknown", "nesting", "len2g", "len4g"] {
        ck.check(out[k] == "bad-request", || {
            format!("frame {k}: {} ({})", out[k], r.text())
        });
    }
    for i in 0..5 {
        let k = format!("name{i}");
        ck.check(out[&k] == "bad-request", || {
            format!("step {k}: {}", out[&k])
        });
    }
    for k in ["rootpid", "bobpid", "pid1", "rootwd"] {
        ck.check(
            out[k] == "forbidden" || (k == "rootwd" && out[k] == "bad-request"),
            || format!("{k}: {}", out[k]),
        );
    }
    ck.check(
        out["endroot"] == "forbidden" || out["endroot"] == "not-found",
        || format!("mallory ending root's step: {}", out["endroot"]),
    );
    let re = w.root_end("rootowned", &wr.path().join("r.json"), T20);
    ck.check(re.ok(), || {
        format!("root's step after mallory's attempt: {}", re.text())
    });

    // #21 the daemon's /proc files, signals; #22 special files opened in
    // a step; #24 symlinks out of the workdir.
    let ro = RootOnly::create();
    let sha_shadow = sha256sum("/etc/shadow").unwrap();
    let wd3 = w.workdir(m);
    let w3 = wd3.path().display().to_string();
    std::os::unix::fs::symlink("/etc/shadow", wd3.path().join("l_shadow")).unwrap();
    std::os::unix::fs::symlink(ro.dir.path(), wd3.path().join("l_rootdir")).unwrap();
    std::os::unix::fs::symlink(&ro.secret_txt, wd3.path().join("l_secret")).unwrap();
    std::os::unix::fs::symlink(wd3.path().join("l_loop"), wd3.path().join("l_loop")).unwrap();
    chown_r(m, wd3.path());
    sh(&format!("chown -h {}:{} {w3}/l_*", m.uid, m.gid));
    let dp = w.pid;
    let body3 = format!(
        r#"for f in environ maps mem fd/0 stack syscall; do cat /proc/{dp}/$f >/dev/null 2>&1 && echo READ-{dp}-$f; done
kill -0 {dp} 2>/dev/null && echo SIGNALLED
head -c1 /dev/zero >/dev/null; cat /proc/self/status >/dev/null; ls /sys >/dev/null
"#
    );
    let out3 = tempdir();
    std::fs::set_permissions(out3.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out3f = out3.path().join("special.json");
    let r = w.user_step_full(m, "special2", wd3.path(), &out3f, "", "", &[], &body3, T60);
    ck.check(
        !r.ran.stdout.contains("READ-") && !r.ran.stdout.contains("SIGNALLED"),
        || {
            format!(
                "the job reached the daemon's /proc files or signalled it: {}",
                r.ran.stdout
            )
        },
    );
    let text = r.all_text();
    let mut forbidden = ro.forbidden();
    forbidden.push(sha_shadow.clone());
    forbidden.retain(|f| !f.starts_with("rootonly-")); // names: the links' targets may be listed
    let l = leaked(&text, &forbidden);
    ck.check(l.is_empty(), || {
        format!("symlinks out of the workdir: leaked {l:?}")
    });
    match r.statement() {
        None => ck.fail(format!("special files: no envelope: {}", r.ran.text())),
        Some(stmt) => {
            for p in processes(&stmt) {
                if let Some(d) = p["openedfiles"].get("/dev/zero") {
                    ck.check(d.as_object().is_some_and(|o| o.is_empty()), || {
                        format!("/dev/zero has a digest: {d}")
                    });
                }
            }
        }
    }

    // #20 leaving the step cgroup.
    let parent_rel = w
        .parent
        .strip_prefix(CGROUP_ROOT)
        .unwrap()
        .display()
        .to_string();
    let body = format!(
        r#"CG=$(sed -n 's/^0:://p' /proc/self/cgroup); echo "CG=$CG"
(echo $$ > {root}/cgroup.procs) 2>/dev/null && echo ESCAPED-ROOT
(echo $$ > {root}/{parent_rel}/cgroup.procs) 2>/dev/null && echo ESCAPED-PARENT
mkdir {root}$CG/sub 2>/dev/null && echo ESCAPED-MKDIR
echo "CG2=$(sed -n 's/^0:://p' /proc/self/cgroup)"
"#,
        root = CGROUP_ROOT
    );
    let wd2 = w.workdir(m);
    let r = w.user_step(m, "escape", wd2.path(), "", &[], &body, T60);
    let so = &r.ran.stdout;
    ck.check(!so.contains("ESCAPED"), || {
        format!("left the step cgroup: {so}")
    });
    let cg = line_after(so, "CG=").unwrap_or("");
    let cg2 = line_after(so, "CG2=").unwrap_or("-");
    ck.check(cg.contains(&parent_rel) && cg == cg2, || {
        format!(
            "the job's cgroup: before {cg:?}, after {cg2:?} ({})",
            r.ran.text()
        )
    });

    ck.check(w.alive(), || "the daemon died".into());
    ck.check(!w.log_text().contains("panicked"), || {
        "a panic in the daemon's log".into()
    });
    ck.finish(&w);
}

// ---------------------------------------------------------------------------
// After a battery of attacks: the daemon serves everyone and leaks nothing.

#[test]
fn z_after_a_battery_of_attacks_the_daemon_serves_all_and_leaks_nothing() {
    // Steps whose processes are gone are reaped after 2 s: whatever the
    // attacks leave behind must end, and their cgroups go.
    let mut w = World::new("step_idle_timeout = \"2s\"");
    let mut ck = Checks::default();
    let m = &w.mallory;
    // Warm-up: a few ordinary steps, then the baseline.
    for i in 0..3 {
        let r = w.user_round_trip(m, &format!("warm{i}"), T60);
        ck.check(r.is_ok(), || format!("warm-up: {r:?}"));
    }
    let r = w.root_round_trip("warmroot", T60);
    ck.check(r.is_ok(), || format!("warm-up: {r:?}"));
    // A burst of concurrent steps (the daemon's threads and arenas grow to
    // their working size).
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let w = &w;
                sc.spawn(move || w.user_round_trip(&w.bob, &format!("burst{i}"), T60))
            })
            .collect();
        for h in hs {
            let r = h.join().unwrap();
            ck.check(r.is_ok(), || format!("warm-up: {r:?}"));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let fd0 = w.fds();
    let rss0 = proc_status_kb(w.pid, "VmRSS");
    let cg0 = w.cgroups().len();
    eprintln!("baseline: {fd0} fds, {rss0} kB RSS, {cg0} cgroups");

    let ro = RootOnly::create();
    let base = w.workdir(m);
    let b = base.path().display().to_string();
    // #1 GITHUB_OUTPUT at a root-only file.
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_ACTION_REPOSITORY", "a/b"),
        ("GITHUB_ACTION_REF", "v1"),
        ("GITHUB_OUTPUT", ro.kv_env.to_str().unwrap()),
    ];
    let r = w.user_step(m, "b1", base.path(), "-a github-action", &env, "true", T60);
    ck.check(!r.all_text().contains(&ro.dbpass), || "#1 leaked".into());
    // #3 workdir swap.
    let ws = base.path().join("ws");
    mkdir_owned(m, &ws);
    let r = w.user_step_full(
        m,
        "b3",
        &ws,
        &base.path().join("b3.json"),
        "",
        "-a secretscan",
        &[],
        &format!(
            "cd /; mv {b}/ws {b}/ws.orig && ln -s {} {b}/ws",
            ro.dir.path().display()
        ),
        T60,
    );
    let forbidden = ro.forbidden();
    let l = leaked(&r.all_text(), &forbidden);
    ck.check(l.is_empty(), || format!("#3 leaked {l:?}"));
    // #12 O_PATH of the key.
    let key = w.key_path().display().to_string();
    let sha_key = sha256sum(&key).unwrap();
    let wd = w.workdir(m);
    let r = w.user_step(
        m,
        "b12",
        wd.path(),
        "",
        &[],
        &format!("python3 -c 'import os; os.close(os.open(\"{key}\", os.O_PATH))'"),
        T60,
    );
    ck.check(!r.all_text().contains(&sha_key), || {
        "#12 leaked the key's digest".into()
    });
    // #2 deep input, #8 idle connections, #9 steps up to the cap (then
    // ended), #7 ends hung on a FIFO (40 of them): all from one script.
    let fifo = base.path().join("fifo");
    sh(&format!("mkfifo '{}'", fifo.display()));
    std::os::unix::fs::chown(&fifo, Some(m.uid), Some(m.gid)).unwrap();
    let script = r#"
wd = sys.argv[1]
summary = {}
r = req({"request": "begin-step", "step": "deep", "pid": os.getpid(), "workdir": wd,
         "attestations": ["secretscan"], "options": {"secretscan": {"max_decode_layers": 100000}}}, 10)
summary["deep-begin"] = kind(r)
if kind(r) == "begun":
    summary["deep-end"] = kind(req({"request": "end-step", "step": "deep", "stdout": "x=%" + "25" * 3000 + "41"}, 60))
idle = []
for i in range(100):
    try: idle.append(conn(2))
    except Exception: break
summary["idle"] = len(idle)
began = []
for i in range(300):
    r = req({"request": "begin-step", "step": "fl%d" % i, "pid": os.getpid(), "workdir": wd}, 5)
    if kind(r) != "begun": summary["flood-stop"] = kind(r); break
    began.append("fl%d" % i)
for s in idle: s.close()
for n in began: req({"request": "end-step", "step": n}, 30)
summary["flood"] = len(began)
for i in range(40):
    r = req({"request": "begin-step", "step": "hang%d" % i, "pid": os.getpid(), "workdir": wd,
             "attestations": ["github-action"]}, 3)
    if kind(r) != "begun": summary["hang-stop"] = kind(r); break
    try:
        s = conn(3); send(s, {"request": "end-step", "step": "hang%d" % i}); time.sleep(0.02); s.close()
    except Exception: pass
print("SUMMARY", json.dumps(summary), flush=True)
"#;
    let mut c = py_as(m, &w, script, &[&b]);
    c.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_ACTION_REPOSITORY", "a/b")
        .env("GITHUB_ACTION_REF", "v1")
        .env("GITHUB_OUTPUT", &fifo);
    let r = run_timeout(c, T120);
    eprintln!("battery: {}", r.text());
    // During: root and bob are served.
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || {
        format!("root's status during the battery: {st:?}")
    });
    let _release = FifoRelease::start(&fifo);

    // After: everyone is served, nothing leaked.
    let st = root_status(&w, T20);
    ck.check(st.is_ok(), || {
        format!("root's status after the battery: {st:?}")
    });
    let r = w.root_round_trip("afterroot", T60);
    ck.check(r.is_ok(), || format!("after the battery: {r:?}"));
    let r = w.user_round_trip(&w.bob, "afterbob", T60);
    ck.check(r.is_ok(), || format!("after the battery: {r:?}"));
    let r = w.user_round_trip(&w.mallory, "aftermallory", T60);
    ck.check(r.is_ok(), || format!("after the battery: {r:?}"));
    // The hung steps end once their FIFO is released (or are ended by
    // the daemon); give it a bounded time, then compare with the baseline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let measure = |w: &World| {
        (
            w.fds(),
            proc_status_kb(w.pid, "VmRSS"),
            w.cgroups().len(),
            root_status(w, T20)
                .map(|s| s["steps"].as_array().map(Vec::len).unwrap_or(0))
                .unwrap_or(usize::MAX),
        )
    };
    let mut now = measure(&w);
    while (now.0 > fd0 + 16 || now.1 > 2 * rss0 || now.2 > cg0 || now.3 > 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(500));
        now = measure(&w);
    }
    let (fds, rss, cgs, steps) = now;
    eprintln!("after: {fds} fds, {rss} kB RSS, {cgs} cgroups, {steps} steps");
    ck.check(steps == 0, || {
        format!("{steps} steps still active after the battery")
    });
    ck.check(cgs <= cg0, || {
        format!(
            "{cgs} cgroups under the daemon's parent (baseline {cg0}): {:?}",
            w.cgroups().iter().take(5).collect::<Vec<_>>()
        )
    });
    ck.check(fds <= fd0 + 16, || {
        format!("daemon fds {fds} (baseline {fd0})")
    });
    ck.check(rss <= 2 * rss0, || {
        format!("daemon RSS {rss} kB (baseline {rss0} kB)")
    });
    ck.check(w.alive(), || "the daemon died".into());
    ck.finish(&w);
}
