//! Issue #16: evidence stored in OCI registries and found again. A real
//! Debian `docker-registry` (distribution 2.8: no referrers API, so the
//! `sha256-<hex>` tag index) on loopback, started per test; pushes from
//! `cilock run --store`, from `step end` through the daemon's `store`, and
//! with `cilock push`; checked by independent clients (`skopeo` and plain
//! HTTP); `cilock verify --store` over a two-step chain without `-a`, a
//! tampered blob, `cilock pull`, a registry that is down, and the daemon's
//! retries of what it could not push.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cilock_testkit::cli::{b64, p, sign_policy, text};
use cilock_testkit::registry::Registry;
use cilock_testkit::step::{begin_job, chain_work_tree, release};
use cilock_testkit::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// An empty Docker config directory: no credentials from the machine.
fn docker_config() -> tempfile::TempDir {
    tempdir()
}

/// `cilock ARGS` in `dir`, with `DOCKER_CONFIG` set to `cfg`.
fn cilock_in(dir: &Path, cfg: &Path, args: &[&str]) -> Output {
    Command::new(bin("cilock"))
        .current_dir(dir)
        .args(args)
        .env("DOCKER_CONFIG", cfg)
        .env_remove("CILOCK_SOCKET")
        .output()
        .unwrap()
}

/// A plain HTTP/1.0 GET on the registry: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (status, all[end + 4..].to_vec())
}

