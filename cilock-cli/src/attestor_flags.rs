//! Attestor options shared by `run` and `step begin`, with Witness's flag
//! names, and their conversion into the evidence crate's
//! [`AttestorOptions`] (which travels to the daemon).

use std::path::PathBuf;

use cilock_evidence::attestors::environment::EnvOptions;
use cilock_evidence::attestors::lifecycle::AttestorOptions;
use cilock_evidence::attestors::secretscan::{
    SecretScanOptions, DEFAULT_MAX_DECODE_LAYERS, DEFAULT_MAX_FILE_SIZE_MB,
};
use clap::Args;

/// Options of the attestors.
#[derive(Debug, Clone, Args)]
pub struct AttestorFlags {
    /// Add a sensitive environment variable name or glob (repeatable); its value is obfuscated (or dropped).
    #[arg(long = "env-add-sensitive-key", value_name = "KEY|GLOB")]
    pub env_add_sensitive_key: Vec<String>,
    /// Exempt an exact variable name from the sensitive list (repeatable; globs are not allowed).
    #[arg(long = "env-allow-sensitive-key", value_name = "KEY")]
    pub env_allow_sensitive_key: Vec<String>,
    /// Drop sensitive variables instead of obfuscating their values.
    #[arg(long = "env-filter-sensitive-vars")]
    pub env_filter_sensitive_vars: bool,
    /// Do not use Witness's default list of sensitive variables.
    #[arg(long = "env-disable-default-sensitive-vars")]
    pub env_disable_default_sensitive_vars: bool,
    /// Only products matching these globs become subjects (repeatable) [default: *].
    #[arg(long = "attestor-product-include-glob", value_name = "GLOB")]
    pub product_include_glob: Vec<String>,
    /// Products matching these globs do not become subjects (repeatable).
    #[arg(long = "attestor-product-exclude-glob", value_name = "GLOB")]
    pub product_exclude_glob: Vec<String>,
    /// Only materials matching these globs are recorded (repeatable) [default: all].
    #[arg(long = "attestor-material-include-glob", value_name = "GLOB")]
    pub material_include_glob: Vec<String>,
    /// Materials matching these globs are not recorded (repeatable).
    #[arg(long = "attestor-material-exclude-glob", value_name = "GLOB")]
    pub material_exclude_glob: Vec<String>,
    /// Hash algorithms for files and subjects: sha256, sha1, gitoid:sha256, gitoid:sha1.
    #[arg(long = "hashes", value_delimiter = ',', default_value = "sha256")]
    pub hashes: Vec<String>,
    /// How many layers of base64/hex/URL encoding secretscan peels off.
    #[arg(long = "attestor-secretscan-max-decode-layers", default_value_t = DEFAULT_MAX_DECODE_LAYERS)]
    pub secretscan_max_decode_layers: usize,
    /// Fail the step (after recording the attestation) when secretscan finds a secret.
    #[arg(long = "attestor-secretscan-fail-on-detection")]
    pub secretscan_fail_on_detection: bool,
    /// Largest product secretscan reads, in MiB.
    #[arg(long = "attestor-secretscan-max-file-size-mb", default_value_t = DEFAULT_MAX_FILE_SIZE_MB)]
    pub secretscan_max_file_size_mb: u64,
    /// Keep found secrets in the other attestations instead of redacting them.
    #[arg(long = "attestor-secretscan-no-redact")]
    pub secretscan_no_redact: bool,
    /// Variable holding an already-fetched GitHub OIDC token whose claims the github attestor records.
    #[arg(long = "attestor-github-token-env", value_name = "VAR")]
    pub github_token_env: Option<String>,
    /// Variable holding the GitLab job token [default: CI_JOB_JWT].
    #[arg(long = "attestor-gitlab-token-env", value_name = "VAR")]
    pub gitlab_token_env: Option<String>,
    /// Action reference for the github-action attestor (default:
    /// `$GITHUB_ACTION_REPOSITORY@$GITHUB_ACTION_REF`; the help text says
    /// it in clap's form, which rustdoc would read as a link).
    #[arg(
        long = "attestor-github-action-ref",
        value_name = "OWNER/REPO@REF",
        help = "Action reference for the github-action attestor [default: $GITHUB_ACTION_REPOSITORY@$GITHUB_ACTION_REF]"
    )]
    pub github_action_ref: Option<String>,
    /// Local directory of the action [default: $GITHUB_ACTION_PATH].
    #[arg(long = "attestor-github-action-dir", value_name = "DIR")]
    pub github_action_dir: Option<PathBuf>,
    /// Also sign the slsa attestor's provenance as its own in-toto
    /// Statement v1 envelope, written next to -o as `<OUT>-slsa.json`
    /// (implies -a slsa).
    #[arg(long = "attestor-slsa-export")]
    pub slsa_export: bool,
    /// Run only the attestors given with -a (and command-run, material,
    /// product), not those the trace calls for (a traced `ruff` or
    /// `cyclonedx-py` selects sarif or sbom).
    #[arg(long = "no-auto-attestors")]
    pub no_auto_attestors: bool,
}

