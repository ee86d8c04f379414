//! The slsa attestor (`https://slsa.dev/provenance/v1`, stage postproduct,
//! last of the post-product attestors; secretscan masks it afterwards): a
//! SLSA provenance v1 predicate built from what the other attestors of the
//! step recorded, the trace included.
//!
//! Witness's `slsa` attestor writes the type `https://slsa.dev/provenance/v1.0`
//! (no SLSA verifier knows it); cilock writes `https://slsa.dev/provenance/v1`,
//! the URI the SLSA spec and the in-toto attestation framework define. The
//! predicate is the SLSA v1 shape (the in-toto-attestation package's
//! `provenance_pb2.Provenance` parses it); with `--attestor-slsa-export` it
//! is also signed on its own as an in-toto Statement v1 ([`export_statement`]),
//! and, unlike Witness, it stays in the collection too.
//!
//! # The build type `https://cilock.dev/build/v1`
//!
//! `buildDefinition`:
//! - `externalParameters` (what the caller chose):
//!   - `command`: the command-run's observed `cmd` (the argv the tracer saw
//!     exec'd); when the step was begun and ended without a command the
//!     tracer observed, `claimed: {command}` holds the command line the
//!     client reported instead (its word, not observed);
//!   - `github` (the github attestor ran): `workflow`, `workflowRef`,
//!     `repository`, `ref`, `runId`, `runUrl`; `ref`/`workflowRef` come from
//!     the OIDC token's claims when it was recorded, else from the runner's
//!     `GITHUB_REF`/`GITHUB_WORKFLOW_REF`;
//!   - `gitlab` (the gitlab attestor ran): `pipeline`, `pipelineUrl`, `job`,
//!     `jobUrl`, `repository`, `ref` (token claim `ref`, else
//!     `CI_COMMIT_REF_NAME`).
//! - `internalParameters`: `env`, the environment attestor's variables
//!   (already filtered: sensitive ones obfuscated or dropped) when it ran.
//! - `resolvedDependencies`:
//!   1. the git attestor's commit: one descriptor per remote,
//!      `git+<remote>@<ref>` (`ref`: `refs/heads/<branch>`, else the CI's
//!      ref, else a ref pointing at HEAD, else the commit id) with digest
//!      `gitCommit`; without a remote, `git+file://<workdir>@<ref>`;
//!   2. every material: `name` = its path relative to the working
//!      directory, its digests; when the trace saw a step process read
//!      that very content (same path, same digest), `uri` =
//!      `file://<absolute path>` too;
//!   3. every other file the trace saw a step process open or execute with
//!      a digest (command-run `processes[].openedfiles`, `program` +
//!      `programdigest`): `uri` = `file://<absolute path>` and its digests,
//!      one per (path, digest). Left out: files without a digest, what the
//!      step itself wrote (products, and paths a step process opened for
//!      writing), pseudo-files (`/proc`, `/sys`, `/dev`), processes that
//!      joined the step from outside or ran in another mount namespace
//!      (their paths are not the host's). At most
//!      [`MAX_TRACED_DEPENDENCIES`] (and [`MAX_MATERIAL_DEPENDENCIES`]
//!      materials); how many were left out is said in the trace byproduct.
//!
//! `runDetails`:
//! - `builder.id` `https://cilock.dev/builder/v1`, `builder.version`
//!   `{"cilock": <version>}`.
//! - `metadata.invocationId`: the CI run's URL (github, else gitlab
//!   pipeline URL), else the step name; `startedOn`: when the attestors
//!   before the step finished (the material attestation's end: the step's
//!   processes ran after it); `finishedOn`: the command-run attestation's
//!   end (the trace's end). RFC 3339.
//! - `byproducts`: one `uri`-only descriptor per network endpoint the trace
//!   saw a step process contact over IPv4/IPv6: `udp://IP:PORT` for a
//!   datagram sent to an address (`sendto`/`sendmsg`/`sendmmsg`) or a
//!   `connect` to a DNS server the trace saw queried over UDP,
//!   `tcp://IP:PORT` for any other `connect` (the trace does not record
//!   the socket type: a connected UDP socket that carried no DNS query the
//!   trace decoded shows as `tcp`; the `syscalls` annotation says what was
//!   observed); IPv6 in brackets. Annotated with the syscalls seen
//!   (`syscalls`), the DNS names the trace saw resolve to that address
//!   (`dnsNames`) and the TLS server names sent on it (`tlsServerNames`).
//!   At most [`MAX_ENDPOINTS`]; then one descriptor
//!   named `cilock:trace` whose annotations give the trace backend, the
//!   events lost per kind, what bounds left out (`truncated`) and how many
//!   dependencies or endpoints this attestor left out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::command_run::{self, CommandRun};
use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::collection::Collection;
use crate::digest::DigestSet;
use crate::intoto::{ResourceDescriptor, Statement, StatementV1};

