//! The git attestor against real repositories made with the git binary.
//!
//! The attestor reads repositories with gix and runs no program; the tests
//! use the git CLI only to build repositories and as ground truth.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use cilock_evidence::attestors::git::GitAttestor;
use cilock_evidence::attestors::{run_one, AttestationContext, Attestor};
use cilock_evidence::digest::{DigestSet, HashAlg};
use serde_json::{json, Value};

fn git(dir: &Path, args: &[&str], date: &str) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Alice")
        .env("GIT_AUTHOR_EMAIL", "alice@example.com")
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_NAME", "Carol")
        .env("GIT_COMMITTER_EMAIL", "carol@example.com")
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn git_stdin(dir: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn attest(
    dir: &Path,
) -> (
    Value,
    std::collections::BTreeMap<String, DigestSet>,
    std::collections::BTreeMap<String, DigestSet>,
) {
    let mut ctx = AttestationContext::new(
        dir.to_path_buf(),
        vec![("PATH".into(), std::env::var("PATH").unwrap())],
    );
    let mut a = GitAttestor::new();
    run_one(&mut ctx, &mut a).unwrap();
    let c = &ctx.completed[0];
    assert_eq!(c.name, "git");
    assert_eq!(c.type_uri, "https://witness.dev/attestations/git/v0.1");
    (c.json.clone(), c.subjects.clone(), c.backrefs.clone())
}

fn sha256(s: &str) -> DigestSet {
    DigestSet::from_bytes(s.as_bytes(), &[HashAlg::Sha256])
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn full_repository_with_tags_status_and_remotes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let date1 = "1700000000 +0530";
    git(d, &["init", "-q"], date1);
    std::fs::write(d.join("a.txt"), "one\n").unwrap();
    std::fs::write(d.join("b.txt"), "bee\n").unwrap();
    git(d, &["add", "."], date1);
    git(d, &["commit", "-q", "-m", "first"], date1);
    let first = git(d, &["rev-parse", "HEAD"], date1);
    git(d, &["tag", "-a", "old", "-m", "old tag"], date1);
    std::fs::write(d.join("a.txt"), "two\n").unwrap();
    git(d, &["commit", "-q", "-am", "second\n\nbody line"], date1);
    let head = git(d, &["rev-parse", "HEAD"], date1);
    let tree = git(d, &["rev-parse", "HEAD^{tree}"], date1);
    let tag_env_date = "1700000100 +0530";
    Command::new("git")
        .current_dir(d)
        .args([
            "-c",
            "tag.gpgsign=false",
            "tag",
            "-a",
            "v1.0",
            "-m",
            "release 1.0",
        ])
        .env("GIT_COMMITTER_NAME", "Tina")
        .env("GIT_COMMITTER_EMAIL", "tina@example.com")
        .env("GIT_COMMITTER_DATE", tag_env_date)
        .status()
        .unwrap();
    git(d, &["tag", "light"], date1);
    git(
        d,
        &[
            "remote",
            "add",
            "origin",
            "https://user:ghp_supersecretpassword123@github.com/o/r.git",
        ],
        date1,
    );
    git(
        d,
        &["remote", "add", "backup", "ssh://git@example.com/o/r.git"],
        date1,
    );
    // Dirty tree: modified, deleted, staged new, untracked.
    std::fs::write(d.join("a.txt"), "three\n").unwrap();
    std::fs::remove_file(d.join("b.txt")).unwrap();
    std::fs::write(d.join("c.txt"), "sea\n").unwrap();
    git(d, &["add", "c.txt"], date1);
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/d.txt"), "dee\n").unwrap();

    let (j, subjects, backrefs) = attest(d);
    let expected_keys: BTreeSet<String> = [
        "gittool",
        "commithash",
        "author",
        "authoremail",
        "committername",
        "committeremail",
        "commitdate",
        "commitmessage",
        "status",
        "commitdigest",
        "parenthashes",
        "treehash",
        "refs",
        "remotes",
        "tags",
        "branch",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(keys(&j), expected_keys);
    assert_eq!(j["commithash"], json!(head));
    assert_eq!(j["commitdigest"], json!({ "sha1": head }));
    assert_eq!(j["treehash"], json!(tree));
    assert_eq!(j["parenthashes"], json!([first]));
    assert_eq!(j["author"], "Alice");
    assert_eq!(j["authoremail"], "alice@example.com");
    assert_eq!(j["committername"], "Carol");
    assert_eq!(j["committeremail"], "carol@example.com");
    // Go's time.Time.String() with go-git's nameless fixed zone.
    assert_eq!(j["commitdate"], "2023-11-15 03:43:20 +0530 +0530");
    assert_eq!(j["commitmessage"], "second\n\nbody line\n");
    assert_eq!(j["branch"], "main");
    assert_eq!(j["refs"], json!(["refs/heads/main", "refs/tags/light"]));
    assert_eq!(
        j["remotes"],
        json!(["ssh://example.com/o/r.git", "https://github.com/o/r.git"])
    );
    assert_eq!(
        j["tags"],
        json!([{
            "name": "v1.0", "taggername": "Tina", "taggeremail": "tina@example.com",
            "when": "2023-11-15T03:45:00+05:30", "pgpsignature": "", "message": "release 1.0\n"
        }])
    );
    assert_eq!(
        j["status"],
        json!({
            "a.txt": {"staging": "unmodified", "worktree": "modified"},
            "b.txt": {"staging": "unmodified", "worktree": "deleted"},
            "c.txt": {"staging": "added", "worktree": "unmodified"},
            "sub/d.txt": {"staging": "untracked", "worktree": "untracked"},
        })
    );
    assert_eq!(j["gittool"], "gix");
    assert!(j.get("gitbinpath").is_none() && j.get("gitbinhash").is_none());
    assert_eq!(attest_for_comparison(d), ground_truth(d));
    assert!(!j.to_string().contains("ghp_supersecretpassword123"));

    let mut want = std::collections::BTreeMap::new();
    want.insert(
        format!("commithash:{head}"),
        DigestSet(std::collections::BTreeMap::from([(
            HashAlg::Sha1,
            head.clone(),
        )])),
    );
    want.insert(
        "authoremail:alice@example.com".to_string(),
        sha256("alice@example.com"),
    );
    want.insert(
        "committeremail:carol@example.com".to_string(),
        sha256("carol@example.com"),
    );
    want.insert(format!("parenthash:{first}"), sha256(&first));
    want.insert("refnameshort:main".to_string(), sha256("main"));
    assert_eq!(subjects, want);
    assert_eq!(
        backrefs.keys().collect::<Vec<_>>(),
        vec![&format!("commithash:{head}")]
    );
}

#[test]
fn signed_detached_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let date = "1700000000 +0000";
    git(d, &["init", "-q"], date);
    std::fs::write(d.join("f"), "x\n").unwrap();
    git(d, &["add", "."], date);
    git(d, &["commit", "-q", "-m", "base"], date);
    let base = git(d, &["rev-parse", "HEAD"], date);
    let tree = git(d, &["rev-parse", "HEAD^{tree}"], date);
    let raw = format!(
        "tree {tree}\nparent {base}\nauthor Alice <alice@example.com> 1700000200 +0000\ncommitter Alice <alice@example.com> 1700000200 +0000\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n =abcd\n -----END PGP SIGNATURE-----\n\nsigned commit\n"
    );
    let signed = git_stdin(d, &["hash-object", "-t", "commit", "-w", "--stdin"], &raw);
    git(d, &["update-ref", "--no-deref", "HEAD", &signed], date);
    let (j, subjects, _) = attest(d);
    assert_eq!(j["commithash"], json!(signed));
    assert_eq!(
        j["signature"],
        "-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n"
    );
    assert_eq!(j["commitmessage"], "signed commit\n");
    assert_eq!(j["refs"], json!(["HEAD"]));
    assert!(j.get("branch").is_none());
    assert!(subjects.keys().all(|k| !k.starts_with("refnameshort:")));
    assert!(subjects.contains_key(&format!("parenthash:{base}")));
}

#[test]
fn empty_repository_and_outside_a_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    git(&empty, &["init", "-q"], "1700000000 +0000");
    let (j, subjects, backrefs) = attest(&empty);
    assert_eq!(j, json!({}));
    assert!(subjects.is_empty() && backrefs.is_empty());

    let outside = tmp.path().join("plain");
    std::fs::create_dir(&outside).unwrap();
    let (j, subjects, _) = attest(&outside);
    assert_eq!(j, json!({}));
    assert!(subjects.is_empty());
    let a = GitAttestor::new();
    assert_eq!(a.name(), "git");
}

