//! material, product, environment, the CI attestors and the lifecycle,
//! on real files and real CI variables.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::symlink;
use std::path::Path;

use cilock_evidence::attestors::lifecycle::{AttestorOptions, Lifecycle};
use cilock_evidence::attestors::{AttestError, AttestationContext, CompletedAttestation};
use cilock_evidence::digest::{DigestSet, HashAlg};
use serde_json::{json, Value};

fn sha(data: &[u8]) -> String {
    DigestSet::from_bytes(data, &[HashAlg::Sha256])
        .get_sha256()
        .unwrap()
        .to_string()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn push_command_run(ctx: &mut AttestationContext, stdout: &str, exitcode: i32) {
    ctx.completed.push(CompletedAttestation {
        name: "command-run".into(),
        type_uri: "https://witness.dev/attestations/command-run/v0.1".into(),
        json: json!({"cmd": ["sh", "-c", "build"], "stdout": stdout, "exitcode": exitcode}),
        subjects: BTreeMap::new(),
        backrefs: BTreeMap::new(),
        starttime: String::new(),
        endtime: String::new(),
    });
}

fn completed<'a>(ctx: &'a AttestationContext, name: &str) -> &'a CompletedAttestation {
    ctx.completed
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, data).unwrap();
}

#[test]
fn materials_and_products_with_symlinks_and_globs() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    write(&tmp.path().join("outside/secret.txt"), b"outside\n");
    write(&ws.join("unchanged.txt"), b"same\n");
    write(&ws.join("changed.txt"), b"before\n");
    write(&ws.join("sub/nested.txt"), b"nested\n");
    symlink("unchanged.txt", ws.join("link_in")).unwrap();
    symlink("../outside/secret.txt", ws.join("link_out")).unwrap();
    symlink("sub", ws.join("dirlink")).unwrap();
    symlink("does-not-exist", ws.join("broken")).unwrap();

    let opts = AttestorOptions {
        product_exclude_globs: vec!["*.log".into()],
        ..Default::default()
    };
    let mut lc = Lifecycle::new(&[], opts).unwrap();
    assert_eq!(lc.attestors(), &["command-run", "material", "product"]);
    let mut ctx = AttestationContext::new(ws.clone(), env(&[("PATH", "/usr/bin")]));
    lc.before(&mut ctx).unwrap();
    let m = &completed(&ctx, "material").json;
    assert_eq!(
        completed(&ctx, "material").type_uri,
        "https://witness.dev/attestations/material/v0.1"
    );
    assert_eq!(
        keys(m),
        set(&["changed.txt", "link_in", "sub/nested.txt", "unchanged.txt"])
    );
    assert_eq!(m["unchanged.txt"], json!({"sha256": sha(b"same\n")}));
    assert_eq!(m["link_in"], json!({"sha256": sha(b"same\n")}));
    assert_eq!(m["changed.txt"], json!({"sha256": sha(b"before\n")}));
    let skipped: BTreeMap<String, String> = lc
        .skipped_paths()
        .into_iter()
        .map(|(_, s)| (s.path, s.reason))
        .collect();
    assert!(
        skipped["link_out"].contains("outside the working directory"),
        "{skipped:?}"
    );
    assert_eq!(skipped["broken"], "broken symbolic link");

    // The command changes one file and creates three.
    write(&ws.join("changed.txt"), b"after\n");
    write(&ws.join("build.log"), b"log line\n");
    write(&ws.join("sub/out.json"), br#"{"ok": true}"#);
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.resize(16, 0);
    elf.extend_from_slice(&[2, 0, 0x3e, 0]);
    write(&ws.join("app"), &elf);
    push_command_run(&mut ctx, "built\n", 0);
    lc.after(&mut ctx).unwrap();
    let p = completed(&ctx, "product");
    assert_eq!(p.type_uri, "https://witness.dev/attestations/product/v0.1");
    assert_eq!(
        keys(&p.json),
        set(&["app", "build.log", "changed.txt", "sub/out.json"])
    );
    assert_eq!(
        p.json["changed.txt"],
        json!({"mime_type": "text/plain; charset=utf-8", "digest": {"sha256": sha(b"after\n")}})
    );
    assert_eq!(p.json["sub/out.json"]["mime_type"], "application/json");
    assert_eq!(p.json["app"]["mime_type"], "application/x-executable");
    assert_eq!(keys(&p.json["app"]), set(&["digest", "mime_type"]));
    // Globs filter subjects only: build.log is a product but not a subject.
    let subj: BTreeSet<String> = p.subjects.keys().cloned().collect();
    assert_eq!(
        subj,
        set(&["file:app", "file:changed.txt", "file:sub/out.json"])
    );
    assert_eq!(
        p.subjects["file:app"],
        DigestSet::from_bytes(&elf, &[HashAlg::Sha256])
    );

    let (coll, subjects) = cilock_evidence::attestors::into_collection("build", &ctx);
    assert_eq!(coll.attestations.len(), 3);
    assert!(subjects
        .iter()
        .any(|s| s.name == "https://witness.dev/attestations/product/v0.1/file:app"));
}

