//! The github-action attestor (`https://aflock.ai/attestations/github-action/v0.1`,
//! stage execute; a CI/lock type, Witness has none): which GitHub Action a
//! step ran, whether its ref is pinned to a commit, its inputs and outputs
//! and its exit code.
//!
//! The action reference comes from the options or from the runner's
//! `GITHUB_ACTION_REPOSITORY` and `GITHUB_ACTION_REF`; the type and name from
//! the `action.yml` in `GITHUB_ACTION_PATH`; inputs from `INPUT_*` (filtered
//! like the environment attestor); outputs from the `GITHUB_OUTPUT` file;
//! the exit code from the command-run attestation.
//!
//! The files are named by the job (its environment and options), so they are
//! opened non-blocking, without following a symbolic link in the last
//! component, regular files only, and read up to [`MAX_FILE_BYTES`]; what
//! could not be read, or was cut, is said in `notes`. They are read once per
//! step: [`GitHubActionAttestor::observe`] caches what it read for the
//! `attest` that follows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::environment::SensitiveEnvFilter;
use super::github::{env_get, sha256_str, NOT_GITHUB};
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "github-action";
/// Type URI (CI/lock's; there is no Witness equivalent).
pub const TYPE_URI: &str = "https://aflock.ai/attestations/github-action/v0.1";
/// Most bytes read from `GITHUB_OUTPUT` or `action.yml`.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Docker container configuration of a docker action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerContainerConfig {
    /// Image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Network.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Workspace mount.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workspace: String,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entrypoint: String,
    /// Number of environment variables passed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub envcount: i64,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// The github-action attestation (CI/lock field names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHubActionAttestation {
    /// `owner/repo[/path]@ref`.
    pub actionref: String,
    /// `javascript`, `docker` or `composite` (empty when unknown).
    pub actiontype: String,
    /// `name` from action.yml.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actionname: String,
    /// Inputs (sensitive ones obfuscated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actioninputs: BTreeMap<String, String>,
    /// Outputs written to `GITHUB_OUTPUT`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actionoutputs: BTreeMap<String, String>,
    /// Exit code of the step.
    pub exitcode: i32,
    /// Local directory of the action.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actiondir: String,
    /// True when the ref is a full 40-hex commit id.
    #[serde(default, skip_serializing_if = "is_false")]
    pub refpinned: bool,
    /// Docker configuration (docker actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerContainerConfig>,
    /// `GITHUB_RUN_ID`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runid: String,
    /// `GITHUB_WORKFLOW`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workflowname: String,
    /// `GITHUB_JOB`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jobname: String,
    /// Files that could not be read, or were cut at [`MAX_FILE_BYTES`]
    /// (cilock extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// cilock-action's `isRefPinned`: the text after the last `@` is exactly 40
