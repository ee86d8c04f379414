//! Parsing of store URLs: `oci://HOST[:PORT]/REPO` (HTTPS) and
//! `oci+http://HOST[:PORT]/REPO` (plain HTTP).
//!
//! The host is a DNS name, an IPv4 address or a bracketed IPv6 address,
//! with an optional port (1–65535). The repository follows the OCI
//! distribution grammar: path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
//! separated by `/`, at most 255 characters. A URL names a repository:
//! tags (`:tag`), digests (`@sha256:…`), queries, fragments and userinfo
//! are refused (credentials come from the Docker config, never the URL).

use crate::StoreError;

/// Longest repository name distribution accepts.
const MAX_REPOSITORY: usize = 255;

fn err(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Url {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Parses a store URL into (insecure_http, registry, repository).
pub(crate) fn parse(s: &str) -> Result<(bool, String, String), StoreError> {
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        err(
            s,
            "expected oci://HOST[:PORT]/REPO or oci+http://HOST[:PORT]/REPO",
        )
    })?;
    let insecure_http = match scheme {
        "oci" => false,
        "oci+http" => true,
        other => {
            return Err(err(
                s,
                format!(
                    "unknown scheme {other:?}: expected oci:// (HTTPS) or oci+http:// (plain HTTP)"
                ),
            ))
        }
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(err(s, "a store URL has no query or fragment"));
    }
    if rest.contains('@') {
        return Err(err(
            s,
            "a store URL has no userinfo or digest: credentials come from the Docker config, and the URL names a repository",
        ));
    }
    let (host, repo) = rest
        .split_once('/')
        .ok_or_else(|| err(s, "missing repository: expected HOST[:PORT]/REPO"))?;
    check_host(host).map_err(|r| err(s, r))?;
    check_repository(repo).map_err(|r| err(s, r))?;
    Ok((insecure_http, host.to_string(), repo.to_string()))
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("missing registry host".into());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("registry host {host:?}: unclosed '['"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry host {host:?}: not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("registry host {host:?}: expected ':PORT' after ']'"))?,
            ),
        };
        (None, port)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let labels_ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !labels_ok {
            return Err(format!(
                "registry host {name:?} is not a host name or IP address"
            ));
        }
    }
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
        if !ok {
            return Err(format!("port {p:?} is not a number from 1 to 65535"));
        }
    }
    Ok(())
}

/// Checks a repository name against the OCI distribution grammar.
pub(crate) fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("missing repository: expected HOST[:PORT]/REPO".into());
    }
    if repo.len() > MAX_REPOSITORY {
        return Err(format!(
            "repository is {} characters long, at most {MAX_REPOSITORY} are allowed",
            repo.len()
        ));
    }
    if repo.contains(':') {
        return Err(format!(
            "repository {repo:?} has a ':': a store URL names a repository, not a tag"
        ));
    }
    for comp in repo.split('/') {
        if !path_component_ok(comp) {
            return Err(format!(
                "repository {repo:?}: component {comp:?} is not lowercase letters and digits separated by '.', '_', '__' or dashes (OCI distribution grammar)"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (bool, String, String) {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str, needle: &str) {
        match parse(s) {
            Ok(v) => panic!("{s} parsed as {v:?}"),
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains(needle), "{s}: {m:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn good_urls() {
        assert_eq!(
            ok("oci://ghcr.io/acme/evidence"),
            (false, "ghcr.io".into(), "acme/evidence".into())
        );
        assert_eq!(
            ok("oci+http://127.0.0.1:5000/a/b-c/d__e.f"),
            (true, "127.0.0.1:5000".into(), "a/b-c/d__e.f".into())
        );
        assert_eq!(
            ok("oci://[::1]:5000/r"),
            (false, "[::1]:5000".into(), "r".into())
        );
        assert_eq!(
            ok("oci://Registry.Example-1.com/x--y"),
            (false, "Registry.Example-1.com".into(), "x--y".into())
        );
    }

    #[test]
    fn bad_urls() {
        bad("https://ghcr.io/a", "unknown scheme \"https\"");
        bad("ghcr.io/a", "expected oci://");
        bad("oci://ghcr.io", "missing repository");
        bad("oci://ghcr.io/", "missing repository");
        bad("oci://ghcr.io/a/", "component \"\"");
        bad("oci://ghcr.io//a", "component \"\"");
        bad("oci://ghcr.io/Acme", "component \"Acme\"");
        bad("oci://ghcr.io/a___b", "component \"a___b\"");
        bad("oci://ghcr.io/a._b", "component");
        bad("oci://ghcr.io/-a", "component");
        bad("oci://ghcr.io/a:latest", "not a tag");
        bad("oci://ghcr.io/a@sha256:00", "no userinfo or digest");
        bad("oci://user:pw@ghcr.io/a", "no userinfo");
        bad("oci://ghcr.io/a?x=1", "no query");
        bad("oci://ghcr.io/a#f", "no query or fragment");
        bad("oci://gh_cr.io/a", "not a host name");
        bad("oci://-x.io/a", "not a host name");
        bad("oci://:5000/a", "not a host name");
        bad("oci://h:0/a", "port \"0\"");
        bad("oci://h:65536/a", "port \"65536\"");
        bad("oci://h:/a", "port \"\"");
        bad("oci://h:x/a", "port \"x\"");
        bad("oci://[::1/a", "unclosed");
        bad("oci://[zz]/a", "not an IPv6");
        bad(&format!("oci://h/{}", "a".repeat(256)), "at most 255");
        bad("", "expected oci://");
    }
}
