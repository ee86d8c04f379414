//! The environment attestor (`https://witness.dev/attestations/environment/v0.1`,
//! stage prematerial): OS, host name, user name and the step's environment
//! variables, with sensitive variables obfuscated (`******`) or dropped.
//!
//! The sensitive-variable filter is public ([`SensitiveEnvFilter`]) so the
//! tracer can apply the same rules to per-process environments
//! ([`SensitiveEnvFilter::filter_kv_list`]) and secretscan can look for the
//! values of the variables it classifies as sensitive.

use std::collections::{BTreeMap, HashSet};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::{AttestError, AttestationContext, Attestor, Stage};

/// Attestor name.
pub const NAME: &str = "environment";

/// What an obfuscated value is replaced with (six asterisks, as Witness).
pub const OBFUSCATED: &str = "******";

/// Witness's default sensitive list (go-witness
/// `environment.DefaultSensitiveEnvList`): glob patterns first, then exact
/// names. Matching is case-sensitive.
pub const DEFAULT_SENSITIVE_ENV: &[&str] = &[
    // Glob patterns
    "*TOKEN*",
    "*SECRET*",
    "*API_KEY*",
    "*PASSWORD*",
    "*JWT*",
    "*sshKey*",
    "*passphrase*",
    // Explicit names
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AMAZON_AWS_ACCESS_KEY_ID",
    "AMAZON_AWS_SECRET_ACCESS_KEY",
    "ALGOLIA_API_KEY",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "binance_api",
    "binance_secret",
    "BITTREX_API_KEY",
    "BITTREX_API_SECRET",
    "CF_PASSWORD",
    "CF_USERNAME",
    "CODECLIMATE_REPO_TOKEN",
    "COVERALLS_REPO_TOKEN",
    "CIRCLE_TOKEN",
    "DIGITALOCEAN_ACCESS_TOKEN",
    "DOCKER_EMAIL",
    "DOCKER_PASSWORD",
    "DOCKER_USERNAME",
    "DOCKERHUB_PASSWORD",
    "FACEBOOK_APP_ID",
    "FACEBOOK_APP_SECRET",
    "FACEBOOK_ACCESS_TOKEN",
    "FIREBASE_TOKEN",
    "FOSSA_API_KEY",
    "GH_TOKEN",
    "GH_ENTERPRISE_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_API_KEY",
    "CI_DEPLOY_USER",
    "CI_DEPLOY_PASSWORD",
    "GITLAB_USER_LOGIN",
    "CI_JOB_JWT",
    "CI_JOB_JWT_V2",
    "CI_JOB_TOKEN",
    "HEROKU_API_KEY",
    "HEROKU_API_USER",
    "MAILGUN_API_KEY",
    "MCLI_PRIVATE_API_KEY",
    "MCLI_PUBLIC_API_KEY",
    "NGROK_TOKEN",
    "NGROK_AUTH_TOKEN",
    "NPM_AUTH_TOKEN",
    "OKTA_CLIENT_ORGURL",
    "OKTA_CLIENT_TOKEN",
    "OKTA_OAUTH2_CLIENTSECRET",
    "OKTA_OAUTH2_CLIENTID",
    "OKTA_AUTHN_GROUPID",
    "OS_USERNAME",
    "OS_PASSWORD",
    "PERCY_TOKEN",
    "SAUCE_ACCESS_KEY",
    "SAUCE_USERNAME",
    "SENTRY_AUTH_TOKEN",
    "SLACK_TOKEN",
    "SNYK_TOKEN",
    "square_access_token",
    "square_oauth_secret",
    "STRIPE_API_KEY",
    "STRIPE_DEVICE_NAME",
    "SURGE_TOKEN",
    "SURGE_LOGIN",
    "TWILIO_ACCOUNT_SID",
    "CONSUMER_KEY",
    "CONSUMER_SECRET",
    "TRAVIS_SUDO",
    "TRAVIS_OS_NAME",
    "TRAVIS_SECURE_ENV_VARS",
    "VAULT_TOKEN",
    "VAULT_CLIENT_KEY",
    "TOKEN",
    "VULTR_ACCESS",
    "VULTR_SECRET",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
];

