//! The git attestor (`https://witness.dev/attestations/git/v0.1`, stage
//! prematerial): the checked-out commit, its author/committer, signature,
//! parents and tree, the working-tree status, refs and annotated tags
//! pointing at HEAD, the branch and the remotes (credentials stripped).
//!
//! Data comes from the repository files, read with the `gix` library (as
//! Witness reads them with go-git): **no program is ever run** — no `git`
//! binary (neither the job's nor the system's), no hooks, no
//! `core.fsmonitor`, no filter drivers, no credential helpers. The
//! repository is opened isolated: only its own configuration is read
//! (no system/global/`$HOME` configuration, no `include`s, no `GIT_*`
//! environment), with reduced trust so that no configuration section of the
//! repository can name a command that gix would run, and without a
//! `safe.directory` check (the repository belongs to the job; nothing in it
//! is executed, so it does not need to be trusted).
//!
//! A repository is job-controlled: the refs and tags examined, the status
//! entries and remotes recorded, and the sizes of commit/tag objects,
//! messages and signatures are bounded; truncation is marked in the
//! attestation (`refsTruncated`, `statusTruncated`, …), never silent.
//!
//! Outside a repository, and in a repository without commits, the predicate
//! is `{}` and there are no subjects.
//!
//! Differences from `git` itself, all consequences of reading nothing but
//! the repository: `remotes` come from the repository's own configuration
//! (not from system/global files or `include`d ones); untracked files
//! ignored only by a global excludes file are listed; a submodule is
//! `modified` when its checked-out commit differs from the recorded one (its
//! own worktree is not examined); `commitdigest` of a sha256 repository is
//! `{"sha256": …}`. Memory for the index and HEAD's tree is bounded by the
//! process limits of the attestor helper; gix caps object allocations at
//! 16 MiB for a repository opened with reduced trust.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::{DigestSet, HashAlg};

/// Attestor name.
pub const NAME: &str = "git";

/// What `gittool` says: cilock reads git data with the `gix` library only
/// (Witness says `go-git` when it uses no git binary; `gitbinpath` and
/// `gitbinhash` are absent because no binary runs).
pub const GIT_TOOL: &str = "gix";

/// At most this many refs are examined (for `refs` and annotated `tags`).
pub const MAX_REFS: usize = 100_000;
/// At most this many paths are recorded in `status`.
pub const MAX_STATUS_ENTRIES: usize = 100_000;
/// At most this many remote URLs are recorded.
pub const MAX_REMOTES: usize = 10_000;
/// Commit messages, commit signatures, tag messages and tag signatures are
/// cut at this many bytes.
pub const MAX_TEXT: usize = 1 << 20;
/// A HEAD commit or annotated tag object larger than this is refused.
pub const MAX_OBJECT_SIZE: u64 = 16 << 20;

/// The bounds the attestor applies (the `MAX_*` constants by default; a
/// job cannot change them — only tests use smaller ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Refs examined ([`MAX_REFS`]).
    pub refs: usize,
    /// Status paths recorded ([`MAX_STATUS_ENTRIES`]).
    pub status: usize,
    /// Remote URLs recorded ([`MAX_REMOTES`]).
    pub remotes: usize,
    /// Bytes of a message or signature ([`MAX_TEXT`]).
    pub text: usize,
    /// Bytes of the HEAD commit or an annotated tag object ([`MAX_OBJECT_SIZE`]).
    pub object_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            refs: MAX_REFS,
            status: MAX_STATUS_ENTRIES,
            remotes: MAX_REMOTES,
            text: MAX_TEXT,
            object_size: MAX_OBJECT_SIZE,
        }
    }
}

/// Staging and worktree state of one path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Index state (`unmodified`, `untracked`, `modified`, `added`,
    /// `deleted`, `renamed`, `copied`, `updated`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub staging: String,
    /// Worktree state (same codes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub worktree: String,
}

/// An annotated tag pointing at HEAD.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// Tag name.
    pub name: String,
    /// Tagger name.
    pub taggername: String,
    /// Tagger e-mail.
    pub taggeremail: String,
    /// Tagging time, RFC 3339.
    pub when: String,
    /// Armored signature, if the tag is signed.
    pub pgpsignature: String,
    /// Tag message (without the signature).
    pub message: String,
}

