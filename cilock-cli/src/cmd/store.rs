//! Evidence in OCI registries from the command line: `--store` on `run`
//! and `step end` (the envelope is pushed once the `-o` file is written),
//! `cilock push`, `cilock pull`, and the discovery behind
//! `cilock verify --store`.
//!
//! The commands are synchronous: a current-thread tokio runtime drives the
//! store's requests. Credentials come from the user's Docker config
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
//!
//! A push that fails never loses the envelope: it stays at the `-o` path
//! (or, for `-o -`, in an owner-only copy in the temporary directory), and
//! stderr names the store, the reason, where the envelope is and the retry
//! command. The exit code is then [`EXIT_NOT_STORED`] (for `run`, the
//! command's own non-zero status wins).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cilock_api::StoreOutcome;
use cilock_evidence::digest::{DigestSet, HashAlg};
use cilock_evidence::dsse::Envelope;
use cilock_evidence::limits;
use cilock_evidence::policy::verify::{envelope_backref_digests, NamedEnvelope, SEARCH_DEPTH};
use cilock_store::{IndexKind, PushReport, Store, StoreOptions, StoreUrl, SubjectDigest};

use crate::cli::{PullArgs, PushArgs};
use crate::cmd::output;

/// Exit code: the attestation was written but could not be stored.
pub const EXIT_NOT_STORED: u8 = 3;

/// Most envelopes `verify --store` fetches in all (a registry, or whoever
/// may push to it, controls how many there are).
pub const MAX_DISCOVERED: usize = 10_000;

/// The exit status of a step whose envelope was written (`run`, `step
/// end`): the command's non-zero status (`code`) first, then 1 when an
/// attestor failed the step, then [`EXIT_NOT_STORED`] when a push failed.
pub fn step_status(code: i32, failed: bool, stored: bool) -> i32 {
    if code != 0 {
        code
    } else if failed {
        1
    } else if !stored {
        i32::from(EXIT_NOT_STORED)
    } else {
        0
    }
}

/// The runtime the store's requests run on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime for the store's requests")
}

fn open(url: &StoreUrl) -> Result<Store, cilock_store::StoreError> {
    Store::open(url.clone(), StoreOptions::default())
}

/// Opens every store (`--store`), or says which one cannot be.
fn open_all(urls: &[StoreUrl]) -> anyhow::Result<Vec<Store>> {
    urls.iter()
        .map(|url| open(url).with_context(|| format!("opening the store {url}")))
        .collect()
}

