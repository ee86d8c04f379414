//! Reliability: verify. Issue #13 item 8 (no ignored rule, Rego limits,
//! failures that explain themselves, printed once), item 9 (`verify --json
//! | head` and every other command writing to a closed pipe) and F13
//! (bounded input sizes). Attestations are signed statements made here
//! (no tracing needed), checked through the real `cilock` binary.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cilock_evidence::collection::{Collection, CollectionAttestation, COLLECTION_TYPE};
use cilock_evidence::digest::DigestSet;
use cilock_evidence::dsse::{self, POLICY_PAYLOAD_TYPE};
use cilock_evidence::intoto::{Statement, Subject, PAYLOAD_TYPE};
use cilock_evidence::keys::Signer;
use cilock_testkit::*;
use serde_json::{json, Value};

const COMMAND_RUN: &str = "https://witness.dev/attestations/command-run/v0.1";

/// A directory with a key pair, an artifact `app`, a signed one-step
/// ("build") policy and attestations.
struct World {
    dir: tempfile::TempDir,
    key: PathBuf,
    pubkey: PathBuf,
    signer: Signer,
    app: PathBuf,
    app_digest: String,
}

impl World {
    fn new() -> World {
        let dir = tempdir();
        let (key, pubkey) = keygen(dir.path());
        let signer = Signer::from_file(&key).unwrap();
        let app = dir.path().join("app");
        std::fs::write(&app, b"the app binary\n").unwrap();
        let app_digest = DigestSet::from_file(&app, &[cilock_evidence::HashAlg::Sha256])
            .unwrap()
            .get_sha256()
            .unwrap()
            .to_string();
        World {
            dir,
            key,
            pubkey,
            signer,
            app,
            app_digest,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the signed policy with the given Rego modules (name, source)
    /// on command-run; returns its path.
    fn policy(&self, modules: &[(&str, &str)]) -> PathBuf {
        let keyid = self.signer.key_id().to_string();
        let pem = std::fs::read(&self.pubkey).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let regos: Vec<Value> = modules
            .iter()
            .map(|(n, src)| json!({"name": n, "module": b64(src.as_bytes())}))
            .collect();
        let p = json!({
            "expires": "2099-01-01T00:00:00Z",
            "publickeys": {keyid.clone(): {"keyid": keyid.clone(), "key": b64(&pem)}},
            "steps": {"build": {
                "name": "build",
                "functionaries": [{"type": "publickey", "publickeyid": keyid}],
                "attestations": [{"type": COMMAND_RUN, "regopolicies": regos}]
            }}
        });
        let env = dsse::sign(
            POLICY_PAYLOAD_TYPE,
            serde_json::to_vec(&p).unwrap(),
            &self.signer,
        )
        .unwrap();
        let out = self.path("policy.signed.json");
        std::fs::write(&out, env.to_json()).unwrap();
        out
    }

    /// Writes a signed attestation of step `step` with the given subject
    /// digests (sha256 hex) as `name`; returns its path.
    fn attestation(&self, name: &str, step: &str, subjects: &[&str]) -> PathBuf {
        let coll = Collection {
            name: step.into(),
            attestations: vec![CollectionAttestation {
                type_: COMMAND_RUN.into(),
                attestation: json!({"cmd": ["make"], "exitcode": 0}),
                starttime: "2026-08-01T10:00:00Z".into(),
                endtime: "2026-08-01T10:00:01Z".into(),
            }],
            backrefs: None,
        };
        let subjects = subjects
            .iter()
            .map(|d| {
                Subject::new(
                    "https://witness.dev/attestations/product/v0.1/file:app",
                    &DigestSet::sha256(d.to_string()),
                )
            })
            .collect();
        let st = Statement::new(COLLECTION_TYPE, subjects, coll);
        let env = dsse::sign(PAYLOAD_TYPE, serde_json::to_vec(&st).unwrap(), &self.signer).unwrap();
        let out = self.path(name);
        std::fs::write(&out, env.to_json()).unwrap();
        out
    }

    fn verify(&self, policy: &Path, atts: &[&Path], extra: &[&str]) -> Output {
        let mut c = Command::new(bin("cilock"));
        c.arg("verify")
            .arg("-p")
            .arg(policy)
            .arg("-k")
            .arg(&self.pubkey)
            .arg("-f")
            .arg(&self.app);
        for a in atts {
            c.arg("-a").arg(a);
        }
        c.args(extra).output().unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `numbers.range(1, 100000000)` (the review's 28 s policy) stops at the
/// memory limit, a nested loop at the time limit; both fail verification
/// (exit 1) with a message naming the module and the step, quickly.
#[test]
fn rego_time_and_memory_limits_fail_verification() {
    let w = World::new();
    let att = w.attestation("att.json", "build", &[&w.app_digest]);
    let range = "package slow\ndeny[msg] {\n  count(numbers.range(1, 100000000)) < 0\n  msg := \"never\"\n}\n";
    let policy = w.policy(&[("huge range", range)]);
    let t = Instant::now();
    let o = w.verify(&policy, &[&att], &[]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    // A hang guard only: the message says which limit stopped it.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        stdout(&o).contains("could not evaluate rego policy \"huge range\" of step \"build\" on https://witness.dev/attestations/command-run/v0.1: stopped: it exceeded the memory limit of 1024 MiB"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).ends_with("verification FAILED\n"),
        "{}",
        stdout(&o)
    );

    let nested = "package spin\nimport rego.v1\ndeny contains msg if {\n  some i in numbers.range(1, 20000)\n  some j in numbers.range(1, 20000)\n  i * j == -1\n  msg := \"never\"\n}\n";
    let policy = w.policy(&[("spin", nested)]);
    let t = Instant::now();
    let o = w.verify(&policy, &[&att], &["--rego-timeout", "1s"]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    // A hang guard only: the message says which limit stopped it.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        stdout(&o).contains("could not evaluate rego policy \"spin\" of step \"build\" on https://witness.dev/attestations/command-run/v0.1: stopped: it exceeded the time limit of 1 s"),
        "{}",
        stdout(&o)
    );
    // The same evaluation within limits passes: a cheap policy through the
    // same child, and the configured limits are validated.
    let cheap = "package ok\ndeny[msg] {\n  input.exitcode != 0\n  msg := \"failed\"\n}\n";
    let policy = w.policy(&[("exit code", cheap)]);
    let o = w.verify(
        &policy,
        &[&att],
        &["--rego-timeout", "500ms", "--rego-memory", "256M"],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = w.verify(&policy, &[&att], &["--rego-memory", "1M"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("at least 64M"), "{}", stderr(&o));
    // The child is gone: no cilock evaluation process left behind.
    let ps = sh("ps -eo args | grep -c '[_]_cilock-rego-child' || true");
    assert_eq!(ps.trim(), "0", "{ps}");
}

/// Re-running an unchanged build gives `subjects: []`; verify says which
/// envelope is which step and that it has no subjects, each line once.
#[test]
fn failures_say_which_envelope_is_which_step_once() {
    let w = World::new();
    let rebuild = w.attestation("rebuild.json", "build", &[]);
    let other = w.attestation("test.json", "test", &[&w.app_digest]);
    let policy = w.policy(&[]);
    let o = w.verify(&policy, &[&rebuild, &other], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    let short = &w.app_digest[..12];
    let want = [
        "  - no collection named \"build\" with a matching subject was found among the validly signed attestations".to_string(),
        format!("  - {} is step \"build\" but has no subject matching the searched digests [{short}…]; its subjects: none (an output whose bytes did not change during the step is not a product, so a rebuild that changes nothing has no subjects)", rebuild.display()),
        format!("  - {} is step \"test\", not \"build\"", other.display()),
    ];
    for line in &want {
        assert_eq!(
            out.lines().filter(|l| l == line).count(),
            1,
            "{line:?} once in:\n{out}"
        );
    }
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    // An error is printed once, without repeating its cause.
    let missing = w.path("missing.pub");
    let o = Command::new(bin("cilock"))
        .args(["verify", "-p"])
        .arg(&policy)
        .arg("-k")
        .arg(&missing)
        .arg("-a")
        .arg(&rebuild)
        .arg("-f")
        .arg(&w.app)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        format!(
            "cilock: error: loading policy public key {0}: reading key file {0}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

/// A CI/lock-style snake_case extension key that cilock does not know is an
/// input error naming the key (never silently ignored).
#[test]
fn unknown_extension_key_is_refused() {
    let w = World::new();
    let att = w.attestation("att.json", "build", &[&w.app_digest]);
    let p = json!({
        "expires": "2099-01-01T00:00:00Z",
        "steps": {"build": {
            "name": "build",
            "functionaries": [{"type": "root", "certConstraint": {
                "commonname": "*", "dnsnames": ["*"], "emails": ["*"], "organizations": ["*"],
                "uris": ["*"], "roots": ["*"],
                "extensions": {"issuer": "https://token.actions.githubusercontent.com",
                               "source_repo": "https://github.com/example/app"}}}],
            "attestations": [{"type": COMMAND_RUN}]
        }}
    });
    let pf = w.path("p.json");
    std::fs::write(&pf, serde_json::to_vec(&p).unwrap()).unwrap();
    let signed = w.path("p.signed.json");
    let o = Command::new(bin("cilock"))
        .args(["sign", "-k"])
        .arg(&w.key)
        .arg("-f")
        .arg(&pf)
        .arg("-o")
        .arg(&signed)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = w.verify(&signed, &[&att], &[]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    let e = stderr(&o);
    assert!(
        e.starts_with(&format!("cilock: error: policy {}: step \"build\": certConstraint extension key \"source_repo\" is not a Fulcio extension; accepted (snake_case or Go field name, any case): issuer, github_workflow_trigger/GithubWorkflowTrigger,", signed.display())),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// A pipe whose read end is already closed: every write gets EPIPE.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    w
}

/// `verify --json | head -c 1` and the other commands writing to a closed
/// pipe: no panic (exit 101), the command's own exit status.
#[test]
fn closed_stdout_and_stderr_never_panic() {
    let w = World::new();
    let att = w.attestation("att.json", "build", &[&w.app_digest]);
    let stale = w.attestation("stale.json", "build", &["ab".repeat(32).as_str()]);
    let policy = w.policy(&[]);
    let run = |args: Vec<&std::ffi::OsStr>, close_stderr: bool| -> (Option<i32>, String) {
        let mut c = Command::new(bin("cilock"));
        c.args(args).stdout(Stdio::from(closed_pipe()));
        if close_stderr {
            c.stderr(Stdio::from(closed_pipe()));
        } else {
            c.stderr(Stdio::piped());
        }
        let o = c.output().unwrap();
        (o.status.code(), stderr(&o))
    };
    let os = |s: &str| std::ffi::OsStr::new(s).to_owned();
    let verify_args = |att: &Path, json: bool| {
        let mut v = vec![
            os("verify"),
            os("-p"),
            policy.clone().into_os_string(),
            os("-k"),
            w.pubkey.clone().into_os_string(),
            os("-a"),
            att.as_os_str().to_owned(),
            os("-f"),
            w.app.clone().into_os_string(),
        ];
        if json {
            v.push(os("--json"));
        }
        v
    };
    for _ in 0..3 {
        for json in [true, false] {
            let args = verify_args(&att, json);
            let (code, err) = run(args.iter().map(|a| a.as_os_str()).collect(), false);
            assert_eq!(code, Some(0), "{err}");
            assert!(!err.contains("panicked"), "{err}");
            let args = verify_args(&stale, json);
            let (code, err) = run(args.iter().map(|a| a.as_os_str()).collect(), false);
            assert_eq!(code, Some(1), "{err}");
            assert!(err.is_empty(), "{err}");
        }
    }
    // inspect --json and the summary, keygen printing its keyid.
    for extra in [Some("--json"), None] {
        let mut a = vec![os("inspect"), att.clone().into_os_string()];
        a.extend(extra.map(os));
        let (code, err) = run(a.iter().map(|a| a.as_os_str()).collect(), false);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.is_empty(), "{err}");
    }
    let k2 = w.path("k2.pem");
    let a = [os("keygen"), os("-o"), k2.clone().into_os_string()];
    let (code, err) = run(a.iter().map(|a| a.as_os_str()).collect(), false);
    assert_eq!(code, Some(0), "{err}");
    assert!(k2.exists());
    // Both streams closed and an error to report: exit 2, not 101.
    let a = [os("inspect"), w.path("nonexistent.json").into_os_string()];
    let (code, _) = run(a.iter().map(|a| a.as_os_str()).collect(), true);
    assert_eq!(code, Some(2));
}

/// Runs cilock with its address space limited to `limit` bytes.
fn cilock_bounded(args: &[&std::ffi::OsStr], limit: u64) -> (Output, Duration) {
    let mut c = Command::new(bin("cilock"));
    c.args(args);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let o = c.output().unwrap();
    (o, t.elapsed())
}

/// `/dev/zero` as an envelope, a policy, a key or a file to sign: a clear
/// error (exit 2) fast, within a 512 MiB address space.
#[test]
fn endless_inputs_fail_fast_with_bounded_memory() {
    let w = World::new();
    let att = w.attestation("att.json", "build", &[&w.app_digest]);
    let policy = w.policy(&[]);
    let zero = Path::new("/dev/zero");
    let o = |s: &str| std::ffi::OsStr::new(s).to_owned();
    let p = |p: &Path| p.as_os_str().to_owned();
    let out = w.path("out.json");
    let cases: Vec<(Vec<std::ffi::OsString>, String)> = vec![
        (
            vec![o("inspect"), p(zero)],
            "cilock: error: /dev/zero: not a JSON object: it starts with byte 0x00\n".into(),
        ),
        (
            vec![o("verify"), o("-p"), p(zero), o("-k"), p(&w.pubkey), o("-a"), p(&att), o("-f"), p(&w.app)],
            "cilock: error: reading the policy: /dev/zero: not a JSON object: it starts with byte 0x00\n".into(),
        ),
        (
            vec![o("verify"), o("-p"), p(&policy), o("-k"), p(&w.pubkey), o("-a"), p(zero), o("-f"), p(&w.app)],
            "cilock: error: reading the attestation: /dev/zero: not a JSON object: it starts with byte 0x00\n".into(),
        ),
        (
            vec![o("verify"), o("-p"), p(&policy), o("-k"), p(zero), o("-a"), p(&att), o("-f"), p(&w.app)],
            "cilock: error: loading policy public key /dev/zero: reading key file /dev/zero: not a regular file, and more than the 1 MiB limit for a key file could be read from it\n".into(),
        ),
        (
            vec![o("sign"), o("-k"), p(&w.key), o("-f"), p(zero), o("-o"), p(&out)],
            "cilock: error: reading /dev/zero: not a regular file, and more than the 128 MiB limit for a file to sign could be read from it\n".into(),
        ),
        (
            vec![o("sign"), o("-k"), p(zero), o("-f"), p(&policy), o("-o"), p(&out)],
            "cilock: error: loading signing key /dev/zero: reading key file /dev/zero: not a regular file, and more than the 1 MiB limit for a key file could be read from it\n".into(),
        ),
    ];
    for (args, want) in cases {
        let a: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (out, took) = cilock_bounded(&a, 512 << 20);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), want, "{args:?}");
        assert!(took < Duration::from_secs(60), "{args:?} took {took:?}");
    }
    assert!(!out.exists());
    // A regular file over the limit is refused from its size, unread.
    let big = w.path("big.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len((256 << 20) + 1).unwrap();
    let (o2, _) = cilock_bounded(&[o("inspect").as_os_str(), big.as_os_str()], 512 << 20);
    assert_eq!(o2.status.code(), Some(2));
    assert_eq!(
        stderr(&o2),
        format!(
            "cilock: error: {}: the file has 268435457 bytes, more than the 256 MiB limit for a DSSE envelope\n",
            big.display()
        )
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
}

/// A leaf certificate (and its key) from the CA in `dir` carrying Fulcio's
/// issuer (1.8), runner environment (1.11) and source repository URI
/// (1.12) extensions.
fn fulcio_leaf(dir: &Path, name: &str, repo: &str, runner: &str) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n\
             1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:https://token.actions.githubusercontent.com\n\
             1.3.6.1.4.1.57264.1.11=ASN1:UTF8String:{runner}\n\
             1.3.6.1.4.1.57264.1.12=ASN1:UTF8String:{repo}\n"
        ),
    )
    .unwrap();
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=github-actions",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    );
    (dir.join(key), dir.join(pem))
}

/// The CI/lock fixture policy's snake_case `certConstraint` through the
/// CLI: the repository's certificate passes, a certificate of an
/// `evil-org` repository and one from a self-hosted runner are rejected.
#[test]
fn snake_case_certificate_constraints_reject_evil_org() {
    let w = World::new();
    let d = w.dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=cilock test CA",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    let repo = "https://github.com/testifysec/cilock-trivy-detection-test";
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cilock/policy.json"))
            .unwrap(),
    )
    .unwrap();
    let mut constraint =
        fixture["steps"]["clean-build"]["functionaries"][0]["certConstraint"].clone();
    assert_eq!(constraint["extensions"]["source_repository_uri"], repo);
    constraint["roots"] = json!(["ca"]);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let p = json!({
        "expires": "2099-01-01T00:00:00Z",
        "roots": {"ca": {"certificate": b64(&std::fs::read(d.join("ca.pem")).unwrap())}},
        "steps": {"build": {
            "name": "build",
            "functionaries": [{"type": "root", "certConstraint": constraint}],
            "attestations": [{"type": COMMAND_RUN}]
        }}
    });
    let policy = w.path("ci.policy.signed.json");
    let env = dsse::sign(
        POLICY_PAYLOAD_TYPE,
        serde_json::to_vec(&p).unwrap(),
        &w.signer,
    )
    .unwrap();
    std::fs::write(&policy, env.to_json()).unwrap();
    // The statement, signed by each leaf with its certificate.
    let unsigned = w.attestation("unsigned.json", "build", &[&w.app_digest]);
    let payload = cilock_evidence::dsse::Envelope::from_file(&unsigned)
        .unwrap()
        .payload;
    let st = w.path("statement.json");
    std::fs::write(&st, payload).unwrap();
    let signed_by = |name: &str, repo: &str, runner: &str| -> PathBuf {
        let (key, cert) = fulcio_leaf(d, name, repo, runner);
        let out = w.path(&format!("{name}.att.json"));
        let o = Command::new(bin("cilock"))
            .args(["sign", "-t", "application/vnd.in-toto+json", "-k"])
            .arg(&key)
            .arg("--certificate")
            .arg(&cert)
            .arg("-f")
            .arg(&st)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let good = signed_by("good", repo, "github-hosted");
    let evil = signed_by(
        "evil",
        "https://github.com/evil-org/cilock-trivy-detection-test",
        "github-hosted",
    );
    let self_hosted = signed_by("selfhosted", repo, "self-hosted");
    let o = w.verify(&policy, &[&good], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = w.verify(&policy, &[&evil], &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("extension source_repository_uri (1.3.6.1.4.1.57264.1.12) is \"https://github.com/evil-org/cilock-trivy-detection-test\", \"https://github.com/testifysec/cilock-trivy-detection-test\" required"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("Some("), "{}", stdout(&o));
    let o = w.verify(&policy, &[&self_hosted], &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("extension runner_environment (1.3.6.1.4.1.57264.1.11) is \"self-hosted\", \"github-hosted\" required"),
        "{}",
        stdout(&o)
    );
    // Any one passing collection passes the step (Witness semantics): the
    // evil envelope next to the good one does not make it fail, and alone
    // it never passes.
    let o = w.verify(&policy, &[&evil, &good], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

/// An unsigned policy given to `-p` says so and how to sign it.
#[test]
fn unsigned_policy_is_named_as_such() {
    let w = World::new();
    let att = w.attestation("att.json", "build", &[&w.app_digest]);
    let signed = w.policy(&[]);
    let payload = cilock_evidence::dsse::Envelope::from_file(&signed)
        .unwrap()
        .payload;
    let unsigned = w.path("policy.json");
    std::fs::write(&unsigned, payload).unwrap();
    let o = w.verify(&unsigned, &[&att], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        format!(
            "cilock: error: reading the policy: {0} is an unsigned policy document, not a DSSE envelope: sign it first with `cilock sign -k KEY -f {0} -o policy.signed.json`\n",
            unsigned.display()
        )
    );
}
