//! Which Docker API request a proxied request is, decided the way the
//! engine's router would decide it (pure; unit-tested).
//!
//! Rules kept, because the request is untrusted and the engine (Go,
//! gorilla/mux) must not see a different request than the one classified:
//! - the path is percent-decoded (mux matches the decoded `URL.Path`) and
//!   cleaned (`//`, `.`, `..`: mux answers an unclean path with a redirect,
//!   so classifying the clean one is conservative); a path that does not
//!   decode is refused;
//! - an optional `/v<digits and dots>` prefix is the API version;
//! - query strings are parsed like Go's `url.ParseQuery`: pairs split on
//!   `&`, a pair holding `;` or a bad escape is skipped (as Go skips it),
//!   keys and values are unescaped (`+` is a space), and `FormValue` takes
//!   the first value of a key.

/// What the proxy does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /containers/create`.
    Create,
    /// `POST /build`; `buildkit` when the first `version` is `2`.
    Build {
        /// BuildKit (`version=2`) rather than the classic builder.
        buildkit: bool,
    },
    /// `POST /containers/<id>/start` for an API version below 1.24, where
    /// the engine still applies a HostConfig sent in the body.
    LegacyStart,
    /// Anything else: forwarded unchanged.
    Other,
}

/// Classifies a request by method, raw path and raw query.
pub fn classify(method: &str, raw_path: &str, query: Option<&str>) -> Result<Route, String> {
    let decoded =
        decode_path(raw_path).ok_or_else(|| format!("the path {raw_path:?} does not decode"))?;
    let clean = cilock_trace::pathname::lexically_normal(&decoded);
    let (version, rest) = split_version(&clean);
    if method != "POST" {
        return Ok(Route::Other);
    }
    if rest == "/containers/create" {
        return Ok(Route::Create);
    }
    if rest == "/build" {
        let buildkit = first_value(query.unwrap_or(""), "version").as_deref() == Some("2");
        return Ok(Route::Build { buildkit });
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() == 4 && parts[1] == "containers" && parts[3] == "start" {
        if let Some(v) = version {
            if version_below(v, (1, 24)) {
                return Ok(Route::LegacyStart);
            }
        }
    }
    Ok(Route::Other)
}

/// Percent-decodes a path as Go's `url.PathUnescape` does (`+` stays).
pub fn decode_path(raw: &str) -> Option<String> {
    unescape(raw, false)
}

fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Go strings may hold any bytes; a lossy conversion can only make a
    // match less likely for bytes that are not UTF-8, which no route name has.
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Splits `/v1.41/rest` into (`Some("1.41")`, `/rest`).
pub fn split_version(p: &str) -> (Option<&str>, &str) {
    let Some(tail) = p.strip_prefix("/v") else {
        return (None, p);
    };
    let end = tail.find('/').unwrap_or(tail.len());
    let v = &tail[..end];
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let rest = &tail[end..];
        (Some(v), if rest.is_empty() { "/" } else { rest })
    } else {
        (None, p)
    }
}

/// `v` < `min` as the engine compares API versions (numeric parts).
pub fn version_below(v: &str, min: (u64, u64)) -> bool {
    let mut it = v.split('.').map(|x| x.parse::<u64>().unwrap_or(0));
    let major = it.next().unwrap_or(0);
    let minor = it.next().unwrap_or(0);
    (major, minor) < min
}

/// One `key=value` pair of a query: its decoded key and value (None when Go
/// would skip the pair), and the raw text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair<'a> {
    /// Decoded key and value; None: Go's parser skips this pair.
    pub decoded: Option<(String, String)>,
    /// The pair as written.
    pub raw: &'a str,
}

/// Parses a raw query like Go's `url.ParseQuery`.
pub fn parse_query(q: &str) -> Vec<Pair<'_>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|raw| {
            let decoded = if raw.contains(';') {
                None
            } else {
                let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
                unescape(k, true).zip(unescape(v, true))
            };
            Pair { decoded, raw }
        })
        .collect()
}

