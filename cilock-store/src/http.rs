//! The registry client: OCI distribution requests over reqwest (rustls with
//! ring), the registry token flow, and bounded answers.
//!
//! Why reqwest (the client oci-client 0.18 is built on) and not oci-client
//! itself: oci-client reads every answer whole with `bytes()` (manifests,
//! indexes, token answers: a hostile registry could send gigabytes, and
//! every size a remote controls must be bounded here); its manifest PUT
//! returns only the location, not the `OCI-Subject` header that says the
//! registry indexed a referrer; it folds a 404 of the referrers API into
//! its own tag-schema fallback, which cilock must tell apart; a manifest
//! HEAD gives only the digest, not the media type and size a subject
//! descriptor needs; and it has no OAuth2 refresh-token (`identitytoken`)
//! grant. What remains (a blob upload, the token request) is a few
//! requests, written here once with the bounds and the timeout applied.
//!
//! Authentication: a request is sent with the cached `Authorization`; on a
//! 401 the `WWW-Authenticate` challenge is answered once — `Basic` with the
//! Docker config's user and password, `Bearer` by asking the token realm
//! (GET with Basic auth, or a POST `grant_type=refresh_token` for an
//! identity token) for the challenge's scope — and the request repeated.

use std::sync::{Mutex, Once};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

use crate::auth::{Credential, Found};
use crate::digest::truncate;
use crate::{StoreError, StoreUrl};

/// Largest manifest or image index read (referrer manifests, tag indexes,
/// referrers API answers, cosign `.att` manifests).
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Retries of an idempotent request answered with a 5xx.
const MAX_READ_RETRIES: u32 = 4;
/// Largest token-service or error answer read.
const MAX_SMALL_BODY: usize = 1 << 20;

/// OCI image manifest media type.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Every manifest type asked for when reading a manifest by digest or tag.
pub(crate) const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

static RUSTLS_PROVIDER: Once = Once::new();

/// A registry's answer, its body read (bounded).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request body (`Bytes`: a retry after a 401 does not copy the
/// envelope, which can be 256 MiB).
pub(crate) struct Body {
    pub(crate) content_type: &'static str,
    pub(crate) bytes: bytes::Bytes,
}

/// The HTTP side of an opened store.
pub(crate) struct Http {
    client: reqwest::Client,
    /// `https://host[:port]` or `http://…`.
    base: String,
    url: StoreUrl,
    credential: Found,
    authorization: Mutex<Option<HeaderValue>>,
    timeout: Duration,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Http {
    pub(crate) fn new(
        url: &StoreUrl,
        credential: Found,
        timeout: Duration,
    ) -> Result<Http, StoreError> {
        RUSTLS_PROVIDER.call_once(|| {
            // Another part of the process may have installed one already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("cilock/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Registry {
                url: url.to_string(),
                reason: format!("cannot build the HTTP client: {}", chain(&e)),
            })?;
        let scheme = if url.insecure_http { "http" } else { "https" };
        // Docker Hub's API lives on registry-1.docker.io.
        let host = if url.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            url.registry.as_str()
        };
        Ok(Http {
            client,
            base: format!("{scheme}://{host}"),
            url: url.clone(),
            credential,
            authorization: Mutex::new(None),
            timeout,
        })
    }

    /// A registry error about this store.
    pub(crate) fn registry_error(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Registry {
            url: self.url.to_string(),
            reason: reason.into(),
        }
    }

    /// An integrity error about this store.
    pub(crate) fn integrity_error(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Integrity {
            url: self.url.to_string(),
            reason: reason.into(),
        }
    }

    /// `https://host[:port]` or `http://…`.
    pub(crate) fn base_url(&self) -> String {
        self.base.clone()
    }

    /// `/v2/<repo>/<rest>`
    pub(crate) fn repo_path(&self, rest: &str) -> String {
        format!("/v2/{}/{rest}", self.url.repository)
    }

