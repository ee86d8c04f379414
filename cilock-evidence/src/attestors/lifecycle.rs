//! Runs the attestors around a command or a step, in Witness's stage order:
//! prematerial (environment, git, github, gitlab, lockfiles,
//! system-packages), material, execute (the caller's command-run, then
//! github-action), product, postproduct ([`POST_PRODUCT`] in that order, then
//! secretscan last so it masks what they recorded).
//!
//! ```text
//! let mut lc = Lifecycle::new(&names, opts)?;
//! lc.before(&mut ctx)?;          // prematerial + material
//! /* run the command, push the command-run attestation into ctx.completed */
//! lc.after(&mut ctx)?;           // github-action, product, secretscan
//! ```
//!
//! The two halves may run in different processes (the daemon runs each in
//! an unprivileged helper): [`Lifecycle::state`] after `before()` is what
//! `after()` needs, and [`Lifecycle::resume`] gives it to a fresh
//! `Lifecycle` built with the same names and options.
//!
//! command-run, material and product always run. A CI attestor requested
//! outside its CI (github, gitlab, github-action) is not recorded, nor is
//! one whose input is absent (no SBOM among the products, …); the reason is
//! kept in [`Lifecycle::skipped`]. Post-product attestors (and lockfiles,
//! then on the files as the step left them) also run when the trace calls
//! for them ([`super::selection`]); why each ran is kept in
//! [`Lifecycle::selected`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::environment::{EnvOptions, EnvironmentAttestor, SensitiveEnvFilter};
use super::filetree::{PathFilter, SkippedPath};
use super::git::GitAttestor;
use super::github::GitHubAttestor;
use super::github_action::GitHubActionAttestor;
use super::gitlab::GitLabAttestor;
use super::material::MaterialAttestor;
use super::product::ProductAttestor;
use super::secretscan::{SecretScanAttestor, SecretScanOptions};
use super::selection::{self, SelectedAttestor};
use super::{run_one, AttestError, AttestationContext, Attestor};
use crate::digest::{DigestSet, HashAlg};

/// Every attestor name `-a` accepts.
pub const VALID_ATTESTORS: &[&str] = &[
    "command-run",
    "material",
    "product",
    "environment",
    "git",
    "github",
    "github-action",
    "gitlab",
    "secretscan",
    "lockfiles",
    "system-packages",
    "sbom",
    "sarif",
    "oci",
    "link",
    "falco",
    "kube-bench",
    "prowler",
    "testssl",
    "slsa",
];

/// Prematerial attestors built by [`build`], in run order (after the CI
/// ones).
pub const PRE_MATERIAL: &[&str] = &["lockfiles", "system-packages"];

/// Postproduct attestors built by [`build`], in run order; secretscan runs
/// after them. slsa is last: it reads what the others recorded.
pub const POST_PRODUCT: &[&str] = &[
    "oci",
    "sbom",
    "sarif",
    "falco",
    "kube-bench",
    "prowler",
    "testssl",
    "link",
    "slsa",
];

/// The attestor named `name` (one of [`PRE_MATERIAL`] or [`POST_PRODUCT`]).
pub fn build(name: &str, opts: &AttestorOptions) -> Result<Box<dyn Attestor>, AttestError> {
    use super::scanners;
    Ok(match name {
        "lockfiles" => Box::new(super::lockfiles::LockfilesAttestor::new(opts)?),
        "system-packages" => Box::new(super::system_packages::SystemPackagesAttestor::new(opts)?),
        "oci" => Box::new(super::oci::OciAttestor::new(opts)?),
        "sbom" => Box::new(super::sbom::SbomAttestor::new(opts)?),
        "sarif" => Box::new(super::sarif::SarifAttestor::new(opts)?),
        "falco" => Box::new(scanners::falco::FalcoAttestor::new(opts)?),
        "kube-bench" => Box::new(scanners::kube_bench::KubeBenchAttestor::new(opts)?),
        "prowler" => Box::new(scanners::prowler::ProwlerAttestor::new(opts)?),
        "testssl" => Box::new(scanners::testssl::TestsslAttestor::new(opts)?),
        "link" => Box::new(super::link::LinkAttestor::new(opts)?),
        "slsa" => Box::new(super::slsa::SlsaAttestor::new(opts)?),
        _ => {
            return Err(AttestError::Invalid(format!(
                "attestor {name:?} is not built by the lifecycle"
            )))
        }
    })
}

