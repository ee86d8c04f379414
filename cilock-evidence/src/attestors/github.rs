//! The github attestor (`https://witness.dev/attestations/github/v0.1`,
//! stage prematerial): the GitHub Actions run, from the step's `GITHUB_*`
//! and `RUNNER_*` variables.
//!
//! cilock has no network access to fetch an OIDC token. When a token is
//! already present (in the variable named by [`GitHubAttestor::with_token_env`]),
//! its claims are recorded under `jwt` (unverified: `verifiedBy` is absent).

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::{DigestSet, HashAlg};

/// Attestor name.
pub const NAME: &str = "github";

/// GitHub's OIDC key set (recorded as `jwksUrl` with a token's claims).
pub const GITHUB_JWKS_URL: &str = "https://token.actions.githubusercontent.com/.well-known/jwks";

/// The `jwt` sub-attestation (Witness jwt attestor field names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JwtClaims {
    /// Where the token's keys are published.
    #[serde(rename = "jwksUrl", default, skip_serializing_if = "String::is_empty")]
    pub jwks_url: String,
    /// The token's claims (decoded, not verified).
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Decodes the claims of a compact JWT without verifying it.
pub fn decode_jwt_claims(
    token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, AttestError> {
    let mut parts = token.trim().split('.');
    let (Some(_), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AttestError::Invalid("jwt: not a compact JWT".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| AttestError::Invalid(format!("jwt: bad payload encoding: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AttestError::Invalid(format!("jwt: bad claims: {e}")))
}

/// Looks `key` up in the step's environment.
pub(crate) fn env_get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn env_or_empty(env: &[(String, String)], key: &str) -> String {
    env_get(env, key).unwrap_or("").to_string()
}

pub(crate) fn sha256_str(s: &str) -> DigestSet {
    DigestSet::from_bytes(s.as_bytes(), &[HashAlg::Sha256])
}

/// The github attestation (Witness field names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GitHubAttestation {
    /// Claims of an OIDC token already present in the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtClaims>,
    /// `GITHUB_ACTION_PATH`.
    pub ciconfigpath: String,
    /// `GITHUB_RUN_ID`.
    pub pipelineid: String,
    /// `GITHUB_WORKFLOW`.
    pub pipelinename: String,
    /// `<server>/<repo>/actions/runs/<run id>`.
    pub pipelineurl: String,
    /// `<server>/<repo>`.
    pub projecturl: String,
    /// `RUNNER_NAME`.
    pub runnerid: String,
    /// Always empty (declared but never set by Witness).
    pub cihost: String,
    /// `GITHUB_SERVER_URL`.
    pub ciserverurl: String,
    /// `RUNNER_ARCH`.
    pub runnerarch: String,
    /// `RUNNER_OS`.
    pub runneros: String,
}

/// The github attestor.
#[derive(Debug, Default)]
pub struct GitHubAttestor {
    token_env: Option<String>,
    data: Option<GitHubAttestation>,
}

/// Why github was not recorded: the step does not run in GitHub Actions.
pub const NOT_GITHUB: &str = "not in a github ci job (GITHUB_ACTIONS is not \"true\")";

impl GitHubAttestor {
    /// A github attestor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the claims of the OIDC token found in variable `var`.
    pub fn with_token_env(mut self, var: Option<String>) -> Self {
        self.token_env = var.filter(|v| !v.is_empty());
        self
    }

    /// True when `env` is a GitHub Actions job.
    pub fn detect(env: &[(String, String)]) -> bool {
        env_get(env, "GITHUB_ACTIONS") == Some("true")
    }

    /// Builds the attestation from `env`.
    pub fn observe(&self, env: &[(String, String)]) -> Result<GitHubAttestation, AttestError> {
        if !Self::detect(env) {
            return Err(AttestError::Invalid(format!("github: {NOT_GITHUB}")));
        }
        let server = env_or_empty(env, "GITHUB_SERVER_URL");
        let repo = env_or_empty(env, "GITHUB_REPOSITORY");
        let run_id = env_or_empty(env, "GITHUB_RUN_ID");
        let projecturl = format!("{server}/{repo}");
        let jwt = match self.token_env.as_deref().and_then(|v| env_get(env, v)) {
            Some(tok) if !tok.is_empty() => Some(JwtClaims {
                jwks_url: GITHUB_JWKS_URL.to_string(),
                claims: decode_jwt_claims(tok)?,
            }),
            _ => None,
        };
        Ok(GitHubAttestation {
            jwt,
            ciconfigpath: env_or_empty(env, "GITHUB_ACTION_PATH"),
            pipelineid: run_id.clone(),
            pipelinename: env_or_empty(env, "GITHUB_WORKFLOW"),
            pipelineurl: format!("{projecturl}/actions/runs/{run_id}"),
            projecturl,
            runnerid: env_or_empty(env, "RUNNER_NAME"),
            cihost: String::new(),
            ciserverurl: server,
            runnerarch: env_or_empty(env, "RUNNER_ARCH"),
            runneros: env_or_empty(env, "RUNNER_OS"),
        })
    }
}

impl Attestor for GitHubAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let d = self.observe(&ctx.env)?;
        let v =
            serde_json::to_value(&d).map_err(|e| AttestError::Invalid(format!("github: {e}")))?;
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
