//! Names that are not text (issue #12 item 7, review D5, D6, D7 and the
//! "another file, not modified" reason), on both backends through the real
//! daemon: `tests/programs/names.c` runs a memfd program, opens files past
//! PATH_MAX dirfd-relatively and writes and reads non-UTF-8 names; `cat`
//! reads those names again, and a reader in a private mount namespace reads
//! a tmpfs file that shadows a host file. Every value is checked against
//! the ground truth (the names the program used, sha256 of the content).

use std::path::Path;

use cilock_testkit::podman::{mount_namespace, parse_ns};
use cilock_testkit::*;
use cilock_testkit::{programs::*, step::*};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REASON_FILELESS: &str = "a fileless program: executed from a memfd (memfd_create), not from a file; there is no file to hash";

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn reason(p: &Value, path: &str) -> String {
    p["unhashedOpens"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["path"] == path))
        .map(|u| u["reason"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn keys(p: &Value) -> Vec<String> {
    p["openedfiles"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The 40-character directory names of names.c.
fn dirs() -> Vec<String> {
    (0..120)
        .map(|i| format!("{i:03}{}", "p".repeat(37)))
        .collect()
}

fn check(backend: &str, w: &Path, cr: &Value) {
    let ws = w.to_str().unwrap();
    let stdout = std::fs::read_to_string(w.join(format!("names-{backend}.stdout"))).unwrap();
    let field = |k: &str| -> i64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{k} not printed: {stdout}"))
    };
    let me = by_pid(cr, field("self"));
    let child = by_pid(cr, field("fileless"));
    let ctx = |p: &Value| format!("{backend}: {}", serde_json::to_string_pretty(p).unwrap());

    // D5: the memfd program, named as the kernel names it, and flagged.
    let memfd = "/memfd:fid-fileless (deleted)";
    assert_eq!(child["program"], memfd, "{}", ctx(&child));
    assert_eq!(
        child["execs"],
        serde_json::json!([memfd]),
        "{}",
        ctx(&child)
    );
    assert_eq!(
        child["programUnhashedReason"],
        REASON_FILELESS,
        "{}",
        ctx(&child)
    );
    assert_eq!(
        child["exeUnhashedReason"],
        REASON_FILELESS,
        "{}",
        ctx(&child)
    );
    assert!(child.get("programdigest").is_none_or(Value::is_null));
    let marks: Vec<&Value> = child["syscallEvents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["syscall"] == "fileless_exec")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(marks.len(), 1, "{}", ctx(&child));
    assert_eq!(marks[0]["path"], memfd);
    assert_eq!(reason(&child, memfd), REASON_FILELESS, "{}", ctx(&child));
    assert!(
        !keys(&child).iter().any(|k| k.starts_with("/dev/fd/")),
        "{}",
        ctx(&child)
    );

    // D6: past PATH_MAX, each file is present under its own path, marked,
    // never "" (ptrace rebuilds it whole, eBPF keeps the last 4 KiB).
    let d = dirs();
    let (leaf119, leaf118, other119) = if backend == "ptrace" {
        let all = d.join("/");
        let up118 = d[..119].join("/");
        (
            format!("{ws}/{all}/leaf.txt"),
            format!("{ws}/{up118}/leaf.txt"),
            format!("{ws}/{all}/other.txt"),
        )
    } else {
        // The in-kernel walk keeps whole components within 4094 bytes:
        // the leaf (9 or 10 with its `/`) and 99 directories of 41.
        (
            format!("/…/{}/leaf.txt", d[21..].join("/")),
            format!("/…/{}/leaf.txt", d[20..119].join("/")),
            format!("/…/{}/other.txt", d[21..].join("/")),
        )
    };
    let mk = keys(&me);
    assert!(!mk.iter().any(|k| k.is_empty()), "an empty path: {mk:?}");
    for p in [&leaf119, &leaf118, &other119] {
        let short = |k: &String| k.replace(&"p".repeat(37), "");
        assert_eq!(
            me["openedfiles"][p.as_str()],
            serde_json::json!({}),
            "{backend}: {} in {:#?}",
            short(p),
            mk.iter().map(short).collect::<Vec<_>>()
        );
        let why = reason(&me, p);
        assert!(why.contains("PATH_MAX"), "{backend}: {p}: {why}");
        if backend == "ebpf" {
            assert!(why.starts_with("path truncated"), "{why}");
        }
    }
    // Each directory past PATH_MAX is its own entry too (no collapsing).
    let long: Vec<&String> = mk
        .iter()
        .filter(|k| reason(&me, k).contains("PATH_MAX"))
        .collect();
    let past = (0..120).filter(|&i| ws.len() + 41 * (i + 1) > 4095).count();
    assert_eq!(long.len(), past + 3, "{backend}: {} long paths", long.len());

    // D7: non-UTF-8 names, escaped losslessly, with the real digests; the
    // U+FFFD decoy keeps its own.
    let names: [(&str, &[u8]); 3] = [
        ("bad-\\xff\\xfe.bin", b"bad\n"),
        ("coll-\\xff.bin", b"real\n"),
        ("coll-\u{fffd}.bin", b"decoy\n"),
    ];
    let cat = processes(cr)
        .into_iter()
        .find(|p| {
            p["comm"] == "cat"
                && p["openedfiles"]
                    .get(format!("{ws}/coll-\\xff.bin"))
                    .is_some()
        })
        .unwrap_or_else(|| panic!("{backend}: no cat of the names: {}", ctx(cr)));
    for (name, content) in names {
        let path = format!("{ws}/{name}");
        for p in [&me, &cat] {
            assert_eq!(
                p["openedfiles"][path.as_str()]["sha256"],
                sha(content).as_str(),
                "{backend}: {path}: {}",
                ctx(p)
            );
        }
    }
    let colls = keys(&cat)
        .into_iter()
        .filter(|k| k.contains("/coll-"))
        .count();
    assert_eq!(colls, 2, "{}", ctx(&cat));

    // Minor: a reader in a private mount namespace read another file than
    // the host's at that path: never hashed at the host's path, the reason
    // names its namespace (issue #15), never "modified".
    let shadow = format!("{ws}/mnt/shadow.txt");
    let reader = processes(cr)
        .into_iter()
        .find(|p| p["comm"] == "cat" && p["openedfiles"].get(shadow.as_str()).is_some())
        .unwrap_or_else(|| panic!("{backend}: no shadow reader: {}", ctx(cr)));
    assert_eq!(
        reader["openedfiles"][shadow.as_str()],
        serde_json::json!({})
    );
    // Ground truth: the namespace as the shell in it read it.
    let ns = parse_ns(&std::fs::read_to_string(w.join("ns.txt")).unwrap())
        .expect("ns.txt: a mount namespace link");
    assert_ne!(
        ns,
        mount_namespace(std::process::id()),
        "unshare -m made no new namespace"
    );
    assert_eq!(reader["mountNamespace"], ns, "{backend}: {}", ctx(&reader));
    assert!(
        reason(&reader, &shadow)
            .starts_with(&format!("opened in another mount namespace (mnt:[{ns}])")),
        "{}",
        ctx(&reader)
    );
}

#[test]
fn names_that_are_not_text_on_both_backends() {
    let work = tempdir();
    let w = work.path();
    let bin = cc("names", w);
    for backend in ["ebpf", "ptrace"] {
        let run = w.join(backend);
        std::fs::create_dir(&run).unwrap();
        let run = run.canonicalize().unwrap();
        std::fs::create_dir(run.join("mnt")).unwrap();
        std::fs::write(run.join("mnt/shadow.txt"), "HOST-SHADOWED\n").unwrap();
        let t0 = std::time::Instant::now();
        let daemon = Daemon::start(backend);
        eprintln!("{backend}: daemon up after {:?}", t0.elapsed());
        let script = format!(
            "set -e\n{bin}\ncat \"$(printf 'bad-\\377\\376.bin')\" \"$(printf 'coll-\\377.bin')\" \"$(printf 'coll-\\357\\277\\275.bin')\" >/dev/null\nunshare -m --propagation private sh -c 'readlink /proc/self/ns/mnt > ns.txt && mount -t tmpfs x mnt && echo NS-CONTENT > mnt/shadow.txt && cat mnt/shadow.txt >/dev/null'\n",
            bin = bin.display()
        );
        let att = run_step(&daemon, &format!("names-{backend}"), &run, &script);
        eprintln!("{backend}: step done after {:?}", t0.elapsed());
        let cr = command_run(&att);
        assert_eq!(cr["trace"]["backend"], backend);
        assert_nothing_lost(&cr);
        check(backend, &run, &cr);
        let lim = cr["trace"]["limitations"].to_string();
        assert!(lim.contains("PATH_MAX"), "{backend}: {lim}");
    }
}