/// Attestors that always run.
pub const ALWAYS_RUN: &[&str] = &["command-run", "material", "product"];

/// Hash names `--hashes` accepts.
pub const VALID_HASHES: &[&str] = &["sha256", "sha1", "gitoid:sha256", "gitoid:sha1"];

/// Options of all attestors. Serializable: it travels to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttestorOptions {
    /// Sensitive environment variable handling.
    pub env: EnvOptions,
    /// Materials recorded (cilock extension; empty = all).
    pub material_include_globs: Vec<String>,
    /// Materials not recorded (cilock extension).
    pub material_exclude_globs: Vec<String>,
    /// Product subjects kept (empty = all, Witness default `*`).
    pub product_include_globs: Vec<String>,
    /// Product subjects dropped.
    pub product_exclude_globs: Vec<String>,
    /// Hash algorithms for files and subjects (default `sha256`).
    pub hashes: Vec<String>,
    /// secretscan options.
    pub secretscan: SecretScanOptions,
    /// Variable holding an already-fetched GitHub OIDC token, whose claims
    /// the github attestor records.
    pub github_token_env: Option<String>,
    /// Variable holding the GitLab job token (default `CI_JOB_JWT`).
    pub gitlab_token_env: Option<String>,
    /// Action reference for github-action (default: from the runner's
    /// `GITHUB_ACTION_REPOSITORY@GITHUB_ACTION_REF`).
    pub github_action_ref: Option<String>,
    /// Local directory of the action (default `GITHUB_ACTION_PATH`).
    pub github_action_dir: Option<PathBuf>,
    /// slsa: also sign the provenance as its own in-toto Statement v1
    /// envelope (`--attestor-slsa-export`, written next to `-o` with the
    /// `-slsa.json` suffix).
    pub slsa_export: bool,
    /// Do not run attestors the trace calls for (only `-a` ones).
    pub no_auto_select: bool,
}

impl Default for AttestorOptions {
    fn default() -> Self {
        AttestorOptions {
            env: EnvOptions::default(),
            material_include_globs: Vec::new(),
            material_exclude_globs: Vec::new(),
            product_include_globs: Vec::new(),
            product_exclude_globs: Vec::new(),
            hashes: vec!["sha256".to_string()],
            secretscan: SecretScanOptions::default(),
            github_token_env: None,
            gitlab_token_env: None,
            github_action_ref: None,
            github_action_dir: None,
            slsa_export: false,
            no_auto_select: false,
        }
    }
}