/// Attestor name.
pub const NAME: &str = "slsa";
/// Predicate type (SLSA provenance v1; not Witness's `/v1.0`).
pub const TYPE_URI: &str = "https://slsa.dev/provenance/v1";
/// `buildDefinition.buildType` (see the module docs).
pub const BUILD_TYPE: &str = "https://cilock.dev/build/v1";
/// `runDetails.builder.id`.
pub const BUILDER_ID: &str = "https://cilock.dev/builder/v1";
/// Most traced files listed in `resolvedDependencies`.
pub const MAX_TRACED_DEPENDENCIES: usize = 20_000;
/// Most materials listed in `resolvedDependencies`.
pub const MAX_MATERIAL_DEPENDENCIES: usize = 100_000;
/// Most git remotes listed in `resolvedDependencies`.
pub const MAX_GIT_REMOTES: usize = 100;
/// Most network endpoints listed in `byproducts`.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Most DNS names or TLS server names annotated on one endpoint.
pub const MAX_NAMES_PER_ENDPOINT: usize = 32;
/// Name of the byproduct describing the trace.
pub const TRACE_BYPRODUCT: &str = "cilock:trace";

/// The SLSA provenance v1 predicate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// What was built and from what.
    pub build_definition: BuildDefinition,
    /// Who built it and how the run went.
    pub run_details: RunDetails,
}

/// `buildDefinition`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`].
    pub build_type: String,
    /// Parameters under the caller's control.
    pub external_parameters: serde_json::Map<String, serde_json::Value>,
    /// Parameters the builder set.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub internal_parameters: serde_json::Map<String, serde_json::Value>,
    /// Inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// `runDetails`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
    /// The invocation.
    pub metadata: BuildMetadata,
    /// Other things the run produced or touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byproducts: Vec<ResourceDescriptor>,
}

/// `runDetails.builder`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Builder {
    /// [`BUILDER_ID`].
    pub id: String,
    /// `{"cilock": <version>}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
}

/// `runDetails.metadata`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    /// CI run URL, else the step name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub invocation_id: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_on: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_on: Option<String>,
}

/// The slsa attestor.
#[derive(Debug)]
pub struct SlsaAttestor {}

impl SlsaAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SlsaAttestor {})
    }
}

impl Attestor for SlsaAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn type_uri(&self) -> String {
        TYPE_URI.to_string()
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        serde_json::to_value(provenance(ctx)?)
            .map_err(|e| AttestError::Invalid(format!("slsa: {e}")))
    }
}

fn parse<T: serde::de::DeserializeOwned + Default>(
    ctx: &AttestationContext,
    name: &str,
) -> Result<Option<T>, AttestError> {
    match ctx.completed_json(name) {
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            AttestError::Invalid(format!("slsa: cannot read the {name} attestation: {e}"))
        }),
        None => Ok(None),
    }
}