/// The git attestation (Witness field names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitAttestation {
    /// How the data was read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gittool: String,
    /// Path of the git binary used (always empty: no binary runs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gitbinpath: String,
    /// Digest of the git binary used (always absent: no binary runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitbinhash: Option<DigestSet>,
    /// HEAD commit id.
    pub commithash: String,
    /// Author name.
    pub author: String,
    /// Author e-mail.
    pub authoremail: String,
    /// Committer name.
    pub committername: String,
    /// Committer e-mail.
    pub committeremail: String,
    /// Author date, in Go's `time.Time.String()` format.
    pub commitdate: String,
    /// Commit message.
    pub commitmessage: String,
    /// Paths that are not unmodified in both index and worktree.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, Status>,
    /// `{"sha1": commithash}` (`{"sha256": …}` in a sha256 repository).
    #[serde(default, skip_serializing_if = "DigestSet::is_empty")]
    pub commitdigest: DigestSet,
    /// Commit signature (`gpgsig` header), if signed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
    /// Parent commit ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parenthashes: Vec<String>,
    /// Tree id of HEAD.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub treehash: String,
    /// Refs pointing directly at HEAD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
    /// Remote URLs, userinfo removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<String>,
    /// Annotated tags pointing at HEAD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// Checked-out branch (short name), empty when detached.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub branch: String,
    /// More than [`MAX_REFS`] refs: `refs` and `tags` are incomplete.
    #[serde(rename = "refsTruncated", default, skip_serializing_if = "is_false")]
    pub refs_truncated: bool,
    /// More than [`MAX_STATUS_ENTRIES`] paths: `status` is incomplete.
    #[serde(rename = "statusTruncated", default, skip_serializing_if = "is_false")]
    pub status_truncated: bool,
    /// More than [`MAX_REMOTES`] remote URLs: `remotes` is incomplete.
    #[serde(rename = "remotesTruncated", default, skip_serializing_if = "is_false")]
    pub remotes_truncated: bool,
    /// `commitmessage` was cut at [`MAX_TEXT`] bytes.
    #[serde(
        rename = "commitmessageTruncated",
        default,
        skip_serializing_if = "is_false"
    )]
    pub commitmessage_truncated: bool,
    /// `signature` was cut at [`MAX_TEXT`] bytes.
    #[serde(
        rename = "signatureTruncated",
        default,
        skip_serializing_if = "is_false"
    )]
    pub signature_truncated: bool,
    /// A tag's `message` or `pgpsignature` was cut at [`MAX_TEXT`] bytes.
    #[serde(rename = "tagsTruncated", default, skip_serializing_if = "is_false")]
    pub tags_truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `s` cut to at most `max` bytes (at a character boundary); true if cut.
fn cap_text(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    s.truncate(i);
    true
}

/// Removes userinfo (`user:password@`) from a remote URL. For scp-like
/// remotes (`user@host:path`) only a password-bearing userinfo is removed.
pub fn strip_credentials(url: &str) -> String {
    if let Some(i) = url.find("://") {
        let (scheme, rest) = url.split_at(i + 3);
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            return format!("{scheme}{}", &rest[at + 1..]);
        }
        return url.to_string();
    }
    if let Some(at) = url.find('@') {
        let user = &url[..at];
        if user.contains(':') && !user.contains('/') {
            return url[at + 1..].to_string();
        }
    }
    url.to_string()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A parsed `author`/`committer`/`tagger` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    /// Name.
    pub name: String,
    /// E-mail.
    pub email: String,
    /// Unix time.
    pub time: i64,
    /// UTC offset in seconds.
    pub offset: i32,
}

/// Parses `Name <email> 1700000000 +0100`.
pub fn parse_signature(s: &str) -> Signature {
    let (lt, gt) = match (s.find('<'), s.rfind('>')) {
        (Some(l), Some(g)) if l < g => (l, g),
        _ => {
            return Signature {
                name: s.trim().to_string(),
                ..Default::default()
            }
        }
    };
    let name = s[..lt].trim().to_string();
    let email = s[lt + 1..gt].to_string();
    let mut rest = s[gt + 1..].split_whitespace();
    let time = rest.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    let offset = rest.next().map(parse_tz).unwrap_or(0);
    Signature {
        name,
        email,
        time,
        offset,
    }
}

fn parse_tz(tz: &str) -> i32 {
    let b = tz.as_bytes();
    if b.len() != 5 || !(b[0] == b'+' || b[0] == b'-') {
        return 0;
    }
    let hh: i32 = tz[1..3].parse().unwrap_or(0);
    let mm: i32 = tz[3..5].parse().unwrap_or(0);
    let v = hh * 3600 + mm * 60;
    if b[0] == b'-' {
        -v
    } else {
        v
    }
}

