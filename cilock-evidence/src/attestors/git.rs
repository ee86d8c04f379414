//! The git attestor (`https://witness.dev/attestations/git/v0.1`, stage
//! prematerial): the checked-out commit, its author/committer, signature,
//! parents and tree, the working-tree status, refs and annotated tags
//! pointing at HEAD, the branch and the remotes (credentials stripped).
//!
//! Data comes from the `git` binary (no git library). Outside a repository,
//! and in a repository without commits, the predicate is `{}` and there are
//! no subjects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::{DigestSet, HashAlg};

/// Attestor name.
pub const NAME: &str = "git";

/// What `gittool` says: cilock reads git data with the git binary only.
pub const GIT_TOOL: &str = "git-bin";

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
    /// Path of the git binary used.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gitbinpath: String,
    /// Digest of the git binary used.
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
    /// `{"sha1": commithash}`.
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
}

/// Finds an executable named `name` in `path_var` (a `PATH` value).
pub fn find_in_path(name: &str, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Some(p);
            }
        }
    }
    None
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

struct Git {
    bin: PathBuf,
    dir: PathBuf,
}

impl Git {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-C")
            .arg(&self.dir)
            .args(["-c", "safe.directory=*", "-c", "core.quotepath=off"])
            .args(args)
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null());
        for v in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
            "GIT_COMMON_DIR",
            "GIT_NAMESPACE",
            "GIT_CEILING_DIRECTORIES",
        ] {
            c.env_remove(v);
        }
        c
    }

    /// Runs git; Ok(None) when it exits non-zero.
    fn try_run(&self, args: &[&str]) -> Result<Option<Vec<u8>>, AttestError> {
        let out = self.cmd(args).output().map_err(|e| AttestError::Io {
            what: format!("running {} {}", self.bin.display(), args.join(" ")),
            source: e,
        })?;
        if out.status.success() {
            Ok(Some(out.stdout))
        } else {
            Ok(None)
        }
    }

    fn run(&self, args: &[&str]) -> Result<Vec<u8>, AttestError> {
        let out = self.cmd(args).output().map_err(|e| AttestError::Io {
            what: format!("running git {}", args.join(" ")),
            source: e,
        })?;
        if !out.status.success() {
            return Err(AttestError::Invalid(format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }
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

/// Parses `git status --porcelain=v1 -z`.
pub fn parse_status(out: &[u8]) -> BTreeMap<String, Status> {
    let mut m = BTreeMap::new();
    let mut it = out.split(|b| *b == 0).filter(|e| !e.is_empty());
    while let Some(e) = it.next() {
        if e.len() < 4 {
            continue;
        }
        let (x, y) = (e[0], e[1]);
        let path = lossy(&e[3..]);
        if x == b'R' || x == b'C' {
            it.next(); // the source path
        }
        if x == b'!' {
            continue;
        }
        m.insert(
            path,
            Status {
                staging: status_name(x).to_string(),
                worktree: status_name(y).to_string(),
            },
        );
    }
    m
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

    /// Observes the repository containing `dir`. `path_var` is searched for
    /// the git binary. Ok(None) outside a repository or without commits.
    pub fn observe(
        dir: &Path,
        path_var: &str,
        hashes: &[HashAlg],
    ) -> Result<Option<GitAttestation>, AttestError> {
        let bin = find_in_path("git", path_var)
            .or_else(|| find_in_path("git", "/usr/bin:/bin:/usr/local/bin"))
            .ok_or_else(|| AttestError::Invalid("git: no git binary found in PATH".into()))?;
        let g = Git {
            bin: bin.clone(),
            dir: dir.to_path_buf(),
        };
        if g.try_run(&["rev-parse", "--git-dir"])?.is_none() {
            return Ok(None); // not a repository
        }
        let head = match g.try_run(&["rev-parse", "--verify", "-q", "HEAD^{commit}"])? {
            Some(h) => lossy(&h).trim().to_string(),
            None => return Ok(None), // no commits yet
        };
        let mut a = GitAttestation {
            gittool: GIT_TOOL.to_string(),
            gitbinpath: bin.to_string_lossy().into_owned(),
            gitbinhash: {
                let hs: Vec<HashAlg> = hashes
                    .iter()
                    .copied()
                    .filter(|h| *h != HashAlg::DirHash)
                    .collect();
                let real = std::fs::canonicalize(&bin).unwrap_or(bin.clone());
                DigestSet::from_file(&real, &hs).ok()
            },
            commithash: head.clone(),
            ..Default::default()
        };
        a.commitdigest.0.insert(HashAlg::Sha1, head.clone());

        let raw = lossy(&g.run(&["cat-file", "commit", &head])?);
        let (headers, msg) = parse_object(&raw);
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
                    a.signature = format!("{v}\n");
                }
                _ => {}
            }
        }

        // Refs pointing at HEAD (go-git lists HEAD itself only when detached).
        let branch = g
            .try_run(&["symbolic-ref", "-q", "HEAD"])?
            .map(|b| lossy(&b).trim().to_string());
        match &branch {
            Some(full) => {
                a.branch = full.strip_prefix("refs/heads/").unwrap_or(full).to_string();
            }
            None => a.refs.push("HEAD".to_string()),
        }
        let refs = g.run(&["for-each-ref", "--format=%(objectname) %(refname)"])?;
        for line in lossy(&refs).lines() {
            if let Some((oid, name)) = line.split_once(' ') {
                if oid == head {
                    a.refs.push(name.to_string());
                }
            }
        }

        // Annotated tags whose target is HEAD.
        let tags = g.run(&[
            "for-each-ref",
            "refs/tags",
            "--format=%(objecttype) %(objectname) %(*objectname)",
        ])?;
        for line in lossy(&tags).lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.len() != 3 || parts[0] != "tag" {
                continue;
            }
            let raw = lossy(&g.run(&["cat-file", "tag", parts[1]])?);
            let (headers, msg) = parse_object(&raw);
            let target = headers
                .iter()
                .find(|(k, _)| k == "object")
                .map(|(_, v)| v.as_str());
            if target != Some(head.as_str()) {
                continue;
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
            a.tags.push(t);
        }

        // Remotes, sorted by remote name, credentials removed.
        if let Some(out) = g.try_run(&["config", "--get-regexp", r"^remote\..*\.url$"])? {
            let mut remotes: Vec<(String, String)> = Vec::new();
            for line in lossy(&out).lines() {
                if let Some((k, url)) = line.split_once(' ') {
                    let name = k
                        .strip_prefix("remote.")
                        .and_then(|r| r.strip_suffix(".url"))
                        .unwrap_or(k);
                    remotes.push((name.to_string(), strip_credentials(url)));
                }
            }
            remotes.sort_by(|a, b| a.0.cmp(&b.0));
            a.remotes = remotes.into_iter().map(|(_, u)| u).collect();
        }

        // Working-tree status (a bare repository has none).
        if let Some(out) = g.try_run(&[
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--ignored=no",
        ])? {
            a.status = parse_status(&out);
        }
        Ok(Some(a))
    }
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
        let path_var = ctx
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        self.data = Self::observe(&ctx.workdir, &path_var, &ctx.hashes)?;
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
    fn status_parsing() {
        let out = b" M a.txt\0A  b.txt\0?? c.txt\0R  new.txt\0old.txt\0D  gone\0";
        let m = parse_status(out);
        assert_eq!(m["a.txt"].staging, "unmodified");
        assert_eq!(m["a.txt"].worktree, "modified");
        assert_eq!(m["b.txt"].staging, "added");
        assert_eq!(m["c.txt"].staging, "untracked");
        assert_eq!(m["c.txt"].worktree, "untracked");
        assert_eq!(m["new.txt"].staging, "renamed");
        assert_eq!(m["gone"].staging, "deleted");
        assert!(!m.contains_key("old.txt"));
    }
}