#[test]
fn gitoid_hashes_and_material_globs() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    write(&ws.join("hello.txt"), b"hello\n");
    write(&ws.join("skip.bin"), b"\x00\x01");
    let opts = AttestorOptions {
        hashes: vec![
            "sha256".into(),
            "gitoid:sha1".into(),
            "gitoid:sha256".into(),
        ],
        material_include_globs: vec!["*.txt".into()],
        ..Default::default()
    };
    let mut lc = Lifecycle::new(&[], opts).unwrap();
    let mut ctx = AttestationContext::new(ws.to_path_buf(), vec![]);
    lc.before(&mut ctx).unwrap();
    let m = &completed(&ctx, "material").json;
    assert_eq!(keys(m), set(&["hello.txt"]));
    assert_eq!(
        m["hello.txt"],
        json!({
            "sha256": sha(b"hello\n"),
            "gitoid:sha1": "gitoid:blob:sha1:ce013625030ba8dba906f756967f9e9ca394464a",
            "gitoid:sha256": "gitoid:blob:sha256:2cf8d83d9ee29543b34a87727421fdecb7e3f3a183d337639025de576db9ebb4",
        })
    );
    push_command_run(&mut ctx, "", 0);
    lc.after(&mut ctx).unwrap();
    // skip.bin was not recorded as a material but existed before: the
    // product comparison uses the full snapshot, so it is not a product.
    assert_eq!(completed(&ctx, "product").json, json!({}));
}

#[test]
fn unknown_names_and_hashes_are_rejected() {
    let e = Lifecycle::new(
        &["environment".into(), "nope".into()],
        AttestorOptions::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("environment, git, github"),
        "{msg}"
    );
    let e = Lifecycle::new(
        &[],
        AttestorOptions {
            hashes: vec!["sha512".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("sha512"));
    // Comma-separated names are accepted.
    let lc = Lifecycle::new(&["environment,git".into()], AttestorOptions::default()).unwrap();
    assert_eq!(
        lc.attestors(),
        &["command-run", "material", "product", "environment", "git"]
    );
}

#[test]
fn environment_filters_sensitive_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let vars = env(&[
        ("PATH", "/usr/bin:/bin"),
        ("GITHUB_TOKEN", "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ("github_token", "lowercase-is-matched-too"),
        ("DATABASE_URL", "postgres://app:DbPassw0rd@db.internal/app"),
        ("GIT_AUTHOR_NAME", "Jane"),
        ("MY_PASSWORD", "allowed-by-option"),
        ("CUSTOM_X", "custom"),
        ("AWS_ACCESS_KEY_ID", "AKIA0000"),
    ]);
    let mut opts = AttestorOptions::default();
    opts.env.add_sensitive_keys = vec!["CUSTOM_*".into()];
    opts.env.allow_keys = vec!["MY_PASSWORD".into()];
    let mut lc = Lifecycle::new(&["environment".into()], opts.clone()).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), vars.clone());
    lc.before(&mut ctx).unwrap();
    let e = completed(&ctx, "environment");
    assert_eq!(
        e.type_uri,
        "https://witness.dev/attestations/environment/v0.1"
    );
    assert_eq!(
        keys(&e.json),
        set(&["hostname", "os", "username", "variables"])
    );
    assert_eq!(e.json["os"], "linux");
    assert_eq!(
        e.json["hostname"],
        cilock_evidence::attestors::environment::hostname()
    );
    assert!(!e.json["username"].as_str().unwrap().is_empty());
    assert_eq!(
        e.json["variables"],
        json!({
            "PATH": "/usr/bin:/bin",
            "GITHUB_TOKEN": "******",
            "github_token": "******",
            "DATABASE_URL": "******",
            "GIT_AUTHOR_NAME": "Jane",
            "MY_PASSWORD": "allowed-by-option",
            "CUSTOM_X": "******",
            "AWS_ACCESS_KEY_ID": "******",
        })
    );

    opts.env.filter_sensitive = true;
    let mut lc = Lifecycle::new(&["environment".into()], opts).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), vars);
    lc.before(&mut ctx).unwrap();
    assert_eq!(
        keys(&completed(&ctx, "environment").json["variables"]),
        set(&["PATH", "GIT_AUTHOR_NAME", "MY_PASSWORD"])
    );
}

