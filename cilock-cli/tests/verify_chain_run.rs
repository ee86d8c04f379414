//! A two-step supply chain recorded with `cilock run` (embedded engine:
//! eBPF as root, else ptrace) and checked with `cilock verify`: `build`
//! compiles `app` from `main.c` in a git work tree, `package` tars it; the
//! policy requires both steps, the signing key, command-run Rego rules on
//! `input.cmd` and on the trace (`input.processes[_].program`), and
//! `artifactsFrom: ["build"]` on `package`. The verification starts from
//! `app.tgz` only and reaches `build` through the git commit back-reference.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cilock_testkit::cli::{b64, p, sign_policy, text};
use cilock_testkit::step::{chain_work_tree, sh_in};
use serde_json::{json, Value};

use crate::cilock_in;

const BUILD_CMD: &[&str] = &["sh", "-c", "cc -o app main.c"];

/// The real path of a program found on PATH (what the trace records).
fn resolved(program: &str) -> String {
    let o = Command::new("sh")
        .args(["-c", &format!("readlink -f \"$(command -v {program})\"")])
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A key pair made by `cilock keygen`: (private key, public key, keyid).
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let key = dir.join(name);
    let o = cilock_in(dir, &["keygen", "-o", p(&key)]);
    assert!(o.status.success(), "{}", text(&o));
    let keyid = String::from_utf8(o.stdout).unwrap().trim().to_string();
    (key.clone(), dir.join(format!("{name}.pub")), keyid)
}

fn run_step(workdir: &Path, key: &Path, step: &str, out: &Path, cmd: &[&str]) {
    let mut args = vec![
        "run",
        "--no-daemon",
        "-k",
        p(key),
        "-s",
        step,
        "-o",
        p(out),
        "-a",
        "git",
        "--workdir",
        p(workdir),
        "--",
    ];
    args.extend_from_slice(cmd);
    let o = cilock_in(workdir, &args);
    assert_eq!(o.status.code(), Some(0), "cilock run {step}: {}", text(&o));
}

fn rego(package: &str, body: &str) -> Value {
    json!({"name": package, "module": b64(format!("package {package}\n\n{body}\n").as_bytes())})
}

/// The signed policy (by `policy_key`) trusting `keyid`/`pubkey`, with
/// build's command-run Rego requiring `input.cmd == build_cmd`, and
/// `trace_rule` as an extra Rego module there.
fn policy(
    dir: &Path,
    policy_key: &Path,
    pubkey: &Path,
    keyid: &str,
    build_cmd: &[&str],
    trace_rule: Option<Value>,
) -> PathBuf {
    let pem = std::fs::read(pubkey).unwrap();
    let mut build_rego = vec![rego(
        "build.cmd",
        &format!(
            "deny[msg] {{\n  input.cmd != {}\n  msg := sprintf(\"unexpected build command %v\", [input.cmd])\n}}",
            json!(build_cmd)
        ),
    )];
    build_rego.extend(trace_rule);
    let step = |name: &str, rego: Vec<Value>, from: Vec<&str>| {
        json!({
            "name": name,
            "functionaries": [{"type": "publickey", "publickeyid": keyid}],
            "attestations": [
                {"type": "https://witness.dev/attestations/material/v0.1"},
                {"type": "https://witness.dev/attestations/command-run/v0.1", "regopolicies": rego},
                {"type": "https://witness.dev/attestations/product/v0.1"},
                {"type": "https://witness.dev/attestations/git/v0.1"}
            ],
            "artifactsFrom": from
        })
    };
    let doc = json!({
        "expires": "2099-01-01T00:00:00Z",
        "publickeys": {keyid: {"keyid": keyid, "key": b64(&pem)}},
        "steps": {
            "build": step("build", build_rego, vec![]),
            "package": step("package", vec![rego(
                "pkg.cmd",
                "deny[msg] {\n  input.cmd != [\"tar\", \"czf\", \"app.tgz\", \"app\"]\n  msg := sprintf(\"unexpected package command %v\", [input.cmd])\n}",
            )], vec!["build"]),
        }
    });
    let n = std::fs::read_dir(dir).unwrap().count();
    let file = dir.join(format!("policy{n}.json"));
    let signed = dir.join(format!("policy{n}.signed.json"));
    sign_policy(
        |args| cilock_in(dir, args),
        &doc,
        policy_key,
        &file,
        &signed,
    );
    signed
}

fn verify(dir: &Path, policy: &Path, policy_pub: &Path, atts: &[&Path], artifact: &Path) -> Output {
    let mut args = vec!["verify", "-p", p(policy), "-k", p(policy_pub)];
    for a in atts {
        args.extend_from_slice(&["-a", p(a)]);
    }
    args.extend_from_slice(&["-f", p(artifact), "--json"]);
    cilock_in(dir, &args)
}

