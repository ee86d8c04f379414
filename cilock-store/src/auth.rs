//! Registry credentials from a Docker config (`config.json`), as `docker`,
//! `skopeo` and `oras` read it: `credHelpers[host]`, else `auths[host]`
//! (`auth` = base64 `user:password`, or `username`/`password`, or
//! `identitytoken`), else `credsStore`; anonymous when nothing matches.
//!
//! Not the `docker_credential` crate: it reads only `$DOCKER_CONFIG` /
//! `~/.docker` (the daemon must name its own directory), and runs helpers
//! without a timeout or an output bound. Helpers here get the registry host
//! on stdin, at most [`HELPER_TIMEOUT`] and [`MAX_HELPER_OUTPUT`] bytes.
//!
//! Secrets never appear in errors, logs or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::StoreError;

/// Largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest answer of a credential helper.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;
/// Longest a credential helper may run.
pub(crate) const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials for one registry.
#[derive(Clone, Default)]
pub(crate) enum Credential {
    /// No credentials: anonymous requests.
    #[default]
    Anonymous,
    /// User name and password (Basic auth, or the token service's Basic auth).
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`, helper user `<token>`).
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { user, .. } => write!(f, "Basic({user:?}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Where credentials came from, for messages ("…/config.json auths[…]",
/// "docker-credential-pass"; for anonymous, the config that was read).
#[derive(Clone, Debug, Default)]
pub(crate) struct Found {
    pub(crate) credential: Credential,
    pub(crate) source: String,
}

#[derive(Deserialize, Default)]
struct Config {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The Docker config directory: `explicit`, else `$DOCKER_CONFIG`, else
/// `$HOME/.docker`.
pub(crate) fn config_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = explicit {
        return Some(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker"))
}

/// The key forms a registry may have in `auths`/`credHelpers`: `host`,
/// `https://host`, `http://host`, with a path (`https://host/v1/`); Docker
/// Hub's historical key for `docker.io`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    let k = k.to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => k,
    }
}

fn lookup<'a, V>(map: &'a BTreeMap<String, V>, registry: &str) -> Option<(&'a String, &'a V)> {
    let want = normalize_key(registry);
    // An exact key wins over a normalised one.
    map.get_key_value(registry)
        .or_else(|| map.iter().find(|(k, _)| normalize_key(k) == want))
}

/// The name a helper is asked for: Docker Hub's is its historical URL.
fn helper_server(registry: &str) -> String {
    if normalize_key(registry) == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// Credentials for `registry` (`HOST[:PORT]`) from the Docker config in `dir`.
pub(crate) fn credentials(dir: Option<&Path>, registry: &str) -> Result<Found, StoreError> {
    let cred_err = |reason: String| StoreError::Credentials {
        registry: registry.to_string(),
        reason,
    };
    let Some(dir) = dir else {
        return Ok(anonymous(
            "no Docker config directory ($DOCKER_CONFIG and $HOME unset)".into(),
        ));
    };
    let path = dir.join("config.json");
    let bytes = match cilock_evidence::limits::read_file(
        &path,
        MAX_CONFIG_BYTES,
        "Docker config",
        cilock_evidence::limits::json_object_start,
    ) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(anonymous(format!("{} (absent)", path.display())))
        }
        Err(e) => return Err(cred_err(format!("{}: {e}", path.display()))),
    };
    let config: Config = serde_json::from_slice(&bytes)
        .map_err(|e| cred_err(format!("{}: not a Docker config: {e}", path.display())))?;

    if let Some((_, helper)) = lookup(&config.cred_helpers, registry) {
        return from_helper(helper, registry).map_err(cred_err);
    }
    if let Some((key, entry)) = lookup(&config.auths, registry) {
        let source = format!("{} auths[{key:?}]", path.display());
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Found {
                credential: Credential::IdentityToken(token.clone()),
                source,
            });
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| cred_err(format!("{source}: \"auth\" is not base64")))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| cred_err(format!("{source}: \"auth\" is not UTF-8")))?;
            let (user, password) = text.split_once(':').ok_or_else(|| {
                cred_err(format!("{source}: \"auth\" is not base64 of user:password"))
            })?;
            return Ok(Found {
                credential: Credential::Basic {
                    user: user.to_string(),
                    password: password.to_string(),
                },
                source,
            });
        }
        if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Found {
                credential: Credential::Basic {
                    user: user.clone(),
                    password: password.clone(),
                },
                source,
            });
        }
        // An empty entry (`docker login` with a credsStore leaves these):
        // fall through to the store.
    }
    if let Some(store) = config.creds_store.as_ref().filter(|s| !s.is_empty()) {
        return from_helper(store, registry).map_err(cred_err);
    }
    Ok(anonymous(path.display().to_string()))
}