fn b64url(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn github_attestor_in_and_out_of_github_actions() {
    let tmp = tempfile::tempdir().unwrap();
    let claims = json!({"repository": "o/r", "run_id": "42", "aud": "witness"});
    let token = format!(
        "{}.{}.sig",
        b64url(&json!({"alg": "RS256"})),
        b64url(&claims)
    );
    let gh = env(&[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_SERVER_URL", "https://github.com"),
        ("GITHUB_REPOSITORY", "o/r"),
        ("GITHUB_RUN_ID", "42"),
        ("GITHUB_WORKFLOW", "build"),
        ("GITHUB_ACTION_PATH", "/home/runner/work/_actions/x"),
        ("RUNNER_NAME", "GitHub Actions 7"),
        ("RUNNER_ARCH", "X64"),
        ("RUNNER_OS", "Linux"),
        ("OIDC_TOKEN", &token),
    ]);
    let opts = AttestorOptions {
        github_token_env: Some("OIDC_TOKEN".into()),
        ..Default::default()
    };
    let mut lc = Lifecycle::new(&["github".into()], opts).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), gh);
    lc.before(&mut ctx).unwrap();
    let g = completed(&ctx, "github");
    assert_eq!(g.type_uri, "https://witness.dev/attestations/github/v0.1");
    assert_eq!(
        g.json,
        json!({
            "jwt": {"jwksUrl": "https://token.actions.githubusercontent.com/.well-known/jwks", "claims": claims},
            "ciconfigpath": "/home/runner/work/_actions/x",
            "pipelineid": "42",
            "pipelinename": "build",
            "pipelineurl": "https://github.com/o/r/actions/runs/42",
            "projecturl": "https://github.com/o/r",
            "runnerid": "GitHub Actions 7",
            "cihost": "",
            "ciserverurl": "https://github.com",
            "runnerarch": "X64",
            "runneros": "Linux",
        })
    );
    let url = "https://github.com/o/r/actions/runs/42";
    assert_eq!(
        g.subjects.keys().cloned().collect::<BTreeSet<_>>(),
        set(&[
            "pipelineurl:https://github.com/o/r/actions/runs/42",
            "projecturl:https://github.com/o/r"
        ])
    );
    assert_eq!(
        g.subjects[&format!("pipelineurl:{url}")],
        DigestSet::from_bytes(url.as_bytes(), &[HashAlg::Sha256])
    );
    assert_eq!(
        g.backrefs.keys().cloned().collect::<Vec<_>>(),
        vec![format!("pipelineurl:{url}")]
    );
    assert!(!g.json.to_string().contains(&token));

    // Outside GitHub: not recorded, with a reason naming the CI.
    let mut lc = Lifecycle::new(
        &["github".into(), "gitlab".into()],
        AttestorOptions::default(),
    )
    .unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), env(&[("PATH", "/bin")]));
    lc.before(&mut ctx).unwrap();
    assert!(ctx
        .completed
        .iter()
        .all(|c| c.name != "github" && c.name != "gitlab"));
    let reasons: Vec<(String, String)> = lc
        .skipped()
        .iter()
        .map(|s| (s.name.clone(), s.reason.clone()))
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0].0, "github");
    assert!(reasons[0].1.contains("not in a github ci job"));
    assert_eq!(reasons[1].0, "gitlab");
    assert!(reasons[1].1.contains("not in a gitlab ci job"));
}

