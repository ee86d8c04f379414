//! The git attestor against real repositories made with the git binary.

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
        "gitbinpath",
        "gitbinhash",
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
    assert_eq!(j["gittool"], "git-bin");
    let bin = std::path::PathBuf::from(j["gitbinpath"].as_str().unwrap());
    let real = std::fs::canonicalize(&bin).unwrap();
    let expect_hash = DigestSet::from_file(&real, &[HashAlg::Sha256]).unwrap();
    assert_eq!(j["gitbinhash"], serde_json::to_value(&expect_hash).unwrap());
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