extern "C" {
    // POSIX; not exported by the libc crate.
    fn tzset();
}

/// The local zone at unix time `t`: (offset seconds, abbreviation).
fn local_zone(t: i64) -> Option<(i32, String)> {
    let tt = t as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; tzset initialises libc's zone state.
    unsafe {
        tzset();
        if libc::localtime_r(&tt, &mut tm).is_null() {
            return None;
        }
    }
    let name = if tm.tm_zone.is_null() {
        String::new()
    } else {
        // SAFETY: tm_zone points to a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) }
            .to_string_lossy()
            .into_owned()
    };
    Some((tm.tm_gmtoff as i32, name))
}

/// The zone go-git gives a signature time: the local zone when the commit's
/// offset is the local offset (Go's `time.Parse` rule, evaluated in 1970 as
/// go-git's dummy date does), else a nameless fixed zone. Returns the offset
/// and the zone name to print at time `t`.
fn go_zone(t: i64, offset: i32) -> (i32, String) {
    if let Some((off1970, _)) = local_zone(-(offset as i64)) {
        if off1970 == offset {
            if let Some((off, name)) = local_zone(t) {
                return (off, name);
            }
        }
    }
    (offset, String::new())
}

fn fmt_offset(off: i32, colon: bool) -> String {
    let sign = if off < 0 { '-' } else { '+' };
    let m = off.unsigned_abs() / 60;
    if colon {
        format!("{sign}{:02}:{:02}", m / 60, m % 60)
    } else {
        format!("{sign}{:02}{:02}", m / 60, m % 60)
    }
}

fn civil(t: i64, off: i32) -> Option<time::OffsetDateTime> {
    let o = time::UtcOffset::from_whole_seconds(off).ok()?;
    Some(
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()?
            .to_offset(o),
    )
}

/// Go's `time.Time.String()` (`2006-01-02 15:04:05.999999999 -0700 MST`) of
/// a git time as go-git decodes it.
pub fn go_time_string(t: i64, offset: i32) -> String {
    let (off, name) = go_zone(t, offset);
    let Some(d) = civil(t, off) else {
        return String::new();
    };
    let zone = if name.is_empty() {
        fmt_offset(off, false)
    } else {
        name
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {} {}",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        fmt_offset(off, false),
        zone
    )
}

/// Go's `Format(time.RFC3339)` of a git time as go-git decodes it.
pub fn go_rfc3339(t: i64, offset: i32) -> String {
    let (off, _) = go_zone(t, offset);
    let Some(d) = civil(t, off) else {
        return String::new();
    };
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        fmt_offset(off, true)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        zone
    )
}

/// A parsed commit or tag object: headers (continuations joined with `\n`)
/// and the message.
fn parse_object(raw: &str) -> (Vec<(String, String)>, String) {
    let (head, msg) = match raw.find("\n\n") {
        Some(i) => (&raw[..i], &raw[i + 2..]),
        None => (raw.trim_end_matches('\n'), ""),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        if let Some(cont) = line.strip_prefix(' ') {
            if let Some(last) = headers.last_mut() {
                last.1.push('\n');
                last.1.push_str(cont);
            }
            continue;
        }
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        headers.push((k.to_string(), v.to_string()));
    }
    (headers, msg.to_string())
}

fn status_name(c: u8) -> &'static str {
    match c {
        b' ' => "unmodified",
        b'?' => "untracked",
        b'M' | b'T' => "modified",
        b'A' => "added",
        b'D' => "deleted",
        b'R' => "renamed",
        b'C' => "copied",
        b'U' => "updated",
        _ => "unmodified",
    }
}

/// The git attestor.
#[derive(Debug, Default)]
pub struct GitAttestor {
    data: Option<GitAttestation>,
}

impl GitAttestor {
    /// A new git attestor.
    pub fn new() -> Self {
        Self::default()
    }

    /// The attestation, after `attest` (None outside a repo / no commits).
    pub fn data(&self) -> Option<&GitAttestation> {
        self.data.as_ref()
    }

    /// Observes the repository containing `dir` (searched upwards, like
    /// `git -C dir`). Ok(None) outside a repository or without commits.
    /// Runs no program.
    pub fn observe(dir: &Path) -> Result<Option<GitAttestation>, AttestError> {
        Self::observe_with_limits(dir, Limits::default())
    }