    /// Sends a request to `target` (a path on the registry, or an absolute
    /// URL such as an upload location); answers 401 once; reads at most
    /// `limit` body bytes of a success, the start of an error page (none
    /// for HEAD).
    pub(crate) async fn send(
        &self,
        method: Method,
        target: &str,
        accept: Option<&str>,
        body: Option<&Body>,
        limit: usize,
    ) -> Result<Answer, StoreError> {
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else {
            format!("{}{target}", self.base)
        };
        let what = format!("{method} {}", path_of(&url));
        let mut answered_challenge = false;
        let mut server_errors = 0u32;
        loop {
            let mut req = self.client.request(method.clone(), &url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(b) = body {
                req = req
                    .header(CONTENT_TYPE, b.content_type)
                    .body(b.bytes.clone());
            }
            let cached = self.cached_authorization();
            if let Some(h) = &cached {
                req = req.header(AUTHORIZATION, h.clone());
            }
            let mut resp = req
                .send()
                .await
                .map_err(|e| self.registry_error(format!("{what}: {}", self.describe(&e))))?;
            let status = resp.status();
            // A read or a tag write racing another tag write can get a
            // transient 5xx (distribution's filesystem driver reads a
            // half-written link): idempotent requests (GET, HEAD, a manifest
            // PUT) are retried a few times after a short random pause.
            let idempotent = method == Method::GET
                || method == Method::HEAD
                || (method == Method::PUT && url.contains("/manifests/"));
            if status.is_server_error() && idempotent && server_errors < MAX_READ_RETRIES {
                server_errors += 1;
                tracing::debug!(%what, %status, "retrying after a server error");
                tokio::time::sleep(Duration::from_millis(
                    50 + crate::tagindex::jitter(100 * u64::from(server_errors)),
                ))
                .await;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !answered_challenge {
                answered_challenge = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let header = self.answer_challenge(&method, challenge.as_deref()).await?;
                *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(header);
                continue;
            }
            let headers = resp.headers().clone();
            let mut body = Vec::new();
            if method != Method::HEAD {
                // An error page is read (its start) whatever the caller
                // expects of a success: a PUT or POST expects no body, but
                // its error JSON says why the registry refused.
                let limit = if status.is_success() {
                    limit
                } else {
                    MAX_SMALL_BODY
                };
                if let Some(len) = resp.content_length() {
                    if len > limit as u64 && status.is_success() {
                        return Err(self.integrity_error(format!(
                            "{what}: the answer is {len} bytes, more than the {limit} allowed"
                        )));
                    }
                }
                let over;
                (body, over) = read_bounded(&mut resp, limit).await.map_err(|e| {
                    self.registry_error(format!(
                        "{what}: reading the answer: {}",
                        self.describe(&e)
                    ))
                })?;
                // An error page over the limit: its start is enough to quote.
                if over && status.is_success() {
                    return Err(self.integrity_error(format!(
                        "{what}: the answer is more than the {limit} bytes allowed"
                    )));
                }
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(StoreError::Credentials {
                    registry: self.url.registry.clone(),
                    reason: format!(
                        "{what}: HTTP {status}{}: {}",
                        self.credential_note(),
                        error_excerpt(&body)
                    ),
                });
            }
            return Ok(Answer {
                status,
                headers,
                body,
            });
        }
    }

    fn cached_authorization(&self) -> Option<HeaderValue> {
        self.authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// " with the credentials from X" or " (no credentials for HOST in CONFIG)".
    fn credential_note(&self) -> String {
        match self.credential.credential {
            Credential::Anonymous => format!(
                " (no credentials for {} in {})",
                self.url.registry, self.credential.source
            ),
            _ => format!(" with the credentials from {}", self.credential.source),
        }
    }

    async fn answer_challenge(
        &self,
        method: &Method,
        challenge: Option<&str>,
    ) -> Result<HeaderValue, StoreError> {
        let cred_err = |reason: String| StoreError::Credentials {
            registry: self.url.registry.clone(),
            reason,
        };
        let challenge = challenge.ok_or_else(|| {
            cred_err("the registry answered HTTP 401 without a WWW-Authenticate challenge".into())
        })?;
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match &self.credential.credential {
                Credential::Basic { user, password } => Ok(basic_header(user, password)),
                Credential::Anonymous => Err(cred_err(format!(
                    "the registry requires authentication (HTTP 401, Basic) and there are no credentials for {} in {}",
                    self.url.registry, self.credential.source
                ))),
                Credential::IdentityToken(_) => Err(cred_err(format!(
                    "the registry asks for Basic authentication, but {} holds an identity token",
                    self.credential.source
                ))),
            },
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("realm"))
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| cred_err("the Bearer challenge has no realm".into()))?;
                let service = params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("service"))
                    .map(|(_, v)| v.clone());
                let scope = params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("scope"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| {
                        let actions = if *method == Method::GET || *method == Method::HEAD {
                            "pull"
                        } else {
                            "pull,push"
                        };
                        format!("repository:{}:{actions}", self.url.repository)
                    });
                let token = self.fetch_token(&realm, service.as_deref(), &scope).await?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| cred_err("the token service answered a token that is not a header value".into()))
            }
            other => Err(cred_err(format!(
                "unsupported authentication scheme {:?}",
                truncate(other, 40)
            ))),
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, StoreError> {
        let cred_err = |reason: String| StoreError::Credentials {
            registry: self.url.registry.clone(),
            reason,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| cred_err(format!("token realm {:?}: {e}", truncate(realm, 200))))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(cred_err(format!(
                "token realm {:?} is not HTTP(S)",
                truncate(realm, 200)
            )));
        }
        // An HTTPS registry must not send its users' credentials to a token
        // server in clear text (Docker does; cilock refuses the downgrade).
        let secret = !matches!(self.credential.credential, Credential::Anonymous);
        if secret && !self.url.insecure_http && url.scheme() == "http" {
            return Err(cred_err(format!(
                "the registry (HTTPS) sends credentials to the plain-HTTP token realm {:?}: refused",
                truncate(realm, 200)
            )));
        }
        let req = match &self.credential.credential {
            Credential::IdentityToken(refresh) => {
                let mut form = Url::parse("http://form.invalid/").expect("static URL");
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", refresh);
                    q.append_pair("client_id", "cilock");
                    q.append_pair("scope", scope);
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                }
                let body = form.query().unwrap_or_default().to_string();
                self.client
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
            }
            cred => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("scope", scope);
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                }
                let mut r = self.client.get(url.clone());
                if let Credential::Basic { user, password } = cred {
                    r = r.header(AUTHORIZATION, basic_header(user, password));
                }
                r
            }
        };
        let what = format!("token request to {}", path_of(url.as_str()));
        let mut resp = req
            .send()
            .await
            .map_err(|e| cred_err(format!("{what}: {}", self.describe(&e))))?;
        let status = resp.status();
        let (body, over) = read_bounded(&mut resp, MAX_SMALL_BODY)
            .await
            .map_err(|e| cred_err(format!("{what}: {}", self.describe(&e))))?;
        if over {
            return Err(cred_err(format!("{what}: the answer is larger than 1 MiB")));
        }
        if !status.is_success() {
            return Err(cred_err(format!(
                "{what}: HTTP {status}{}: {}",
                self.credential_note(),
                error_excerpt(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| cred_err(format!("{what}: the answer is not a token JSON: {e}")))?;
        t.token
            .filter(|t| !t.is_empty())
            .or(t.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| cred_err(format!("{what}: the answer holds no token")))
    }

    /// A reqwest error with its causes, naming timeouts and refused connections.
    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!(
                "no answer within {} s ({})",
                self.timeout.as_secs_f64(),
                chain(e)
            )
        } else if e.is_connect() {
            format!("cannot connect: {}", chain(e))
        } else {
            chain(e)
        }
    }

    /// Turns a non-success answer into a registry error.
    pub(crate) fn status_error(&self, what: &str, a: &Answer) -> StoreError {
        self.registry_error(format!(
            "{what}: HTTP {}: {}",
            a.status,
            error_excerpt(&a.body)
        ))
    }
}