impl AttestorOptions {
    /// The hash algorithms (`sha256` when none is given). An unknown name is
    /// an error listing the valid ones.
    pub fn hash_algs(&self) -> Result<Vec<HashAlg>, AttestError> {
        let mut out = Vec::new();
        for h in self.hashes.iter().flat_map(|h| h.split(',')) {
            let h = h.trim();
            if h.is_empty() {
                continue;
            }
            let alg = match h.to_ascii_lowercase().as_str() {
                "sha256" => HashAlg::Sha256,
                "sha1" => HashAlg::Sha1,
                "gitoid:sha256" => HashAlg::GitoidSha256,
                "gitoid:sha1" => HashAlg::GitoidSha1,
                _ => {
                    return Err(AttestError::Invalid(format!(
                        "unknown hash {h:?}; valid hashes: {}",
                        VALID_HASHES.join(", ")
                    )))
                }
            };
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        if out.is_empty() {
            out.push(HashAlg::Sha256);
        }
        Ok(out)
    }
}

const REQUESTED_REASON: &str = selection::REQUESTED;

/// Runs `a`; an [`AttestError::Absent`] is listed in `skipped`, a success
/// in `selected` with `reason`.
fn run_recorded(
    ctx: &mut AttestationContext,
    a: &mut dyn Attestor,
    reason: &str,
    skipped: &mut Vec<SkippedAttestor>,
    selected: &mut Vec<SelectedAttestor>,
) -> Result<(), AttestError> {
    match run_one(ctx, a) {
        Ok(()) => {
            selected.push(SelectedAttestor {
                name: a.name().to_string(),
                reason: reason.to_string(),
            });
            Ok(())
        }
        Err(AttestError::Absent(why)) => {
            skipped.push(SkippedAttestor {
                name: a.name().to_string(),
                reason: if reason == REQUESTED_REASON {
                    why
                } else {
                    format!("{why} ({reason})")
                },
            });
            Ok(())
        }
        // One the trace called for must not fail a step that did not ask
        // for it: its error is listed instead.
        Err(e) if reason != REQUESTED_REASON && !matches!(e, AttestError::Failed(_)) => {
            skipped.push(SkippedAttestor {
                name: a.name().to_string(),
                reason: format!("{e} ({reason})"),
            });
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What [`Lifecycle::after`] runs between product and secretscan, in run
/// order, each with why: first the prematerial attestors the trace calls
/// for that were not requested (a package manager ran: lockfiles, on the
/// files as the step left them), then the [`POST_PRODUCT`] ones requested
/// (reason [`selection::REQUESTED`]) or called for by the trace (`auto`,
/// from [`selection::select`]). The daemon checks an attest helper's reply
/// against the same list.
pub fn after_selection(requested: &[String], auto: &[SelectedAttestor]) -> Vec<SelectedAttestor> {
    let req = |n: &str| requested.iter().any(|r| r == n);
    let mut v: Vec<SelectedAttestor> = Vec::new();
    for s in auto {
        if PRE_MATERIAL.contains(&s.name.as_str())
            && !req(&s.name)
            && !v.iter().any(|x| x.name == s.name)
        {
            v.push(s.clone());
        }
    }
    for n in POST_PRODUCT {
        let reason = if req(n) {
            REQUESTED_REASON.to_string()
        } else if let Some(s) = auto.iter().find(|s| s.name == *n) {
            s.reason.clone()
        } else {
            continue;
        };
        v.push(SelectedAttestor {
            name: n.to_string(),
            reason,
        });
    }
    v
}

/// The attestors the trace in `command_run` (command-run's JSON) calls for
/// under `opts`: none with `no_auto_select`, else [`selection::select`].
pub fn auto_selected(
    opts: &AttestorOptions,
    command_run: Option<&serde_json::Value>,
) -> Vec<SelectedAttestor> {
    if opts.no_auto_select {
        Vec::new()
    } else {
        selection::select(command_run)
    }
}

/// Writes `skipped` and `selected` into the command-run attestation among
/// `ctx.completed` (`trace.skippedAttestors`, `trace.selectedAttestors`);
/// empty lists are not written.
pub fn record_in_command_run(
    ctx: &mut AttestationContext,
    skipped: &[SkippedAttestor],
    selected: &[SelectedAttestor],
) {
    let Some(c) = ctx
        .completed
        .iter_mut()
        .find(|c| c.name == super::command_run::NAME)
    else {
        return;
    };
    let Some(t) = c.json.get_mut("trace").and_then(|t| t.as_object_mut()) else {
        return;
    };
    if !skipped.is_empty() {
        if let Ok(v) = serde_json::to_value(skipped) {
            t.insert("skippedAttestors".into(), v);
        }
    }
    if !selected.is_empty() {
        if let Ok(v) = serde_json::to_value(selected) {
            t.insert("selectedAttestors".into(), v);
        }
    }
}

/// An attestor that was requested but not recorded, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedAttestor {
    /// Attestor name.
    pub name: String,
    /// Why it was not recorded.
    pub reason: String,
}

/// What `after()` needs from `before()` when the two run on different
/// `Lifecycle`s (in different processes): serializable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleState {
    /// The full (unfiltered) material snapshot: products are files that are
    /// new or changed since.
    pub materials: Option<BTreeMap<String, DigestSet>>,
    /// Attestors `before()` did not record, and why.
    pub skipped: Vec<SkippedAttestor>,
    /// Attestors `before()` ran, and why.
    pub selected: Vec<SelectedAttestor>,
}

/// The attestors of one step, run in stage order.
pub struct Lifecycle {
    hashes: Vec<HashAlg>,
    requested: Vec<String>,
    opts: AttestorOptions,
    pre: Vec<Box<dyn Attestor>>,
    environment: Option<EnvironmentAttestor>,
    git: Option<GitAttestor>,
    github: Option<GitHubAttestor>,
    gitlab: Option<GitLabAttestor>,
    material: MaterialAttestor,
    github_action: Option<GitHubActionAttestor>,
    product: ProductAttestor,
    secretscan: Option<SecretScanAttestor>,
    skipped: Vec<SkippedAttestor>,
    selected: Vec<SelectedAttestor>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("attestors", &self.requested)
            .field("hashes", &self.hashes)
            .finish()
    }
}

impl Lifecycle {
    /// `names`: extra attestors requested (`-a`; comma-separated entries are
    /// split); command-run, material and product always run. An unknown name
    /// is an error listing the valid names.
    pub fn new(names: &[String], opts: AttestorOptions) -> Result<Lifecycle, AttestError> {
        super::bounds::check_options(&opts)?;
        let mut requested: Vec<String> = ALWAYS_RUN.iter().map(|s| s.to_string()).collect();
        for n in names.iter().flat_map(|n| n.split(',')) {
            let n = n.trim();
            if n.is_empty() {
                continue;
            }
            if !VALID_ATTESTORS.contains(&n) {
                return Err(AttestError::Invalid(format!(
                    "unknown attestor {n:?}; valid attestors: {}",
                    VALID_ATTESTORS.join(", ")
                )));
            }
            if !requested.iter().any(|r| r == n) {
                requested.push(n.to_string());
            }
        }
        if opts.slsa_export && !requested.iter().any(|r| r == "slsa") {
            requested.push("slsa".to_string());
        }
        let hashes = opts.hash_algs()?;
        let filter = SensitiveEnvFilter::new(&opts.env)?;
        let has = |n: &str| requested.iter().any(|r| r == n);
        let mut pre = Vec::new();
        for n in PRE_MATERIAL.iter().filter(|n| has(n)) {
            pre.push(build(n, &opts)?);
        }
        // Post-product attestors are built in after() (the trace may call
        // for more); a bad option must fail here, before anything runs.
        for n in POST_PRODUCT.iter().filter(|n| has(n)) {
            build(n, &opts)?;
        }
        Ok(Lifecycle {
            pre,
            environment: if has("environment") {
                Some(EnvironmentAttestor::new(&opts.env)?)
            } else {
                None
            },
            git: has("git").then(GitAttestor::new),
            github: has("github")
                .then(|| GitHubAttestor::new().with_token_env(opts.github_token_env.clone())),
            gitlab: has("gitlab")
                .then(|| GitLabAttestor::new().with_token_env(opts.gitlab_token_env.clone())),
            material: MaterialAttestor::new(PathFilter::new(
                &opts.material_include_globs,
                &opts.material_exclude_globs,
            )?),
            github_action: has("github-action").then(|| {
                GitHubActionAttestor::new(
                    opts.github_action_ref.clone(),
                    opts.github_action_dir.clone(),
                    filter.clone(),
                )
            }),
            product: ProductAttestor::new(PathFilter::new(
                &opts.product_include_globs,
                &opts.product_exclude_globs,
            )?),
            secretscan: has("secretscan")
                .then(|| SecretScanAttestor::new(opts.secretscan.clone(), filter.clone())),
            hashes,
            requested,
            opts,
            skipped: Vec::new(),
            selected: Vec::new(),
        })
    }