#[test]
fn gitlab_attestor_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let vars = env(&[
        ("GITLAB_CI", "true"),
        ("CI_CONFIG_PATH", ".gitlab-ci.yml"),
        ("CI_JOB_ID", "1001"),
        ("CI_JOB_IMAGE", "rust:1.87"),
        ("CI_JOB_NAME", "build"),
        ("CI_JOB_STAGE", "test"),
        ("CI_JOB_URL", "https://gitlab.com/g/p/-/jobs/1001"),
        ("CI_PIPELINE_ID", "77"),
        ("CI_PIPELINE_URL", "https://gitlab.com/g/p/-/pipelines/77"),
        ("CI_PROJECT_ID", "5"),
        ("CI_PROJECT_URL", "https://gitlab.com/g/p"),
        ("CI_RUNNER_ID", "9"),
        ("CI_SERVER_HOST", "gitlab.com"),
        ("CI_SERVER_URL", "https://gitlab.com"),
    ]);
    let mut lc = Lifecycle::new(&["gitlab".into()], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(tmp.path().to_path_buf(), vars);
    lc.before(&mut ctx).unwrap();
    let g = completed(&ctx, "gitlab");
    assert_eq!(g.type_uri, "https://witness.dev/attestations/gitlab/v0.1");
    assert_eq!(
        g.json,
        json!({
            "ciconfigpath": ".gitlab-ci.yml", "jobid": "1001", "jobimage": "rust:1.87",
            "jobname": "build", "jobstage": "test", "joburl": "https://gitlab.com/g/p/-/jobs/1001",
            "pipelineid": "77", "pipelineurl": "https://gitlab.com/g/p/-/pipelines/77",
            "projectid": "5", "projecturl": "https://gitlab.com/g/p", "runnerid": "9",
            "cihost": "gitlab.com", "ciserverurl": "https://gitlab.com",
        })
    );
    assert_eq!(
        g.subjects.keys().cloned().collect::<BTreeSet<_>>(),
        set(&[
            "joburl:https://gitlab.com/g/p/-/jobs/1001",
            "pipelineurl:https://gitlab.com/g/p/-/pipelines/77",
            "projecturl:https://gitlab.com/g/p",
        ])
    );
}