/// `skopeo inspect --raw` of `docker://ADDR/REPO<reference>` (`:tag` or
/// `@digest`), parsed.
fn skopeo_raw(addr: &str, repo: &str, reference: &str) -> Value {
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{addr}/{repo}{reference}"),
        ])
        .env("HOME", "/nonexistent")
        .output()
        .expect("skopeo (apt install skopeo; cargo xtask setup installs it)");
    assert!(o.status.success(), "skopeo {reference}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The envelope file is in the registry, found by an independent client:
/// the `sha256-<subject>` tag index (skopeo) lists a referrer whose layer is
/// the envelope blob, and that blob (plain HTTP) is the file byte for byte.
/// Returns the blob's hex digest.
fn assert_stored(reg: &Registry, repo: &str, envelope: &Path, subject_hex: &str) -> String {
    let bytes = std::fs::read(envelope).unwrap();
    let hex = sha256_hex(&bytes);
    let (status, body) = http_get(&reg.addr, &format!("/v2/{repo}/blobs/sha256:{hex}"));
    assert_eq!(status, 200, "blob GET: {}", String::from_utf8_lossy(&body));
    assert!(
        body == bytes,
        "the stored blob differs from {}",
        envelope.display()
    );
    let index = skopeo_raw(&reg.addr, repo, &format!(":sha256-{subject_hex}"));
    assert_eq!(
        index["mediaType"],
        json!("application/vnd.oci.image.index.v1+json"),
        "{index:#}"
    );
    let manifests = index["manifests"].as_array().unwrap();
    let mut found = false;
    for m in manifests {
        assert_eq!(
            m["artifactType"],
            json!("application/vnd.in-toto+json"),
            "{m}"
        );
        let digest = m["digest"].as_str().unwrap();
        let man = skopeo_raw(&reg.addr, repo, &format!("@{digest}"));
        assert_eq!(
            man["subject"]["digest"],
            json!(format!("sha256:{subject_hex}")),
            "{man:#}"
        );
        if man["layers"][0]["digest"] == json!(format!("sha256:{hex}")) {
            assert_eq!(
                man["layers"][0]["mediaType"],
                json!("application/vnd.dsse.envelope.v1+json")
            );
            assert_eq!(man["layers"][0]["size"], json!(bytes.len()));
            found = true;
        }
    }
    assert!(
        found,
        "no referrer of sha256:{subject_hex} holds blob {hex}: {index:#}"
    );
    hex
}

/// A loopback address whose port nothing listens on (bound, then closed).
fn closed_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `cilock run --store` (in-process engine) pushes the envelope once `-o`
/// is written: skopeo finds the tag index of the product's digest, plain
/// HTTP the blob, byte-identical; `cilock push` of the same file to
/// another repository does the same; `cilock pull` gets it back.
#[test]
fn run_store_push_and_pull_seen_by_independent_clients() {
    let reg = Registry::start();
    let tmp = tempdir();
    let dir = tmp.path();
    let cfg = docker_config();
    let (key, _pubkey) = keygen(dir);
    let out = dir.join("build.json");
    let url = reg.url("evidence/run");
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "run",
            "--no-daemon",
            "-k",
            p(&key),
            "-s",
            "build",
            "-o",
            p(&out),
            "--store",
            &url,
            "--",
            "sh",
            "-c",
            "echo hi > out.txt",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "cilock: attestation stored in {url}: blob sha256:"
        )),
        "{stderr}"
    );
    let product = sha256_hex(b"hi\n");
    let blob = assert_stored(&reg, "evidence/run", &out, &product);

    // `cilock push` of the same file: stdout names the blob and the referrer.
    let url2 = reg.url("evidence/pushed");
    let o = cilock_in(dir, cfg.path(), &["push", "--store", &url2, p(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("stored in {url2}: blob sha256:{blob}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("sha256:{product} -> sha256:")),
        "{stdout}"
    );
    assert_stored(&reg, "evidence/pushed", &out, &product);
    // Pushed again: still one referrer for that blob in the index.
    let o = cilock_in(dir, cfg.path(), &["push", "--store", &url2, p(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let index = skopeo_raw(&reg.addr, "evidence/pushed", &format!(":sha256-{product}"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index:#}");

    // `cilock pull` by the product's file and by its digest: byte for byte.
    let pulled = dir.join("pulled");
    std::fs::create_dir(&pulled).unwrap();
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "pull",
            "--store",
            &url,
            "-f",
            p(&dir.join("out.txt")),
            "-o",
            p(&pulled),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let got = pulled.join(format!("{blob}.json"));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&out).unwrap());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(p(&got)),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_dir(&pulled).unwrap().count(), 1);
    // Nothing for an unknown digest: exit 1, said so.
    let none = sha256_hex(b"nothing was built from this");
    let o = cilock_in(
        dir,
        cfg.path(),
        &["pull", "--store", &url, "-s", &none, "-o", p(&pulled)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no attestation found for sha256:"),
        "{}",
        text(&o)
    );
    // Bad input is refused before anything runs: exit 2.
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "run",
            "--no-daemon",
            "-k",
            p(&key),
            "-s",
            "x",
            "-o",
            p(&dir.join("x.json")),
            "--store",
            "https://example.com/r",
            "--",
            "touch",
            "ran",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        !dir.join("ran").exists(),
        "the command ran despite a bad --store"
    );
    let o = cilock_in(
        dir,
        cfg.path(),
        &["push", "--store", &url2, p(&dir.join("out.txt"))],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A signed policy is a DSSE envelope but not an in-toto statement.
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        br#"{"expires": "2099-01-01T00:00:00Z", "steps": {}}"#,
    )
    .unwrap();
    let signed = dir.join("policy.signed.json");
    let o = cilock_in(
        dir,
        cfg.path(),
        &["sign", "-k", p(&key), "-f", p(&policy), "-o", p(&signed)],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cilock_in(
        dir,
        cfg.path(),
        &["push", "--store", &url2, p(&out), p(&signed)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("only in-toto statements are stored"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "something was pushed: {}", text(&o));
}

/// A registry that is down: `cilock run --store` exits 3, says which store,
/// why, where the envelope is kept and how to retry; the envelope is kept
/// (the `-o` file; for `-o -` an owner-only copy in `$TMPDIR`, said so), and
/// `cilock push` stores it once a registry is up.
#[test]
fn registry_down_keeps_the_envelope_and_push_retries() {
    let tmp = tempdir();
    let dir = tmp.path();
    let cfg = docker_config();
    let (key, _pubkey) = keygen(dir);
    let down = format!("oci+http://{}/evidence/down", closed_addr());
    let out = dir.join("step.json");
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "run",
            "--no-daemon",
            "-k",
            p(&key),
            "-s",
            "step",
            "-o",
            p(&out),
            "--store",
            &down,
            "--",
            "sh",
            "-c",
            "echo kept > kept.txt",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("the attestation could not be stored in {down}: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "it is kept at {}; retry with: cilock push --store {down} {}",
            p(&out),
            p(&out)
        )),
        "{stderr}"
    );
    let kept = std::fs::read(&out).unwrap();
    assert!(serde_json::from_slice::<Value>(&kept).unwrap()["signatures"].is_array());
    // The command's own failure wins over the store's.
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "run",
            "--no-daemon",
            "-k",
            p(&key),
            "-s",
            "step",
            "-o",
            p(&dir.join("f.json")),
            "--store",
            &down,
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // `-o -`: the envelope on stdout, a copy in $TMPDIR named on stderr.
    let tmpdir = tempdir();
    let o = Command::new(bin("cilock"))
        .current_dir(dir)
        .args([
            "run",
            "--no-daemon",
            "-k",
            p(&key),
            "-s",
            "to-stdout",
            "-o",
            "-",
            "--store",
            &down,
            "--",
            "true",
        ])
        .env("DOCKER_CONFIG", cfg.path())
        .env("TMPDIR", tmpdir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let copies: Vec<PathBuf> = std::fs::read_dir(tmpdir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cilock-to-stdout-") && n.ends_with(".json"))
        })
        .collect();
    assert_eq!(copies.len(), 1, "{}", text(&o));
    assert_eq!(std::fs::read(&copies[0]).unwrap(), o.stdout);
    assert_eq!(
        std::fs::metadata(&copies[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "it is kept at {} (a copy: the -o destination keeps none); retry with: cilock push --store {down} {}",
            p(&copies[0]),
            p(&copies[0])
        )),
        "{}",
        text(&o)
    );

    // `cilock push` to the store that is down: exit 3; once one is up: 0.
    let o = cilock_in(dir, cfg.path(), &["push", "--store", &down, p(&out)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let reg = Registry::start();
    let url = reg.url("evidence/later");
    let o = cilock_in(
        dir,
        cfg.path(),
        &["push", "--store", &url, p(&out), p(&copies[0])],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_stored(&reg, "evidence/later", &out, &sha256_hex(b"kept\n"));
}

/// The signed policy: `build` then `package` (artifactsFrom build), both by
/// `keyid`, each with material, command-run, product and git.
fn chain_policy(dir: &Path, cfg: &Path, policy_key: &Path, pubkey: &Path, keyid: &str) -> PathBuf {
    let pem = std::fs::read(pubkey).unwrap();
    let step = |name: &str, from: Vec<&str>| {
        json!({
            "name": name,
            "functionaries": [{"type": "publickey", "publickeyid": keyid}],
            "attestations": [
                {"type": "https://witness.dev/attestations/material/v0.1"},
                {"type": "https://witness.dev/attestations/command-run/v0.1"},
                {"type": "https://witness.dev/attestations/product/v0.1"},
                {"type": "https://witness.dev/attestations/git/v0.1"}
            ],
            "artifactsFrom": from
        })
    };
    let doc = json!({
        "expires": "2099-01-01T00:00:00Z",
        "publickeys": {keyid: {"keyid": keyid, "key": b64(&pem)}},
        "steps": {"build": step("build", vec![]), "package": step("package", vec!["build"])}
    });
    let signed = dir.join("policy.signed.json");
    sign_policy(
        |args| cilock_in(dir, cfg, args),
        &doc,
        policy_key,
        &dir.join("policy.json"),
        &signed,
    );
    signed
}

/// `cilock verify --store` without `-a`: from `app.tgz` alone it finds
/// `package` (a referrer of app.tgz's digest) and, through its git commit
/// back-reference (`sha1`), `build`; the chain passes. A tampered blob in
/// the registry fails verification with a message naming it.
#[test]
fn verify_store_finds_a_two_step_chain_and_refuses_a_tampered_blob() {
    let reg = Registry::start();
    let tmp = tempdir();
    let dir = tmp.path();
    let cfg = docker_config();
    let work = chain_work_tree(dir);
    let key = dir.join("signer.pem");
    let o = cilock_in(dir, cfg.path(), &["keygen", "-o", p(&key)]);
    assert!(o.status.success(), "{}", text(&o));
    let keyid = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let pubkey = dir.join("signer.pem.pub");
    let pdir = dir.join("policy-keys");
    std::fs::create_dir(&pdir).unwrap();
    let (policy_key, policy_pub) = keygen(&pdir);
    let url = reg.url("evidence/chain");
    let run = |step: &str, out: &Path, cmd: &[&str]| {
        let mut args = vec![
            "run",
            "--no-daemon",
            "-k",
            p(&key),
            "-s",
            step,
            "-o",
            p(out),
            "-a",
            "git",
            "--workdir",
            p(&work),
            "--store",
            &url,
            "--",
        ];
        args.extend_from_slice(cmd);
        let o = cilock_in(&work, cfg.path(), &args);
        assert_eq!(o.status.code(), Some(0), "cilock run {step}: {}", text(&o));
    };
    let build = dir.join("build.json");
    let package = dir.join("package.json");
    run("build", &build, &["sh", "-c", "cc -o app main.c"]);
    run("package", &package, &["tar", "czf", "app.tgz", "app"]);
    let app_tgz = work.join("app.tgz");
    let tgz_hex = sha256_hex(&std::fs::read(&app_tgz).unwrap());
    assert_stored(&reg, "evidence/chain", &package, &tgz_hex);
    let pol = chain_policy(dir, cfg.path(), &policy_key, &pubkey, &keyid);

    let verify = || {
        cilock_in(
            dir,
            cfg.path(),
            &[
                "verify",
                "-p",
                p(&pol),
                "-k",
                p(&policy_pub),
                "--store",
                &url,
                "-f",
                p(&app_tgz),
                "--json",
            ],
        )
    };
    let o = verify();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["passed"], json!(true), "{r:#}");
    let blob_of = |f: &Path| sha256_hex(&std::fs::read(f).unwrap());
    for (s, f) in [("build", &build), ("package", &package)] {
        let st = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == s)
            .unwrap();
        assert_eq!(st["passed"], json!(true), "{r:#}");
        let source = st["collections"][0]["source"].as_str().unwrap();
        assert!(
            source.ends_with(&format!("@sha256:{}", blob_of(f))),
            "{s}: {source}"
        );
    }
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cilock: 2 attestation(s) found in"),
        "{}",
        text(&o)
    );
    // Only the package found (no back-reference followed) cannot pass:
    // -a with the package file alone fails, as a control.
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "verify",
            "-p",
            p(&pol),
            "-k",
            p(&policy_pub),
            "-a",
            p(&package),
            "-f",
            p(&app_tgz),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // `cilock pull` by the git commit (sha1) gets both, byte for byte.
    let commit = String::from_utf8(
        Command::new("git")
            .current_dir(&work)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let pulled = dir.join("pulled");
    std::fs::create_dir(&pulled).unwrap();
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "pull",
            "--store",
            &url,
            "-s",
            &format!("sha1:{commit}"),
            "-o",
            p(&pulled),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for f in [&build, &package] {
        assert_eq!(
            std::fs::read(pulled.join(format!("{}.json", blob_of(f)))).unwrap(),
            std::fs::read(f).unwrap()
        );
    }

    // Tamper with the build envelope's blob in the registry's storage.
    let build_hex = blob_of(&build);
    let data = reg.blob_path("evidence/chain", &format!("sha256:{build_hex}"));
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&data, &bytes).unwrap();
    let o = verify();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&build_hex),
        "the error does not name the tampered blob {build_hex}: {}",
        text(&o)
    );
}

/// A daemon whose configuration has the store `url` (pushing with the
/// Docker config `dcfg`) and the lines `extra`.
fn store_daemon(url: &str, extra: &str, dcfg: &tempfile::TempDir) -> Daemon {
    Daemon::start_with(
        "auto",
        &format!(
            "store = [{url:?}]\n{extra}store_docker_config = {:?}\n",
            p(dcfg.path())
        ),
    )
}

/// Begins the step `name` in `dir`, runs `script` in it to success.
fn job_done(daemon: &Daemon, name: &str, dir: &Path, script: &str) {
    let mut job = begin_job(daemon, name, dir, script, Stdio::null());
    release(&mut job);
    assert!(job.wait().unwrap().success());
}

/// The daemon's `store`: `step end` gets the envelope after the daemon
/// pushed it with its own configuration; the client says so (exit 0) and the
/// registry holds it (skopeo, HTTP).
#[test]
fn step_end_pushes_through_the_daemon_store() {
    let reg = Registry::start();
    let dcfg = docker_config();
    let url = reg.url("evidence/daemon");
    let daemon = store_daemon(&url, "", &dcfg);
    let tmp = tempdir();
    let dir = tmp.path();
    job_done(&daemon, "ship", dir, "echo shipped > shipped.txt\n");
    let out = dir.join("ship.json");
    let o = daemon
        .command()
        .args(["step", "end", "--step", "ship", "-o", p(&out)])
        .env("DOCKER_CONFIG", dcfg.path())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o),
        daemon.log_text()
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "cilock: the daemon stored the attestation in {url}: blob sha256:"
        )),
        "{}",
        text(&o)
    );
    assert_stored(&reg, "evidence/daemon", &out, &sha256_hex(b"shipped\n"));
    // Pushed: nothing waits for a retry.
    let left: Vec<_> = std::fs::read_dir(daemon.state.join("unpushed"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// The daemon's store is down when the step ends: `step end` exits 3 and
/// says so; the daemon keeps the envelope in `unpushed/` (0700/0600) and,
/// once a registry answers at that address, its retry pushes it and
/// deletes the copy (logged).
#[test]
fn daemon_retries_what_it_could_not_push() {
    let addr = closed_addr();
    let dcfg = docker_config();
    let url = format!("oci+http://{addr}/evidence/retried");
    let daemon = store_daemon(
        &url,
        "store_timeout = \"10s\"\nstore_retry = \"1s\"\n",
        &dcfg,
    );
    let tmp = tempdir();
    let dir = tmp.path();
    job_done(&daemon, "later", dir, "echo later > later.txt\n");
    let out = dir.join("later.json");
    let o = daemon
        .command()
        .args(["step", "end", "--step", "later", "-o", p(&out)])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}\n{}",
        text(&o),
        daemon.log_text()
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "the attestation could not be stored in {url}: (the daemon's push) "
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("the daemon keeps the envelope ("),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "retry with: cilock push --store {url} {}",
            p(&out)
        )),
        "{stderr}"
    );
    let unpushed = daemon.state.join("unpushed");
    assert_eq!(
        std::fs::metadata(&unpushed).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&unpushed)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&out).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let reg = Registry::start_at(&addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    while files[0].exists() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not push its unpushed envelope: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bytes = std::fs::read(&out).unwrap();
    let (status, body) = http_get(
        &reg.addr,
        &format!("/v2/evidence/retried/blobs/sha256:{}", sha256_hex(&bytes)),
    );
    assert_eq!(status, 200);
    assert!(body == bytes);
    let index = skopeo_raw(
        &reg.addr,
        "evidence/retried",
        &format!(":sha256-{}", sha256_hex(b"later\n")),
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index:#}");
    assert!(
        daemon
            .log_text()
            .contains("every store has the attestation: unpushed copy deleted"),
        "{}",
        daemon.log_text()
    );
}

/// A step nobody ends: the daemon ends it itself (idle), keeps its envelope
/// and pushes that same envelope to its store (no client to tell: logged).
#[test]
fn a_step_the_daemon_ends_itself_is_pushed() {
    let reg = Registry::start();
    let dcfg = docker_config();
    let url = reg.url("evidence/idle");
    let daemon = store_daemon(&url, "step_idle_timeout = \"1s\"\n", &dcfg);
    let tmp = tempdir();
    let dir = tmp.path();
    job_done(&daemon, "forgotten", dir, "echo idle > idle.txt\n");
    wait_for(60, "the idle step to be ended and kept", || {
        !kept_envelopes(&daemon.state).is_empty()
    });
    let kept = kept_envelopes(&daemon.state).remove(0);
    // The push ends with this line (blob, referrers, then the tag index).
    wait_for(60, "the daemon to push the kept envelope", || {
        daemon.log_text().contains("attestation stored")
    });
    assert_stored(&reg, "evidence/idle", &kept, &sha256_hex(b"idle\n"));
}

/// `cilock run` through a daemon with a `store`: the daemon pushes what it
/// signed before it replies, the client pushes the written `-o` file to its
/// own `--store`; both say so, both registries hold the same bytes.
#[test]
fn run_through_the_daemon_pushes_to_both_stores() {
    let reg = Registry::start();
    let dcfg = docker_config();
    let daemon_url = reg.url("evidence/by-daemon");
    let client_url = reg.url("evidence/by-client");
    let daemon = store_daemon(&daemon_url, "", &dcfg);
    let tmp = tempdir();
    let dir = tmp.path();
    let out = dir.join("run.json");
    let o = daemon
        .command()
        .current_dir(dir)
        .args([
            "run",
            "-s",
            "both",
            "-o",
            p(&out),
            "--store",
            &client_url,
            "--",
            "sh",
            "-c",
            "echo both > both.txt",
        ])
        .env("DOCKER_CONFIG", dcfg.path())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o),
        daemon.log_text()
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "cilock: the daemon stored the attestation in {daemon_url}: blob sha256:"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "cilock: attestation stored in {client_url}: blob sha256:"
        )),
        "{stderr}"
    );
    let product = sha256_hex(b"both\n");
    let a = assert_stored(&reg, "evidence/by-daemon", &out, &product);
    let b = assert_stored(&reg, "evidence/by-client", &out, &product);
    assert_eq!(a, b);
}