fn report(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn step<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[test]
fn build_and_package_chain_recorded_with_cilock_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let work = chain_work_tree(dir);
    let (key, pubkey, keyid) = keygen(dir, "signer.pem");
    let (policy_key, policy_pub, _) = keygen(dir, "policy.pem");

    let build = dir.join("build.json");
    let package = dir.join("package.json");
    run_step(&work, &key, "build", &build, BUILD_CMD);
    // A copy of the tree where `app` is altered between the steps.
    let tampered = dir.join("tampered");
    sh_in(dir, &format!("cp -a {} {}", p(&work), p(&tampered)));
    sh_in(&tampered, "printf 'injected' >> app");
    run_step(
        &work,
        &key,
        "package",
        &package,
        &["tar", "czf", "app.tgz", "app"],
    );
    let package2 = dir.join("package-tampered.json");
    run_step(
        &tampered,
        &key,
        "package",
        &package2,
        &["tar", "czf", "app.tgz", "app"],
    );

    // What the trace must show, from the file system (not from cilock).
    let cc = resolved("cc");
    let shell = resolved("sh");
    let cc_ran = rego(
        "build.trace",
        &format!("cc_ran {{\n  input.processes[_].program == \"{cc}\"\n}}\n\ndeny[msg] {{\n  not cc_ran\n  msg := \"the compiler {cc} did not run\"\n}}"),
    );
    let no_shell = rego(
        "build.noshell",
        &format!("deny[msg] {{\n  p := input.processes[_].program\n  p == \"{shell}\"\n  msg := sprintf(\"shell not allowed: %v\", [p])\n}}"),
    );
    let app_tgz = work.join("app.tgz");

    // 1. The chain passes, with the trace rule that the compiler ran.
    let pol = policy(
        dir,
        &policy_key,
        &pubkey,
        &keyid,
        BUILD_CMD,
        Some(cc_ran.clone()),
    );
    let o = verify(dir, &pol, &policy_pub, &[&build, &package], &app_tgz);
    let r = report(&o);
    assert_eq!(o.status.code(), Some(0), "{r:#}");
    assert_eq!(r["passed"], json!(true));
    for s in ["build", "package"] {
        let st = step(&r, s);
        assert_eq!(st["passed"], json!(true), "{r:#}");
        assert_eq!(st["collections"][0]["signers"], json!([keyid]));
    }
    assert_eq!(
        step(&r, "build")["collections"][0]["source"],
        json!(p(&build))
    );

    // 2. The build attestation alone cannot pass: nothing leads from app.tgz to it.
    let o = verify(dir, &pol, &policy_pub, &[&build], &app_tgz);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // 3. `app` altered between the steps: artifactsFrom fails on package.
    let o = verify(
        dir,
        &pol,
        &policy_pub,
        &[&build, &package2],
        &tampered.join("app.tgz"),
    );
    let r = report(&o);
    assert_eq!(o.status.code(), Some(1), "{r:#}");
    assert_eq!(step(&r, "build")["passed"], json!(true), "{r:#}");
    let pkg = step(&r, "package");
    assert_eq!(pkg["passed"], json!(false));
    let reasons = pkg["collections"][0]["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{r:#}");
    let reason = reasons[0].as_str().unwrap();
    assert!(reason.starts_with("artifactsFrom \"build\": "), "{reason}");
    assert!(
        reason.contains("material \"app\" differs from the upstream artifact's digest"),
        "{reason}"
    );
    // The untampered package still passes against the same build.
    let o = verify(
        dir,
        &pol,
        &policy_pub,
        &[&build, &package, &package2],
        &app_tgz,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // 4. Signed by a key the policy does not list: every envelope is set aside.
    let (_, other_pub, other_id) = keygen(dir, "other.pem");
    let pol_other = policy(dir, &policy_key, &other_pub, &other_id, BUILD_CMD, None);
    let o = verify(dir, &pol_other, &policy_pub, &[&build, &package], &app_tgz);
    let r = report(&o);
    assert_eq!(o.status.code(), Some(1), "{r:#}");
    let rejected = r["rejected_envelopes"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{r:#}");
    for e in rejected {
        assert!(
            e["reason"]
                .as_str()
                .unwrap()
                .starts_with("no signature verified with a policy public key or root"),
            "{e}"
        );
    }

    // 5. A trace rule that forbids the shell the build ran: denied, with the
    //    program the trace recorded.
    let pol_noshell = policy(dir, &policy_key, &pubkey, &keyid, BUILD_CMD, Some(no_shell));
    let o = verify(
        dir,
        &pol_noshell,
        &policy_pub,
        &[&build, &package],
        &app_tgz,
    );
    let r = report(&o);
    assert_eq!(o.status.code(), Some(1), "{r:#}");
    let b = step(&r, "build");
    assert_eq!(b["passed"], json!(false));
    assert_eq!(
        b["collections"][0]["denials"],
        json!([{
            "attestation_type": "https://witness.dev/attestations/command-run/v0.1",
            "policy": "build.cmd, build.noshell",
            "message": format!("shell not allowed: {shell}")
        }]),
        "{r:#}"
    );
    // 6. A trace rule that requires a program the build never ran.
    let ghost = rego(
        "build.trace",
        "deny[msg] {\n  not ran\n  msg := \"rustc did not run\"\n}\n\nran {\n  endswith(input.processes[_].program, \"/rustc\")\n}",
    );
    let pol_ghost = policy(dir, &policy_key, &pubkey, &keyid, BUILD_CMD, Some(ghost));
    let o = verify(dir, &pol_ghost, &policy_pub, &[&build, &package], &app_tgz);
    let r = report(&o);
    assert_eq!(o.status.code(), Some(1), "{r:#}");
    assert_eq!(
        step(&r, "build")["collections"][0]["denials"][0]["message"],
        json!("rustc did not run")
    );
    // 7. The rule on input.cmd: a policy expecting another build command.
    let pol_make = policy(
        dir,
        &policy_key,
        &pubkey,
        &keyid,
        &["make", "app"],
        Some(cc_ran),
    );
    let o = verify(dir, &pol_make, &policy_pub, &[&build, &package], &app_tgz);
    let r = report(&o);
    assert_eq!(o.status.code(), Some(1), "{r:#}");
    assert_eq!(
        step(&r, "build")["collections"][0]["denials"],
        json!([{
            "attestation_type": "https://witness.dev/attestations/command-run/v0.1",
            "policy": "build.cmd, build.trace",
            "message": "unexpected build command [\"sh\", \"-c\", \"cc -o app main.c\"]"
        }]),
        "{r:#}"
    );
}