    /// [`observe`](Self::observe) with explicit bounds.
    pub fn observe_with_limits(
        dir: &Path,
        limits: Limits,
    ) -> Result<Option<GitAttestation>, AttestError> {
        let Some(repo) = open_repository(dir)? else {
            return Ok(None); // not a repository
        };
        let mut head = repo.head().map_err(|e| gix_err("reading HEAD", e))?;
        if head.is_unborn() {
            return Ok(None); // no commits yet
        }
        let branch_ref = head.referent_name().map(|n| lossy(n.as_bstr()));
        let head_id = head
            .peel_to_commit()
            .map_err(|e| gix_err("resolving HEAD to a commit", e))?
            .id;
        let head_hex = head_id.to_string();
        let mut a = GitAttestation {
            gittool: GIT_TOOL.to_string(),
            commithash: head_hex.clone(),
            ..Default::default()
        };
        let digest_alg = match head_id.kind() {
            gix::hash::Kind::Sha1 => HashAlg::Sha1,
            _ => HashAlg::Sha256,
        };
        a.commitdigest.0.insert(digest_alg, head_hex.clone());

        let raw = read_object(
            &repo,
            head_id,
            gix::object::Kind::Commit,
            "HEAD commit",
            &limits,
        )?;
        let (headers, mut msg) = parse_object(&lossy(&raw));
        drop(raw);
        a.commitmessage_truncated = cap_text(&mut msg, limits.text);
        a.commitmessage = msg;
        for (k, v) in &headers {
            match k.as_str() {
                "tree" => a.treehash = v.clone(),
                "parent" => a.parenthashes.push(v.clone()),
                "author" => {
                    let s = parse_signature(v);
                    a.author = s.name;
                    a.authoremail = s.email;
                    a.commitdate = go_time_string(s.time, s.offset);
                }
                "committer" => {
                    let s = parse_signature(v);
                    a.committername = s.name;
                    a.committeremail = s.email;
                }
                "gpgsig" | "gpgsig-sha256" if a.signature.is_empty() => {
                    let mut sig = format!("{v}\n");
                    a.signature_truncated = cap_text(&mut sig, limits.text);
                    a.signature = sig;
                }
                _ => {}
            }
        }

        // Refs pointing at HEAD (go-git lists HEAD itself only when detached).
        match &branch_ref {
            Some(full) => {
                a.branch = full.strip_prefix("refs/heads/").unwrap_or(full).to_string();
            }
            None => a.refs.push("HEAD".to_string()),
        }
        read_refs(&repo, head_id, &mut a, &limits)?;
        read_remotes(&repo, &mut a, &limits);

        // Working-tree status (a bare repository has none).
        if repo.workdir().is_some() {
            let tree = gix::ObjectId::from_hex(a.treehash.as_bytes()).map_err(|e| {
                AttestError::Invalid(format!("git: HEAD commit has a bad tree id: {e}"))
            })?;
            let (status, truncated) = read_status(&repo, tree, &limits)?;
            a.status = status;
            a.status_truncated = truncated;
        }
        Ok(Some(a))
    }
}

fn gix_err(what: &str, e: impl std::fmt::Display) -> AttestError {
    AttestError::Invalid(format!("git: {what}: {e}"))
}

/// gix options that read the repository's own files and nothing else, and
/// can run nothing: no git binary (installation config), no system/global
/// configuration, no environment, no includes; reduced trust, so that the
/// repository's configuration sections are never used for anything that
/// names a command (filter drivers, ...), and no configuration section of
/// the repository is accepted for such "sensitive" reads at all.
fn isolated_options() -> gix::open::Options {
    let mut perms = gix::open::Permissions::isolated();
    perms.config.git_binary = false;
    perms.config.system = false;
    perms.config.git = false;
    perms.config.user = false;
    perms.config.env = false;
    perms.config.includes = false;
    perms.attributes.git_binary = false;
    perms.attributes.system = false;
    perms.attributes.git = false;
    gix::open::Options::isolated()
        .permissions(perms)
        .with_enforced_trust(gix::sec::Trust::Reduced)
        .filter_config_section(no_repository_sections)
        .strict_config(false)
        .configure_related_repository(|_related, opts| {
            // Submodules and linked worktrees get the same treatment.
            Ok(std::ops::ControlFlow::Continue(
                opts.permissions(gix::open::Permissions::isolated())
                    .with_enforced_trust(gix::sec::Trust::Reduced)
                    .filter_config_section(no_repository_sections),
            ))
        })
}