/// hex characters.
pub fn is_ref_pinned(actionref: &str) -> bool {
    match actionref.rsplit_once('@') {
        Some((_, r)) => r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    let s = s.split(" #").next().unwrap_or(s).trim();
    let b = s.as_bytes();
    if b.len() >= 2
        && ((b[0] == b'"' && b[b.len() - 1] == b'"') || (b[0] == b'\'' && b[b.len() - 1] == b'\''))
    {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

/// Reads `name` and `runs.using` from the action.yml/action.yaml in `dir`
/// and maps `using` to `javascript`, `docker` or `composite`.
pub fn read_action_metadata(dir: &Path) -> Option<(String, String)> {
    read_action_metadata_noted(dir).0
}

/// [`read_action_metadata`], plus notes on what could not be read: the file
/// is opened non-blocking, without following a link in its last component,
/// regular files only, at most [`MAX_FILE_BYTES`].
pub fn read_action_metadata_noted(dir: &Path) -> (Option<(String, String)>, Vec<String>) {
    let mut notes = Vec::new();
    let mut text = None;
    for f in ["action.yml", "action.yaml"] {
        let p = dir.join(f);
        if std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        match super::safeio::read_file_capped(&p, MAX_FILE_BYTES) {
            Ok((bytes, more)) => {
                if more {
                    notes.push(format!(
                        "{}: read only the first {MAX_FILE_BYTES} bytes",
                        p.display()
                    ));
                }
                text = Some(String::from_utf8_lossy(complete_lines(&bytes, more)).into_owned());
                break;
            }
            Err(e) => notes.push(format!("{}: not read: {e}", p.display())),
        }
    }
    let Some(text) = text else {
        return (None, notes);
    };
    (Some(parse_action_metadata(&text)), notes)
}

/// The bytes up to the last newline when the read was cut (`more`): a
/// partial last line is dropped rather than recorded as a wrong value.
fn complete_lines(bytes: &[u8], more: bool) -> &[u8] {
    if !more {
        return bytes;
    }
    match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[],
    }
}

fn parse_action_metadata(text: &str) -> (String, String) {
    let mut name = String::new();
    let mut using = String::new();
    let mut in_runs = false;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let top = !line.starts_with(' ') && !line.starts_with('\t');
        if top {
            in_runs = false;
            if let Some(v) = line.strip_prefix("name:") {
                name = unquote(v);
            } else if line.trim_end() == "runs:" {
                in_runs = true;
            }
        } else if in_runs {
            if let Some(v) = line.trim_start().strip_prefix("using:") {
                using = unquote(v);
            }
        }
    }
    let kind = if using.starts_with("node") {
        "javascript"
    } else if using == "docker" {
        "docker"
    } else if using == "composite" {
        "composite"
    } else {
        ""
    };
    (name, kind.to_string())
}

/// Reads a `GITHUB_OUTPUT` file the bounded way (see the module docs) and
/// parses it; notes say what could not be read or was cut.
pub fn read_github_output(path: &Path) -> (BTreeMap<String, String>, Vec<String>) {
    match super::safeio::read_file_capped(path, MAX_FILE_BYTES) {
        Ok((bytes, more)) => {
            let mut notes = Vec::new();
            if more {
                notes.push(format!(
                    "GITHUB_OUTPUT {}: read only the first {MAX_FILE_BYTES} bytes",
                    path.display()
                ));
            }
            let text = String::from_utf8_lossy(complete_lines(&bytes, more));
            (parse_github_output(&text), notes)
        }
        Err(e) => (
            BTreeMap::new(),
            vec![format!("GITHUB_OUTPUT {}: not read: {e}", path.display())],
        ),
    }
}

/// Parses a `GITHUB_OUTPUT` file: `name=value` lines and
/// `name<<DELIM … DELIM` blocks.
pub fn parse_github_output(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delim)) = line.split_once("<<") {
            if !name.contains('=') {
                let mut val: Vec<&str> = Vec::new();
                for l in lines.by_ref() {
                    if l == delim {
                        break;
                    }
                    val.push(l);
                }
                out.insert(name.to_string(), val.join("\n"));
                continue;
            }
        }
        if let Some((k, v)) = line.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// What `observe` read from files, kept for the `attest` that follows.
#[derive(Clone, Debug)]
struct FileReads {
    /// (GITHUB_OUTPUT path, action dir) the reads are of.
    key: (Option<String>, Option<PathBuf>),
    metadata: Option<(String, String)>,
    outputs: BTreeMap<String, String>,
    notes: Vec<String>,
}

/// The github-action attestor.
#[derive(Debug)]
pub struct GitHubActionAttestor {
    action_ref: Option<String>,
    action_dir: Option<PathBuf>,
    filter: SensitiveEnvFilter,
    data: Option<GitHubActionAttestation>,
    reads: Mutex<Option<FileReads>>,
}

impl GitHubActionAttestor {
    /// An attestor; `action_ref`/`action_dir` override the runner's
    /// variables; `filter` obfuscates sensitive inputs.
    pub fn new(
        action_ref: Option<String>,
        action_dir: Option<PathBuf>,
        filter: SensitiveEnvFilter,
    ) -> Self {
        GitHubActionAttestor {
            action_ref: action_ref.filter(|s| !s.is_empty()),
            action_dir,
            filter,
            data: None,
            reads: Mutex::new(None),
        }
    }

    /// The files of the step, read once: a second call for the same paths
    /// (`Lifecycle::after` observes, then `attest` observes again) uses what
    /// the first one read.
    fn file_reads(&self, output: Option<&str>, dir: Option<&Path>) -> FileReads {
        let key = (output.map(str::to_string), dir.map(Path::to_path_buf));
        let mut cache = match self.reads.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if let Some(r) = cache.as_ref().filter(|r| r.key == key) {
            return r.clone();
        }
        let mut notes = Vec::new();
        let metadata = dir.and_then(|d| {
            let (m, n) = read_action_metadata_noted(d);
            notes.extend(n);
            m
        });
        let outputs = match output {
            Some(p) => {
                let (o, n) = read_github_output(Path::new(p));
                notes.extend(n);
                o
            }
            None => BTreeMap::new(),
        };
        let r = FileReads {
            key,
            metadata,
            outputs,
            notes,
        };
        *cache = Some(r.clone());
        r
    }