// ---------------------------------------------------------------------------
// Ground truth from the git CLI (the product never runs git; the tests may).

/// Runs the system git with no system/global configuration; None on failure.
fn git_raw(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "core.quotepath=off"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C")
        .output()
        .expect("git runs");
    out.status.success().then_some(out.stdout)
}

fn git_str(dir: &Path, args: &[&str]) -> String {
    String::from_utf8(git_raw(dir, args).unwrap_or_else(|| panic!("git {args:?}"))).unwrap()
}

fn status_name(c: u8) -> &'static str {
    match c {
        b' ' => "unmodified",
        b'?' => "untracked",
        b'M' | b'T' => "modified",
        b'A' => "added",
        b'D' => "deleted",
        b'R' => "renamed",
        b'C' => "copied",
        b'U' => "updated",
        other => panic!("status code {other}"),
    }
}

/// `git status --porcelain=v1 -z` as the attestor's `status` map.
fn porcelain_status(out: &[u8]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    let mut it = out.split(|b| *b == 0).filter(|e| !e.is_empty());
    while let Some(e) = it.next() {
        let (x, y) = (e[0], e[1]);
        let path = String::from_utf8_lossy(&e[3..]).into_owned();
        if x == b'R' || x == b'C' {
            it.next(); // the source path
        }
        m.insert(
            path,
            json!({"staging": status_name(x), "worktree": status_name(y)}),
        );
    }
    m
}

/// The raw object split into headers (continuations joined) and message.
fn split_object(raw: &str) -> (Vec<(String, String)>, String) {
    let (head, msg) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let mut h: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if let Some(c) = line.strip_prefix(' ') {
            let last = h.last_mut().unwrap();
            last.1.push('\n');
            last.1.push_str(c);
        } else {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            h.push((k.into(), v.into()));
        }
    }
    (h, msg.to_string())
}