fn completed_times(ctx: &AttestationContext, name: &str) -> Option<(String, String)> {
    ctx.completed
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.starttime.clone(), c.endtime.clone()))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn env_of<'a>(ctx: &'a AttestationContext, key: &str) -> Option<&'a str> {
    ctx.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn claim(jwt: &Option<super::github::JwtClaims>, key: &str) -> Option<String> {
    jwt.as_ref()?
        .claims
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn insert_some(m: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: Option<String>) {
    if let Some(v) = v {
        m.insert(k.to_string(), serde_json::Value::String(v));
    }
}

/// The provenance of the step recorded in `ctx` (see the module docs).
pub fn provenance(ctx: &AttestationContext) -> Result<Provenance, AttestError> {
    let run: CommandRun = parse(ctx, command_run::NAME)?.unwrap_or_default();
    let github: Option<super::github::GitHubAttestation> = parse(ctx, super::github::NAME)?;
    let gitlab: Option<super::gitlab::GitLabAttestation> = parse(ctx, super::gitlab::NAME)?;
    let git: Option<super::git::GitAttestation> = parse(ctx, super::git::NAME)?;
    let env: Option<super::environment::Environment> = parse(ctx, super::environment::NAME)?;
    let materials: BTreeMap<String, DigestSet> =
        parse(ctx, super::material::NAME)?.unwrap_or_default();
    let products = super::product_files::products(ctx)?;

    // externalParameters
    let mut external = serde_json::Map::new();
    if !run.cmd.is_empty() {
        external.insert("command".into(), serde_json::json!(run.cmd));
    } else if !run.claimed.cmd.is_empty() {
        external.insert(
            "claimed".into(),
            serde_json::json!({ "command": run.claimed.cmd }),
        );
    }
    let mut ci_ref = None;
    if let Some(g) = &github {
        let mut m = serde_json::Map::new();
        insert_some(&mut m, "workflow", non_empty(&g.pipelinename));
        insert_some(
            &mut m,
            "workflowRef",
            claim(&g.jwt, "workflow_ref")
                .or_else(|| env_of(ctx, "GITHUB_WORKFLOW_REF").map(str::to_string)),
        );
        insert_some(&mut m, "repository", non_empty(&g.projecturl));
        let r = claim(&g.jwt, "ref").or_else(|| env_of(ctx, "GITHUB_REF").map(str::to_string));
        ci_ref = r.clone();
        insert_some(&mut m, "ref", r);
        insert_some(&mut m, "runId", non_empty(&g.pipelineid));
        insert_some(&mut m, "runUrl", non_empty(&g.pipelineurl));
        external.insert("github".into(), serde_json::Value::Object(m));
    }
    if let Some(g) = &gitlab {
        let mut m = serde_json::Map::new();
        insert_some(&mut m, "pipeline", non_empty(&g.pipelineid));
        insert_some(&mut m, "pipelineUrl", non_empty(&g.pipelineurl));
        insert_some(&mut m, "job", non_empty(&g.jobname));
        insert_some(&mut m, "jobUrl", non_empty(&g.joburl));
        insert_some(&mut m, "repository", non_empty(&g.projecturl));
        let r =
            claim(&g.jwt, "ref").or_else(|| env_of(ctx, "CI_COMMIT_REF_NAME").map(str::to_string));
        if ci_ref.is_none() {
            ci_ref = r.clone();
        }
        insert_some(&mut m, "ref", r);
        external.insert("gitlab".into(), serde_json::Value::Object(m));
    }

    // internalParameters
    let mut internal = serde_json::Map::new();
    if let Some(e) = &env {
        internal.insert("env".into(), serde_json::json!(e.variables));
    }

    // resolvedDependencies
    let workdir = ctx
        .workdir
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    let mut deps = Vec::new();
    if let Some(g) = git.as_ref().filter(|g| !g.commithash.is_empty()) {
        let rf = if !g.branch.is_empty() {
            format!("refs/heads/{}", g.branch)
        } else if let Some(r) = &ci_ref {
            r.clone()
        } else if let Some(r) = g.refs.first() {
            r.clone()
        } else {
            g.commithash.clone()
        };
        let digest: BTreeMap<String, String> =
            [("gitCommit".to_string(), g.commithash.clone())].into();
        let remotes: Vec<String> = if g.remotes.is_empty() {
            vec![format!("file://{workdir}")]
        } else {
            g.remotes.iter().take(MAX_GIT_REMOTES).cloned().collect()
        };
        for r in remotes {
            deps.push(ResourceDescriptor {
                uri: format!("git+{r}@{rf}"),
                digest: digest.clone(),
                ..Default::default()
            });
        }
    }
    let written: BTreeSet<String> = products
        .keys()
        .map(|rel| format!("{workdir}/{rel}"))
        .chain(
            ctx.step_writes
                .iter()
                .flat_map(|w| w.written_paths.iter().chain(w.paths.iter()).cloned()),
        )
        .collect();
    // Every (path, digest) a step process read or ran.
    let mut traced: BTreeMap<(String, String), DigestSet> = BTreeMap::new();
    let mut traced_left_out = 0u64;
    let mut add_traced = |path: &str, d: &DigestSet| {
        if d.is_empty()
            || !path.starts_with('/')
            || ["/proc/", "/sys/", "/dev/"]
                .iter()
                .any(|p| path.starts_with(p))
            || written.contains(path)
        {
            return;
        }
        let key = (
            path.to_string(),
            serde_json::to_string(d).unwrap_or_default(),
        );
        if traced.contains_key(&key) {
            return;
        }
        if traced.len() >= MAX_TRACED_DEPENDENCIES {
            traced_left_out += 1;
            return;
        }
        traced.insert(key, d.clone());
    };
    for p in run
        .processes
        .iter()
        .filter(|p| !p.joined_step && p.mount_namespace == 0)
    {
        if let Some(d) = &p.programdigest {
            add_traced(&p.program, d);
        }
        for (path, d) in &p.openedfiles {
            add_traced(path, d);
        }
    }
    let mut material_left_out = 0u64;
    for (i, (rel, d)) in materials.iter().enumerate() {
        if i >= MAX_MATERIAL_DEPENDENCIES {
            material_left_out += 1;
            continue;
        }
        let abs = format!("{workdir}/{rel}");
        let key = (abs.clone(), serde_json::to_string(d).unwrap_or_default());
        let uri = match traced.remove(&key) {
            Some(_) => format!("file://{abs}"),
            None => String::new(),
        };
        deps.push(ResourceDescriptor {
            name: rel.clone(),
            uri,
            digest: ResourceDescriptor::digest_of(d),
            ..Default::default()
        });
    }
    for ((path, _), d) in traced {
        deps.push(ResourceDescriptor {
            uri: format!("file://{path}"),
            digest: ResourceDescriptor::digest_of(&d),
            ..Default::default()
        });
    }

    // byproducts
    let (byproducts, endpoints_left_out) = endpoints(&run);
    let mut byproducts = byproducts;
    let mut trace = serde_json::Map::new();
    if let Some(t) = &run.trace {
        insert_some(&mut trace, "backend", non_empty(&t.backend));
        let lost: BTreeMap<&String, u64> = t.events.iter().map(|(k, c)| (k, c.lost)).collect();
        trace.insert("lostEvents".into(), serde_json::json!(lost));
        trace.insert("lostEventsTotal".into(), serde_json::json!(t.total_lost()));
        if !t.truncated.is_empty() {
            trace.insert("truncated".into(), serde_json::json!(t.truncated));
        }
    }
    let mut left_out = serde_json::Map::new();
    for (k, n) in [
        ("tracedFiles", traced_left_out),
        ("materials", material_left_out),
        ("endpoints", endpoints_left_out),
    ] {
        if n > 0 {
            left_out.insert(k.into(), serde_json::json!(n));
        }
    }
    if !left_out.is_empty() {
        trace.insert("leftOut".into(), serde_json::Value::Object(left_out));
    }
    if !trace.is_empty() {
        byproducts.push(ResourceDescriptor {
            name: TRACE_BYPRODUCT.into(),
            annotations: trace,
            ..Default::default()
        });
    }

    // runDetails
    let invocation_id = github
        .as_ref()
        .and_then(|g| non_empty(&g.pipelineurl))
        .or_else(|| gitlab.as_ref().and_then(|g| non_empty(&g.pipelineurl)))
        .unwrap_or_else(|| ctx.step.clone());
    let started_on = completed_times(ctx, super::material::NAME).and_then(|(_, end)| rfc3339(&end));
    let finished_on = completed_times(ctx, command_run::NAME).and_then(|(_, end)| rfc3339(&end));
    Ok(Provenance {
        build_definition: BuildDefinition {
            build_type: BUILD_TYPE.into(),
            external_parameters: external,
            internal_parameters: internal,
            resolved_dependencies: deps,
        },
        run_details: RunDetails {
            builder: Builder {
                id: BUILDER_ID.into(),
                version: [("cilock".to_string(), env!("CARGO_PKG_VERSION").to_string())].into(),
            },
            metadata: BuildMetadata {
                invocation_id,
                started_on,
                finished_on,
            },
            byproducts,
        },
    })
}

/// `s` when it is an RFC 3339 timestamp, normalized to UTC.
fn rfc3339(s: &str) -> Option<String> {
    crate::timefmt::parse(s).ok().map(crate::timefmt::rfc3339)
}

#[derive(Default)]
struct Endpoint {
    address: String,
    syscalls: BTreeSet<String>,
    sni: BTreeSet<String>,
}

/// The network endpoints the step's processes contacted, as `uri`-only
/// descriptors, and how many were left out over [`MAX_ENDPOINTS`].
fn endpoints(run: &CommandRun) -> (Vec<ResourceDescriptor>, u64) {
    // Address → DNS names that resolved to it.
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &run.processes {
        for l in p.network.iter().flat_map(|n| n.dns_lookups.iter()) {
            if l.name.is_empty() {
                continue;
            }
            for a in &l.answers {
                let set = names.entry(a.clone()).or_default();
                if set.len() < MAX_NAMES_PER_ENDPOINT {
                    set.insert(l.name.trim_end_matches('.').to_string());
                }
            }
        }
    }
    // (address, port) of the DNS servers queried → transport.
    let mut dns_servers: BTreeMap<(String, u16), String> = BTreeMap::new();
    for p in &run.processes {
        for l in p.network.iter().flat_map(|n| n.dns_lookups.iter()) {
            if !l.transport.is_empty() {
                dns_servers.insert(
                    (l.server_address.clone(), l.server_port),
                    l.transport.clone(),
                );
            }
        }
    }
    let mut eps: BTreeMap<String, Endpoint> = BTreeMap::new();
    let mut left_out = 0u64;
    for p in run.processes.iter().filter(|p| !p.joined_step) {
        for c in p.network.iter().flat_map(|n| n.connections.iter()) {
            let scheme = match c.syscall.as_str() {
                "connect" => match c
                    .port
                    .and_then(|port| dns_servers.get(&(c.address.clone(), port)))
                {
                    Some(t) if t == "udp" => "udp",
                    _ => "tcp",
                },
                "sendto" | "sendmsg" | "sendmmsg" => "udp",
                _ => continue,
            };
            let (Some(port), true) = (c.port, matches!(c.family.as_str(), "AF_INET" | "AF_INET6"))
            else {
                continue;
            };
            let host = if c.family == "AF_INET6" {
                format!("[{}]", c.address)
            } else {
                c.address.clone()
            };
            let uri = format!("{scheme}://{host}:{port}");
            if !eps.contains_key(&uri) && eps.len() >= MAX_ENDPOINTS {
                left_out += 1;
                continue;
            }
            let e = eps.entry(uri).or_insert_with(|| Endpoint {
                address: c.address.clone(),
                ..Default::default()
            });
            e.syscalls.insert(c.syscall.clone());
            if !c.hostname.is_empty() && e.sni.len() < MAX_NAMES_PER_ENDPOINT {
                e.sni.insert(c.hostname.clone());
            }
        }
    }
    let out = eps
        .into_iter()
        .map(|(uri, e)| {
            let mut annotations = serde_json::Map::new();
            annotations.insert("syscalls".into(), serde_json::json!(e.syscalls));
            if let Some(n) = names.get(&e.address) {
                annotations.insert("dnsNames".into(), serde_json::json!(n));
            }
            if !e.sni.is_empty() {
                annotations.insert("tlsServerNames".into(), serde_json::json!(e.sni));
            }
            ResourceDescriptor {
                uri,
                annotations,
                ..Default::default()
            }
        })
        .collect();
    (out, left_out)
}

/// Why no export statement can be made from a collection statement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    /// The statement is not a collection.
    #[error("not an attestation collection (predicate type {0:?})")]
    NotACollection(String),
    /// The collection has no slsa attestation.
    #[error("the collection has no slsa attestation (it was skipped or not requested)")]
    NoProvenance,
    /// No product subject: a Statement v1 needs one.
    #[error("the step has no product subject: an in-toto Statement v1 needs at least one subject, so no SLSA provenance statement is made")]
    NoSubject,
}

