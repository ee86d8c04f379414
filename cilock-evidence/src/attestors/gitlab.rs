//! The gitlab attestor (`https://witness.dev/attestations/gitlab/v0.1`,
//! stage prematerial): the GitLab CI job, from the step's `CI_*` variables.
//!
//! When `CI_JOB_JWT` (GitLab < 17) or the variable named by
//! [`GitLabAttestor::with_token_env`] holds a token, its claims are recorded
//! under `jwt` (decoded, not verified: cilock has no network).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::github::{decode_jwt_claims, env_get, env_or_empty, sha256_str, JwtClaims};
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "gitlab";

/// Why gitlab was not recorded.
pub const NOT_GITLAB: &str = "not in a gitlab ci job (GITLAB_CI is not \"true\")";

/// The gitlab attestation (Witness field names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GitLabAttestation {
    /// Claims of the job token, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtClaims>,
    /// `CI_CONFIG_PATH`.
    pub ciconfigpath: String,
    /// `CI_JOB_ID`.
    pub jobid: String,
    /// `CI_JOB_IMAGE`.
    pub jobimage: String,
    /// `CI_JOB_NAME`.
    pub jobname: String,
    /// `CI_JOB_STAGE`.
    pub jobstage: String,
    /// `CI_JOB_URL`.
    pub joburl: String,
    /// `CI_PIPELINE_ID`.
    pub pipelineid: String,
    /// `CI_PIPELINE_URL`.
    pub pipelineurl: String,
    /// `CI_PROJECT_ID`.
    pub projectid: String,
    /// `CI_PROJECT_URL`.
    pub projecturl: String,
    /// `CI_RUNNER_ID`.
    pub runnerid: String,
    /// `CI_SERVER_HOST`.
    pub cihost: String,
    /// `CI_SERVER_URL`.
    pub ciserverurl: String,
}

/// The gitlab attestor.
#[derive(Debug, Default)]
pub struct GitLabAttestor {
    token_env: Option<String>,
    data: Option<GitLabAttestation>,
}

impl GitLabAttestor {
    /// A gitlab attestor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the job token from variable `var` instead of `CI_JOB_JWT`.
    pub fn with_token_env(mut self, var: Option<String>) -> Self {
        self.token_env = var.filter(|v| !v.is_empty());
        self
    }

    /// True when `env` is a GitLab CI job.
    pub fn detect(env: &[(String, String)]) -> bool {
        env_get(env, "GITLAB_CI") == Some("true")
    }

    /// Builds the attestation from `env`.
    pub fn observe(&self, env: &[(String, String)]) -> Result<GitLabAttestation, AttestError> {
        if !Self::detect(env) {
            return Err(AttestError::Invalid(format!("gitlab: {NOT_GITLAB}")));
        }
        let server = env_or_empty(env, "CI_SERVER_URL");
        let var = self.token_env.as_deref().unwrap_or("CI_JOB_JWT");
        let jwt = match env_get(env, var) {
            Some(tok) if !tok.is_empty() => Some(JwtClaims {
                jwks_url: format!("{server}/oauth/discovery/keys"),
                claims: decode_jwt_claims(tok)?,
            }),
            _ => None,
        };
        Ok(GitLabAttestation {
            jwt,
            ciconfigpath: env_or_empty(env, "CI_CONFIG_PATH"),
            jobid: env_or_empty(env, "CI_JOB_ID"),
            jobimage: env_or_empty(env, "CI_JOB_IMAGE"),
            jobname: env_or_empty(env, "CI_JOB_NAME"),
            jobstage: env_or_empty(env, "CI_JOB_STAGE"),
            joburl: env_or_empty(env, "CI_JOB_URL"),
            pipelineid: env_or_empty(env, "CI_PIPELINE_ID"),
            pipelineurl: env_or_empty(env, "CI_PIPELINE_URL"),
            projectid: env_or_empty(env, "CI_PROJECT_ID"),
            projecturl: env_or_empty(env, "CI_PROJECT_URL"),
            runnerid: env_or_empty(env, "CI_RUNNER_ID"),
            cihost: env_or_empty(env, "CI_SERVER_HOST"),
            ciserverurl: server,
        })
    }
}

impl Attestor for GitLabAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let d = self.observe(&ctx.env)?;
        let v =
            serde_json::to_value(&d).map_err(|e| AttestError::Invalid(format!("gitlab: {e}")))?;
        self.data = Some(d);
        Ok(v)
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        let mut m = BTreeMap::new();
        if let Some(d) = &self.data {
            m.insert(
                format!("pipelineurl:{}", d.pipelineurl),
                sha256_str(&d.pipelineurl),
            );
            m.insert(format!("joburl:{}", d.joburl), sha256_str(&d.joburl));
            m.insert(
                format!("projecturl:{}", d.projecturl),
                sha256_str(&d.projecturl),
            );
        }
        m
    }
    fn backrefs(&self) -> BTreeMap<String, DigestSet> {
        let mut m = BTreeMap::new();
        if let Some(d) = &self.data {
            m.insert(
                format!("pipelineurl:{}", d.pipelineurl),
                sha256_str(&d.pipelineurl),
            );
        }
        m
    }
}
