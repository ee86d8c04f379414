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
/// names. Witness matches them case-sensitively; cilock matches them (and
/// [`CILOCK_SENSITIVE_ENV`]) regardless of case, so `github_token` is caught
/// like `GITHUB_TOKEN`.
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

/// cilock's additions to the default list, for what CI secrets look like in
/// practice (matched regardless of case; `*AUTH*` does not match `AUTHOR`,
/// as in `GIT_AUTHOR_NAME`). Besides these names, a variable whose value
/// holds a URL with a password (`postgres://app:pw@db/x`), or a `*DSN`
/// variable with `user:password@`, is sensitive whatever its name. Like the
/// Witness list, all of this is turned off by `disable_default_sensitive`.
pub const CILOCK_SENSITIVE_ENV: &[&str] = &[
    "*PASS*",
    "*CREDENTIAL*",
    "*AUTH*",
    "*KEY",
    "*PRIVATE_KEY*",
    "*PRIVATEKEY*",
    "*APIKEY*",
    "*CONFIG_DATA",
    "*COOKIE*",
    "*SESSION*",
];

/// True when `value` holds a URL with a password in its userinfo
/// (`scheme://user:password@host`).
pub fn has_url_password(value: &str) -> bool {
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        if userinfo_has_password(&after[..end]) {
            return true;
        }
        rest = after;
    }
    false
}

/// `user:password@host` (an authority): true when the password is not empty.
fn userinfo_has_password(authority: &str) -> bool {
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => matches!(userinfo.split_once(':'), Some((_, pw)) if !pw.is_empty()),
        None => false,
    }
}

/// `*AUTH*`, except where `AUTH` begins `AUTHOR` (`GIT_AUTHOR_NAME`,
/// `AUTHORS`, `AUTHORITY`); `AUTHORIZATION` stays sensitive.
fn has_auth(upper: &str) -> bool {
    upper.match_indices("AUTH").any(|(i, _)| {
        let after = &upper[i + 4..];
        !after.starts_with("OR") || after.starts_with("ORIZ")
    })
}

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

/// Classifies environment variables as sensitive and filters them.
#[derive(Clone, Debug)]
pub struct SensitiveEnvFilter {
    /// Exact names added by the user (case-sensitive, as Witness).
    exact: HashSet<String>,
    /// Globs added by the user (case-sensitive, as Witness).
    globs: GlobSet,
    /// The default exact names, upper-cased.
    default_exact: HashSet<String>,
    /// The default globs (Witness's and cilock's but `*AUTH*`), any case.
    default_globs: GlobSet,
    /// Whether the defaults apply.
    defaults: bool,
    allow: HashSet<String>,
    drop: bool,
}