    /// The attestors that will run (always-run ones first, then requested).
    pub fn attestors(&self) -> &[String] {
        &self.requested
    }

    /// The attestor options.
    pub fn options(&self) -> &AttestorOptions {
        &self.opts
    }

    /// The hash algorithms in use.
    pub fn hashes(&self) -> &[HashAlg] {
        &self.hashes
    }

    /// Requested attestors that were not recorded, and why.
    pub fn skipped(&self) -> &[SkippedAttestor] {
        &self.skipped
    }

    /// Attestors beyond command-run, material and product that ran, and
    /// why (requested, or called for by the trace).
    pub fn selected(&self) -> &[SelectedAttestor] {
        &self.selected
    }

    /// What `after()` needs from `before()` (see [`Lifecycle::resume`]).
    pub fn state(&self) -> LifecycleState {
        LifecycleState {
            materials: self.material.snapshot().map(|s| s.files.clone()),
            skipped: self.skipped.clone(),
            selected: self.selected.clone(),
        }
    }

    /// Prepares a fresh `Lifecycle` (same names and options as the one that
    /// ran `before()`) to run `after()` with the state `before()` left.
    pub fn resume(&mut self, state: LifecycleState) {
        if let Some(m) = state.materials {
            self.product.set_materials(m);
        }
        self.skipped = state.skipped;
        self.selected = state.selected;
    }