/// The in-toto Statement v1 `--attestor-slsa-export` signs, derived from
/// the signed collection statement alone (every signer uses this): the
/// subjects are the collection's product subjects (`name` = the path,
/// without the `…/product/v0.1/file:` prefix), the predicate is the
/// collection's slsa attestation as recorded (secretscan's masks
/// included).
pub fn export_statement(
    collection: &Statement<Collection>,
) -> Result<StatementV1<serde_json::Value>, ExportError> {
    if !crate::collection::is_collection_type(&collection.predicate_type) {
        return Err(ExportError::NotACollection(
            collection.predicate_type.clone(),
        ));
    }
    let predicate = collection
        .predicate
        .attestations
        .iter()
        .find(|a| a.type_ == TYPE_URI)
        .map(|a| a.attestation.clone())
        .ok_or(ExportError::NoProvenance)?;
    let product_prefix = format!(
        "{}/file:",
        crate::collection::witness_type(super::product::NAME)
    );
    let subject: Vec<ResourceDescriptor> = collection
        .subject
        .iter()
        .filter_map(|s| {
            let name = s.name.strip_prefix(&product_prefix)?;
            Some(ResourceDescriptor {
                name: name.to_string(),
                digest: s.digest.clone(),
                ..Default::default()
            })
        })
        .filter(|r| !r.digest.is_empty())
        .collect();
    if subject.is_empty() {
        return Err(ExportError::NoSubject);
    }
    Ok(StatementV1::new(TYPE_URI, subject, predicate))
}

