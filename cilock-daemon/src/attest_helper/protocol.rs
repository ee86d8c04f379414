//! What the daemon and the attestor helper exchange: one JSON [`Request`]
//! on the helper's stdin, one JSON [`Reply`] on its stdout. Both carry
//! [`PROTOCOL_VERSION`]; the daemon and the helper are the same binary, so a
//! mismatch means a binary swapped under a running daemon and is refused.
//!
//! The request comes from the daemon (trusted by the helper). The reply
//! comes from a process running as the step's owner and is untrusted: the
//! daemon caps its size and validates it ([`super::validate`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use cilock_evidence::attestors::lifecycle::{AttestorOptions, LifecycleState, SkippedAttestor};
use cilock_evidence::attestors::selection::SelectedAttestor;
use cilock_evidence::attestors::CompletedAttestation;
use cilock_evidence::digest::DigestSet;

/// Version of the request/reply format.
pub const PROTOCOL_VERSION: u32 = 1;

/// The `argv[1]` that makes `cilock-daemon` run as the attestor helper.
pub const HELPER_ARG: &str = "__attest-helper";

/// Which part of the lifecycle the helper runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    /// environment, git, github, gitlab, material (at step begin).
    Before,
    /// github-action, product, secretscan (at step end).
    After,
    /// Reports the helper's own identity, limits and environment, then
    /// waits `hold_ms` (tests of the sandbox; runs no attestor).
    Probe,
}

/// One attestation as it crosses the process boundary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireAttestation {
    /// Attestor name.
    pub name: String,
    /// Type URI.
    pub type_uri: String,
    /// The attestor's JSON.
    pub json: serde_json::Value,
    /// Subjects by name without the type prefix.
    #[serde(default)]
    pub subjects: BTreeMap<String, DigestSet>,
    /// Back-references by name without the type prefix.
    #[serde(default)]
    pub backrefs: BTreeMap<String, DigestSet>,
    /// Start time (RFC 3339).
    pub starttime: String,
    /// End time (RFC 3339).
    pub endtime: String,
}

impl From<&CompletedAttestation> for WireAttestation {
    fn from(c: &CompletedAttestation) -> Self {
        WireAttestation {
            name: c.name.clone(),
            type_uri: c.type_uri.clone(),
            json: c.json.clone(),
            subjects: c.subjects.clone(),
            backrefs: c.backrefs.clone(),
            starttime: c.starttime.clone(),
            endtime: c.endtime.clone(),
        }
    }
}

impl From<WireAttestation> for CompletedAttestation {
    fn from(w: WireAttestation) -> Self {
        CompletedAttestation {
            name: w.name,
            type_uri: w.type_uri,
            json: w.json,
            subjects: w.subjects,
            backrefs: w.backrefs,
            starttime: w.starttime,
            endtime: w.endtime,
        }
    }
}

/// The daemon's request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What to run.
    pub stage: StageKind,
    /// Attestors requested (besides command-run, material, product).
    #[serde(default)]
    pub attestations: Vec<String>,
    /// Attestor options.
    #[serde(default)]
    pub options: AttestorOptions,
    /// The workdir's path (for messages and git; files are read through
    /// fd 3, the directory the daemon opened at begin).
    pub workdir: PathBuf,
    /// The job's environment, read by the daemon from /proc/PID/environ.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// After: what `before` left (material snapshot, skipped attestors).
    #[serde(default)]
    pub state: Option<LifecycleState>,
    /// After: the attestations recorded so far (before-stage ones and the
    /// daemon's command-run), for github-action and secretscan to read.
    #[serde(default)]
    pub completed: Vec<WireAttestation>,
    /// Probe: how long to wait after reporting (milliseconds).
    #[serde(default)]
    pub hold_ms: u64,
    /// After: what the step's processes wrote (the product attestor marks
    /// each product `writtenByStep` from it).
    #[serde(default)]
    pub step_writes: Option<cilock_evidence::attestors::product::StepWrites>,
    /// The step's name (the slsa attestor's invocation id outside CI).
    #[serde(default)]
    pub step: String,
}

/// The helper's reply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Attestations recorded by this stage, in stage order.
    pub attestations: Vec<WireAttestation>,
    /// Requested attestors not recorded, and why.
    pub skipped: Vec<SkippedAttestor>,
    /// Prematerial and postproduct attestors this stage recorded, and why
    /// (requested, or called for by the trace).
    pub selected: Vec<SelectedAttestor>,
    /// Before: what `after` needs.
    pub state: Option<LifecycleState>,
    /// After: `(secret, rule)` strings secretscan found; the daemon masks
    /// them in the other attestations itself.
    pub redactions: Vec<(String, String)>,
    /// After: secretscan with fail-on-detection found secrets.
    pub failure: Option<String>,
    /// The stage failed (an attestor error): the message.
    pub error: Option<String>,
    /// Probe: the helper's view of itself.
    pub probe: Option<ProbeReport>,
}

/// What a probe reports about the helper process (read from its own
/// `/proc/self/status`, `getgroups`, `getrlimit`, its environment).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeReport {
    /// Process id.
    pub pid: u32,
    /// Real, effective, saved and filesystem uid (`Uid:` of status).
    pub uids: Vec<u32>,
    /// Real, effective, saved and filesystem gid (`Gid:` of status).
    pub gids: Vec<u32>,
    /// Supplementary groups (`getgroups`).
    pub groups: Vec<u32>,
    /// `CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb` (hex, as in status).
    pub caps: BTreeMap<String, String>,
    /// `NoNewPrivs:` of status.
    pub no_new_privs: String,
    /// PR_GET_DUMPABLE.
    pub dumpable: i32,
    /// The helper's own environment.
    pub env: Vec<(String, String)>,
    /// Soft limits: cpu, as, fsize, nofile, core (`u64::MAX` = unlimited).
    pub rlimits: BTreeMap<String, u64>,
    /// Open file descriptors (`/proc/self/fd`).
    pub fds: Vec<i32>,
    /// What fd 3 points to.
    pub fd3: String,
    /// The current directory.
    pub cwd: String,
    /// The helper's cgroup (`/proc/self/cgroup`): the daemon's, not a step's.
    pub cgroup: String,
    /// Landlock ABI version restricting the helper's writes (0: none).
    pub landlock_abi: i64,
    /// What happened when it tried to create a file in /tmp.
    pub create_in_tmp: String,
}