/// Options of the sensitive-variable filter (Witness `--env-*` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvOptions {
    /// Extra sensitive keys or globs (`--env-add-sensitive-key`).
    pub add_sensitive_keys: Vec<String>,
    /// Exact keys exempted from the filter (`--env-allow-sensitive-key`).
    pub allow_keys: Vec<String>,
    /// Drop sensitive variables instead of obfuscating them
    /// (`--env-filter-sensitive-vars`).
    pub filter_sensitive: bool,
    /// Do not use the default list (`--env-disable-default-sensitive-vars`).
    pub disable_default_sensitive: bool,
}

/// Classifies environment variable names as sensitive and filters them.
#[derive(Clone, Debug)]
pub struct SensitiveEnvFilter {
    exact: HashSet<String>,
    globs: GlobSet,
    allow: HashSet<String>,
    drop: bool,
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

impl SensitiveEnvFilter {
    /// Builds the filter. An invalid glob in `add_sensitive_keys` is an error.
    pub fn new(opts: &EnvOptions) -> Result<Self, AttestError> {
        let mut exact = HashSet::new();
        let mut gb = GlobSetBuilder::new();
        let defaults: &[&str] = if opts.disable_default_sensitive {
            &[]
        } else {
            DEFAULT_SENSITIVE_ENV
        };
        let all = defaults
            .iter()
            .map(|s| s.to_string())
            .chain(opts.add_sensitive_keys.iter().cloned());
        for p in all {
            if p.is_empty() {
                continue;
            }
            if is_glob(&p) {
                let g = GlobBuilder::new(&p)
                    .case_insensitive(false)
                    .literal_separator(false)
                    .backslash_escape(false)
                    .build()
                    .map_err(|e| {
                        AttestError::Invalid(format!("invalid sensitive-key glob {p:?}: {e}"))
                    })?;
                gb.add(g);
            } else {
                exact.insert(p);
            }
        }
        let globs = gb
            .build()
            .map_err(|e| AttestError::Invalid(format!("invalid sensitive-key globs: {e}")))?;
        Ok(SensitiveEnvFilter {
            exact,
            globs,
            allow: opts.allow_keys.iter().cloned().collect(),
            drop: opts.filter_sensitive,
        })
    }

    /// True when `key` is sensitive (and not explicitly allowed).
    pub fn is_sensitive(&self, key: &str) -> bool {
        if self.allow.contains(key) {
            return false;
        }
        self.exact.contains(key) || self.globs.is_match(key)
    }

    /// The recorded value of `key` (`None` when the variable is dropped).
    pub fn filter_value<'a>(&self, key: &str, value: &'a str) -> Option<&'a str> {
        if self.is_sensitive(key) {
            if self.drop {
                None
            } else {
                Some(OBFUSCATED)
            }
        } else {
            Some(value)
        }
    }

    /// Filters (key, value) pairs into the `variables` map.
    pub fn filter_pairs<'a, I>(&self, vars: I) -> BTreeMap<String, String>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut out = BTreeMap::new();
        for (k, v) in vars {
            if let Some(v) = self.filter_value(k, v) {
                out.insert(k.to_string(), v.to_string());
            }
        }
        out
    }

    /// Filters a `KEY=VALUE` list (e.g. a process's `/proc/<pid>/environ`),
    /// keeping order. An entry without `=` is a key with an empty value.
    pub fn filter_kv_list<S: AsRef<str>>(&self, list: &[S]) -> Vec<String> {
        let mut out = Vec::with_capacity(list.len());
        for entry in list {
            let entry = entry.as_ref();
            let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
            if let Some(v) = self.filter_value(k, v) {
                if entry.contains('=') || v == OBFUSCATED {
                    out.push(format!("{k}={v}"));
                } else {
                    out.push(k.to_string());
                }
            }
        }
        out
    }
}