    /// Builds the attestation.
    pub fn observe(
        &self,
        ctx: &AttestationContext,
    ) -> Result<GitHubActionAttestation, AttestError> {
        let env = &ctx.env;
        if env_get(env, "GITHUB_ACTIONS") != Some("true") && self.action_ref.is_none() {
            return Err(AttestError::Invalid(format!("github-action: {NOT_GITHUB}")));
        }
        let actionref = match &self.action_ref {
            Some(r) => r.clone(),
            None => match (env_get(env, "GITHUB_ACTION_REPOSITORY"), env_get(env, "GITHUB_ACTION_REF")) {
                (Some(repo), Some(r)) if !repo.is_empty() && !r.is_empty() => format!("{repo}@{r}"),
                _ => {
                    return Err(AttestError::Invalid(
                        "github-action: no action reference (GITHUB_ACTION_REPOSITORY/GITHUB_ACTION_REF are unset and none was given)".into(),
                    ))
                }
            },
        };
        let dir = self.action_dir.clone().or_else(|| {
            env_get(env, "GITHUB_ACTION_PATH")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let output = env_get(env, "GITHUB_OUTPUT").filter(|p| !p.is_empty());
        let reads = self.file_reads(output, dir.as_deref());
        let (actionname, actiontype) = reads.metadata.clone().unwrap_or_default();
        let mut actioninputs = BTreeMap::new();
        for (k, v) in env {
            if let Some(name) = k.strip_prefix("INPUT_") {
                if name.is_empty() {
                    continue;
                }
                if let Some(v) = self.filter.filter_value(k, v) {
                    actioninputs.insert(name.to_ascii_lowercase(), v.to_string());
                }
            }
        }
        let actionoutputs = reads.outputs;
        let exitcode = ctx
            .completed_json(super::command_run::NAME)
            .and_then(|v| v.get("exitcode"))
            .and_then(|v| v.as_i64())
            .unwrap_or(0) as i32;
        Ok(GitHubActionAttestation {
            refpinned: is_ref_pinned(&actionref),
            actionref,
            actiontype,
            actionname,
            actioninputs,
            actionoutputs,
            exitcode,
            actiondir: dir
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default(),
            docker: None,
            runid: env_get(env, "GITHUB_RUN_ID").unwrap_or("").to_string(),
            workflowname: env_get(env, "GITHUB_WORKFLOW").unwrap_or("").to_string(),
            jobname: env_get(env, "GITHUB_JOB").unwrap_or("").to_string(),
            notes: reads.notes,
        })
    }
}

impl Attestor for GitHubActionAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn type_uri(&self) -> String {
        TYPE_URI.to_string()
    }
    fn stage(&self) -> Stage {
        Stage::Execute
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let d = self.observe(ctx);
        // The next step (if the attestor is reused) reads its own files.
        if let Ok(mut c) = self.reads.lock() {
            *c = None;
        }
        let d = d?;
        let v = serde_json::to_value(&d)
            .map_err(|e| AttestError::Invalid(format!("github-action: {e}")))?;
        self.data = Some(d);
        Ok(v)
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        let mut m = BTreeMap::new();
        if let Some(d) = &self.data {
            if !d.actionref.is_empty() {
                m.insert(
                    format!("actionref:{}", d.actionref),
                    sha256_str(&d.actionref),
                );
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_refs() {
        assert!(is_ref_pinned(
            "actions/checkout@8e5e7e5ab8b370d6c329ec480221332ada57f0ab"
        ));
        assert!(!is_ref_pinned("actions/checkout@v4"));
        assert!(!is_ref_pinned(
            "actions/checkout@8e5e7e5ab8b370d6c329ec480221332ada57f0a"
        ));
        assert!(!is_ref_pinned(
            "actions/checkout@8e5e7e5ab8b370d6c329ec480221332ada57f0abz"
        ));
        assert!(!is_ref_pinned("8e5e7e5ab8b370d6c329ec480221332ada57f0ab"));
        assert!(is_ref_pinned(
            "a@b@8E5E7E5AB8B370D6C329EC480221332ADA57F0AB"
        ));
    }

    #[test]
    fn outputs() {
        let m = parse_github_output("a=1\nmulti<<EOF\nx\ny\nEOF\nb=c=d\n");
        assert_eq!(m["a"], "1");
        assert_eq!(m["multi"], "x\ny");
        assert_eq!(m["b"], "c=d");
    }
}