/// The body of `resp`, at most `limit` bytes: reading stops at the first
/// chunk that would pass the limit, and `true` says the answer was longer.
async fn read_bounded(
    resp: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > limit {
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

fn basic_header(user: &str, password: &str) -> HeaderValue {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut h = HeaderValue::from_str(&format!("Basic {b}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    h.set_sensitive(true);
    h
}

/// The path of a URL (messages name paths, never query strings that may
/// carry upload state or tokens).
fn path_of(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => u.path().to_string(),
        Err(_) => truncate(url, 100),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// The registry's error JSON (`{"errors":[{"code","message"}]}`) or the
/// start of the body, printable.
pub(crate) fn error_excerpt(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .take(3)
            .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
            .collect();
        if !parts.is_empty() {
            return truncate(&parts.join("; "), 300);
        }
    }
    let text: String = String::from_utf8_lossy(&body[..body.len().min(300)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        "(empty answer)".to_string()
    } else {
        truncate(text, 200)
    }
}

/// `Scheme k="v", k2=v2` → (scheme, [(k, v)]).
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_string();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                // Byte-wise on ASCII; non-ASCII copied through char boundaries.
                let ch = rest[i..].chars().next().unwrap_or(' ');
                val.push(ch);
                i += ch.len_utf8();
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[vs..i].trim().to_string();
        }
        if !key.is_empty() {
            params.push((key, val));
        }
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_go_to_a_plain_http_realm_of_an_https_registry() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let basic = || Found {
            credential: Credential::Basic {
                user: "u".into(),
                password: "secret-pw".into(),
            },
            source: "test".into(),
        };
        let url: StoreUrl = "oci://registry.example/a/b".parse().unwrap();
        let h = Http::new(&url, basic(), Duration::from_secs(1)).unwrap();
        let e = rt
            .block_on(h.fetch_token("http://127.0.0.1:9/token", None, "repository:a/b:pull"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plain-HTTP token realm") && e.contains("refused"),
            "{e}"
        );
        assert!(!e.contains("secret-pw"), "{e}");
        // A plain-HTTP registry (loopback/dev) may use a plain-HTTP realm:
        // the request is made (and fails here: nothing listens on port 9).
        let url: StoreUrl = "oci+http://127.0.0.1:9/a/b".parse().unwrap();
        let h = Http::new(&url, basic(), Duration::from_secs(1)).unwrap();
        let e = rt
            .block_on(h.fetch_token("http://127.0.0.1:9/token", None, "repository:a/b:pull"))
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("plain-HTTP token realm") && e.contains("cannot connect"),
            "{e}"
        );
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                (
                    "realm".to_string(),
                    "https://auth.example/token".to_string()
                ),
                ("service".to_string(), "registry.example".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p, vec![("realm".to_string(), "Registry Realm".to_string())]);
        let (s, p) = parse_challenge("Basic");
        assert_eq!((s.as_str(), p.len()), ("Basic", 0));
        let (_, p) = parse_challenge(r#"Bearer realm=x, error="in\"valid""#);
        assert_eq!(
            p,
            vec![
                ("realm".to_string(), "x".to_string()),
                ("error".to_string(), "in\"valid".to_string())
            ]
        );
    }

    #[test]
    fn excerpts() {
        assert_eq!(
            error_excerpt(
                br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}"#
            ),
            "MANIFEST_INVALID manifest invalid"
        );
        assert_eq!(error_excerpt(b""), "(empty answer)");
        assert_eq!(error_excerpt(b"404 page not found\n"), "404 page not found");
    }
}