/// The section filter for "sensitive" configuration reads (those that can
/// name programs): nothing from the repository is eligible.
fn no_repository_sections(meta: &gix::config::file::Metadata) -> bool {
    meta.source.kind() != gix::config::source::Kind::Repository
}

/// The repository containing `dir`, or None when there is none.
fn open_repository(dir: &Path) -> Result<Option<gix::Repository>, AttestError> {
    use gix::discover::upwards;
    let opts = upwards::Options {
        // Ownership is irrelevant: nothing in the repository is executed.
        trust: upwards::TrustPolicy::Assume(gix::sec::Trust::Reduced),
        ..Default::default()
    };
    let (path, _trust) = match gix::discover::upwards_opts(dir, opts) {
        Ok(found) => found,
        Err(e) => {
            return match e.downcast_any_ref::<upwards::Error>() {
                Some(
                    upwards::Error::NoGitRepository { .. }
                    | upwards::Error::NoGitRepositoryWithinCeiling { .. }
                    | upwards::Error::NoGitRepositoryWithinFs { .. },
                ) => Ok(None),
                _ => Err(gix_err("finding the repository", e)),
            }
        }
    };
    let (git_dir, worktree) = path.into_repository_and_work_tree_directories();
    let at = worktree.unwrap_or(git_dir);
    let repo = gix::open_opts(&at, isolated_options())
        .map_err(|e| gix_err(&format!("opening {}", at.display()), e))?;
    Ok(Some(repo))
}

/// The raw bytes of object `id`, which must be of `kind` and at most
/// [`MAX_OBJECT_SIZE`] bytes.
fn read_object(
    repo: &gix::Repository,
    id: gix::ObjectId,
    kind: gix::object::Kind,
    what: &str,
    limits: &Limits,
) -> Result<Vec<u8>, AttestError> {
    let header = repo
        .find_header(id)
        .map_err(|e| gix_err(&format!("reading {what} {id}"), e))?;
    if header.kind() != kind {
        return Err(AttestError::Invalid(format!(
            "git: {what} {id} is a {}, not a {kind}",
            header.kind()
        )));
    }
    if header.size() > limits.object_size {
        return Err(AttestError::Invalid(format!(
            "git: {what} {id} is {} bytes, over the {} byte limit",
            header.size(),
            limits.object_size
        )));
    }
    let obj = repo
        .find_object(id)
        .map_err(|e| gix_err(&format!("reading {what} {id}"), e))?;
    Ok(obj.detach().data)
}

/// `refs` (refs whose direct target — symbolic refs followed, tags not
/// peeled — is HEAD, sorted by name, like `git for-each-ref`) and `tags`
/// (annotated tags whose object is HEAD).
fn read_refs(
    repo: &gix::Repository,
    head: gix::ObjectId,
    a: &mut GitAttestation,
    limits: &Limits,
) -> Result<(), AttestError> {
    let platform = repo.references().map_err(|e| gix_err("reading refs", e))?;
    let iter = platform.all().map_err(|e| gix_err("reading refs", e))?;
    let mut refs: Vec<String> = Vec::new();
    let mut tags: Vec<(String, Tag)> = Vec::new();
    for (examined, r) in iter.enumerate() {
        if examined >= limits.refs {
            a.refs_truncated = true;
            break;
        }
        let Ok(mut r) = r else {
            continue; // a broken ref: git for-each-ref skips it too
        };
        let name = lossy(r.name().as_bstr());
        if !name.starts_with("refs/") {
            continue;
        }
        let Ok(id) = r.follow_to_object() else {
            continue; // dangling symbolic ref
        };
        let id = id.detach();
        if id == head {
            refs.push(name.clone());
        }
        if !name.starts_with("refs/tags/") {
            continue;
        }
        let is_tag = repo
            .find_header(id)
            .map(|h| h.kind() == gix::object::Kind::Tag)
            .unwrap_or(false);
        if !is_tag {
            continue;
        }
        let raw = read_object(repo, id, gix::object::Kind::Tag, "tag", limits)?;
        let head_hex = head.to_string();
        if let Some(t) = parse_tag(&lossy(&raw), &head_hex, limits.text, &mut a.tags_truncated) {
            tags.push((name, t));
        }
    }
    refs.sort();
    a.refs.extend(refs);
    tags.sort_by(|x, y| x.0.cmp(&y.0));
    a.tags = tags.into_iter().map(|(_, t)| t).collect();
    Ok(())
}

