//! Temporary copies of the command-run container evidence types (owned by
//! `cilock-evidence`), so the proxy builds before the merge.
// shim: removed at merge (replace with `cilock_evidence::attestors::command_run::{Container, ContainerMount, ContainerBuild}`)

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A container the step created through the proxy, or whose processes the trace saw.
// shim: removed at merge
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Full id (from the engine).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `docker`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine: String,
    /// The image as the request named it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_ref: String,
    /// The engine's image id, `sha256:…`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    /// RepoDigests, from the engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_digests: Vec<String>,
    /// Path + Args as the engine resolved them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ContainerMount>,
    /// Where it ran (v2, relative to the root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
    /// `cgroup-parent` | `engine-window` | `none`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attribution: String,
    /// Why attribution is `none`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Pid of the client that asked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_by: u32,
    /// For a build's RUN container, the build's `id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build: String,
    /// Some process of it outlived the step.
    #[serde(default, skip_serializing_if = "is_false")]
    pub alive_at_end: bool,
}

/// One mount of a container.
// shim: removed at merge
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMount {
    /// `bind`, `volume`, `tmpfs`, …
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Host side.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Container side.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// A build the step ran.
// shim: removed at merge
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerBuild {
    /// `build-<n>` (unique in the step).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `classic` | `buildkit`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub builder: String,
    /// `cgroup-parent` | `engine-window` | `none`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attribution: String,
    /// Why attribution is `none`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Query `t=`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Query `dockerfile=` (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dockerfile: String,
    /// RUN container ids as the engine printed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// The built image, from the engine's stream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    /// Pid of the client.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_by: u32,
}