/// [`export_statement`] for a statement given as JSON (a DSSE payload).
pub fn export_statement_json(payload: &[u8]) -> Result<Vec<u8>, String> {
    let st: Statement<Collection> =
        serde_json::from_slice(payload).map_err(|e| format!("not a collection statement: {e}"))?;
    let v1 = export_statement(&st).map_err(|e| e.to_string())?;
    serde_json::to_vec(&v1).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestors::command_run::{
        DnsLookup, EventCount, Network, NetworkConnection, ProcessInfo, TraceInfo,
    };
    use crate::attestors::{product, CompletedAttestation};

    fn d(c: char) -> DigestSet {
        DigestSet::sha256(c.to_string().repeat(64))
    }

    fn push(ctx: &mut AttestationContext, name: &str, json: serde_json::Value, end: &str) {
        ctx.completed.push(CompletedAttestation {
            name: name.into(),
            type_uri: crate::collection::witness_type(name),
            json,
            subjects: BTreeMap::new(),
            backrefs: BTreeMap::new(),
            starttime: end.into(),
            endtime: end.into(),
        });
    }

    fn context() -> AttestationContext {
        let mut ctx = AttestationContext::new(
            "/w".into(),
            vec![("GITHUB_REF".into(), "refs/heads/env".into())],
        );
        ctx.step = "build".into();
        push(
            &mut ctx,
            "environment",
            serde_json::json!({"os": "linux", "hostname": "h", "username": "u", "variables": {"PATH": "/bin"}}),
            "2026-12-04T10:00:00Z",
        );
        push(
            &mut ctx,
            "git",
            serde_json::json!({"commithash": "c".repeat(40), "author": "", "authoremail": "", "committername": "",
                "committeremail": "", "commitdate": "", "commitmessage": "", "branch": "main",
                "remotes": ["https://example.com/r.git"]}),
            "2026-12-04T10:00:01Z",
        );
        push(
            &mut ctx,
            "material",
            serde_json::json!({"a.c": d('a'), "b.h": d('b'), "unread": d('9')}),
            "2026-12-04T10:00:02.5+01:00",
        );
        let run = CommandRun {
            cmd: vec!["cc".into(), "a.c".into()],
            processes: vec![
                ProcessInfo {
                    program: "/usr/bin/cc".into(),
                    programdigest: Some(d('1')),
                    openedfiles: [
                        ("/w/a.c".to_string(), d('a')),
                        // Changed since the material snapshot: its own entry.
                        ("/w/b.h".to_string(), d('2')),
                        ("/usr/include/stdio.h".to_string(), d('3')),
                        ("/etc/unhashed".to_string(), DigestSet::default()),
                        ("/proc/self/status".to_string(), d('4')),
                        // Written by the step (a product, and a temporary).
                        ("/w/a.out".to_string(), d('5')),
                        ("/tmp/cc1.s".to_string(), d('6')),
                    ]
                    .into(),
                    network: Some(Network {
                        connections: vec![
                            NetworkConnection {
                                syscall: "connect".into(),
                                family: "AF_INET".into(),
                                address: "127.0.0.1".into(),
                                port: Some(8443),
                                hostname: "localhost".into(),
                                ..Default::default()
                            },
                            NetworkConnection {
                                syscall: "connect".into(),
                                family: "AF_INET6".into(),
                                address: "::1".into(),
                                port: Some(53),
                                ..Default::default()
                            },
                            NetworkConnection {
                                syscall: "connect".into(),
                                family: "AF_UNIX".into(),
                                address: "/run/x.sock".into(),
                                ..Default::default()
                            },
                        ],
                        dns_lookups: vec![DnsLookup {
                            server_address: "::1".into(),
                            server_port: 53,
                            name: "localhost.".into(),
                            transport: "udp".into(),
                            answers: vec!["127.0.0.1".into()],
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                },
                ProcessInfo {
                    program: "/usr/bin/cc".into(),
                    programdigest: Some(d('1')),
                    openedfiles: [("/usr/include/stdio.h".to_string(), d('3'))].into(),
                    ..Default::default()
                },
                ProcessInfo {
                    program: "/outside".into(),
                    programdigest: Some(d('7')),
                    joined_step: true,
                    ..Default::default()
                },
            ],
            trace: Some(TraceInfo {
                backend: "ebpf".into(),
                events: [(
                    "file".to_string(),
                    EventCount {
                        captured: 10,
                        lost: 2,
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        push(
            &mut ctx,
            command_run::NAME,
            serde_json::to_value(&run).unwrap(),
            "2026-12-04T10:00:09Z",
        );
        push(
            &mut ctx,
            product::NAME,
            serde_json::json!({"a.out": {"mime_type": "application/x-executable", "digest": d('5')}}),
            "2026-12-04T10:00:10Z",
        );
        ctx.step_writes = Some(product::StepWrites {
            written_paths: ["/tmp/cc1.s".to_string()].into(),
            ..Default::default()
        });
        ctx
    }

    #[test]
    fn provenance_from_the_collection_and_the_trace() {
        let ctx = context();
        let p = provenance(&ctx).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        let bd = &v["buildDefinition"];
        assert_eq!(bd["buildType"], BUILD_TYPE);
        assert_eq!(
            bd["externalParameters"],
            serde_json::json!({"command": ["cc", "a.c"]})
        );
        assert_eq!(
            bd["internalParameters"],
            serde_json::json!({"env": {"PATH": "/bin"}})
        );
        let h = |c: char| c.to_string().repeat(64);
        assert_eq!(
            bd["resolvedDependencies"],
            serde_json::json!([
                {"uri": "git+https://example.com/r.git@refs/heads/main", "digest": {"gitCommit": "c".repeat(40)}},
                {"name": "a.c", "uri": "file:///w/a.c", "digest": {"sha256": h('a')}},
                {"name": "b.h", "digest": {"sha256": h('b')}},
                {"name": "unread", "digest": {"sha256": h('9')}},
                {"uri": "file:///usr/bin/cc", "digest": {"sha256": h('1')}},
                {"uri": "file:///usr/include/stdio.h", "digest": {"sha256": h('3')}},
                {"uri": "file:///w/b.h", "digest": {"sha256": h('2')}},
            ])
        );
        let rd = &v["runDetails"];
        assert_eq!(rd["builder"]["id"], BUILDER_ID);
        assert_eq!(
            rd["builder"]["version"]["cilock"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(rd["metadata"]["invocationId"], "build");
        assert_eq!(rd["metadata"]["startedOn"], "2026-12-04T09:00:02.5Z");
        assert_eq!(rd["metadata"]["finishedOn"], "2026-12-04T10:00:09Z");
        assert_eq!(
            rd["byproducts"],
            serde_json::json!([
                {"uri": "tcp://127.0.0.1:8443", "annotations": {"syscalls": ["connect"], "dnsNames": ["localhost"], "tlsServerNames": ["localhost"]}},
                {"uri": "udp://[::1]:53", "annotations": {"syscalls": ["connect"]}},
                {"name": TRACE_BYPRODUCT, "annotations": {"backend": "ebpf", "lostEvents": {"file": 2}, "lostEventsTotal": 2}},
            ])
        );
    }

    #[test]
    fn ci_parameters_claimed_command_and_bounds() {
        let mut ctx = context();
        // A step begun and ended without a command the tracer saw.
        let cr = ctx
            .completed
            .iter_mut()
            .find(|c| c.name == command_run::NAME)
            .unwrap();
        cr.json["cmd"] = serde_json::json!([]);
        cr.json["claimed"] = serde_json::json!({"cmd": ["make"]});
        // Over the bound of traced files.
        let files: serde_json::Map<String, serde_json::Value> = (0..MAX_TRACED_DEPENDENCIES + 5)
            .map(|i| (format!("/lib/f{i}"), serde_json::json!({"sha256": "ee"})))
            .collect();
        cr.json["processes"][1]["openedfiles"] = serde_json::Value::Object(files);
        let mut gh = serde_json::json!({"ciconfigpath": "", "pipelineid": "7", "pipelinename": "ci",
            "pipelineurl": "https://github.com/o/r/actions/runs/7", "projecturl": "https://github.com/o/r",
            "runnerid": "", "cihost": "", "ciserverurl": "", "runnerarch": "", "runneros": "",
            "jwt": {"claims": {"ref": "refs/heads/jwt"}}});
        push(&mut ctx, "github", gh.take(), "2026-12-04T10:00:00Z");
        // Detached HEAD: the ref comes from the CI.
        let git = ctx.completed.iter_mut().find(|c| c.name == "git").unwrap();
        git.json["branch"] = serde_json::json!("");
        let v = serde_json::to_value(provenance(&ctx).unwrap()).unwrap();
        let ext = &v["buildDefinition"]["externalParameters"];
        assert_eq!(ext["claimed"], serde_json::json!({"command": ["make"]}));
        assert!(ext.get("command").is_none());
        assert_eq!(
            ext["github"],
            serde_json::json!({"workflow": "ci", "repository": "https://github.com/o/r", "ref": "refs/heads/jwt",
                "runId": "7", "runUrl": "https://github.com/o/r/actions/runs/7"})
        );
        assert_eq!(
            v["runDetails"]["metadata"]["invocationId"],
            "https://github.com/o/r/actions/runs/7"
        );
        let deps = v["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert_eq!(
            deps[0]["uri"],
            "git+https://example.com/r.git@refs/heads/jwt"
        );
        let traced = deps
            .iter()
            .filter(|d| {
                d.get("name").is_none() && d["uri"].as_str().unwrap().starts_with("file://")
            })
            .count();
        // One of the bounded entries is a.c, listed with its material.
        assert_eq!(traced, MAX_TRACED_DEPENDENCIES - 1);
        let trace = v["runDetails"]["byproducts"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        // 20 005 + cc, a.c, b.h, stdio.h = 20 009 distinct: 9 left out.
        assert_eq!(
            trace["annotations"]["leftOut"],
            serde_json::json!({"tracedFiles": 9})
        );
    }

    #[test]
    fn export_statement_takes_product_subjects_and_the_predicate() {
        let ctx = context();
        let mut ctx = ctx;
        let mut a = SlsaAttestor::new(&AttestorOptions::default()).unwrap();
        crate::attestors::run_one(&mut ctx, &mut a).unwrap();
        ctx.completed
            .iter_mut()
            .find(|c| c.name == product::NAME)
            .unwrap()
            .subjects = [("file:a.out".to_string(), d('5'))].into();
        let (coll, subjects) = crate::attestors::into_collection("build", &ctx);
        let st = Statement::new(crate::collection::COLLECTION_TYPE, subjects, coll);
        let v1 = export_statement(&st).unwrap();
        let v = serde_json::to_value(&v1).unwrap();
        assert_eq!(v["_type"], crate::intoto::STATEMENT_TYPE_V1);
        assert_eq!(v["predicateType"], TYPE_URI);
        assert_eq!(
            v["subject"],
            serde_json::json!([{"name": "a.out", "digest": {"sha256": "5".repeat(64)}}])
        );
        assert_eq!(v["predicate"], ctx.completed_json(NAME).unwrap().clone());
        // From the JSON payload: the same bytes.
        let again = export_statement_json(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(again, serde_json::to_vec(&v1).unwrap());
        // No product subject, no slsa attestation, not a collection.
        let mut none = st.clone();
        none.subject.retain(|s| !s.name.contains("/product/"));
        assert_eq!(export_statement(&none).unwrap_err(), ExportError::NoSubject);
        let mut no_slsa = st.clone();
        no_slsa
            .predicate
            .attestations
            .retain(|a| a.type_ != TYPE_URI);
        assert_eq!(
            export_statement(&no_slsa).unwrap_err(),
            ExportError::NoProvenance
        );
        let mut other = st;
        other.predicate_type = "x".into();
        assert!(matches!(
            export_statement(&other),
            Err(ExportError::NotACollection(_))
        ));
        assert!(export_statement_json(b"{").is_err());
    }
}