/// What the attestation must say about `d`, computed with the git CLI
/// (everything except `commitdate` and tag `when`, which are checked
/// against git's own formatting separately).
fn ground_truth(d: &Path) -> Value {
    let head = git_str(d, &["rev-parse", "HEAD"]).trim().to_string();
    let format = git_str(d, &["rev-parse", "--show-object-format"])
        .trim()
        .to_string();
    let raw = git_str(d, &["cat-file", "commit", &head]);
    let (headers, msg) = split_object(&raw);
    let mut o = serde_json::Map::new();
    o.insert("gittool".into(), json!("gix"));
    o.insert("commithash".into(), json!(head));
    o.insert("commitdigest".into(), json!({ format.clone(): head }));
    o.insert(
        "treehash".into(),
        json!(git_str(d, &["rev-parse", "HEAD^{tree}"]).trim()),
    );
    let parents: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k == "parent")
        .map(|(_, v)| v.clone())
        .collect();
    if !parents.is_empty() {
        o.insert("parenthashes".into(), json!(parents));
    }
    let log = |f: &str| {
        git_str(d, &["log", "-1", &format!("--format={f}")])
            .trim_end_matches('\n')
            .to_string()
    };
    o.insert("author".into(), json!(log("%an")));
    o.insert("authoremail".into(), json!(log("%ae")));
    o.insert("committername".into(), json!(log("%cn")));
    o.insert("committeremail".into(), json!(log("%ce")));
    o.insert("commitmessage".into(), json!(msg));
    if let Some((_, sig)) = headers.iter().find(|(k, _)| k == "gpgsig") {
        o.insert("signature".into(), json!(format!("{sig}\n")));
    }
    let branch = git_raw(d, &["symbolic-ref", "-q", "HEAD"])
        .map(|b| String::from_utf8(b).unwrap().trim().to_string());
    let mut refs: Vec<String> = Vec::new();
    match &branch {
        Some(b) => {
            o.insert(
                "branch".into(),
                json!(b.strip_prefix("refs/heads/").unwrap_or(b)),
            );
        }
        None => refs.push("HEAD".into()),
    }
    for line in git_str(d, &["for-each-ref", "--format=%(objectname) %(refname)"]).lines() {
        let (oid, name) = line.split_once(' ').unwrap();
        if oid == head {
            refs.push(name.into());
        }
    }
    if !refs.is_empty() {
        o.insert("refs".into(), json!(refs));
    }
    let mut tags = Vec::new();
    for line in git_str(
        d,
        &[
            "for-each-ref",
            "refs/tags",
            "--format=%(objecttype) %(objectname) %(*objectname)",
        ],
    )
    .lines()
    {
        let p: Vec<&str> = line.split(' ').collect();
        if p[0] != "tag" {
            continue;
        }
        let (h, m) = split_object(&git_str(d, &["cat-file", "tag", p[1]]));
        let get = |k: &str| h.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        if get("object").as_deref() != Some(head.as_str()) {
            continue;
        }
        let tagger = get("tagger").unwrap();
        let (tn, rest) = tagger.split_once(" <").unwrap();
        let te = rest.split_once('>').unwrap().0;
        let (message, sig) = match m.find("-----BEGIN PGP SIGNATURE-----") {
            Some(i) => (m[..i].to_string(), m[i..].to_string()),
            None => (m.clone(), String::new()),
        };
        tags.push(json!({
            "name": get("tag").unwrap(), "taggername": tn, "taggeremail": te,
            "pgpsignature": sig, "message": message,
        }));
    }
    if !tags.is_empty() {
        o.insert("tags".into(), json!(tags));
    }
    if let Some(out) = git_raw(d, &["config", "--get-regexp", r"^remote\..*\.url$"]) {
        let mut remotes: Vec<(String, String)> = Vec::new();
        for line in String::from_utf8(out).unwrap().lines() {
            let (k, url) = line.split_once(' ').unwrap();
            let name = k
                .strip_prefix("remote.")
                .unwrap()
                .strip_suffix(".url")
                .unwrap();
            remotes.push((name.into(), url.into()));
        }
        remotes.sort_by(|a, b| a.0.cmp(&b.0));
        let urls: Vec<String> = remotes
            .into_iter()
            .map(|(_, u)| cilock_evidence::attestors::git::strip_credentials(&u))
            .collect();
        o.insert("remotes".into(), json!(urls));
    }
    let status = porcelain_status(
        &git_raw(
            d,
            &[
                "status",
                "--porcelain=v1",
                "-z",
                "--untracked-files=all",
                "--ignored=no",
            ],
        )
        .unwrap(),
    );
    if !status.is_empty() {
        o.insert("status".into(), Value::Object(status));
    }
    Value::Object(o)
}