/// Every value of `key`, in order.
pub fn all_values(q: &str, key: &str) -> Vec<String> {
    parse_query(q)
        .into_iter()
        .filter_map(|p| p.decoded)
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

/// The value `FormValue(key)` returns (the first).
pub fn first_value(q: &str, key: &str) -> Option<String> {
    all_values(q, key).into_iter().next()
}

/// The query with every pair of `key` (as Go decodes keys) removed and
/// `key=value` appended: the engine then reads exactly `value`.
pub fn force_value(q: &str, key: &str, value: &str) -> String {
    let mut kept: Vec<&str> = parse_query(q)
        .into_iter()
        .filter(|p| !matches!(&p.decoded, Some((k, _)) if k == key))
        .map(|p| p.raw)
        .collect();
    let pair = format!("{key}={}", escape_query(value));
    kept.push(&pair);
    kept.join("&")
}

/// Escapes a query value (unreserved characters stay).
pub fn escape_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A content type under which Go's `ParseForm` reads form values from the
/// body of a POST (they come before the query's in `FormValue`).
pub fn is_form_content_type(v: &str) -> bool {
    let media = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/x-www-form-urlencoded" || media == "multipart/form-data"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_as_the_engine_matches_them() {
        let c = |m, p, q| classify(m, p, q).unwrap();
        assert_eq!(c("POST", "/v1.41/containers/create", None), Route::Create);
        assert_eq!(
            c("POST", "/containers/create", Some("name=x")),
            Route::Create
        );
        assert_eq!(
            c("POST", "/v1.41//containers/./create", None),
            Route::Create
        );
        assert_eq!(c("POST", "/v1.41/containers%2Fcreate", None), Route::Create);
        assert_eq!(
            c("POST", "/v1.41/x/../containers/create", None),
            Route::Create
        );
        assert_eq!(c("GET", "/v1.41/containers/create", None), Route::Other);
        assert_eq!(c("POST", "/v1.41/containers/createx", None), Route::Other);
        assert_eq!(c("POST", "/vx/containers/create", None), Route::Other);
        assert_eq!(
            c("POST", "/v1.41/build", Some("t=a&version=1")),
            Route::Build { buildkit: false }
        );
        assert_eq!(
            c("POST", "/v1.41/build", Some("version=2&version=1")),
            Route::Build { buildkit: true }
        );
        assert_eq!(
            c("POST", "/build", Some("vers%69on=2")),
            Route::Build { buildkit: true }
        );
        assert_eq!(
            c("POST", "/v1.41/build", None),
            Route::Build { buildkit: false }
        );
        assert_eq!(
            c("POST", "/v1.23/containers/abc/start", None),
            Route::LegacyStart
        );
        assert_eq!(
            c("POST", "/v1.9/containers/abc/start", None),
            Route::LegacyStart
        );
        assert_eq!(c("POST", "/v1.24/containers/abc/start", None), Route::Other);
        assert_eq!(c("POST", "/containers/abc/start", None), Route::Other);
        assert_eq!(
            c("POST", "/v1.41/containers/abc/attach", None),
            Route::Other
        );
        assert!(classify("POST", "/v1.41/containers%2", None).is_err());
    }

    #[test]
    fn queries_parse_like_go() {
        let q = "t=a%3Ab&t=c&cgroupparent=%2Fx&cgroup%70arent=%2Fy;z=1&bad=%zz&+k=v+w";
        assert_eq!(all_values(q, "t"), vec!["a:b", "c"]);
        // The pair holding ';' is skipped by Go, and so here.
        assert_eq!(all_values(q, "cgroupparent"), vec!["/x"]);
        assert_eq!(all_values(q, "bad"), Vec::<String>::new());
        assert_eq!(first_value(q, " k").as_deref(), Some("v w"));
        assert_eq!(first_value("version", "version").as_deref(), Some(""));
    }

    #[test]
    fn a_forced_value_is_the_only_one_the_engine_reads() {
        let q = "t=x&cgroupparent=%2Fother&cgroup%70arent=a&dockerfile=D";
        let f = force_value(q, "cgroupparent", "/cilock.steps/u0.s.1");
        assert_eq!(f, "t=x&dockerfile=D&cgroupparent=%2Fcilock.steps%2Fu0.s.1");
        assert_eq!(all_values(&f, "cgroupparent"), vec!["/cilock.steps/u0.s.1"]);
        assert_eq!(force_value("", "k", "v w"), "k=v%20w");
    }

    #[test]
    fn form_bodies_are_recognised() {
        assert!(is_form_content_type("application/x-www-form-urlencoded"));
        assert!(is_form_content_type("Multipart/Form-Data; boundary=x"));
        assert!(!is_form_content_type("application/x-tar"));
        assert!(!is_form_content_type(""));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_below("1.9", (1, 24)));
        assert!(version_below("1.23", (1, 24)));
        assert!(!version_below("1.24", (1, 24)));
        assert!(!version_below("2.0", (1, 24)));
        assert_eq!(split_version("/v1.41"), (Some("1.41"), "/"));
        assert_eq!(split_version("/version"), (None, "/version"));
    }
}