impl Default for AttestorFlags {
    fn default() -> Self {
        AttestorFlags {
            env_add_sensitive_key: Vec::new(),
            env_allow_sensitive_key: Vec::new(),
            env_filter_sensitive_vars: false,
            env_disable_default_sensitive_vars: false,
            product_include_glob: Vec::new(),
            product_exclude_glob: Vec::new(),
            material_include_glob: Vec::new(),
            material_exclude_glob: Vec::new(),
            hashes: vec!["sha256".to_string()],
            secretscan_max_decode_layers: DEFAULT_MAX_DECODE_LAYERS,
            secretscan_fail_on_detection: false,
            secretscan_max_file_size_mb: DEFAULT_MAX_FILE_SIZE_MB,
            secretscan_no_redact: false,
            github_token_env: None,
            gitlab_token_env: None,
            github_action_ref: None,
            github_action_dir: None,
            slsa_export: false,
            no_auto_attestors: false,
        }
    }
}

impl AttestorFlags {
    /// The attestor options these flags describe. Hash names are checked
    /// when the lifecycle is built (`Lifecycle::new`).
    pub fn to_options(&self) -> AttestorOptions {
        AttestorOptions {
            env: EnvOptions {
                add_sensitive_keys: self.env_add_sensitive_key.clone(),
                allow_keys: self.env_allow_sensitive_key.clone(),
                filter_sensitive: self.env_filter_sensitive_vars,
                disable_default_sensitive: self.env_disable_default_sensitive_vars,
            },
            material_include_globs: self.material_include_glob.clone(),
            material_exclude_globs: self.material_exclude_glob.clone(),
            // Witness's default include glob `*` means "everything".
            product_include_globs: self
                .product_include_glob
                .iter()
                .filter(|g| g.as_str() != "*")
                .cloned()
                .collect(),
            product_exclude_globs: self.product_exclude_glob.clone(),
            hashes: self.hashes.clone(),
            secretscan: SecretScanOptions {
                max_decode_layers: self.secretscan_max_decode_layers,
                fail_on_detection: self.secretscan_fail_on_detection,
                max_file_size_mb: self.secretscan_max_file_size_mb,
                redact: !self.secretscan_no_redact,
            },
            github_token_env: self.github_token_env.clone(),
            gitlab_token_env: self.gitlab_token_env.clone(),
            github_action_ref: self.github_action_ref.clone(),
            slsa_export: self.slsa_export,
            no_auto_select: self.no_auto_attestors,
            // The daemon needs an absolute path (it does not know our cwd).
            github_action_dir: self
                .github_action_dir
                .as_ref()
                .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: AttestorFlags,
    }

    #[test]
    fn defaults_match_the_options_defaults() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.f.to_options(), AttestorOptions::default());
        assert_eq!(
            AttestorFlags::default().to_options(),
            AttestorOptions::default()
        );
    }

    #[test]
    fn flags_map_to_options() {
        let t = T::try_parse_from([
            "t",
            "--env-add-sensitive-key",
            "MY_*",
            "--env-allow-sensitive-key",
            "GITHUB_TOKEN",
            "--env-filter-sensitive-vars",
            "--env-disable-default-sensitive-vars",
            "--attestor-product-include-glob",
            "*.tar.gz",
            "--attestor-product-exclude-glob",
            "tmp/*",
            "--attestor-material-exclude-glob",
            ".git/*",
            "--hashes",
            "sha256,gitoid:sha1",
            "--attestor-secretscan-max-decode-layers",
            "5",
            "--attestor-secretscan-fail-on-detection",
        ])
        .unwrap();
        let o = t.f.to_options();
        assert_eq!(o.env.add_sensitive_keys, vec!["MY_*"]);
        assert_eq!(o.env.allow_keys, vec!["GITHUB_TOKEN"]);
        assert!(o.env.filter_sensitive && o.env.disable_default_sensitive);
        assert_eq!(o.product_include_globs, vec!["*.tar.gz"]);
        assert_eq!(o.product_exclude_globs, vec!["tmp/*"]);
        assert_eq!(o.material_exclude_globs, vec![".git/*"]);
        assert_eq!(o.hashes, vec!["sha256", "gitoid:sha1"]);
        assert_eq!(o.secretscan.max_decode_layers, 5);
        assert!(o.secretscan.fail_on_detection);
        // Round-trips through JSON (it is sent to the daemon).
        let back: AttestorOptions =
            serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }
}