/// The attestation of `d` with `commitdate` and tag `when` checked against
/// git's formatting of the same times, then removed (ground truth has none).
fn attest_for_comparison(d: &Path) -> Value {
    let (mut j, _, _) = attest(d);
    let o = j.as_object_mut().unwrap();
    // Go's "2006-01-02 15:04:05 -0700 <zone>" of the author date.
    let date = o.remove("commitdate").unwrap();
    let want = git_str(
        d,
        &[
            "log",
            "-1",
            "--format=%ad",
            "--date=format:%Y-%m-%d %H:%M:%S %z",
        ],
    );
    assert!(
        date.as_str().unwrap().starts_with(want.trim()),
        "commitdate {date} vs git {want}"
    );
    if let Some(tags) = o.get_mut("tags") {
        for t in tags.as_array_mut().unwrap() {
            let when = t.as_object_mut().unwrap().remove("when").unwrap();
            let name = t["name"].as_str().unwrap().to_string();
            let want = git_str(
                d,
                &[
                    "for-each-ref",
                    &format!("refs/tags/{name}"),
                    "--format=%(taggerdate:format:%Y-%m-%dT%H:%M:%S%z)",
                ],
            );
            let want = want.trim();
            let (civil, zone) = want.split_at(want.len() - 5);
            let zone = if zone == "+0000" {
                "Z".to_string()
            } else {
                format!("{}:{}", &zone[..3], &zone[3..])
            };
            assert_eq!(when, json!(format!("{civil}{zone}")), "tag {name}");
        }
    }
    j
}

/// A repository with history, branches, an annotated tag at HEAD, an older
/// annotated tag, a lightweight tag, remotes with credentials, and every
/// kind of status entry. `extra` are `git init` options.
fn rich_repo(d: &Path, extra: &[&str]) {
    let date = "1700000000 +0200";
    let mut init = vec!["init", "-q"];
    init.extend_from_slice(extra);
    git(d, &init, date);
    for (f, c) in [
        ("a.txt", "one\n"),
        ("b.txt", "bee\n"),
        ("gone.txt", "bye\n"),
        (
            "mv-src.txt",
            "a file that will be renamed, long enough to be similar\n",
        ),
        ("dir/x.txt", "x\n"),
        ("exec.sh", "#!/bin/sh\n"),
        ("spa ce é.txt", "unicode\n"),
        ("to-link.txt", "becomes a symlink\n"),
    ] {
        std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
        std::fs::write(d.join(f), c).unwrap();
    }
    std::os::unix::fs::symlink("a.txt", d.join("link")).unwrap();
    git(d, &["add", "."], date);
    git(d, &["commit", "-q", "-m", "first"], date);
    git(d, &["tag", "-a", "v0", "-m", "old"], date);
    git(d, &["branch", "feature"], date);
    std::fs::write(d.join("a.txt"), "two\n").unwrap();
    git(
        d,
        &["commit", "-q", "-am", "second\n\nwith a body\n"],
        "1700003600 -0700",
    );
    git(d, &["tag", "-a", "v1", "-m", "release v1\n\nnotes"], date);
    git(d, &["tag", "light"], date);
    git(d, &["branch", "also-here"], date);
    git(
        d,
        &[
            "remote",
            "add",
            "origin",
            "https://bob:s3cr3t-token@git.example.com/o/r.git",
        ],
        date,
    );
    git(
        d,
        &["remote", "add", "mirror", "git@github.com:o/r.git"],
        date,
    );
    git(
        d,
        &["remote", "add", "zz", "ssh://deploy:pw@[::1]:2222/r"],
        date,
    );
    git(
        d,
        &[
            "symbolic-ref",
            "refs/remotes/origin/HEAD",
            "refs/heads/main",
        ],
        date,
    );
    // Status: modified (same size, worktree), staged modified, deleted in the
    // worktree, deleted from the index, staged rename, added, added then
    // modified, untracked files (nested), mode change.
    std::fs::write(d.join("a.txt"), "TWO\n").unwrap();
    std::fs::write(d.join("b.txt"), "bee bee\n").unwrap();
    git(d, &["add", "b.txt"], date);
    std::fs::remove_file(d.join("gone.txt")).unwrap();
    git(d, &["rm", "-q", "--cached", "dir/x.txt"], date);
    git(d, &["mv", "mv-src.txt", "mv-dst.txt"], date);
    std::fs::write(d.join("new.txt"), "new\n").unwrap();
    git(d, &["add", "new.txt"], date);
    std::fs::write(d.join("new2.txt"), "new2\n").unwrap();
    git(d, &["add", "new2.txt"], date);
    std::fs::write(d.join("new2.txt"), "new2 changed\n").unwrap();
    std::fs::create_dir_all(d.join("u/v")).unwrap();
    std::fs::write(d.join("u/v/deep.txt"), "deep\n").unwrap();
    std::fs::write(d.join("top-untracked"), "t\n").unwrap();
    std::fs::write(d.join(".gitignore"), "*.log\n").unwrap();
    std::fs::write(d.join("ignored.log"), "ignored\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("exec.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Unicode path modified; symlink retargeted; file replaced by a
    // symlink (type change); intent-to-add.
    std::fs::write(d.join("spa ce é.txt"), "UNICODE\n").unwrap();
    std::fs::remove_file(d.join("link")).unwrap();
    std::os::unix::fs::symlink("b.txt", d.join("link")).unwrap();
    std::fs::remove_file(d.join("to-link.txt")).unwrap();
    std::os::unix::fs::symlink("a.txt", d.join("to-link.txt")).unwrap();
    std::fs::write(d.join("ita.txt"), "intent\n").unwrap();
    git(d, &["add", "-N", "ita.txt"], date);
}

#[test]
fn matches_git_on_a_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    rich_repo(d, &[]);
    let j = attest_for_comparison(d);
    let want = ground_truth(d);
    assert_eq!(j, want);
    // The comparison saw every kind of entry.
    let st = j["status"].as_object().unwrap();
    for (p, x, y) in [
        ("a.txt", "unmodified", "modified"),
        ("b.txt", "modified", "unmodified"),
        ("gone.txt", "unmodified", "deleted"),
        // Removed from the index but still on disk: git prints "D " then
        // "??" for the path; the later line wins, as it always did.
        ("dir/x.txt", "untracked", "untracked"),
        ("mv-dst.txt", "renamed", "unmodified"),
        ("new.txt", "added", "unmodified"),
        ("new2.txt", "added", "modified"),
        ("u/v/deep.txt", "untracked", "untracked"),
        ("exec.sh", "unmodified", "modified"),
        ("spa ce é.txt", "unmodified", "modified"),
        ("link", "unmodified", "modified"),
        ("to-link.txt", "unmodified", "modified"),
        ("ita.txt", "unmodified", "added"),
    ] {
        assert_eq!(st[p], json!({"staging": x, "worktree": y}), "{p}");
    }
    assert!(!st.contains_key("ignored.log") && !st.contains_key("mv-src.txt"));
    assert_eq!(
        j["refs"],
        json!([
            "refs/heads/also-here",
            "refs/heads/main",
            "refs/remotes/origin/HEAD",
            "refs/tags/light"
        ])
    );
    assert_eq!(j["tags"].as_array().unwrap().len(), 1);
    assert_eq!(j["tags"][0]["name"], "v1");
    assert_eq!(
        j["remotes"],
        json!([
            "git@github.com:o/r.git",
            "https://git.example.com/o/r.git",
            "ssh://[::1]:2222/r"
        ])
    );
    assert!(!j.to_string().contains("s3cr3t") && !j.to_string().contains("deploy:pw"));
}

