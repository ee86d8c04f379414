//! `cilock inspect`: a readable summary of an attestation envelope.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::Context;
use cilock_evidence::collection;
use cilock_evidence::dsse::Envelope;
use cilock_evidence::keys::Verifier;
use serde_json::Value;

use crate::cli::InspectArgs;

/// Prints the summary (or, with `--json`, the decoded statement). Exit 1
/// when `-k` is given and no signature verifies with it.
pub fn inspect(a: InspectArgs) -> anyhow::Result<u8> {
    let env = Envelope::from_file(&a.file)?;
    let sig_ok = match &a.publickey {
        Some(k) => {
            let v = Verifier::from_file(k)
                .with_context(|| format!("loading public key {}", k.display()))?;
            Some((v.key_id().to_string(), env.verify(&[v], 1).is_ok()))
        }
        None => None,
    };
    let statement: Value = serde_json::from_slice(&env.payload)
        .with_context(|| format!("the payload of {} is not JSON", a.file.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&statement)?);
        if let Some((keyid, false)) = &sig_ok {
            eprintln!("cilock: signature does NOT verify with key {keyid}");
        }
    } else {
        print!("{}", summary(&env, &statement, sig_ok.as_ref()));
    }
    Ok(match sig_ok {
        Some((_, false)) => 1,
        _ => 0,
    })
}

fn summary(env: &Envelope, st: &Value, sig_ok: Option<&(String, bool)>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "payload type:   {}", env.payload_type);
    let _ = writeln!(
        o,
        "statement:      {}",
        st.get("_type").and_then(Value::as_str).unwrap_or("(none)")
    );
    let ptype = st
        .get("predicateType")
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    let _ = writeln!(o, "predicate type: {ptype}");
    for s in &env.signatures {
        let cert = if s.certificate.is_some() {
            " (with certificate)"
        } else {
            ""
        };
        let ts = if s.timestamps.is_empty() {
            String::new()
        } else {
            format!(", {} timestamp(s)", s.timestamps.len())
        };
        let _ = writeln!(o, "signer keyid:   {}{cert}{ts}", s.keyid);
    }
    match sig_ok {
        Some((k, true)) => {
            let _ = writeln!(o, "signature:      OK (verified with key {k})");
        }
        Some((k, false)) => {
            let _ = writeln!(o, "signature:      INVALID (does not verify with key {k})");
        }
        None => {
            let _ = writeln!(o, "signature:      not checked (give -k PUBLIC_KEY)");
        }
    }
    let subjects = st
        .get("subject")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(o, "subjects:       {}", subjects.len());
    for s in subjects.iter().take(10) {
        let name = s.get("name").and_then(Value::as_str).unwrap_or("");
        let d = s
            .get("digest")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = writeln!(o, "  - {name} {d}");
    }
    if subjects.len() > 10 {
        let _ = writeln!(o, "  … {} more", subjects.len() - 10);
    }
    let Some(pred) = st.get("predicate") else {
        return o;
    };
    if !collection::is_collection_type(ptype) {
        return o;
    }
    let _ = writeln!(
        o,
        "step:           {}",
        pred.get("name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
    );
    let atts = pred
        .get("attestations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(o, "attestations:   {}", atts.len());
    for att in &atts {
        let t = att
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("(no type)");
        let _ = writeln!(o, "  - {t}");
    }
    for att in &atts {
        let t = att.get("type").and_then(Value::as_str).unwrap_or("");
        if collection::same_type(t, &collection::witness_type("command-run"))
            || collection::canonical_type(t).contains("/command-run/")
        {
            if let Some(cr) = att.get("attestation") {
                command_run_summary(&mut o, cr);
            }
        }
    }
    o
}

fn command_run_summary(o: &mut String, cr: &Value) {
    let cmd: Vec<&str> = cr
        .get("cmd")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let trace = cr.get("trace");
    let observed = |f: &str| {
        trace
            .and_then(|t| t.get("observed"))
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == f))
    };
    let unobserved = |f: &str| {
        trace
            .and_then(|t| t.get("unobserved"))
            .and_then(|u| u.get(f))
            .and_then(Value::as_str)
            .map(|why| format!(" (not observed: {why})"))
            .unwrap_or_default()
    };
    let _ = writeln!(
        o,
        "command:        {}{}",
        cmd.join(" "),
        if observed("cmd") {
            String::new()
        } else {
            unobserved("cmd")
        }
    );
    if let Some(code) = cr.get("exitcode") {
        let why = if observed("exitcode") {
            String::new()
        } else {
            unobserved("exitcode")
        };
        let _ = writeln!(o, "exit code:      {code}{why}");
    }
    if let Some(c) = cr.get("claimed").and_then(Value::as_object) {
        let mut parts = Vec::new();
        if let Some(cmd) = c.get("cmd").and_then(Value::as_array) {
            let cmd: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
            parts.push(format!("command {:?}", cmd.join(" ")));
        }
        if let Some(code) = c.get("exitcode") {
            parts.push(format!("exit code {code}"));
        }
        for k in ["stdout", "stderr"] {
            if let Some(t) = c.get(k).and_then(Value::as_str) {
                parts.push(format!("{k} {} bytes", t.len()));
            }
        }
        let _ = writeln!(o, "claimed:        {} (client's word)", parts.join(", "));
    }
    let procs = cr
        .get("processes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (mut files, mut conns, mut sys) = (0usize, 0usize, 0usize);
    let mut children: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let pids: BTreeSet<i64> = procs
        .iter()
        .filter_map(|p| p.get("processid").and_then(Value::as_i64))
        .collect();
    let mut roots = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        files += p
            .get("openedfiles")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        conns += p
            .get("network")
            .and_then(|n| n.get("connections"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        sys += p
            .get("syscallEvents")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let ppid = p.get("parentpid").and_then(Value::as_i64).unwrap_or(0);
        let pid = p.get("processid").and_then(Value::as_i64).unwrap_or(0);
        if ppid != pid && pids.contains(&ppid) {
            children.entry(ppid).or_default().push(i);
        } else {
            roots.push(i);
        }
    }
    let _ = writeln!(o, "processes:      {}", procs.len());
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|i| (*i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if !seen.insert(i) || depth > 64 {
            continue;
        }
        let Some(p) = procs.get(i) else { continue };
        let pid = p.get("processid").and_then(Value::as_i64).unwrap_or(0);
        let ppid = p.get("parentpid").and_then(Value::as_i64).unwrap_or(0);
        let prog = p
            .get("program")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| p.get("comm").and_then(Value::as_str))
            .unwrap_or("?");
        let _ = writeln!(o, "  {}{pid} (parent {ppid}) {prog}", "  ".repeat(depth));
        if let Some(kids) = children.get(&pid) {
            for k in kids.iter().rev() {
                stack.push((*k, depth + 1));
            }
        }
    }
    let _ = writeln!(o, "opened files:   {files}");
    let _ = writeln!(o, "network conns:  {conns}");
    let _ = writeln!(o, "syscall events: {sys}");
    if let Some(events) = cr
        .get("trace")
        .and_then(|t| t.get("events"))
        .and_then(Value::as_object)
    {
        if let Some(b) = cr
            .get("trace")
            .and_then(|t| t.get("backend"))
            .and_then(Value::as_str)
        {
            let _ = writeln!(o, "trace backend:  {b}");
        }
        for (kind, c) in events {
            let cap = c.get("captured").and_then(Value::as_u64).unwrap_or(0);
            let lost = c.get("lost").and_then(Value::as_u64).unwrap_or(0);
            let _ = writeln!(o, "trace events:   {kind}: captured {cap}, lost {lost}");
        }
    }
}