fn glob(p: &str, case_insensitive: bool) -> Result<globset::Glob, AttestError> {
    GlobBuilder::new(p)
        .case_insensitive(case_insensitive)
        .literal_separator(false)
        .backslash_escape(false)
        .build()
        .map_err(|e| AttestError::Invalid(format!("invalid sensitive-key glob {p:?}: {e}")))
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

impl SensitiveEnvFilter {
    /// Builds the filter. An invalid glob in `add_sensitive_keys` is an error.
    pub fn new(opts: &EnvOptions) -> Result<Self, AttestError> {
        let mut exact = HashSet::new();
        let mut gb = GlobSetBuilder::new();
        for p in &opts.add_sensitive_keys {
            if p.is_empty() {
                continue;
            }
            if is_glob(p) {
                gb.add(glob(p, false)?);
            } else {
                exact.insert(p.clone());
            }
        }
        let mut default_exact = HashSet::new();
        let mut db = GlobSetBuilder::new();
        for p in DEFAULT_SENSITIVE_ENV
            .iter()
            .chain(CILOCK_SENSITIVE_ENV.iter())
            .filter(|p| **p != "*AUTH*")
        {
            if is_glob(p) {
                db.add(glob(p, true)?);
            } else {
                default_exact.insert(p.to_ascii_uppercase());
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| AttestError::Invalid(format!("invalid sensitive-key globs: {e}")))
        };
        Ok(SensitiveEnvFilter {
            exact,
            globs: build(gb)?,
            default_exact,
            default_globs: build(db)?,
            defaults: !opts.disable_default_sensitive,
            allow: opts.allow_keys.iter().cloned().collect(),
            drop: opts.filter_sensitive,
        })
    }

    /// True when the name `key` is sensitive (and not explicitly allowed).
    /// See [`SensitiveEnvFilter::is_sensitive_pair`] for the check that also
    /// looks at the value.
    pub fn is_sensitive(&self, key: &str) -> bool {
        if self.allow.contains(key) {
            return false;
        }
        if self.exact.contains(key) || self.globs.is_match(key) {
            return true;
        }
        if !self.defaults {
            return false;
        }
        let upper = key.to_ascii_uppercase();
        self.default_exact.contains(&upper) || self.default_globs.is_match(key) || has_auth(&upper)
    }

    /// True when the variable `key=value` is sensitive: by its name, or (with
    /// the defaults) because its value holds a URL with a password, or it is
    /// a `*DSN` with `user:password@`.
    pub fn is_sensitive_pair(&self, key: &str, value: &str) -> bool {
        if self.is_sensitive(key) {
            return true;
        }
        if !self.defaults || self.allow.contains(key) {
            return false;
        }
        if has_url_password(value) {
            return true;
        }
        key.to_ascii_uppercase().ends_with("DSN")
            && value
                .split(|c: char| c.is_whitespace() || c == '/')
                .any(userinfo_has_password)
    }

    /// The recorded value of `key` (`None` when the variable is dropped).
    pub fn filter_value<'a>(&self, key: &str, value: &'a str) -> Option<&'a str> {
        if self.is_sensitive_pair(key, value) {
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
    fn defaults_match_globs_and_names_in_any_case() {
        let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
        assert!(f.is_sensitive("GITHUB_TOKEN"));
        assert!(f.is_sensitive("MY_SECRET_THING"));
        assert!(f.is_sensitive("AWS_ACCESS_KEY_ID"));
        assert!(f.is_sensitive("binance_api"));
        assert!(f.is_sensitive("BINANCE_API"));
        assert!(f.is_sensitive("mysshKeyfile"));
        assert!(f.is_sensitive("MYSSHKEYFILE"));
        assert!(f.is_sensitive("github_token"));
        assert!(!f.is_sensitive("PATH"));
    }

    /// Every name of security review #15, the ones Witness's list already
    /// caught, and names that must stay in clear.
    #[test]
    fn ci_secret_shapes() {
        let f = SensitiveEnvFilter::new(&EnvOptions::default()).unwrap();
        let sensitive = [
            ("GITHUB_TOKEN", "ghp_x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_SESSION_TOKEN", "x"),
            ("CI_JOB_TOKEN", "x"),
            ("github_token", "x"),
            (
                "DATABASE_URL",
                "postgres://app:DbPassw0rd@db.internal:5432/app",
            ),
            ("PRIVATE_KEY", "-----BEGIN"),
            ("SSH_PASS", "x"),
            ("PASSWORD", "x"),
            ("DB_PASSWD", "x"),
            ("MY_CREDENTIALS", "x"),
            ("DOCKER_AUTH_CONFIG", "{}"),
            ("NPM_CONFIG__AUTH", "x"),
            ("npm_config__auth", "x"),
            ("ARTIFACTORY_APIKEY", "x"),
            ("KUBECONFIG_DATA", "x"),
            ("DEPLOY_KEY", "x"),
            ("HTTP_AUTHORIZATION", "Bearer x"),
            ("OAUTH_CLIENT", "x"),
            ("client_secret", "x"),
            ("HTTPS_PROXY", "http://u:pw@proxy:3128"),
            (
                "PIP_INDEX_URL",
                "https://__token__:pypi-x@upload.pypi.org/simple",
            ),
            ("REDIS_URI", "redis://:onlypw@cache:6379"),
            ("SENTRY_DSN", "https://k:s@o1.ingest.sentry.io/1"),
            ("MYSQL_DSN", "app:pw@tcp(db:3306)/app"),
        ];
        for (k, v) in sensitive {
            assert!(f.is_sensitive_pair(k, v), "{k}={v} must be sensitive");
            assert_eq!(f.filter_value(k, v), Some(OBFUSCATED), "{k}");
        }
        let clear = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/runner"),
            ("GIT_AUTHOR_NAME", "Jane"),
            ("GIT_AUTHOR_EMAIL", "jane@example.com"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("CI_PROJECT_URL", "https://gitlab.com/g/p"),
            (
                "CI_REPOSITORY_URL_USER_ONLY",
                "https://gitlab-ci@gitlab.com/g/p.git",
            ),
            ("DATABASE_URL", "postgres://app@db/app"),
            ("GITHUB_SHA", "8e5e7e5ab8b370d6c329ec480221332ada57f0ab"),
            ("RUNNER_OS", "Linux"),
            ("MYSQL_DSN", "tcp(db:3306)/app"),
        ];
        for (k, v) in clear {
            assert!(!f.is_sensitive_pair(k, v), "{k}={v} must stay in clear");
        }
        // Witness's flags keep their meaning.
        let off = SensitiveEnvFilter::new(&EnvOptions {
            disable_default_sensitive: true,
            ..Default::default()
        })
        .unwrap();
        assert!(!off.is_sensitive_pair("DATABASE_URL", sensitive[5].1));
        assert!(!off.is_sensitive_pair("SSH_PASS", "x"));
        let allowed = SensitiveEnvFilter::new(&EnvOptions {
            allow_keys: vec!["DATABASE_URL".into(), "SSH_PASS".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(!allowed.is_sensitive_pair("DATABASE_URL", sensitive[5].1));
        assert!(!allowed.is_sensitive_pair("SSH_PASS", "x"));
        assert!(allowed.is_sensitive_pair("ssh_pass", "x"));
        let dropping = SensitiveEnvFilter::new(&EnvOptions {
            filter_sensitive: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            dropping.filter_kv_list(&["DATABASE_URL=mysql://u:p@h/d", "A=b"]),
            vec!["A=b"]
        );
    }

    #[test]
    fn url_passwords() {
        assert!(has_url_password("postgres://app:pw@h"));
        assert!(has_url_password("x https://a:b@h/p and more"));
        assert!(has_url_password("http://a@h/ https://u:p@h2"));
        assert!(!has_url_password("postgres://app@h"));
        assert!(!has_url_password("postgres://app:@h"));
        assert!(!has_url_password("https://h/path?u=a:b@c"));
        assert!(!has_url_password("no url here: a:b@c"));
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