#[test]
fn matches_git_detached_and_from_a_subdirectory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    rich_repo(d, &[]);
    // Detach HEAD at another commit without touching index or worktree.
    let feature = git(d, &["rev-parse", "feature"], "1700000000 +0000");
    git(
        d,
        &["update-ref", "--no-deref", "HEAD", &feature],
        "1700000000 +0000",
    );
    let j = attest_for_comparison(d);
    assert_eq!(j, ground_truth(d));
    assert_eq!(j["refs"], json!(["HEAD", "refs/heads/feature"]));
    assert_eq!(j["tags"][0]["name"], "v0");
    assert!(j.get("branch").is_none());
    // From a subdirectory the whole repository is described, as with git -C.
    let (sub, _, _) = attest(&d.join("u/v"));
    let (top, _, _) = attest(d);
    assert_eq!(sub, top);
}

#[test]
fn matches_git_in_a_sha256_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    rich_repo(d, &["--object-format=sha256"]);
    let j = attest_for_comparison(d);
    assert_eq!(j, ground_truth(d));
    assert_eq!(j["commithash"].as_str().unwrap().len(), 64);
    assert_eq!(j["commitdigest"], json!({"sha256": j["commithash"]}));
}

#[test]
fn packed_refs_and_a_clean_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    rich_repo(d, &[]);
    git(d, &["add", "-A"], "1700000000 +0000");
    git(d, &["commit", "-q", "-m", "all in"], "1700007200 +0000");
    git(d, &["tag", "-a", "v2", "-m", "two"], "1700007200 +0000");
    git(d, &["pack-refs", "--all"], "1700007200 +0000");
    git(d, &["gc", "-q"], "1700007200 +0000");
    let j = attest_for_comparison(d);
    assert_eq!(j, ground_truth(d));
    assert!(j.get("status").is_none(), "{j}");
    assert_eq!(j["tags"][0]["name"], "v2");
}

// ---------------------------------------------------------------------------
// Nothing runs: a hostile repository, a fake git on PATH, and strace.

