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
        if is_type(t, "command-run") {
            if let Some(cr) = att.get("attestation") {
                command_run_summary(&mut o, cr);
            }
        }
    }
    for att in &atts {
        let t = att.get("type").and_then(Value::as_str).unwrap_or("");
        if is_type(t, "secretscan") {
            if let Some(ss) = att.get("attestation") {
                secretscan_summary(&mut o, ss);
            }
        }
    }
    o
}

/// True when attestation type `t` is the attestor `name` (any of the
/// spellings: witness.dev, aflock.ai, …).
fn is_type(t: &str, name: &str) -> bool {
    collection::same_type(t, &collection::witness_type(name))
        || collection::canonical_type(t).contains(&format!("/{name}/"))
}

/// Findings listed at most (the count is always complete).
const MAX_LISTED: usize = 10;

/// The secretscan findings: count, then rule, location and the secret's
/// digest for each (never the matched text: it may be the secret).
fn secretscan_summary(o: &mut String, ss: &Value) {
    let findings = ss
        .get("findings")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(o, "secret findings: {}", findings.len());
    for f in findings.iter().take(MAX_LISTED) {
        let rule = f.get("ruleId").and_then(Value::as_str).unwrap_or("?");
        let loc = f.get("location").and_then(Value::as_str).unwrap_or("?");
        let line = f
            .get("startLine")
            .and_then(Value::as_u64)
            .map(|l| format!(" line {l}"))
            .unwrap_or_default();
        let digest = f
            .get("secret")
            .and_then(Value::as_object)
            .and_then(|m| {
                m.iter()
                    .find_map(|(k, v)| v.as_str().map(|v| format!(" ({k}:{})", short(v))))
            })
            .unwrap_or_default();
        let _ = writeln!(o, "  - {rule} in {loc}{line}{digest}");
    }
    if findings.len() > MAX_LISTED {
        let _ = writeln!(o, "  … {} more", findings.len() - MAX_LISTED);
    }
}

/// The first 12 characters of a hex digest.
fn short(v: &str) -> String {
    v.chars().take(12).collect::<String>() + "…"
}

/// The command-run attestation of a statement, if any.
fn command_run_of(st: &Value) -> Option<&Value> {
    st.get("predicate")?
        .get("attestations")?
        .as_array()?
        .iter()
        .find(|a| {
            a.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| is_type(t, "command-run"))
        })?
        .get("attestation")
}

/// What the statement says about processes still running when its step
/// ended: for `cilock step end`'s stderr and `cilock inspect` (one line
/// each; empty when nothing was left running or nothing was recorded).
pub fn end_notes(st: &Value) -> Vec<String> {
    command_run_of(st).map(alive_notes).unwrap_or_default()
}