/// The stores, for a message: `URL, URL`.
fn list(urls: &[StoreUrl]) -> String {
    urls.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line on what a push wrote.
pub fn describe_report(r: &PushReport) -> String {
    let mut s = format!("blob {}", r.blob);
    if r.referrers.is_empty() {
        s.push_str("; no referrer written");
    } else {
        let refs: Vec<String> = r
            .referrers
            .iter()
            .map(|x| {
                format!(
                    "{} -> {}{}",
                    x.subject,
                    x.manifest,
                    match x.index {
                        IndexKind::ReferrersApi => " (referrers API)",
                        IndexKind::TagSchema => " (tag index)",
                    }
                )
            })
            .collect();
        s.push_str(&format!(
            "; {} referrer(s): {}",
            r.referrers.len(),
            refs.join(", ")
        ));
    }
    if !r.skipped.is_empty() {
        let sk: Vec<String> = r
            .skipped
            .iter()
            .map(|x| format!("{} ({})", x.subject, x.reason))
            .collect();
        s.push_str(&format!(
            "; {} subject(s) skipped: {}",
            r.skipped.len(),
            sk.join(", ")
        ));
    }
    s
}

/// After `bytes` was written to its destination (`written`: the regular
/// file, `None` for standard output or a special file), pushes it to every
/// `--store` and reports the daemon's own pushes (`daemon`). Says on stderr
/// what happened; on any failure keeps the envelope (the `-o` file, else an
/// owner-only copy in the temporary directory) and gives the retry command.
/// True when every push succeeded.
pub fn after_written(
    urls: &[StoreUrl],
    daemon: &[StoreOutcome],
    bytes: &[u8],
    written: Option<&Path>,
    step: &str,
) -> bool {
    let mut failed: Vec<(String, String)> = Vec::new();
    for o in daemon {
        if o.ok {
            eprintln!(
                "cilock: the daemon stored the attestation in {}: {}",
                o.url, o.detail
            );
        } else {
            failed.push((o.url.clone(), format!("(the daemon's push) {}", o.detail)));
        }
    }
    if !urls.is_empty() {
        match runtime() {
            Ok(rt) => {
                for url in urls {
                    let r = open(url).and_then(|s| rt.block_on(s.push(bytes)));
                    match r {
                        Ok(r) => {
                            eprintln!(
                                "cilock: attestation stored in {url}: {}",
                                describe_report(&r)
                            )
                        }
                        Err(e) => failed.push((url.to_string(), e.to_string())),
                    }
                }
            }
            Err(e) => {
                for url in urls {
                    failed.push((url.to_string(), format!("{e:#}")));
                }
            }
        }
    }
    if failed.is_empty() {
        return true;
    }
    let kept: anyhow::Result<PathBuf> = match written {
        Some(p) => Ok(p.to_path_buf()),
        None => output::keep_fallback(step, bytes),
    };
    for (url, why) in &failed {
        match &kept {
            Ok(p) => {
                let copy = if written.is_none() {
                    " (a copy: the -o destination keeps none)"
                } else {
                    ""
                };
                eprintln!(
                    "cilock: error: the attestation could not be stored in {url}: {why}; it is kept at {}{copy}; retry with: cilock push --store {url} {}",
                    p.display(),
                    p.display()
                )
            }
            Err(e) => eprintln!(
                "cilock: error: the attestation could not be stored in {url}: {why}; and keeping a copy in the temporary directory failed: {e:#}"
            ),
        }
    }
    false
}

/// Reads an envelope file (bounded) and checks that it is a signed DSSE
/// envelope of an in-toto statement (what a store takes).
fn read_envelope(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = limits::read_file(
        path,
        limits::MAX_ENVELOPE_BYTES,
        "envelope",
        limits::any_start,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    let env = Envelope::from_json(&bytes)
        .with_context(|| format!("{} is not a DSSE envelope", path.display()))?;
    if env.signatures.is_empty() {
        bail!("{} is an envelope without signatures", path.display());
    }
    if env.payload_type != cilock_evidence::intoto::PAYLOAD_TYPE {
        bail!(
            "{} has payloadType {:?}, not {:?}: only in-toto statements are stored",
            path.display(),
            env.payload_type,
            cilock_evidence::intoto::PAYLOAD_TYPE
        );
    }
    serde_json::from_slice::<cilock_evidence::intoto::Statement>(&env.payload).with_context(
        || {
            format!(
                "{}: the payload is not an in-toto statement",
                path.display()
            )
        },
    )?;
    Ok(bytes)
}

/// `cilock push --store URL… ENVELOPE…`.
pub fn push(a: PushArgs) -> anyhow::Result<u8> {
    // Every file is read and checked before anything is pushed.
    let mut envs = Vec::new();
    for f in &a.envelopes {
        envs.push((f, read_envelope(f)?));
    }
    let rt = runtime()?;
    let stores = open_all(&a.store)?;
    let mut failed = 0usize;
    let mut out = std::io::stdout().lock();
    for (f, bytes) in &envs {
        for s in &stores {
            match rt.block_on(s.push(bytes)) {
                Ok(r) => {
                    let _ = writeln!(
                        out,
                        "{}: stored in {}: {}",
                        f.display(),
                        s.url(),
                        describe_report(&r)
                    );
                }
                Err(e) => {
                    failed += 1;
                    eprintln!(
                        "cilock: error: {} could not be stored in {}: {e}",
                        f.display(),
                        s.url()
                    );
                }
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "cilock: {failed} push(es) failed; the envelope files are unchanged (retry the same command)"
        );
        return Ok(EXIT_NOT_STORED);
    }
    Ok(0)
}

/// Subject digests from `-s DIGEST` (`ALG:HEX`, or a bare sha256) and
/// `-f FILE` (its sha256), for `pull` and `verify`.
pub fn subjects(digests: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<SubjectDigest>> {
    let mut out = Vec::new();
    for s in digests {
        out.push(
            s.trim()
                .parse::<SubjectDigest>()
                .map_err(|e| anyhow::anyhow!("subject {s:?}: {e}"))?,
        );
    }
    for f in files {
        let d = DigestSet::from_file(f, &[HashAlg::Sha256])
            .with_context(|| format!("hashing artifact {}", f.display()))?;
        if let Some(h) = d.get_sha256() {
            out.push(SubjectDigest {
                algorithm: "sha256".into(),
                hex: h.to_ascii_lowercase(),
            });
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` (a temporary file renamed over it).
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let out = output::Outfile::prepare(path)?;
    out.commit(bytes)
}

/// `cilock pull --store URL… (-s DIGEST | -f FILE)… -o DIR`.
pub fn pull(a: PullArgs) -> anyhow::Result<u8> {
    let subs = subjects(&a.subjects, &a.artifact_files)?;
    if subs.is_empty() {
        bail!("give the artifact with -f FILE or its digest with -s DIGEST");
    }
    let md = std::fs::metadata(&a.outdir)
        .with_context(|| format!("output directory {}", a.outdir.display()))?;
    if !md.is_dir() {
        bail!("output {} is not a directory", a.outdir.display());
    }
    let rt = runtime()?;
    let mut written = BTreeSet::new();
    let mut out = std::io::stdout().lock();
    for s in &open_all(&a.store)? {
        let url = s.url();
        for d in &subs {
            let found = rt
                .block_on(s.discover(d))
                .with_context(|| format!("finding the attestations of {d} in {url}"))?;
            for f in found {
                let hex = f
                    .blob
                    .strip_prefix("sha256:")
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .with_context(|| format!("{url}: blob digest {:?} is not sha256", f.blob))?
                    .to_ascii_lowercase();
                if !written.insert(hex.clone()) {
                    continue;
                }
                let path = a.outdir.join(format!("{hex}.json"));
                write_file(&path, &f.bytes)?;
                let _ = writeln!(out, "{}: {} (subject {d})", path.display(), f.source);
            }
        }
    }
    if written.is_empty() {
        let subs: Vec<String> = subs.iter().map(ToString::to_string).collect();
        eprintln!(
            "cilock: no attestation found for {} in {}",
            subs.join(", "),
            list(&a.store)
        );
        return Ok(1);
    }
    eprintln!(
        "cilock: {} attestation(s) written to {}",
        written.len(),
        a.outdir.display()
    );
    Ok(0)
}

/// The back-references of a found envelope that a store indexes (see
/// [`envelope_backref_digests`]); none when its payload is not a statement.
fn backrefs(env: &Envelope, source: &str) -> Vec<SubjectDigest> {
    match envelope_backref_digests(env) {
        // An algorithm the store does not index is not searched for.
        Ok(refs) => refs
            .into_iter()
            .filter_map(|(alg, hex)| format!("{alg}:{hex}").parse().ok())
            .collect(),
        Err(e) => {
            tracing::debug!(source, "no back-references: {e}");
            Vec::new()
        }
    }
}

/// `cilock verify --store`: the envelopes of the artifact's digests
/// (`start`) in every store, then, for up to [`SEARCH_DEPTH`] rounds, those
/// of the back-references (git commit, pipeline, trees) of what was found.
/// Any discovery error fails (never a verification over fewer envelopes
/// than the stores hold); at most [`MAX_DISCOVERED`] envelopes.
pub fn discover_for_verify(
    urls: &[StoreUrl],
    start: &[SubjectDigest],
) -> anyhow::Result<Vec<NamedEnvelope>> {
    let rt = runtime()?;
    let stores = open_all(urls)?;
    let mut searched: BTreeSet<SubjectDigest> = BTreeSet::new();
    let mut frontier: Vec<SubjectDigest> = start
        .iter()
        .filter(|d| searched.insert((*d).clone()))
        .cloned()
        .collect();
    let mut blobs = BTreeSet::new();
    let mut found = Vec::new();
    for _round in 0..SEARCH_DEPTH {
        let mut next = Vec::new();
        for d in &frontier {
            for s in &stores {
                let got = rt.block_on(s.discover(d)).with_context(|| {
                    format!(
                        "finding the attestations of {d} in {}: verification needs every stored attestation",
                        s.url()
                    )
                })?;
                for f in got {
                    if !blobs.insert(f.blob.clone()) {
                        continue;
                    }
                    if blobs.len() > MAX_DISCOVERED {
                        bail!(
                            "the stores hold more than {MAX_DISCOVERED} attestations for this artifact and its back-references: refusing to fetch more"
                        );
                    }
                    let env = match Envelope::from_json(&f.bytes) {
                        Ok(e) => e,
                        Err(e) => {
                            eprintln!(
                                "cilock: warning: {} is not a DSSE envelope ({e}): ignored",
                                f.source
                            );
                            continue;
                        }
                    };
                    for d in backrefs(&env, &f.source) {
                        if searched.insert(d.clone()) {
                            next.push(d);
                        }
                    }
                    found.push(NamedEnvelope {
                        source: f.source.clone(),
                        envelope: env,
                    });
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    eprintln!(
        "cilock: {} attestation(s) found in {}",
        found.len(),
        list(urls)
    );
    Ok(found)
}
