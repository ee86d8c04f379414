//! Written files (issue #12 items 2 and 5, defects D2, D3, D4): a file a
//! step process wrote gets the digest of what that process left, never of
//! what sits at the path when the step ends; reopening a renamed file (or a
//! file in a renamed directory) is recorded under the new name too. One
//! daemon per backend, one step with every scenario, plus one step whose
//! file an outsider rewrites in place before `step end`.

use std::io::Write;
use std::path::Path;

use cilock_testkit::podman::{mount_namespace, parse_ns};
use cilock_testkit::step::*;
use cilock_testkit::*;
use serde_json::Value;

/// [`run_step_with`], returning the command-run attestation.
fn step_with(d: &Daemon, name: &str, dir: &Path, script: &str, before_end: impl FnOnce()) -> Value {
    command_run(&run_step_with(d, name, dir, script, before_end))
}

/// The reason a path of `p` has no digest ("" when it has one).
fn reason(p: &Value, path: &str) -> String {
    p["unhashedOpens"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["path"] == path))
        .map(|u| u["reason"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The one Python process whose command line contains `tag`.
fn the<'a>(procs: &'a [Value], tag: &str, cr: &Value) -> &'a Value {
    let v: Vec<&Value> = procs
        .iter()
        .filter(|p| {
            p["cmdline"]
                .as_str()
                .is_some_and(|c| c.starts_with(python()) && c.contains(tag))
        })
        .collect();
    assert_eq!(
        v.len(),
        1,
        "processes with {tag:?}: {}",
        serde_json::to_string_pretty(cr).unwrap()
    );
    v[0]
}

fn sha_of(content: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(content.as_bytes()))
}