/// A tag object whose `object` is `head`, as a [`Tag`].
fn parse_tag(raw: &str, head: &str, max_text: usize, truncated: &mut bool) -> Option<Tag> {
    let (headers, msg) = parse_object(raw);
    let target = headers
        .iter()
        .find(|(k, _)| k == "object")
        .map(|(_, v)| v.as_str());
    if target != Some(head) {
        return None;
    }
    let mut t = Tag::default();
    for (k, v) in &headers {
        match k.as_str() {
            "tag" => t.name = v.clone(),
            "tagger" => {
                let s = parse_signature(v);
                t.taggername = s.name;
                t.taggeremail = s.email;
                t.when = go_rfc3339(s.time, s.offset);
            }
            _ => {}
        }
    }
    let sig_start = [
        "-----BEGIN PGP SIGNATURE-----",
        "-----BEGIN SSH SIGNATURE-----",
    ]
    .iter()
    .filter_map(|m| msg.find(m))
    .min();
    match sig_start {
        Some(i) => {
            t.message = msg[..i].to_string();
            t.pgpsignature = msg[i..].to_string();
        }
        None => t.message = msg,
    }
    *truncated |= cap_text(&mut t.message, max_text);
    *truncated |= cap_text(&mut t.pgpsignature, max_text);
    Some(t)
}

/// Remote URLs (every `remote.<name>.url` value of the repository's
/// configuration), sorted by remote name, credentials removed.
fn read_remotes(repo: &gix::Repository, a: &mut GitAttestation, limits: &Limits) {
    let snapshot = repo.config_snapshot();
    let file = snapshot.plumbing();
    let mut remotes: Vec<(String, String)> = Vec::new();
    if let Some(sections) = file.sections_by_name("remote") {
        'outer: for section in sections {
            let Some(name) = section.header().subsection_name() else {
                continue;
            };
            for url in section.values("url") {
                if remotes.len() >= limits.remotes {
                    a.remotes_truncated = true;
                    break 'outer;
                }
                remotes.push((lossy(name), strip_credentials(&lossy(&url))));
            }
        }
    }
    remotes.sort_by(|x, y| x.0.cmp(&y.0));
    a.remotes = remotes.into_iter().map(|(_, u)| u).collect();
}

/// Staging (X) and worktree (Y) codes per path, as in
/// `git status --porcelain=v1`, bounded.
struct StatusMap {
    m: BTreeMap<String, (u8, u8)>,
    max: usize,
    truncated: bool,
}

impl StatusMap {
    /// Sets the codes of `path` (None keeps the current one); false when
    /// the map is full and `path` is new.
    fn set(&mut self, path: String, x: Option<u8>, y: Option<u8>) -> bool {
        if !self.m.contains_key(&path) && self.m.len() >= self.max {
            self.truncated = true;
            return false;
        }
        let e = self.m.entry(path).or_insert((b' ', b' '));
        if let Some(x) = x {
            e.0 = x;
        }
        if let Some(y) = y {
            e.1 = y;
        }
        true
    }
}

/// The index-to-worktree half of the status: worktree codes, untracked
/// files. Stops the walk (through `stop`) once the map is full.
struct WorktreeSink<'a, T, U> {
    map: &'a mut StatusMap,
    stop: &'a AtomicBool,
    _types: std::marker::PhantomData<(T, U)>,
}