/// A repository whose configuration names programs at every place git (or
/// a library honouring git's configuration) could run one, each writing a
/// marker file into `markers`. Also a fake `git` in `bin/`.
fn hostile_repo(root: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let d = root.join("repo");
    let markers = root.join("markers");
    let bin = root.join("bin");
    for p in [&d, &markers, &bin] {
        std::fs::create_dir_all(p).unwrap();
    }
    let date = "1700000000 +0000";
    git(&d, &["init", "-q"], date);
    std::fs::write(d.join("f.txt"), "filtered\n").unwrap();
    std::fs::write(d.join("g.txt"), "changed later\n").unwrap();
    std::fs::write(d.join(".gitattributes"), "*.txt filter=x diff=x merge=x\n").unwrap();
    git(&d, &["add", "."], date);
    git(&d, &["commit", "-q", "-m", "base"], date);
    git(&d, &["tag", "-a", "t", "-m", "tag"], date);
    git(
        &d,
        &["remote", "add", "origin", "https://u:p@example.com/r.git"],
        date,
    );

    let script = |name: &str| -> String {
        let p = root.join(format!("{name}.sh"));
        std::fs::write(
            &p,
            format!("#!/bin/sh\ntouch '{}'\ncat\n", markers.join(name).display()),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    };
    let hooks = root.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for h in [
        "pre-commit",
        "post-checkout",
        "post-index-change",
        "reference-transaction",
        "fsmonitor-watchman",
    ] {
        let s = script(&format!("hook-{h}"));
        std::fs::copy(&s, hooks.join(h)).unwrap();
        std::fs::copy(&s, d.join(".git/hooks").join(h)).unwrap();
    }
    let include = root.join("included.config");
    std::fs::write(
        &include,
        format!("[core]\n\tfsmonitor = {}\n", script("include-fsmonitor")),
    )
    .unwrap();
    let cfg = format!(
        "[core]\n\tfsmonitor = {fsm}\n\thooksPath = {hooks}\n\tsshCommand = {ssh}\n\teditor = {ed}\n\tpager = {pg}\n\taskPass = {ap}\n\
         [filter \"x\"]\n\tclean = {clean}\n\tsmudge = {smudge}\n\tprocess = {proc}\n\trequired = true\n\
         [diff \"x\"]\n\ttextconv = {tc}\n\tcommand = {dc}\n[merge \"x\"]\n\tdriver = {md}\n\
         [credential]\n\thelper = !{cred}\n[gpg]\n\tprogram = {gpg}\n[include]\n\tpath = {inc}\n",
        fsm = script("fsmonitor"),
        hooks = hooks.display(),
        ssh = script("ssh"),
        ed = script("editor"),
        pg = script("pager"),
        ap = script("askpass"),
        clean = script("filter-clean"),
        smudge = script("filter-smudge"),
        proc = script("filter-process"),
        tc = script("textconv"),
        dc = script("diff-command"),
        md = script("merge-driver"),
        cred = script("credential"),
        gpg = script("gpg"),
        inc = include.display(),
    );
    let mut config = std::fs::read_to_string(d.join(".git/config")).unwrap();
    config.push_str(&cfg);
    std::fs::write(d.join(".git/config"), config).unwrap();
    // A fake git first on PATH.
    let fake = bin.join("git");
    std::fs::copy(script("fake-git"), &fake).unwrap();
    // Stat-dirty with the same content (forces a content check through the
    // clean filter in git), and a real change of the same size.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(d.join("f.txt"), "filtered\n").unwrap();
    std::fs::write(d.join("g.txt"), "CHANGED LATER\n").unwrap();
    std::fs::write(d.join("untracked.txt"), "u\n").unwrap();
    (d, markers, bin)
}

fn markers_created(markers: &Path) -> Vec<String> {
    std::fs::read_dir(markers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn check_hostile_attestation(j: &Value) {
    assert_eq!(j["gittool"], "gix");
    assert_eq!(j["commitmessage"], "base\n");
    assert_eq!(j["tags"][0]["name"], "t");
    assert_eq!(j["remotes"], json!(["https://example.com/r.git"]));
    assert_eq!(
        j["status"],
        json!({
            "g.txt": {"staging": "unmodified", "worktree": "modified"},
            "untracked.txt": {"staging": "untracked", "worktree": "untracked"},
        })
    );
}

#[test]
fn hostile_configuration_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, markers, bin) = hostile_repo(tmp.path());
    // The job's PATH (fake git first) is in the context, as in a real step.
    let mut ctx = AttestationContext::new(
        d.clone(),
        vec![(
            "PATH".into(),
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )],
    );
    let mut a = GitAttestor::new();
    run_one(&mut ctx, &mut a).unwrap();
    check_hostile_attestation(&ctx.completed[0].json);
    assert_eq!(markers_created(&markers), Vec::<String>::new());
    // The scripts do work when something runs them (the test can fail).
    let out = Command::new(bin.join("git")).output().unwrap();
    assert!(out.status.success());
    assert_eq!(markers_created(&markers), vec!["fake-git".to_string()]);
}

/// The child side of `no_execve_under_strace`: attests the repository named
/// by `CILOCK_GIT_STRACE_CHILD` and prints the predicate.
#[test]
#[ignore = "run by no_execve_under_strace in a traced child process"]
fn strace_child() {
    let dir = std::env::var("CILOCK_GIT_STRACE_CHILD").expect("run by no_execve_under_strace");
    let (j, _, _) = attest(Path::new(&dir));
    println!("PREDICATE {j}");
}

#[test]
fn no_execve_under_strace() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, markers, bin) = hostile_repo(tmp.path());
    let trace = tmp.path().join("strace.out");
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=execve,execveat", "-o"])
        .arg(&trace)
        .arg(&exe)
        .args([
            "--exact",
            "attestors_git::strace_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CILOCK_GIT_STRACE_CHILD", &d)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .expect("strace runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PREDICATE ").map(|(_, p)| p))
        .unwrap_or_else(|| panic!("no predicate in {stdout}"));
    check_hostile_attestation(&serde_json::from_str(line).unwrap());
    let trace = std::fs::read_to_string(&trace).unwrap();
    let execs: Vec<&str> = trace.lines().filter(|l| l.contains("execve")).collect();
    assert_eq!(execs.len(), 1, "only the test binary itself: {execs:#?}");
    assert!(execs[0].contains(&*exe.to_string_lossy()), "{}", execs[0]);
    assert_eq!(markers_created(&markers), Vec::<String>::new());
}