#[test]
fn github_action_attestor() {
    let tmp = tempfile::tempdir().unwrap();
    let action_dir = tmp.path().join("action");
    write(
        &action_dir.join("action.yml"),
        b"name: 'Checkout'\ndescription: x\ninputs:\n  token:\n    default: x\nruns:\n  using: node20\n  main: dist/index.js\n",
    );
    let out_file = tmp.path().join("output");
    write(&out_file, b"ref=abc\nnotes<<EOF\nline1\nline2\nEOF\n");
    let sha = "8e5e7e5ab8b370d6c329ec480221332ada57f0ab";
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let vars = env(&[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_ACTION_REPOSITORY", "actions/checkout"),
        ("GITHUB_ACTION_REF", sha),
        ("GITHUB_ACTION_PATH", action_dir.to_str().unwrap()),
        ("GITHUB_OUTPUT", out_file.to_str().unwrap()),
        ("GITHUB_RUN_ID", "42"),
        ("GITHUB_WORKFLOW", "build"),
        ("GITHUB_JOB", "compile"),
        ("INPUT_FETCH-DEPTH", "1"),
        ("INPUT_TOKEN", "not-for-the-record"),
    ]);
    let mut lc = Lifecycle::new(&["github-action".into()], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), vars);
    lc.before(&mut ctx).unwrap();
    push_command_run(&mut ctx, "", 3);
    lc.after(&mut ctx).unwrap();
    let names: Vec<&str> = ctx.completed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["material", "command-run", "github-action", "product"]
    );
    let a = completed(&ctx, "github-action");
    assert_eq!(
        a.type_uri,
        "https://aflock.ai/attestations/github-action/v0.1"
    );
    let aref = format!("actions/checkout@{sha}");
    assert_eq!(
        a.json,
        json!({
            "actionref": aref, "actiontype": "javascript", "actionname": "Checkout",
            "actioninputs": {"fetch-depth": "1", "token": "******"},
            "actionoutputs": {"ref": "abc", "notes": "line1\nline2"},
            "exitcode": 3, "actiondir": action_dir.to_str().unwrap(), "refpinned": true,
            "runid": "42", "workflowname": "build", "jobname": "compile",
        })
    );
    assert_eq!(
        a.subjects[&format!("actionref:{aref}")],
        DigestSet::from_bytes(aref.as_bytes(), &[HashAlg::Sha256])
    );

    // A tag ref is not pinned (and `refpinned` is then absent, omitempty).
    let opts = AttestorOptions {
        github_action_ref: Some("actions/checkout@v4".into()),
        ..Default::default()
    };
    let mut lc = Lifecycle::new(&["github-action".into()], opts).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), env(&[("GITHUB_ACTIONS", "true")]));
    lc.before(&mut ctx).unwrap();
    push_command_run(&mut ctx, "", 0);
    lc.after(&mut ctx).unwrap();
    let a = completed(&ctx, "github-action");
    assert!(a.json.get("refpinned").is_none());
    assert_eq!(a.json["actiontype"], "");

    // Outside GitHub without a ref: skipped with a reason.
    let mut lc = Lifecycle::new(&["github-action".into()], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws, vec![]);
    lc.before(&mut ctx).unwrap();
    push_command_run(&mut ctx, "", 0);
    lc.after(&mut ctx).unwrap();
    assert!(ctx.completed.iter().all(|c| c.name != "github-action"));
    assert!(lc.skipped()[0].reason.contains("not in a github ci job"));
}

#[test]
fn material_fails_cleanly_on_a_missing_workdir() {
    let mut lc = Lifecycle::new(&[], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new("/nonexistent/cilock-test-dir".into(), vec![]);
    match lc.before(&mut ctx) {
        Err(AttestError::Io { what, .. }) => assert!(what.contains("/nonexistent/cilock-test-dir")),
        other => panic!("unexpected {other:?}"),
    }
}

fn gh_env(output: &Path) -> Vec<(String, String)> {
    env(&[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_ACTION_REPOSITORY", "a/b"),
        ("GITHUB_ACTION_REF", "v1"),
        ("GITHUB_OUTPUT", output.to_str().unwrap()),
    ])
}

fn observe_github_action(
    ws: &Path,
    output: &Path,
) -> cilock_evidence::attestors::github_action::GitHubActionAttestation {
    let filter =
        cilock_evidence::attestors::environment::SensitiveEnvFilter::new(&Default::default())
            .unwrap();
    let a =
        cilock_evidence::attestors::github_action::GitHubActionAttestor::new(None, None, filter);
    let ctx = AttestationContext::new(ws.to_path_buf(), gh_env(output));
    a.observe(&ctx).unwrap()
}

#[test]
fn github_output_fifo_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Without O_NONBLOCK this open would wait for a writer forever; the test
    // runs it on a thread and gives it 20 s.
    let (tx, rx) = std::sync::mpsc::channel();
    let (ws, f) = (tmp.path().to_path_buf(), fifo.clone());
    std::thread::spawn(move || {
        let _ = tx.send(observe_github_action(&ws, &f));
    });
    let d = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("observe blocked on a FIFO GITHUB_OUTPUT");
    assert!(d.actionoutputs.is_empty());
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
    assert!(
        d.notes[0].contains("not a regular file (a fifo)"),
        "{:?}",
        d.notes
    );
}