impl<'index, T, U> gix::status::plumbing::index_as_worktree_with_renames::VisitEntry<'index>
    for WorktreeSink<'_, T, U>
{
    type ContentChange = T;
    type SubmoduleStatus = U;

    fn visit_entry(
        &mut self,
        entry: gix::status::plumbing::index_as_worktree_with_renames::Entry<'index, T, U>,
    ) {
        use gix::status::plumbing::index_as_worktree::{Change, Conflict, EntryStatus};
        use gix::status::plumbing::index_as_worktree_with_renames::Entry;
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let (path, x, y) = match entry {
            Entry::Modification {
                rela_path, status, ..
            } => {
                let (x, y) = match status {
                    EntryStatus::NeedsUpdate(_) => return, // stat only: unchanged
                    EntryStatus::IntentToAdd => (Some(b' '), b'A'),
                    EntryStatus::Conflict { summary, .. } => {
                        let (x, y) = match summary {
                            Conflict::BothDeleted => (b'D', b'D'),
                            Conflict::AddedByUs => (b'A', b'U'),
                            Conflict::DeletedByThem => (b'U', b'D'),
                            Conflict::AddedByThem => (b'U', b'A'),
                            Conflict::DeletedByUs => (b'D', b'U'),
                            Conflict::BothAdded => (b'A', b'A'),
                            Conflict::BothModified => (b'U', b'U'),
                        };
                        (Some(x), y)
                    }
                    EntryStatus::Change(c) => match c {
                        Change::Removed => (None, b'D'),
                        Change::Type { .. } => (None, b'T'),
                        Change::Modification { .. } | Change::SubmoduleModification(_) => {
                            (None, b'M')
                        }
                    },
                };
                (lossy(rela_path), x, Some(y))
            }
            Entry::DirectoryContents { entry, .. } => {
                if entry.status != gix::dir::entry::Status::Untracked {
                    return;
                }
                let mut p = lossy(entry.rela_path.as_ref());
                if matches!(
                    entry.disk_kind,
                    Some(gix::dir::entry::Kind::Directory | gix::dir::entry::Kind::Repository)
                ) && !p.ends_with('/')
                {
                    p.push('/'); // as git prints an untracked nested repository
                }
                (p, Some(b'?'), Some(b'?'))
            }
            Entry::Rewrite { .. } => return, // rewrite tracking is off
        };
        if !self.map.set(path, x, y) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// `git status --porcelain=v1 --untracked-files=all --ignored=no`: HEAD's
/// tree against the index (staging codes, renames detected), the index
/// against the worktree (worktree codes, untracked files). Submodules are
/// compared by commit only (their own worktrees are not examined).
fn read_status(
    repo: &gix::Repository,
    head_tree: gix::ObjectId,
    limits: &Limits,
) -> Result<(BTreeMap<String, Status>, bool), AttestError> {
    let index = repo
        .index_or_empty()
        .map_err(|e| gix_err("reading the index", e))?;
    let mut map = StatusMap {
        m: BTreeMap::new(),
        max: limits.status,
        truncated: false,
    };

    // HEAD^{tree} against the index.
    let mut pathspec = repo
        .pathspec(
            false,
            None::<&str>,
            true,
            &index,
            gix::worktree::stack::state::attributes::Source::IdMapping,
        )
        .map_err(|e| gix_err("status", e))?;
    repo.tree_index_status(
        &head_tree,
        &index,
        Some(&mut pathspec),
        gix::status::tree_index::TrackRenames::Given(gix::diff::Rewrites::default()),
        |change, _, _| {
            use gix::diff::index::ChangeRef;
            let (path, x) = match &change {
                ChangeRef::Addition { location, .. } => (location, b'A'),
                ChangeRef::Deletion { location, .. } => (location, b'D'),
                ChangeRef::Modification { location, .. } => (location, b'M'),
                ChangeRef::Rewrite { location, copy, .. } => {
                    (location, if *copy { b'C' } else { b'R' })
                }
            };
            Ok(if map.set(lossy(path.as_ref()), Some(x), None) {
                gix::diff::index::Action::Continue(())
            } else {
                gix::diff::index::Action::Break(())
            })
        },
    )
    .map_err(|e| gix_err("status (HEAD against the index)", e))?;

    // The index against the worktree, untracked files listed one by one.
    if !map.truncated {
        let stop = AtomicBool::new(false);
        let dirwalk = repo
            .dirwalk_options()
            .map_err(|e| gix_err("status", e))?
            .empty_patterns_match_prefix(false)
            .emit_untracked(gix::dir::walk::EmissionMode::Matching)
            .emit_ignored(None)
            .emit_pruned(false)
            .emit_tracked(false)
            .emit_empty_directories(false)
            .recurse_repositories(false);
        let submodules = gix::status::index_worktree::BuiltinSubmoduleStatus::new(
            repo.clone().into_sync(),
            gix::status::Submodule::Given {
                ignore: gix::submodule::config::Ignore::Dirty,
                check_dirty: false,
            },
        )
        .map_err(|e| gix_err("status", e))?;
        let mut sink = WorktreeSink {
            map: &mut map,
            stop: &stop,
            _types: std::marker::PhantomData,
        };
        let res = repo.index_worktree_status(
            &index,
            None::<&str>,
            &mut sink,
            gix::status::plumbing::index_as_worktree::traits::FastEq,
            submodules,
            &mut gix::progress::Discard,
            &stop,
            gix::status::index_worktree::Options {
                sorting: None,
                dirwalk_options: Some(dirwalk),
                rewrites: None,
                thread_limit: Some(1),
            },
        );
        if let Err(e) = res {
            if !stop.load(Ordering::Relaxed) {
                return Err(gix_err("status (index against the worktree)", e));
            }
        }
    }
    let status = map
        .m
        .into_iter()
        .map(|(p, (x, y))| {
            (
                p,
                Status {
                    staging: status_name(x).to_string(),
                    worktree: status_name(y).to_string(),
                },
            )
        })
        .collect();
    Ok((status, map.truncated))
}

fn sha256_of(s: &str) -> DigestSet {
    DigestSet::from_bytes(s.as_bytes(), &[HashAlg::Sha256])
}

impl Attestor for GitAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        // The workdir the daemon opened at step begin, when there is one: a
        // later swap of the path changes nothing.
        self.data = match &ctx.workdir_fd {
            Some(fd) => {
                use std::os::fd::AsRawFd as _;
                Self::observe(Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))?
            }
            None => Self::observe(&ctx.workdir)?,
        };
        match &self.data {
            Some(d) => {
                serde_json::to_value(d).map_err(|e| AttestError::Invalid(format!("git: {e}")))
            }
            None => Ok(serde_json::json!({})),
        }
    }

    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        let mut m = BTreeMap::new();
        let Some(a) = &self.data else {
            return m;
        };
        m.insert(
            format!("commithash:{}", a.commithash),
            a.commitdigest.clone(),
        );
        m.insert(
            format!("authoremail:{}", a.authoremail),
            sha256_of(&a.authoremail),
        );
        m.insert(
            format!("committeremail:{}", a.committeremail),
            sha256_of(&a.committeremail),
        );
        for p in &a.parenthashes {
            m.insert(format!("parenthash:{p}"), sha256_of(p));
        }
        if !a.branch.is_empty() {
            m.insert(format!("refnameshort:{}", a.branch), sha256_of(&a.branch));
        }
        m
    }

    fn backrefs(&self) -> BTreeMap<String, DigestSet> {
        let mut m = BTreeMap::new();
        if let Some(a) = &self.data {
            m.insert(
                format!("commithash:{}", a.commithash),
                a.commitdigest.clone(),
            );
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped() {
        assert_eq!(
            strip_credentials("https://user:ghp_x@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            strip_credentials("https://github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            strip_credentials("ssh://git@example.com:22/o/r"),
            "ssh://example.com:22/o/r"
        );
        assert_eq!(
            strip_credentials("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        assert_eq!(strip_credentials("u:pw@host:o/r.git"), "host:o/r.git");
    }

    #[test]
    fn signature_and_times() {
        let s = parse_signature("A U Thor <a@x.org> 1700000000 -0500");
        assert_eq!(s.name, "A U Thor");
        assert_eq!(s.email, "a@x.org");
        assert_eq!(s.offset, -5 * 3600);
        assert_eq!(fmt_offset(-5 * 3600, false), "-0500");
        assert_eq!(fmt_offset(5 * 3600 + 1800, true), "+05:30");
    }

    #[test]
    fn status_codes_and_bounds() {
        assert_eq!(status_name(b'?'), "untracked");
        assert_eq!(status_name(b'T'), "modified");
        assert_eq!(status_name(b'U'), "updated");
        let mut m = StatusMap {
            m: BTreeMap::new(),
            max: MAX_STATUS_ENTRIES,
            truncated: false,
        };
        for i in 0..MAX_STATUS_ENTRIES {
            assert!(m.set(format!("f{i}"), Some(b'A'), None));
        }
        // An existing path can still be updated; a new one is refused.
        assert!(m.set("f0".into(), None, Some(b'M')));
        assert_eq!(m.m["f0"], (b'A', b'M'));
        assert!(!m.truncated);
        assert!(!m.set("new".into(), Some(b'A'), None));
        assert!(m.truncated);
        assert_eq!(m.m.len(), MAX_STATUS_ENTRIES);
    }

    #[test]
    fn text_is_cut_at_a_char_boundary() {
        let mut s = "é".repeat(10); // 20 bytes
        assert!(cap_text(&mut s, 5));
        assert_eq!(s, "éé");
        let mut t = "short".to_string();
        assert!(!cap_text(&mut t, 5));
        assert_eq!(t, "short");
    }
}