#[test]
fn bare_repository_and_unborn_branch_in_a_worktree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    rich_repo(&src, &[]);
    let bare = tmp.path().join("bare.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        "1700000000 +0000",
    );
    let (j, _, _) = attest(&bare);
    assert_eq!(
        j["commithash"],
        json!(git_str(&src, &["rev-parse", "HEAD"]).trim())
    );
    assert!(j.get("status").is_none());
    // An orphan branch: HEAD names a branch that does not exist yet.
    git(
        &src,
        &["checkout", "-q", "--orphan", "nothing-yet"],
        "1700000000 +0000",
    );
    let (j, s, _) = attest(&src);
    assert_eq!(j, json!({}));
    assert!(s.is_empty());
}

#[test]
fn bounds_truncate_and_say_so() {
    use cilock_evidence::attestors::git::Limits;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let date = "1700000000 +0000";
    git(d, &["init", "-q"], date);
    std::fs::write(d.join("f"), "x\n").unwrap();
    git(d, &["add", "."], date);
    let long_msg = format!("subject\n\n{}", "é".repeat(100));
    git(d, &["commit", "-q", "-m", &long_msg], date);
    for i in 0..10 {
        git(
            d,
            &["tag", "-a", &format!("t{i}"), "-m", &"m".repeat(50)],
            date,
        );
    }
    for i in 0..5 {
        git(
            d,
            &["remote", "add", &format!("r{i}"), &format!("https://h/{i}")],
            date,
        );
    }
    for i in 0..20 {
        std::fs::write(d.join(format!("u{i:02}")), "u\n").unwrap();
    }
    // Unbounded (the defaults): everything, no truncation flag.
    let full = GitAttestor::observe(d).unwrap().unwrap();
    assert_eq!(full.status.len(), 20);
    assert_eq!(full.tags.len(), 10);
    assert_eq!(full.remotes.len(), 5);
    let j = serde_json::to_value(&full).unwrap();
    assert!(j
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.ends_with("Truncated")));

    let limits = Limits {
        refs: 4,
        status: 7,
        remotes: 2,
        text: 21,
        object_size: 1 << 20,
    };
    let a = GitAttestor::observe_with_limits(d, limits)
        .unwrap()
        .unwrap();
    assert_eq!(a.status.len(), 7);
    assert!(a.status_truncated);
    // refs/heads/main + 3 tags examined.
    assert!(a.refs_truncated);
    assert_eq!(a.tags.len(), 3);
    assert!(a.tags.iter().all(|t| t.message.len() <= 21));
    assert!(a.tags_truncated);
    assert_eq!(a.remotes.len(), 2);
    assert!(a.remotes_truncated);
    assert!(a.commitmessage_truncated);
    assert!(a.commitmessage.len() <= 21 && a.commitmessage.starts_with("subject\n\n"));
    let j = serde_json::to_value(&a).unwrap();
    for k in [
        "statusTruncated",
        "refsTruncated",
        "tagsTruncated",
        "remotesTruncated",
        "commitmessageTruncated",
    ] {
        assert_eq!(j[k], json!(true), "{k}");
    }

    // A HEAD commit object over the size limit is a clear error, not a panic.
    let err = GitAttestor::observe_with_limits(
        d,
        Limits {
            object_size: 100,
            ..Limits::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("HEAD commit") && err.contains("over the 100 byte limit"),
        "{err}"
    );
}

#[test]
fn corrupt_repository_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let date = "1700000000 +0000";
    git(d, &["init", "-q"], date);
    std::fs::write(d.join("f"), "x\n").unwrap();
    git(d, &["add", "."], date);
    git(d, &["commit", "-q", "-m", "c"], date);
    let head = git(d, &["rev-parse", "HEAD"], date);
    // The HEAD commit object disappears.
    let obj = d.join(".git/objects").join(&head[..2]).join(&head[2..]);
    std::fs::remove_file(obj).unwrap();
    let err = GitAttestor::observe(d).unwrap_err().to_string();
    assert!(err.starts_with("git: "), "{err}");
    // HEAD names garbage.
    std::fs::write(d.join(".git/HEAD"), "not a ref at all\n").unwrap();
    let r = GitAttestor::observe(d);
    assert!(!matches!(r, Ok(Some(_))), "{r:?}");
}