#[test]
fn github_output_is_read_bounded_regular_and_not_through_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    // A 2 GiB sparse file: at most MAX_FILE_BYTES are read.
    let big = tmp.path().join("big");
    std::fs::write(&big, b"first=1\nsecond=2\n").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.set_len(2 << 30).unwrap();
    drop(f);
    let d = observe_github_action(tmp.path(), &big);
    assert_eq!(d.actionoutputs.get("first").map(String::as_str), Some("1"));
    assert_eq!(d.actionoutputs.get("second").map(String::as_str), Some("2"));
    assert_eq!(d.actionoutputs.len(), 2, "{:?}", d.actionoutputs.keys());
    assert_eq!(d.notes.len(), 1);
    assert!(
        d.notes[0].contains("read only the first 1048576 bytes"),
        "{:?}",
        d.notes
    );
    // A cut line is not recorded: 1 MiB of `x=` without a newline.
    let long = tmp.path().join("long");
    let mut content = b"ok=yes\nx=".to_vec();
    content.resize(2 << 20, b'a');
    std::fs::write(&long, &content).unwrap();
    let d = observe_github_action(tmp.path(), &long);
    assert_eq!(d.actionoutputs.keys().collect::<Vec<_>>(), vec!["ok"]);

    // A symbolic link (to a file the job could not read, as root would) is
    // not followed; nor is /proc/<pid>/environ read through one; a device
    // is refused.
    let secret = tmp.path().join("kv.env");
    std::fs::write(&secret, b"DB_PASSWORD=SuperSecret\n").unwrap();
    let link = tmp.path().join("out-link");
    symlink(&secret, &link).unwrap();
    let d = observe_github_action(tmp.path(), &link);
    assert!(d.actionoutputs.is_empty());
    assert!(d.notes[0].contains("symbolic link"), "{:?}", d.notes);
    // Another process's environment (security review #1): never read.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/ROOTPROCxRfiCYEXAMPLEKEY",
        )
        .spawn()
        .unwrap();
    let environ = format!("/proc/{}/environ", child.id());
    let d = observe_github_action(tmp.path(), Path::new(&environ));
    let _ = child.kill();
    let _ = child.wait();
    assert!(d.actionoutputs.is_empty(), "{:?}", d.actionoutputs);
    assert!(d.notes[0].contains("pseudo filesystem"), "{:?}", d.notes);
    let d = observe_github_action(tmp.path(), Path::new("/dev/zero"));
    assert!(d.actionoutputs.is_empty());
    assert!(d.notes[0].contains("character device"), "{:?}", d.notes);
}

#[test]
fn github_action_files_are_read_once_per_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("output");
    write(&out, b"v=first\n");
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), gh_env(&out));
    push_command_run(&mut ctx, "", 0);
    // `Lifecycle::after` observes (to decide whether to record) and then
    // attests through `run_one`: the file is read by the first observation
    // only. Here the file changes between the two.
    let filter =
        cilock_evidence::attestors::environment::SensitiveEnvFilter::new(&Default::default())
            .unwrap();
    let mut a =
        cilock_evidence::attestors::github_action::GitHubActionAttestor::new(None, None, filter);
    assert_eq!(a.observe(&ctx).unwrap().actionoutputs["v"], "first");
    write(&out, b"v=second\n");
    cilock_evidence::attestors::run_one(&mut ctx, &mut a).unwrap();
    assert_eq!(
        completed(&ctx, "github-action").json["actionoutputs"]["v"],
        "first"
    );
    // The next step reads the file again.
    assert_eq!(a.observe(&ctx).unwrap().actionoutputs["v"], "second");
}

fn open_path_dir(p: &Path) -> std::sync::Arc<std::os::fd::OwnedFd> {
    std::sync::Arc::new(
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap(),
    )
}