fn written(backend: &str) {
    let d = Daemon::start(backend);
    let w = tempdir();
    let dir = w.path();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    std::fs::write(dir.join("benign.src"), "benign replacement\n").unwrap();
    std::fs::create_dir(dir.join("mnt")).unwrap();
    std::fs::write(dir.join("mnt/shadow.txt"), "HOST-SHADOWED\n").unwrap();
    std::fs::write(dir.join("ren-a.txt"), "renamed file\n").unwrap();
    std::fs::create_dir(dir.join("d1")).unwrap();
    std::fs::write(dir.join("d1/f.txt"), "in a renamed directory\n").unwrap();
    // The namespace's ground truth goes outside the workdir (not a product).
    let truth = tempdir();
    let ns_txt = truth.path().join("ns.txt");
    let py = python();
    let script = format!(
        "set -e\n\
         # D3: written, then another file renamed over it.\n\
         {py} -c 'open(\"out.bin\",\"w\").write(\"EVIL build output\\n\")' d3-writer\n\
         cp benign.src out.bin.tmp && mv out.bin.tmp out.bin\n\
         # D4: written in a private mount namespace over a host file.\n\
         unshare -m sh -c 'readlink /proc/self/ns/mnt > {ns} && mount -t tmpfs x {mnt} && {py} -c \"open(\\\"{mnt}/shadow.txt\\\",\\\"w\\\").write(\\\"NS-CONTENT\\\\n\\\")\" d4-writer'\n\
         # Closed, then rewritten in place by another step process.\n\
         {py} -c 'open(\"inplace.txt\",\"w\").write(\"GOOD\\n\")' first-writer\n\
         {py} -c 'f=open(\"inplace.txt\",\"r+\"); f.write(\"BAD!\\n\")' second-writer\n\
         # What the process left, unchanged: the digest.\n\
         {py} -c 'open(\"good.txt\",\"w\").write(\"good output\\n\")' good-writer\n\
         # Left open at exit (no close call), and closed by close-on-exec at an exec.\n\
         {py} -c 'import os; fd=os.open(\"exit.txt\",os.O_WRONLY|os.O_CREAT|os.O_TRUNC); os.write(fd,b\"left at exit\\n\"); os._exit(0)' exit-writer\n\
         {py} -c 'import os; fd=os.open(\"exec.txt\",os.O_WRONLY|os.O_CREAT|os.O_TRUNC|os.O_CLOEXEC); os.write(fd,b\"then exec\\n\"); os.execv(\"/bin/true\",[\"true\"])' exec-writer\n\
         # A shell builtin and an external command writing through a redirection.\n\
         echo builtin-output > builtin.txt\n\
         cat benign.src > catout.txt\n\
         # D2: rename, then reopen under the new name; a directory renamed likewise.\n\
         {py} -c 'import os\nopen(\"ren-a.txt\").read(); os.rename(\"ren-a.txt\",\"ren-b.txt\"); open(\"ren-b.txt\").read()\nopen(\"d1/f.txt\").read(); os.rename(\"d1\",\"d2\"); open(\"d2/f.txt\").read()' d2-renamer\n",
        mnt = p("mnt"),
        ns = ns_txt.display(),
    );
    let cr = step_with(&d, "written", dir, &script, || {});
    let procs = processes(&cr);
    let text = cr.to_string();

    // D3: the Python process wrote EVIL; the benign file now there is not
    // what it wrote.
    let out_bin = p("out.bin");
    assert_eq!(
        std::fs::read_to_string(&out_bin).unwrap(),
        "benign replacement\n"
    );
    let w3 = the(&procs, "d3-writer", &cr);
    assert_eq!(w3["openedfiles"][&out_bin], serde_json::json!({}), "{w3}");
    let why = reason(w3, &out_bin);
    assert!(why.contains("another file"), "D3 reason: {why:?}");

    // D4: the namespace's file is not the host's.
    let shadow = p("mnt/shadow.txt");
    assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "HOST-SHADOWED\n");
    let w4 = the(&procs, "d4-writer", &cr);
    assert_eq!(w4["openedfiles"][&shadow], serde_json::json!({}), "{w4}");
    let why = reason(w4, &shadow);
    // Written in another mount namespace: never hashed at the daemon's
    // path, the reason names the namespace (issue #15).
    // Ground truth: the namespace as the shell in it read it.
    let ns = parse_ns(&std::fs::read_to_string(&ns_txt).unwrap())
        .expect("ns.txt: a mount namespace link");
    assert_ne!(
        ns,
        mount_namespace(std::process::id()),
        "unshare -m made no new namespace"
    );
    assert_eq!(w4["mountNamespace"], ns, "{w4}");
    assert!(
        why.starts_with(&format!("opened in another mount namespace (mnt:[{ns}])")),
        "D4 reason: {why:?}"
    );
    assert!(
        !text.contains(&sha_of("HOST-SHADOWED\n")),
        "the host file's digest is attested"
    );

    // Rewritten in place by another step process after the first closed
    // it: the first writer gets no digest, the second gets what it left.
    let inplace = p("inplace.txt");
    assert_eq!(std::fs::read_to_string(&inplace).unwrap(), "BAD!\n");
    let first = the(&procs, "first-writer", &cr);
    assert_eq!(
        first["openedfiles"][&inplace],
        serde_json::json!({}),
        "{first}"
    );
    let why = reason(first, &inplace);
    assert!(why.contains("modified after"), "in-place reason: {why:?}");
    let second = the(&procs, "second-writer", &cr);
    assert_eq!(
        second["openedfiles"][&inplace]["sha256"],
        sha_of("BAD!\n").as_str(),
        "{second}"
    );

    // The plain cases keep their digests.
    let good = the(&procs, "good-writer", &cr);
    assert_eq!(
        good["openedfiles"][p("good.txt")]["sha256"],
        sha_of("good output\n").as_str(),
        "{good}"
    );
    let with = |path: &str| -> Vec<&Value> {
        procs
            .iter()
            .filter(|q| q["openedfiles"].get(path).is_some())
            .collect()
    };
    for (f, content) in [
        ("builtin.txt", "builtin-output\n"),
        ("catout.txt", "benign replacement\n"),
    ] {
        let path = p(f);
        let who = with(&path);
        assert_eq!(
            who.len(),
            1,
            "{f}: {}",
            serde_json::to_string_pretty(&cr).unwrap()
        );
        assert_eq!(
            who[0]["openedfiles"][&path]["sha256"],
            sha_of(content).as_str(),
            "{f}: {}",
            reason(who[0], &path)
        );
    }

    // Written and left open at exit: the exit is the close.
    let ew = the(&procs, "exit-writer", &cr);
    assert_eq!(
        ew["openedfiles"][p("exit.txt")]["sha256"],
        sha_of("left at exit\n").as_str(),
        "{ew}"
    );
    // Closed by close-on-exec at an exec: no close was observable.
    let exec_txt = p("exec.txt");
    let who = with(&exec_txt);
    assert_eq!(
        who.len(),
        1,
        "{}",
        serde_json::to_string_pretty(&cr).unwrap()
    );
    assert_eq!(who[0]["openedfiles"][&exec_txt], serde_json::json!({}));
    let why = reason(who[0], &exec_txt);
    assert!(why.contains("not seen closing"), "exec reason: {why:?}");

    // D2: both names of the renamed file and of the file in the renamed
    // directory are recorded; the new names with their digests.
    let ren = the(&procs, "d2-renamer", &cr);
    for old in ["ren-a.txt", "d1/f.txt"] {
        assert!(
            ren["openedfiles"].get(p(old)).is_some(),
            "{old} not recorded: {ren}"
        );
    }
    for (new, content) in [
        ("ren-b.txt", "renamed file\n"),
        ("d2/f.txt", "in a renamed directory\n"),
    ] {
        assert_eq!(
            ren["openedfiles"][p(new)]["sha256"],
            sha_of(content).as_str(),
            "{new}: {ren}"
        );
    }

    // Products: those a step process wrote with another content than it
    // left (renamed over; no close seen) are listed, the others are not.
    assert_eq!(
        not_as_written(&cr),
        ["exec.txt", "out.bin"],
        "{}",
        cr["trace"]
    );

    // An outsider rewrites, in place and to the same size, a file the
    // step's process wrote and closed: no digest for the writer.
    let w2 = tempdir();
    let late = w2.path().join("late.txt");
    let late_s = late.to_str().unwrap().to_string();
    let script =
        format!("{py} -c 'open(\"late.txt\",\"w\").write(\"step wrote\\n\")' late-writer\n");
    let cr = step_with(&d, "outsider", w2.path(), &script, || {
        // Past the filesystem's timestamp granularity (one coarse tick):
        // a same-size rewrite within it is not told apart (README).
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut f = std::fs::OpenOptions::new().write(true).open(&late).unwrap();
        f.write_all(b"outsider!!\n").unwrap();
    });
    let procs = processes(&cr);
    let lw = the(&procs, "late-writer", &cr);
    assert_eq!(lw["openedfiles"][&late_s], serde_json::json!({}), "{lw}");
    let why = reason(lw, &late_s);
    assert!(why.contains("modified after"), "outsider reason: {why:?}");
    assert!(!cr.to_string().contains(&sha_of("outsider!!\n")));
    assert_eq!(not_as_written(&cr), ["late.txt"], "{}", cr["trace"]);
}

/// The paths of `trace.productsNotAsWritten`, each with a reason.
fn not_as_written(cr: &Value) -> Vec<String> {
    cr["trace"]["productsNotAsWritten"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            assert!(!e["reason"].as_str().unwrap_or("").is_empty(), "{e}");
            e["path"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

#[test]
fn ebpf_written_files_get_what_the_writer_left() {
    written("ebpf");
}

#[test]
fn ptrace_written_files_get_what_the_writer_left() {
    written("ptrace");
}