#[test]
fn submodule_is_compared_by_commit_and_its_configuration_runs_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let date = "1700000000 +0000";
    let lib = root.join("lib");
    std::fs::create_dir(&lib).unwrap();
    git(&lib, &["init", "-q"], date);
    std::fs::write(lib.join("l.txt"), "lib\n").unwrap();
    git(&lib, &["add", "."], date);
    git(&lib, &["commit", "-q", "-m", "lib"], date);
    let d = root.join("app");
    std::fs::create_dir(&d).unwrap();
    git(&d, &["init", "-q"], date);
    std::fs::write(d.join("a"), "a\n").unwrap();
    git(
        &d,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            lib.to_str().unwrap(),
            "sub",
        ],
        date,
    );
    git(&d, &["add", "."], date);
    git(&d, &["commit", "-q", "-m", "app"], date);
    // The submodule moves to a new commit: " M sub" in git status.
    let sub = d.join("sub");
    std::fs::write(sub.join("l.txt"), "lib 2\n").unwrap();
    git(&sub, &["commit", "-q", "-am", "lib 2"], date);
    let j = attest_for_comparison(&d);
    assert_eq!(j, ground_truth(&d));
    assert_eq!(
        j["status"]["sub"],
        json!({"staging": "unmodified", "worktree": "modified"})
    );

    // Hostile configuration inside the submodule, and a stat-dirty file
    // there: nothing runs (git status would run the filter and fsmonitor).
    let markers = root.join("markers");
    std::fs::create_dir(&markers).unwrap();
    let script = root.join("mark.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}/ran'\ncat\n", markers.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = script.display();
    let sub_git_dir = git(&sub, &["rev-parse", "--absolute-git-dir"], date);
    let cfg_path = Path::new(&sub_git_dir).join("config");
    let mut cfg = std::fs::read_to_string(&cfg_path).unwrap();
    cfg.push_str(&format!(
        "[core]\n\tfsmonitor = {s}\n\thooksPath = {}\n[filter \"x\"]\n\tclean = {s}\n\tprocess = {s}\n",
        root.display()
    ));
    std::fs::write(&cfg_path, cfg).unwrap();
    std::fs::write(sub.join(".gitattributes"), "* filter=x\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(sub.join("l.txt"), "lib 2\n").unwrap();
    let (j, _, _) = attest(&d);
    assert_eq!(
        j["status"]["sub"],
        json!({"staging": "unmodified", "worktree": "modified"})
    );
    assert_eq!(markers_created(&markers), Vec::<String>::new());
}

#[test]
fn matches_git_with_merge_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let date = "1700000000 +0000";
    git(d, &["init", "-q"], date);
    for f in ["both.txt", "del-ours.txt", "del-theirs.txt"] {
        std::fs::write(d.join(f), "base\n").unwrap();
    }
    git(d, &["add", "."], date);
    git(d, &["commit", "-q", "-m", "base"], date);
    git(d, &["checkout", "-q", "-b", "other"], date);
    std::fs::write(d.join("both.txt"), "theirs\n").unwrap();
    std::fs::write(d.join("del-ours.txt"), "theirs\n").unwrap();
    std::fs::remove_file(d.join("del-theirs.txt")).unwrap();
    std::fs::write(d.join("added.txt"), "theirs\n").unwrap();
    git(d, &["add", "-A"], date);
    git(d, &["commit", "-q", "-m", "theirs"], date);
    git(d, &["checkout", "-q", "main"], date);
    std::fs::write(d.join("both.txt"), "ours\n").unwrap();
    std::fs::remove_file(d.join("del-ours.txt")).unwrap();
    std::fs::write(d.join("del-theirs.txt"), "ours\n").unwrap();
    std::fs::write(d.join("added.txt"), "ours\n").unwrap();
    git(d, &["add", "-A"], date);
    git(d, &["commit", "-q", "-m", "ours"], date);
    let out = Command::new("git")
        .current_dir(d)
        .args([
            "-c",
            "user.name=x",
            "-c",
            "user.email=x@x",
            "merge",
            "-q",
            "other",
        ])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the merge conflicts");
    let j = attest_for_comparison(d);
    assert_eq!(j, ground_truth(d));
    let st = &j["status"];
    assert_eq!(
        st["both.txt"],
        json!({"staging": "updated", "worktree": "updated"})
    );
    assert_eq!(
        st["added.txt"],
        json!({"staging": "added", "worktree": "added"})
    );
    assert_eq!(
        st["del-ours.txt"],
        json!({"staging": "deleted", "worktree": "updated"})
    );
    assert_eq!(
        st["del-theirs.txt"],
        json!({"staging": "updated", "worktree": "deleted"})
    );
}

#[test]
fn matches_git_in_a_linked_worktree() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("main");
    std::fs::create_dir(&d).unwrap();
    rich_repo(&d, &[]);
    let wt = tmp.path().join("linked");
    git(
        &d,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "side",
            wt.to_str().unwrap(),
            "feature",
        ],
        "1700000000 +0000",
    );
    std::fs::write(wt.join("a.txt"), "linked change\n").unwrap();
    std::fs::write(wt.join("only-here"), "u\n").unwrap();
    let j = attest_for_comparison(&wt);
    assert_eq!(j, ground_truth(&wt));
    assert_eq!(j["branch"], "side");
    assert_eq!(j["refs"], json!(["refs/heads/feature", "refs/heads/side"]));
    assert_eq!(
        j["status"],
        json!({
            "a.txt": {"staging": "unmodified", "worktree": "modified"},
            "only-here": {"staging": "untracked", "worktree": "untracked"},
        })
    );
}

#[test]
fn workdir_given_as_an_open_directory_descriptor() {
    // The attestor helper holds the step's workdir as an fd; the repository
    // is then reached through /proc/self/fd/N, which must give the same
    // attestation as the path.
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    rich_repo(d, &[]);
    let dir = std::fs::File::open(d).unwrap();
    let via_fd = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let a = GitAttestor::observe(&via_fd).unwrap().unwrap();
    let b = GitAttestor::observe(d).unwrap().unwrap();
    assert_eq!(a, b);
    assert!(!a.status.is_empty());
}