/// No credentials; `source` says which config was read.
fn anonymous(source: String) -> Found {
    Found {
        credential: Credential::Anonymous,
        source,
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the server on stdin.
fn from_helper(helper: &str, registry: &str) -> Result<Found, String> {
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "credential helper name {helper:?} is not a plain name"
        ));
    }
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its stdin is judged by its answer.
        let _ = stdin.write_all(helper_server(registry).as_bytes());
    }
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    // The output is read on a thread and handed over through a channel: a
    // helper that exits while a process it started keeps the pipe open must
    // not hold this (possibly the root daemon's) push beyond the timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = (&mut stdout)
            .take(MAX_HELPER_OUTPUT + 1)
            .read_to_end(&mut out);
        let _ = tx.send(r.map(|_| out));
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let late = || {
        format!(
            "{program} did not answer within {} s",
            HELPER_TIMEOUT.as_secs()
        )
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(late());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    let out = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(r) => r.map_err(|e| format!("reading {program}'s answer: {e}"))?,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Err(late()),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(format!("reading {program}'s answer"))
        }
    };
    if out.len() as u64 > MAX_HELPER_OUTPUT {
        return Err(format!(
            "{program}'s answer is larger than {} MiB",
            MAX_HELPER_OUTPUT >> 20
        ));
    }
    if !status.success() {
        // "credentials not found in native keychain": anonymous, as docker does.
        if String::from_utf8_lossy(&out).contains("credentials not found") {
            return Ok(anonymous(format!("{program} (no credentials stored)")));
        }
        return Err(format!("{program} get failed ({status})"));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out)
        .map_err(|_| format!("{program} answered something that is not its JSON"))?;
    let credential = if answer.username == "<token>" {
        Credential::IdentityToken(answer.secret)
    } else {
        Credential::Basic {
            user: answer.username,
            password: answer.secret,
        }
    };
    Ok(Found {
        credential,
        source: program,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join("config.json"), text).unwrap();
    }

    #[test]
    fn auths_forms() {
        let d = tempfile::tempdir().unwrap();
        // "alice:s3cr:et" in base64: the password may hold ':'.
        write(
            d.path(),
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"YWxpY2U6czNjcjpldA=="},
                "other.example":{"username":"bob","password":"pw"},
                "tok.example":{"identitytoken":"refresh"},
                "https://index.docker.io/v1/":{"auth":"ZDpw"}}}"#,
        );
        let f = credentials(Some(d.path()), "reg.example:5000").unwrap();
        match f.credential {
            Credential::Basic { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("alice", "s3cr:et"))
            }
            other => panic!("{other:?}"),
        }
        assert!(f
            .source
            .ends_with("auths[\"https://reg.example:5000/v1/\"]"));
        assert!(matches!(
            credentials(Some(d.path()), "other.example").unwrap().credential,
            Credential::Basic { ref user, .. } if user == "bob"
        ));
        assert!(matches!(
            credentials(Some(d.path()), "tok.example").unwrap().credential,
            Credential::IdentityToken(ref t) if t == "refresh"
        ));
        assert!(matches!(
            credentials(Some(d.path()), "docker.io").unwrap().credential,
            Credential::Basic { ref user, .. } if user == "d"
        ));
        assert!(matches!(
            credentials(Some(d.path()), "reg.example")
                .unwrap()
                .credential,
            Credential::Anonymous
        ));
        // Debug never shows the secret.
        let dbg = format!(
            "{:?}",
            credentials(Some(d.path()), "reg.example:5000").unwrap()
        );
        assert!(!dbg.contains("s3cr"), "{dbg}");
    }

    #[test]
    fn missing_and_bad_configs() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            credentials(Some(d.path()), "h").unwrap().credential,
            Credential::Anonymous
        ));
        write(d.path(), "{not json");
        let e = credentials(Some(d.path()), "h").unwrap_err().to_string();
        assert!(e.contains("not a Docker config"), "{e}");
        write(d.path(), &" ".repeat(MAX_CONFIG_BYTES as usize + 1));
        let e = credentials(Some(d.path()), "h").unwrap_err().to_string();
        assert!(
            e.contains("more than the 4 MiB limit for a Docker config"),
            "{e}"
        );
        write(d.path(), r#"{"auths":{"h":{"auth":"%%%"}}}"#);
        let e = credentials(Some(d.path()), "h").unwrap_err().to_string();
        assert!(e.contains("\"auth\" is not base64"), "{e}");
        write(d.path(), r#"{"auths":{"h":{"auth":"bm9jb2xvbg=="}}}"#);
        let e = credentials(Some(d.path()), "h").unwrap_err().to_string();
        assert!(e.contains("not base64 of user:password"), "{e}");
        write(d.path(), r#"{"credHelpers":{"h":"../evil"}}"#);
        let e = credentials(Some(d.path()), "h").unwrap_err().to_string();
        assert!(e.contains("not a plain name"), "{e}");
        write(d.path(), r#"{"credsStore":"cilock-test-none"}"#);
        let e = credentials(Some(d.path()), "h").unwrap_err().to_string();
        assert!(
            e.contains("running docker-credential-cilock-test-none"),
            "{e}"
        );
    }

    #[test]
    fn helper_answers() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("docker-credential-cilocktest");
        // Echoes the server it was asked for as the user name.
        std::fs::write(
            &bin,
            "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"%s\",\"Secret\":\"pw\"}' \"$server\" \"$server\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = with_path(d.path(), || {
            write(d.path(), r#"{"credHelpers":{"reg.example":"cilocktest"}}"#);
            credentials(Some(d.path()), "reg.example").unwrap()
        });
        match found.credential {
            Credential::Basic { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("reg.example", "pw"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(found.source, "docker-credential-cilocktest");
    }

    fn with_path<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
        // Only this test touches PATH; prepend the helper's directory.
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&old));
        // The other tests only spawn helpers that do not exist anywhere.
        std::env::set_var("PATH", std::env::join_paths(paths).unwrap());
        let r = f();
        std::env::set_var("PATH", old);
        r
    }
}