/// [`end_notes`] of one command-run attestation.
fn alive_notes(cr: &Value) -> Vec<String> {
    let procs = cr
        .get("processes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let name = |pid: i64| -> String {
        let prog = procs
            .iter()
            .find(|p| p.get("processid").and_then(Value::as_i64) == Some(pid))
            .and_then(|p| {
                p.get("program")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .or_else(|| p.get("comm").and_then(Value::as_str))
            })
            .unwrap_or("?");
        format!("{pid} {prog}")
    };
    let list = |pids: &[i64]| -> String {
        let mut v: Vec<String> = pids.iter().take(MAX_LISTED).map(|&p| name(p)).collect();
        if pids.len() > MAX_LISTED {
            v.push(format!("… {} more", pids.len() - MAX_LISTED));
        }
        v.join(", ")
    };
    let plural = |n: usize| if n == 1 { "process" } else { "processes" };
    let pids_of = |v: Option<&Value>| -> Vec<i64> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    };
    let trace = cr.get("trace");
    let mut out = Vec::new();
    if let Some(k) = trace.and_then(|t| t.get("killAtEnd")) {
        let killed = pids_of(k.get("killed"));
        let not_listed = k
            .get("killedNotListed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let spared = pids_of(k.get("spared"));
        let by = k
            .get("requestedBy")
            .and_then(Value::as_str)
            .unwrap_or("the end of the step");
        let n = (killed.len() as u64).saturating_add(not_listed);
        out.push(if n == 0 {
            format!("{by}: nothing else was running")
        } else {
            format!("{by} killed {n} {}: {}", plural(n as usize), list(&killed))
        });
        if !spared.is_empty() {
            out.push(format!(
                "spared (the caller and its ancestors; still running, no longer traced): {}",
                list(&spared)
            ));
        }
        if k.get("complete") == Some(&Value::Bool(false)) {
            out.push(
                "the kill did not finish: other processes may still run, untraced".to_string(),
            );
        }
        return out;
    }
    let containers: Vec<String> = cr
        .get("containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|c| c.get("aliveAtEnd") == Some(&Value::Bool(true)))
        .map(|c| short_id(c.get("id").and_then(Value::as_str).unwrap_or("?")))
        .collect();
    if !containers.is_empty() {
        let n = containers.len();
        let mut v: Vec<String> = containers.into_iter().take(MAX_LISTED).collect();
        if n > MAX_LISTED {
            v.push(format!("… {} more", n - MAX_LISTED));
        }
        out.push(format!(
            "{n} container{} still running when the step ended (left running, no longer traced): {}",
            if n == 1 { "" } else { "s" },
            v.join(", ")
        ));
    }
    let alive: Vec<i64> = procs
        .iter()
        .filter(|p| p.get("aliveAtEnd") == Some(&Value::Bool(true)))
        .filter_map(|p| p.get("processid").and_then(Value::as_i64))
        .collect();
    if alive.is_empty() {
        return out;
    }
    let fate = trace
        .and_then(|t| t.get("waitDescendants"))
        .and_then(|w| w.get("survivorsFate"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("left running, no longer traced");
    out.push(format!(
        "{} {} still running when the step ended ({fate}): {}",
        alive.len(),
        plural(alive.len()),
        list(&alive)
    ));
    out
}

/// [`end_notes`] of a DSSE envelope (JSON); empty when it cannot be read.
pub fn end_notes_of_envelope(envelope: &Value) -> Vec<String> {
    serde_json::to_vec(envelope)
        .ok()
        .and_then(|b| Envelope::from_json(&b).ok())
        .and_then(|e| serde_json::from_slice::<Value>(&e.payload).ok())
        .map(|st| end_notes(&st))
        .unwrap_or_default()
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
    // Witness and CI/lock command-runs record no trace: what they do not
    // record is said to be so, never counted as 0.
    let traced = trace.is_some_and(Value::is_object);
    let has_procs = cr.get("processes").is_some_and(Value::is_array);
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
    const NOT_RECORDED: &str = "not recorded (no cilock trace in this attestation)";
    if has_procs || traced {
        let _ = writeln!(o, "processes:      {}", procs.len());
    } else {
        let _ = writeln!(o, "processes:      {NOT_RECORDED}");
    }
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
        let _ = writeln!(
            o,
            "  {}{pid} (parent {ppid}) {prog}{}",
            "  ".repeat(depth),
            where_it_ran(p)
        );
        if let Some(kids) = children.get(&pid) {
            for k in kids.iter().rev() {
                stack.push((*k, depth + 1));
            }
        }
    }
    let count = |n: usize, recorded: bool| {
        if recorded {
            n.to_string()
        } else {
            NOT_RECORDED.to_string()
        }
    };
    containers_summary(o, cr);
    let _ = writeln!(o, "opened files:   {}", count(files, has_procs || traced));
    let _ = writeln!(o, "network conns:  {}", count(conns, traced));
    let _ = writeln!(o, "syscall events: {}", count(sys, traced));
    for l in alive_notes(cr) {
        let _ = writeln!(o, "at end:         {l}");
    }
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

/// A container id as people read it: the first 12 characters of a 64-hex
/// id, anything else (e.g. `buildkit:<exec id>`) whole.
fn short_id(id: &str) -> String {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_string()
    } else {
        id.to_string()
    }
}

/// Where a process ran when it was not the daemon's own view: its
/// container (from its cgroup) and its mount namespace (whose paths its
/// `openedfiles` are in), as ` [container …, mount ns …]`; empty otherwise.
fn where_it_ran(p: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(c) = p
        .get("container")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        parts.push(format!("container {}", short_id(c)));
    }
    if let Some(ns) = p
        .get("mountNamespace")
        .and_then(Value::as_u64)
        .filter(|n| *n != 0)
    {
        parts.push(format!("mount ns {ns}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(", "))
    }
}

/// A string field of a JSON object, "" when absent.
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The strings of an array field of a JSON object.
fn texts<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// How a container or build was tied to the step, with the reason when it
/// was not.
fn attribution(v: &Value) -> String {
    let a = text(v, "attribution");
    let a = if a.is_empty() { "?" } else { a };
    match text(v, "reason") {
        "" => a.to_string(),
        why => format!("{a} ({why})"),
    }
}

/// The containers and builds the step ran through the daemon's Docker proxy
/// (or whose processes the trace saw), when there are any. The image as the
/// request named it is the client's word; ids, digests, the resolved
/// command and mounts are the engine's answer.
fn containers_summary(o: &mut String, cr: &Value) {
    let containers = cr
        .get("containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !containers.is_empty() {
        let _ = writeln!(o, "containers:     {}", containers.len());
    }
    for c in containers.iter().take(MAX_LISTED) {
        let engine = match text(c, "engine") {
            "" => String::new(),
            e => format!(" ({e})"),
        };
        let mut line = format!("  - {}{engine}", short_id(text(c, "id")));
        let image_ref = text(c, "imageRef");
        if !image_ref.is_empty() {
            let _ = write!(line, " image {image_ref:?} (as requested)");
        }
        let image_id = text(c, "imageId");
        if !image_id.is_empty() {
            let _ = write!(line, " = {image_id}");
        }
        let _ = write!(line, ", attribution {}", attribution(c));
        if let Some(pid) = c
            .get("createdBy")
            .and_then(Value::as_u64)
            .filter(|p| *p != 0)
        {
            let _ = write!(line, ", created by pid {pid}");
        }
        let build = text(c, "build");
        if !build.is_empty() {
            let _ = write!(line, ", RUN of {build}");
        }
        if c.get("aliveAtEnd") == Some(&Value::Bool(true)) {
            line.push_str(", still running at the end");
        }
        let _ = writeln!(o, "{line}");
        let cmd = texts(c, "cmd");
        if !cmd.is_empty() {
            let _ = writeln!(o, "      cmd:    {}", cmd.join(" "));
        }
        let cgroup = text(c, "cgroup");
        if !cgroup.is_empty() {
            let _ = writeln!(o, "      cgroup: {cgroup}");
        }
        for d in texts(c, "imageDigests").iter().take(MAX_LISTED) {
            let _ = writeln!(o, "      digest: {d}");
        }
        let mounts = c
            .get("mounts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for m in mounts.iter().take(MAX_LISTED) {
            let ro = if m.get("readOnly") == Some(&Value::Bool(true)) {
                " (read-only)"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "      mount:  {} {} -> {}{ro}",
                text(m, "type"),
                text(m, "source"),
                text(m, "destination")
            );
        }
        if mounts.len() > MAX_LISTED {
            let _ = writeln!(o, "      … {} more mounts", mounts.len() - MAX_LISTED);
        }
    }
    if containers.len() > MAX_LISTED {
        let _ = writeln!(o, "  … {} more", containers.len() - MAX_LISTED);
    }
    let builds = cr
        .get("builds")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !builds.is_empty() {
        let _ = writeln!(o, "builds:         {}", builds.len());
    }
    for b in builds.iter().take(MAX_LISTED) {
        let mut line = format!("  - {}", text(b, "id"));
        let builder = text(b, "builder");
        if !builder.is_empty() {
            let _ = write!(line, " ({builder})");
        }
        let dockerfile = text(b, "dockerfile");
        if !dockerfile.is_empty() {
            let _ = write!(line, " {dockerfile}");
        }
        let tags = texts(b, "tags");
        if !tags.is_empty() {
            let _ = write!(line, " tags {}", tags.join(", "));
        }
        let image_id = text(b, "imageId");
        if !image_id.is_empty() {
            let _ = write!(line, " -> {image_id}");
        }
        let _ = write!(line, ", attribution {}", attribution(b));
        if let Some(pid) = b
            .get("createdBy")
            .and_then(Value::as_u64)
            .filter(|p| *p != 0)
        {
            let _ = write!(line, ", created by pid {pid}");
        }
        let _ = writeln!(o, "{line}");
        let runs = texts(b, "containers");
        if !runs.is_empty() {
            let mut v: Vec<String> = runs.iter().take(MAX_LISTED).map(|c| short_id(c)).collect();
            if runs.len() > MAX_LISTED {
                v.push(format!("… {} more", runs.len() - MAX_LISTED));
            }
            let _ = writeln!(o, "      RUN containers: {}", v.join(", "));
        }
    }
    if builds.len() > MAX_LISTED {
        let _ = writeln!(o, "  … {} more", builds.len() - MAX_LISTED);
    }
}