/// A 0700 directory holding files the job must never see attested.
fn rootonly(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    write(&p.join("kv.env"), b"DB_PASSWORD=SuperSecret-RootOnly-123\n");
    write(&p.join("sub/secret.txt"), b"secret\n");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn workdir_swapped_for_a_link_between_two_walks_of_the_same_fd() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    write(&ws.join("m.txt"), b"material\n");
    write(&ws.join("d/n.txt"), b"nested\n");
    rootonly(&tmp.path().join("rootonly"));
    let mut lc = Lifecycle::new(&[], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), vec![]);
    ctx.workdir_fd = Some(open_path_dir(&ws));
    lc.before(&mut ctx).unwrap();
    assert_eq!(
        keys(&completed(&ctx, "material").json),
        set(&["d/n.txt", "m.txt"])
    );
    write(&ws.join("new.bin"), b"product\n");
    std::fs::rename(&ws, tmp.path().join("ws.orig")).unwrap();
    symlink(tmp.path().join("rootonly"), &ws).unwrap();
    push_command_run(&mut ctx, "", 0);
    lc.after(&mut ctx).unwrap();
    // The second walk of the same descriptor sees the original tree.
    assert_eq!(keys(&completed(&ctx, "product").json), set(&["new.bin"]));
    assert!(lc.skipped_paths().is_empty(), "{:?}", lc.skipped_paths());

    // Without a descriptor in the context, the path is opened once per
    // walk: the swap is then seen at the start of the next walk, and that
    // walk is a walk of the new target only (here the job could have
    // written there itself).
    let mut ctx2 = AttestationContext::new(ws.clone(), vec![]);
    let mut lc2 = Lifecycle::new(&[], AttestorOptions::default()).unwrap();
    lc2.before(&mut ctx2).unwrap();
    assert_eq!(
        keys(&completed(&ctx2, "material").json),
        set(&["kv.env", "sub/secret.txt"])
    );
}

#[test]
fn mid_walk_swap_of_a_directory_is_not_followed() {
    use cilock_evidence::attestors::filetree::{walk, WalkFile, WalkLimits};
    use std::os::fd::AsFd;
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    write(&ws.join("a/mine.txt"), b"mine\n");
    write(&ws.join("zzz/last.txt"), b"z\n");
    rootonly(&tmp.path().join("rootonly"));
    let root = open_path_dir(&ws);
    let (ws2, ro) = (ws.clone(), tmp.path().join("rootonly"));
    // One visiting thread: the visitor runs in walk order. The walk is LIFO,
    // so zzz/ is walked while a/ waits, listed but not yet opened; the swap
    // happens then (security review #3, race variant).
    let out = walk(
        root.as_fd(),
        std::slice::from_ref(&ws),
        &WalkLimits {
            threads: 1,
            ..Default::default()
        },
        &move |f: &WalkFile<'_>| {
            if f.rel == "zzz/last.txt" {
                std::fs::rename(ws2.join("a"), ws2.join("a.real")).unwrap();
                symlink(&ro, ws2.join("a")).unwrap();
            }
            Ok(Some(f.meta.len()))
        },
    )
    .unwrap();
    assert_eq!(out.files.keys().collect::<Vec<_>>(), vec!["zzz/last.txt"]);
    assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
    assert_eq!(out.skipped[0].path, "a");
    assert!(
        out.skipped[0].reason.contains("changed during the walk"),
        "{:?}",
        out.skipped
    );
}

#[test]
fn a_2500_deep_chain_is_walked_to_the_depth_bound_in_linear_work() {
    use cilock_evidence::attestors::filetree::{walk, WalkFile, WalkLimits, MAX_WALK_DEPTH};
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    use std::os::fd::{AsFd, OwnedFd};
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    write(&ws.join("top.txt"), b"top\n");
    // Built by descriptor: the path is longer than PATH_MAX.
    let mut cur: OwnedFd = std::fs::File::open(&ws).unwrap().into();
    for _ in 0..2500 {
        mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
        cur = openat(
            &cur,
            "d",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
    }
    drop(cur);
    let mut lc = Lifecycle::new(&[], AttestorOptions::default()).unwrap();
    let mut ctx = AttestationContext::new(ws.clone(), vec![]);
    lc.before(&mut ctx).unwrap();
    assert_eq!(keys(&completed(&ctx, "material").json), set(&["top.txt"]));
    let skipped = lc.skipped_paths();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].1.reason.contains("deeper than 256 directories"));
    assert_eq!(skipped[0].1.path.matches('d').count(), MAX_WALK_DEPTH + 1);

    // The work: one directory open per level down to the bound.
    let root = open_path_dir(&ws);
    let out = walk(
        root.as_fd(),
        &[],
        &WalkLimits::default(),
        &|_f: &WalkFile<'_>| Ok(Some(())),
    )
    .unwrap();
    assert_eq!(out.stats.dirs, MAX_WALK_DEPTH + 1);
    assert!(out.stats.truncated);
}