/// Issue #17: `--attestor-slsa-export` with `--store`: the Statement v1
/// export is pushed too, as a referrer of the product beside the
/// collection.
#[test]
fn the_slsa_export_is_stored_beside_the_collection() {
    let reg = Registry::start();
    let tmp = tempdir();
    let dir = tmp.path();
    let cfg = docker_config();
    let (key, _pubkey) = keygen(dir);
    let out = dir.join("build.json");
    let url = reg.url("evidence/slsa");
    let o = cilock_in(
        dir,
        cfg.path(),
        &[
            "run",
            "--no-daemon",
            "-k",
            p(&key),
            "-s",
            "build",
            "-o",
            p(&out),
            "--attestor-slsa-export",
            "--store",
            &url,
            "--",
            "sh",
            "-c",
            "echo hi > out.txt",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let product = sha256_hex(b"hi\n");
    assert_stored(&reg, "evidence/slsa", &out, &product);
    let export = dir.join("build.json-slsa.json");
    assert_stored(&reg, "evidence/slsa", &export, &product);
}

/// Issue #17: through the daemon, its `store` gets the SLSA export too.
#[test]
fn the_daemon_stores_the_slsa_export() {
    let reg = Registry::start();
    let dcfg = docker_config();
    let url = reg.url("evidence/dslsa");
    let daemon = store_daemon(&url, "", &dcfg);
    let tmp = tempdir();
    let dir = tmp.path();
    let out = dir.join("d.json");
    let o = daemon
        .command()
        .args([
            "run",
            "--step",
            "dslsa",
            "-o",
            p(&out),
            "--attestor-slsa-export",
        ])
        .args(["--", "sh", "-c", "echo d > d.txt"])
        .current_dir(dir)
        .env("DOCKER_CONFIG", dcfg.path())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o),
        daemon.log_text()
    );
    let product = sha256_hex(b"d\n");
    assert_stored(&reg, "evidence/dslsa", &out, &product);
    assert_stored(
        &reg,
        "evidence/dslsa",
        &dir.join("d.json-slsa.json"),
        &product,
    );
}