/// Applies the filter built from `opts` to a `KEY=VALUE` list.
pub fn filter_env_list<S: AsRef<str>>(
    list: &[S],
    opts: &EnvOptions,
) -> Result<Vec<String>, AttestError> {
    Ok(SensitiveEnvFilter::new(opts)?.filter_kv_list(list))
}

/// The environment attestation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// `linux`, … (Go's `runtime.GOOS` names).
    pub os: String,
    /// Host name.
    pub hostname: String,
    /// Name of the user cilock runs as.
    pub username: String,
    /// The step's variables, filtered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
}

/// Host name of this machine.
pub fn hostname() -> String {
    let mut buf = vec![0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Name of the user this process runs as (`user.Current().Username`),
/// falling back to the numeric uid when it has no passwd entry.
pub fn username() -> String {
    // SAFETY: getuid never fails.
    let uid = unsafe { libc::getuid() };
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all pointers are valid for the sizes given.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: pw_name points into buf, NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    uid.to_string()
}

/// Go's `runtime.GOOS` for this target.
pub fn go_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// The environment attestor.
#[derive(Debug)]
pub struct EnvironmentAttestor {
    filter: SensitiveEnvFilter,
}

impl EnvironmentAttestor {
    /// An attestor with the given filter options.
    pub fn new(opts: &EnvOptions) -> Result<Self, AttestError> {
        Ok(EnvironmentAttestor {
            filter: SensitiveEnvFilter::new(opts)?,
        })
    }

    /// Builds the attestation from the step's environment.
    pub fn observe(&self, env: &[(String, String)]) -> Environment {
        Environment {
            os: go_os().to_string(),
            hostname: hostname(),
            username: username(),
            variables: self
                .filter
                .filter_pairs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        }
    }
}

impl Attestor for EnvironmentAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        serde_json::to_value(self.observe(&ctx.env))
            .map_err(|e| AttestError::Invalid(format!("environment: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_case_sensitive_globs_and_names() {
        let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
        assert!(f.is_sensitive("GITHUB_TOKEN"));
        assert!(f.is_sensitive("MY_SECRET_THING"));
        assert!(f.is_sensitive("AWS_ACCESS_KEY_ID"));
        assert!(f.is_sensitive("binance_api"));
        assert!(f.is_sensitive("mysshKeyfile"));
        assert!(!f.is_sensitive("github_token")); // case-sensitive
        assert!(!f.is_sensitive("PATH"));
        assert!(!f.is_sensitive("BINANCE_API"));
    }

    #[test]
    fn options() {
        let f = SensitiveEnvFilter::new(&EnvOptions {
            add_sensitive_keys: vec!["MY_*".into(), "EXACT".into()],
            allow_keys: vec!["GITHUB_TOKEN".into()],
            filter_sensitive: true,
            disable_default_sensitive: false,
        })
        .unwrap();
        assert!(f.is_sensitive("MY_VAR"));
        assert!(f.is_sensitive("EXACT"));
        assert!(!f.is_sensitive("GITHUB_TOKEN"));
        let list = f.filter_kv_list(&["MY_VAR=1", "PATH=/bin", "GITHUB_TOKEN=x", "NOEQ"]);
        assert_eq!(list, vec!["PATH=/bin", "GITHUB_TOKEN=x", "NOEQ"]);

        let f = SensitiveEnvFilter::new(&EnvOptions {
            disable_default_sensitive: true,
            ..Default::default()
        })
        .unwrap();
        assert!(!f.is_sensitive("GITHUB_TOKEN"));
        let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
        assert_eq!(
            f.filter_kv_list(&["A_TOKEN=abc", "X=a=b"]),
            vec!["A_TOKEN=******", "X=a=b"]
        );
    }
}
