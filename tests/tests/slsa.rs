//! Issue #17: SLSA provenance v1 from the trace, and its export
//! (`--attestor-slsa-export`) as an in-toto Statement v1 envelope next to
//! `-o`, signed by the embedded engine's `-k` key or by the daemon; the
//! export parses with the in-toto-attestation package's own bindings.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cilock_testkit::*;
use serde_json::{json, Value};

fn sha256(p: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// A workdir with `a` and `b`, and a directory outside it with `x`: the
/// step reads these three.
struct Inputs {
    w: tempfile::TempDir,
    other: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Inputs {
        let w = tempdir();
        let other = tempdir();
        std::fs::write(w.path().join("a"), "alpha\n").unwrap();
        std::fs::write(w.path().join("b"), "beta\n").unwrap();
        std::fs::write(other.path().join("x"), "outside\n").unwrap();
        Inputs { w, other }
    }
    fn wd(&self) -> PathBuf {
        std::fs::canonicalize(self.w.path()).unwrap()
    }
    fn x(&self) -> PathBuf {
        std::fs::canonicalize(self.other.path()).unwrap().join("x")
    }
    fn tmp(&self) -> PathBuf {
        std::fs::canonicalize(self.other.path())
            .unwrap()
            .join("tmp1")
    }
    /// Reads a, b and x, writes and reads back a temporary file (not a
    /// dependency: the step wrote it), writes the product `out.txt`, and
    /// opens a TLS connection to `port` with server name `slsa.test`.
    fn script(&self, port: u16) -> String {
        format!(
            "cat a b {x} > out.txt; echo t > {t}; cat {t} >> out.txt; \
             openssl s_client -connect 127.0.0.1:{port} -servername slsa.test </dev/null >/dev/null 2>&1; true",
            x = self.x().display(),
            t = self.tmp().display(),
        )
    }
}

/// Parses the export with the in-toto-attestation package: Statement v1
/// (`validate()`) and the provenance v1 protobuf binding.
fn check_with_in_toto_attestation(export: &Path) {
    let script = r#"
import base64, json, sys
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
env = json.load(open(sys.argv[1]))
assert env['payloadType'] == 'application/vnd.in-toto+json', env['payloadType']
st = json.loads(base64.b64decode(env['payload']))
pb = json_format.ParseDict(st, statement_pb2.Statement())
Statement.copy_from_pb(pb).validate()
assert pb.predicate_type == 'https://slsa.dev/provenance/v1'
prov = json_format.ParseDict(st['predicate'], provenance_pb2.Provenance())
assert len(prov.build_definition.resolved_dependencies) > 0
assert prov.run_details.metadata.started_on.seconds > 0
assert prov.run_details.metadata.finished_on.seconds > 0
print('in-toto-attestation: ok', len(prov.build_definition.resolved_dependencies))
"#;
    let out = Command::new(pytools::tool("python"))
        .arg("-c")
        .arg(script)
        .arg(export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "in-toto-attestation rejects the export: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks the export at `att-slsa.json` against the collection at `att`
/// and the ground truth of [`Inputs::script`].
fn check_export(att: &Path, pubkey: &Path, inp: &Inputs, port: u16, step: &str) {
    let export = PathBuf::from(format!("{}-slsa.json", att.display()));
    assert!(export.exists(), "no {}", export.display());
    let env: Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    verify_with_python(&export, pubkey);
    check_with_in_toto_attestation(&export);
    let st = statement(&export);
    let coll = statement(att);
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    let wd = inp.wd();
    // The subject is the product, by path.
    assert_eq!(
        st["subject"],
        json!([{"name": "out.txt", "digest": {"sha256": sha256(&wd.join("out.txt"))}}])
    );
    // The predicate is the slsa attestation of the collection, kept there.
    let inside = attestation(&coll, "https://slsa.dev/provenance/v1");
    assert_eq!(&st["predicate"], inside);
    let p = &st["predicate"];
    assert_eq!(
        p["buildDefinition"]["buildType"],
        "https://cilock.dev/build/v1"
    );
    assert_eq!(
        p["runDetails"]["builder"]["id"],
        "https://cilock.dev/builder/v1"
    );
    assert_eq!(p["runDetails"]["metadata"]["invocationId"], step);
    let deps = p["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let find = |uri: &str| -> Vec<&Value> { deps.iter().filter(|d| d["uri"] == uri).collect() };
    // The materials the step read: name, uri and digest.
    for f in ["a", "b"] {
        let path = wd.join(f);
        assert_eq!(
            find(&format!("file://{}", path.display())),
            vec![
                &json!({"name": f, "uri": format!("file://{}", path.display()), "digest": {"sha256": sha256(&path)}})
            ],
            "{deps:?}"
        );
    }
    // A file outside the workdir, and the programs run.
    let x = inp.x();
    assert_eq!(
        find(&format!("file://{}", x.display())),
        vec![&json!({"uri": format!("file://{}", x.display()), "digest": {"sha256": sha256(&x)}})]
    );
    for prog in ["/usr/bin/cat", "/usr/bin/openssl"] {
        let real = std::fs::canonicalize(prog).unwrap();
        assert_eq!(
            find(&format!("file://{}", real.display())),
            vec![
                &json!({"uri": format!("file://{}", real.display()), "digest": {"sha256": sha256(&real)}})
            ],
            "{prog}"
        );
    }
    // What the step wrote is not a dependency.
    for written in [wd.join("out.txt"), inp.tmp()] {
        assert!(
            find(&format!("file://{}", written.display())).is_empty(),
            "{} listed: {deps:?}",
            written.display()
        );
    }
    assert!(!deps.iter().any(|d| d["name"] == "out.txt"));
    // Every traced entry has a file URI and a digest; none twice.
    let mut seen = std::collections::BTreeSet::new();
    for d in deps {
        assert!(
            d["digest"].as_object().is_some_and(|m| !m.is_empty()),
            "{d}"
        );
        if d["uri"].is_string() {
            assert!(
                seen.insert((d["uri"].to_string(), d["digest"].to_string())),
                "twice: {d}"
            );
        }
    }
    // The loopback TLS endpoint, with its server name.
    let by = p["runDetails"]["byproducts"].as_array().unwrap();
    let ep: Vec<&Value> = by
        .iter()
        .filter(|b| b["uri"] == format!("tcp://127.0.0.1:{port}"))
        .collect();
    assert_eq!(ep.len(), 1, "{by:?}");
    assert_eq!(ep[0]["annotations"]["tlsServerNames"], json!(["slsa.test"]));
    assert!(ep[0]["annotations"]["syscalls"]
        .as_array()
        .unwrap()
        .contains(&json!("connect")));
    let trace = by.iter().find(|b| b["name"] == "cilock:trace").unwrap();
    assert_eq!(trace["annotations"]["lostEventsTotal"], 0, "{trace}");
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_peer(dir: &Path) -> (u16, net::Bg) {
    let (cert, key) = net::self_signed(dir, "slsa.test");
    let port = net::free_port();
    let bg = net::tls_server("127.0.0.1", port, &cert, &key, None);
    (port, bg)
}

#[test]
fn embedded_export_is_a_signed_statement_v1_with_the_files_read() {
    let inp = Inputs::new();
    let keys = tempdir();
    let (key, pubkey) = keygen(keys.path());
    let (port, _srv) = tls_peer(keys.path());
    let att = keys.path().join("out.json");
    let out = Command::new(bin("cilock"))
        .args(["run", "--step", "compile", "--no-daemon", "-k"])
        .arg(&key)
        .arg("-o")
        .arg(&att)
        .args([
            "--attestor-slsa-export",
            "--",
            "sh",
            "-c",
            &inp.script(port),
        ])
        .current_dir(inp.w.path())
        .output()
        .unwrap();
    ok(&out);
    verify_with_python(&att, &pubkey);
    check_export(&att, &pubkey, &inp, port, "compile");
}

#[test]
fn export_with_stdout_output_is_refused_before_anything_runs() {
    let inp = Inputs::new();
    let keys = tempdir();
    let (key, _) = keygen(keys.path());
    let out = Command::new(bin("cilock"))
        .args(["run", "--step", "s", "--no-daemon", "-k"])
        .arg(&key)
        .args(["-o", "-", "--attestor-slsa-export", "--", "touch", "ran"])
        .current_dir(inp.w.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--attestor-slsa-export") && err.contains("-o -"),
        "{err}"
    );
    assert!(!inp.w.path().join("ran").exists(), "the command ran");
    assert!(out.stdout.is_empty());
}

#[test]
fn daemon_run_export_is_signed_by_the_daemon() {
    let d = Daemon::start("ebpf");
    let inp = Inputs::new();
    let keys = tempdir();
    let (port, _srv) = tls_peer(keys.path());
    let att = keys.path().join("run.json");
    let out = d
        .command()
        .args(["run", "--step", "drun"])
        .arg("-o")
        .arg(&att)
        .args([
            "--attestor-slsa-export",
            "--",
            "sh",
            "-c",
            &inp.script(port),
        ])
        .current_dir(inp.w.path())
        .output()
        .unwrap();
    ok(&out);
    // Signed by the daemon's key, one signature.
    let export = PathBuf::from(format!("{}-slsa.json", att.display()));
    let env: Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert_eq!(env["signatures"].as_array().unwrap().len(), 1);
    verify_with_python(&att, &d.pubkey);
    check_export(&att, &d.pubkey, &inp, port, "drun");
}

/// A job that runs `inp`'s script once its step `name` has begun with
/// `--attestor-slsa-export`, then waits for a line on its stdin (returned)
/// before it exits.
fn begin_exporting_step(
    d: &Daemon,
    inp: &Inputs,
    port: u16,
    name: &str,
) -> (std::process::Child, std::process::ChildStdin) {
    let mut job = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read go; {}; echo done; read end",
            inp.script(port)
        ))
        .current_dir(inp.w.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = job.id().to_string();
    let wd = inp.wd();
    ok(&d.cilock(&[
        "step",
        "begin",
        "--step",
        name,
        "--pid",
        &pid,
        "--workdir",
        wd.to_str().unwrap(),
        "--attestor-slsa-export",
    ]));
    let mut stdin = job.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let mut line = [0u8; 5];
    job.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"done\n");
    (job, stdin)
}

#[test]
fn daemon_step_begin_end_export_marks_no_command() {
    let d = Daemon::start("ebpf");
    let inp = Inputs::new();
    let keys = tempdir();
    let (port, _srv) = tls_peer(keys.path());
    let (mut job, mut stdin) = begin_exporting_step(&d, &inp, port, "dstep");
    let att = keys.path().join("step.json");
    ok(&d.cilock(&[
        "step",
        "end",
        "--step",
        "dstep",
        "-o",
        att.to_str().unwrap(),
    ]));
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    job.wait().unwrap();
    check_export(&att, &d.pubkey, &inp, port, "dstep");
    // No command was observed or claimed: no command parameter.
    let st = statement(Path::new(&format!("{}-slsa.json", att.display())));
    assert_eq!(
        st["predicate"]["buildDefinition"]["externalParameters"],
        json!({})
    );
}

#[test]
fn an_export_not_written_stays_kept_and_fetch_writes_both() {
    let d = Daemon::start("ebpf");
    let inp = Inputs::new();
    let keys = tempdir();
    let (port, _srv) = tls_peer(keys.path());
    let (mut job, mut stdin) = begin_exporting_step(&d, &inp, port, "kept");
    // -o -: the envelope goes to stdout, its export has nowhere to go.
    let out = d.cilock(&["step", "end", "--step", "kept", "-o", "-"]);
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    job.wait().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let id = err
        .split("cilock step fetch --id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fetch hint: {err}"))
        .to_string();
    let env: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(env["payload"].is_string());
    let att = keys.path().join("fetched.json");
    ok(&d.cilock(&["step", "fetch", "--id", &id, "-o", att.to_str().unwrap()]));
    check_export(&att, &d.pubkey, &inp, port, "kept");
    // Both written: the daemon's copy is gone.
    let list = d.cilock(&["step", "fetch", "--list"]);
    ok(&list);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&id));
}

#[test]
fn a_step_without_product_writes_the_collection_and_exits_2() {
    let inp = Inputs::new();
    let keys = tempdir();
    let (key, pubkey) = keygen(keys.path());
    let att = keys.path().join("np.json");
    let out = Command::new(bin("cilock"))
        .args(["run", "--step", "np", "--no-daemon", "-k"])
        .arg(&key)
        .arg("-o")
        .arg(&att)
        .args(["--attestor-slsa-export", "--", "cat", "a"])
        .current_dir(inp.w.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no product subject"), "{err}");
    verify_with_python(&att, &pubkey);
    assert!(!PathBuf::from(format!("{}-slsa.json", att.display())).exists());
    // The provenance is still in the collection, with the material read.
    let p = attestation(&statement(&att), "https://slsa.dev/provenance/v1").clone();
    let a = inp.wd().join("a");
    assert!(p["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "a", "uri": format!("file://{}", a.display()), "digest": {"sha256": sha256(&a)}})));
}