/// `step end --store` pushes the SLSA export the step asked for at begin,
/// as it pushes the envelope (the daemon has no store here).
#[test]
fn step_end_store_pushes_the_slsa_export() {
    let reg = Registry::start();
    let dcfg = docker_config();
    let url = reg.url("evidence/stepslsa");
    let daemon = Daemon::start("auto");
    let tmp = tempdir();
    let dir = tmp.path();
    let mut job = Command::new("sh")
        .args(["-c", "read go; echo e > e.txt; echo done; read end"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = job.id().to_string();
    let o = daemon.cilock(&[
        "step",
        "begin",
        "--step",
        "stepslsa",
        "--pid",
        &pid,
        "--workdir",
        p(dir),
        "--attestor-slsa-export",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut stdin = job.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(job.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "done\n");
    let out = dir.join("e.json");
    let o = daemon
        .command()
        .args([
            "step",
            "end",
            "--step",
            "stepslsa",
            "-o",
            p(&out),
            "--store",
            &url,
        ])
        .env("DOCKER_CONFIG", dcfg.path())
        .output()
        .unwrap();
    drop(stdin);
    let _ = job.wait();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o),
        daemon.log_text()
    );
    let product = sha256_hex(b"e\n");
    assert_stored(&reg, "evidence/stepslsa", &out, &product);
    assert_stored(
        &reg,
        "evidence/stepslsa",
        &dir.join("e.json-slsa.json"),
        &product,
    );
}
