//! Ground-truth checks of a traced run's attestation ([`evidence`]): exit
//! status, lost events, and the processes, files and connections the
//! workload is known to make.

use std::path::Path;

use anyhow::{anyhow, bail};
use serde_json::Value;

use super::run::Run;
use super::scenario::Sc;
use super::workload::{Ctx, Wl};

pub(super) fn statement(env_path: &Path) -> anyhow::Result<Value> {
    use base64::Engine as _;
    let env: Value = serde_json::from_slice(&std::fs::read(env_path)?)?;
    let payload = env["payload"]
        .as_str()
        .ok_or_else(|| anyhow!("envelope without payload"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

pub(super) fn command_run(stmt: &Value) -> anyhow::Result<&Value> {
    stmt["predicate"]["attestations"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|x| {
                x["type"]
                    .as_str()
                    .is_some_and(|t| t.contains("command-run"))
            })
        })
        .map(|a| &a["attestation"])
        .ok_or_else(|| anyhow!("no command-run attestation"))
}

/// Reads the evidence figures of an attestation and checks them against
/// what the workload is known to do.
pub(super) fn evidence(ctx: &Ctx, w: Wl, sc: Sc, stmt: &Value, r: &mut Run) -> anyhow::Result<()> {
    let run = command_run(stmt)?;
    if let Some(ev) = run["trace"]["events"].as_object() {
        for (k, v) in ev {
            r.events.insert(
                k.clone(),
                (
                    v["captured"].as_u64().unwrap_or(0),
                    v["lost"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    let procs = run["processes"].as_array().cloned().unwrap_or_default();
    r.processes = Some(procs.len() as u64);
    let mut opened = std::collections::BTreeSet::new();
    let mut hashed = std::collections::BTreeSet::new();
    let (mut dns, mut sni) = (0u64, 0u64);
    for p in &procs {
        if let Some(files) = p["openedfiles"].as_object() {
            for (path, d) in files {
                opened.insert(path.clone());
                if d.as_object().is_some_and(|o| !o.is_empty()) {
                    hashed.insert(path.clone());
                }
            }
        }
        for u in p["unhashedOpens"].as_array().into_iter().flatten() {
            let reason = u["reason"].as_str().unwrap_or("").to_string();
            let reason = if reason.starts_with("not hashed: ") {
                "not hashed (error)".to_string()
            } else {
                reason
            };
            *r.unhashed.entry(reason).or_default() += 1;
        }
        dns += p["network"]["dnsLookups"]
            .as_array()
            .map_or(0, |a| a.len() as u64);
        sni += p["network"]["connections"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|c| c["hostname"].as_str().is_some_and(|h| !h.is_empty()))
                .count() as u64
        });
    }
    r.opened = Some(opened.len() as u64);
    r.hashed = Some(hashed.len() as u64);
    r.dns = Some(dns);
    r.sni = Some(sni);

    // Checks.
    if sc == Sc::Ebpf {
        if r.lost() > 0 {
            bail!("{} events lost: {:?}", r.lost(), r.events);
        }
        if r.events.contains_key("malformed") {
            bail!("malformed records: {:?}", r.events);
        }
    }
    let s = &ctx.sizes;
    match w {
        // Repeated opens of one file by one process are one record (the
        // kernel de-duplicates them); the file must be there.
        Wl::Open if !opened.contains("/etc/hostname") => {
            bail!("the storm's file /etc/hostname is not in openedfiles");
        }
        Wl::Open => {}
        Wl::Fork => {
            let n = procs
                .iter()
                .filter(|p| p["program"].as_str() == Some(ctx.true_path.as_str()))
                .count() as u64;
            if n != s.forks {
                bail!(
                    "{n} processes running {} recorded, the workload ran {}",
                    ctx.true_path,
                    s.forks
                );
            }
        }
        Wl::Pkg => {
            let root = ctx.wd(Wl::Pkg).join("node_modules").display().to_string();
            let n = opened.iter().filter(|p| p.starts_with(&root)).count() as u64;
            // Written files, plus the package directories find themselves
            // are not opened: exactly the files.
            let files = opened
                .iter()
                .filter(|p| p.starts_with(&root) && Path::new(p.as_str()).is_file())
                .count() as u64;
            if files != s.pkg_files() {
                bail!("{files} written package files recorded (of {n} paths under node_modules), the workload wrote {}", s.pkg_files());
            }
            let bad: Vec<&String> = opened
                .iter()
                .filter(|p| {
                    p.starts_with(&root) && Path::new(p.as_str()).is_file() && !hashed.contains(*p)
                })
                .take(3)
                .collect();
            if !bad.is_empty() {
                bail!("written package files without a digest, e.g. {bad:?}");
            }
            // DNS queries are recorded by ptrace, and by eBPF builds that
            // capture socket payloads (they report a `payload` counter).
            let sees_dns = sc == Sc::Ptrace || r.events.contains_key("payload");
            if sees_dns && dns != s.packages {
                bail!(
                    "{dns} DNS lookups recorded, the workload made {}",
                    s.packages
                );
            }
        }
        Wl::Walk => {
            // find opens every directory of the tree once: each is recorded.
            let tree = format!("{}/", ctx.work.join("tree").display());
            let n = opened.iter().filter(|p| p.starts_with(&tree)).count() as u64;
            if n + 1 < s.tree_dirs() {
                bail!(
                    "{n} tree directories recorded, find opened {}",
                    s.tree_dirs()
                );
            }
        }
        _ => {}
    }
    Ok(())
}