    /// The `(secret, rule)` strings secretscan masked in the other
    /// attestations during `after()` (empty without secretscan or with
    /// redaction off). Holds the secrets.
    pub fn redactions(&self) -> &[(String, String)] {
        self.secretscan
            .as_ref()
            .map(|s| s.redactions())
            .unwrap_or(&[])
    }

    /// Files material/product/secretscan could not record or scan.
    pub fn skipped_paths(&self) -> Vec<(String, SkippedPath)> {
        let mut v: Vec<(String, SkippedPath)> = self
            .material
            .skipped()
            .iter()
            .map(|s| ("material".to_string(), s.clone()))
            .collect();
        v.extend(
            self.product
                .skipped()
                .iter()
                .map(|s| ("product".to_string(), s.clone())),
        );
        if let Some(s) = &self.secretscan {
            v.extend(
                s.skipped()
                    .iter()
                    .map(|s| ("secretscan".to_string(), s.clone())),
            );
        }
        v
    }

    /// Runs prematerial + material attestors (records into `ctx.completed`).
    /// Sets `ctx.hashes` to the selected hashes.
    pub fn before(&mut self, ctx: &mut AttestationContext) -> Result<(), AttestError> {
        ctx.hashes = self.hashes.clone();
        if let Some(a) = self.environment.as_mut() {
            run_one(ctx, a)?;
        }
        if let Some(a) = self.git.as_mut() {
            run_one(ctx, a)?;
        }
        if let Some(a) = self.github.as_mut() {
            if GitHubAttestor::detect(&ctx.env) {
                run_one(ctx, a)?;
            } else {
                self.skipped.push(SkippedAttestor {
                    name: a.name().to_string(),
                    reason: super::github::NOT_GITHUB.to_string(),
                });
            }
        }
        if let Some(a) = self.gitlab.as_mut() {
            if GitLabAttestor::detect(&ctx.env) {
                run_one(ctx, a)?;
            } else {
                self.skipped.push(SkippedAttestor {
                    name: a.name().to_string(),
                    reason: super::gitlab::NOT_GITLAB.to_string(),
                });
            }
        }
        for a in self.pre.iter_mut() {
            run_recorded(
                ctx,
                a.as_mut(),
                REQUESTED_REASON,
                &mut self.skipped,
                &mut self.selected,
            )?;
        }
        run_one(ctx, &mut self.material)?;
        Ok(())
    }

    /// Runs the execute-stage github-action attestor, then product and
    /// postproduct attestors. The caller pushes the command-run attestation
    /// into `ctx.completed` between `before()` and `after()`.
    ///
    /// secretscan with fail-on-detection records its attestation and then
    /// returns `Err(AttestError::Failed(..))`.
    pub fn after(&mut self, ctx: &mut AttestationContext) -> Result<(), AttestError> {
        ctx.hashes = self.hashes.clone();
        if let Some(a) = self.github_action.as_mut() {
            match a.observe(ctx) {
                Ok(_) => run_one(ctx, a)?,
                Err(e) => self.skipped.push(SkippedAttestor {
                    name: a.name().to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        if let Some(snap) = self.material.snapshot() {
            self.product.set_materials(snap.files.clone());
        }
        run_one(ctx, &mut self.product)?;
        let auto = auto_selected(&self.opts, ctx.completed_json(super::command_run::NAME));
        for s in after_selection(&self.requested, &auto) {
            let mut a = build(&s.name, &self.opts)?;
            run_recorded(
                ctx,
                a.as_mut(),
                &s.reason,
                &mut self.skipped,
                &mut self.selected,
            )?;
        }
        if let Some(s) = self.secretscan.as_mut() {
            run_one(ctx, s)?;
            s.redact_completed(ctx);
            let n = s.findings().len();
            if n > 0 && s.options().fail_on_detection {
                let mut rules: Vec<&str> =
                    s.findings().iter().map(|f| f.rule_id.as_str()).collect();
                rules.sort();
                rules.dedup();
                return Err(AttestError::Failed(format!(
                    "secretscan: {n} secret(s) detected ({}) and fail-on-detection is set",
                    rules.join(", ")
                )));
            }
        }
        Ok(())
    }
}
