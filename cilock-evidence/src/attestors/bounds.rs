//! Hard upper bounds on every attestor option a job can set.
//!
//! Attestor options travel from the client (any CI job) to the daemon, so
//! each one that sets a cost (decode depth, file sizes, counts of globs and
//! names) has a fixed ceiling here that no client can raise.
//! [`check_options`] rejects an out-of-range option with a message naming
//! the option and its limit; [`super::lifecycle::Lifecycle::new`] calls it
//! first.

use globset::Glob;

use super::lifecycle::AttestorOptions;
use super::AttestError;

/// Largest `secretscan.max_decode_layers`. Also the hard cap the scanner
/// applies whatever it is given.
pub const MAX_DECODE_LAYERS: usize = 8;
/// Largest `secretscan.max_file_size_mb`.
pub const MAX_FILE_SIZE_MB: u64 = 256;
/// Most globs in each glob list.
pub const MAX_GLOBS: usize = 64;
/// Longest glob, in bytes.
pub const MAX_GLOB_BYTES: usize = 4096;
/// Most hash names.
pub const MAX_HASHES: usize = 4;
/// Longest hash name entry, in bytes.
pub const MAX_HASH_NAME_BYTES: usize = 64;
/// Most entries in each environment option list.
pub const MAX_ENV_ENTRIES: usize = 1024;
/// Longest entry of an environment option list, in bytes.
pub const MAX_ENV_ENTRY_BYTES: usize = 4096;
/// Longest variable name (token variables), in bytes.
pub const MAX_VAR_NAME_BYTES: usize = 256;
/// Longest path option, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest action reference, in bytes.
pub const MAX_ACTION_REF_BYTES: usize = 1024;

fn bad(option: &str, msg: impl std::fmt::Display) -> AttestError {
    AttestError::Invalid(format!("attestor option {option}: {msg}"))
}

fn check_globs(option: &str, globs: &[String]) -> Result<(), AttestError> {
    if globs.len() > MAX_GLOBS {
        return Err(bad(
            option,
            format!("{} globs given; the limit is {MAX_GLOBS}", globs.len()),
        ));
    }
    for (i, g) in globs.iter().enumerate() {
        if g.len() > MAX_GLOB_BYTES {
            return Err(bad(
                option,
                format!(
                    "glob #{} is {} bytes long; the limit is {MAX_GLOB_BYTES} bytes",
                    i + 1,
                    g.len()
                ),
            ));
        }
        if g.contains('\0') {
            return Err(bad(option, format!("glob #{} contains a NUL byte", i + 1)));
        }
        if !g.is_empty() {
            Glob::new(g).map_err(|e| bad(option, format!("invalid glob {g:?}: {e}")))?;
        }
    }
    Ok(())
}

fn check_list(option: &str, list: &[String], max_bytes: usize) -> Result<(), AttestError> {
    if list.len() > MAX_ENV_ENTRIES {
        return Err(bad(
            option,
            format!(
                "{} entries given; the limit is {MAX_ENV_ENTRIES}",
                list.len()
            ),
        ));
    }
    for (i, s) in list.iter().enumerate() {
        if s.len() > max_bytes {
            return Err(bad(
                option,
                format!(
                    "entry #{} is {} bytes long; the limit is {max_bytes} bytes",
                    i + 1,
                    s.len()
                ),
            ));
        }
        if s.contains('\0') {
            return Err(bad(option, format!("entry #{} contains a NUL byte", i + 1)));
        }
    }
    Ok(())
}

/// True for a POSIX shell variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_var_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c == b'_' || c.is_ascii_alphabetic())
        && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}

fn check_var_name(option: &str, v: &Option<String>) -> Result<(), AttestError> {
    let Some(v) = v else { return Ok(()) };
    if v.len() > MAX_VAR_NAME_BYTES {
        return Err(bad(
            option,
            format!(
                "{} bytes long; the limit is {MAX_VAR_NAME_BYTES} bytes",
                v.len()
            ),
        ));
    }
    if !v.is_empty() && !is_var_name(v) {
        return Err(bad(
            option,
            format!("{v:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
        ));
    }
    Ok(())
}

/// Rejects options beyond the hard bounds of this module.
pub fn check_options(opts: &AttestorOptions) -> Result<(), AttestError> {
    let ss = &opts.secretscan;
    if ss.max_decode_layers > MAX_DECODE_LAYERS {
        return Err(bad(
            "secretscan.max_decode_layers",
            format!(
                "{} is above the limit of {MAX_DECODE_LAYERS}",
                ss.max_decode_layers
            ),
        ));
    }
    if ss.max_file_size_mb > MAX_FILE_SIZE_MB {
        return Err(bad(
            "secretscan.max_file_size_mb",
            format!(
                "{} is above the limit of {MAX_FILE_SIZE_MB}",
                ss.max_file_size_mb
            ),
        ));
    }
    check_globs("material_include_globs", &opts.material_include_globs)?;
    check_globs("material_exclude_globs", &opts.material_exclude_globs)?;
    check_globs("product_include_globs", &opts.product_include_globs)?;
    check_globs("product_exclude_globs", &opts.product_exclude_globs)?;

    if opts.hashes.len() > MAX_HASHES {
        return Err(bad(
            "hashes",
            format!(
                "{} entries given; the limit is {MAX_HASHES}",
                opts.hashes.len()
            ),
        ));
    }
    if let Some(h) = opts.hashes.iter().find(|h| h.len() > MAX_HASH_NAME_BYTES) {
        return Err(bad(
            "hashes",
            format!(
                "an entry is {} bytes long; the limit is {MAX_HASH_NAME_BYTES} bytes",
                h.len()
            ),
        ));
    }
    let names = opts
        .hashes
        .iter()
        .flat_map(|h| h.split(','))
        .filter(|h| !h.trim().is_empty())
        .count();
    if names > MAX_HASHES {
        return Err(bad(
            "hashes",
            format!("{names} hash names given; the limit is {MAX_HASHES}"),
        ));
    }

    check_list(
        "env.add_sensitive_keys",
        &opts.env.add_sensitive_keys,
        MAX_ENV_ENTRY_BYTES,
    )?;
    check_list("env.allow_keys", &opts.env.allow_keys, MAX_ENV_ENTRY_BYTES)?;

    check_var_name("github_token_env", &opts.github_token_env)?;
    check_var_name("gitlab_token_env", &opts.gitlab_token_env)?;

    if let Some(r) = &opts.github_action_ref {
        if r.len() > MAX_ACTION_REF_BYTES {
            return Err(bad(
                "github_action_ref",
                format!(
                    "{} bytes long; the limit is {MAX_ACTION_REF_BYTES} bytes",
                    r.len()
                ),
            ));
        }
        if r.chars().any(char::is_control) {
            return Err(bad("github_action_ref", "contains control characters"));
        }
    }
    if let Some(d) = &opts.github_action_dir {
        let len = d.as_os_str().len();
        if len > MAX_PATH_BYTES {
            return Err(bad(
                "github_action_dir",
                format!("{len} bytes long; the limit is {MAX_PATH_BYTES} bytes"),
            ));
        }
        if !d.as_os_str().is_empty() && !d.is_absolute() {
            return Err(bad(
                "github_action_dir",
                format!("{} is not an absolute path", d.display()),
            ));
        }
        if d.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(bad("github_action_dir", "contains a NUL byte"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn err(o: AttestorOptions) -> String {
        check_options(&o).unwrap_err().to_string()
    }

    #[test]
    fn defaults_pass() {
        check_options(&AttestorOptions::default()).unwrap();
    }

    #[test]
    fn each_bound_is_enforced_with_a_clear_message() {
        let mut o = AttestorOptions::default();
        o.secretscan.max_decode_layers = 100_000;
        let e = err(o);
        assert!(
            e.contains("secretscan.max_decode_layers") && e.contains("limit of 8"),
            "{e}"
        );
        let mut o = AttestorOptions::default();
        o.secretscan.max_decode_layers = MAX_DECODE_LAYERS;
        check_options(&o).unwrap();

        let mut o = AttestorOptions::default();
        o.secretscan.max_file_size_mb = u64::MAX;
        assert!(err(o).contains("secretscan.max_file_size_mb"));

        let o = AttestorOptions {
            product_exclude_globs: vec!["*.log".into(); 65],
            ..Default::default()
        };
        assert!(err(o).contains("product_exclude_globs: 65 globs given; the limit is 64"));
        let o = AttestorOptions {
            material_include_globs: vec!["a".repeat(4097)],
            ..Default::default()
        };
        assert!(err(o).contains("material_include_globs: glob #1 is 4097 bytes"));
        let o = AttestorOptions {
            material_exclude_globs: vec!["[".into()],
            ..Default::default()
        };
        assert!(err(o).contains("material_exclude_globs: invalid glob"));

        let o = AttestorOptions {
            hashes: vec!["sha256,sha1,gitoid:sha1,gitoid:sha256,sha256".into()],
            ..Default::default()
        };
        assert!(err(o).contains("hashes: 5 hash names"));
        let o = AttestorOptions {
            hashes: vec![String::new(); 5],
            ..Default::default()
        };
        assert!(err(o).contains("hashes: 5 entries"));

        let mut o = AttestorOptions::default();
        o.env.add_sensitive_keys = vec!["X".into(); 1025];
        assert!(err(o).contains("env.add_sensitive_keys: 1025 entries"));
        let mut o = AttestorOptions::default();
        o.env.allow_keys = vec!["X".repeat(5000)];
        assert!(err(o).contains("env.allow_keys: entry #1 is 5000 bytes"));

        let o = AttestorOptions {
            github_token_env: Some("A-B".into()),
            ..Default::default()
        };
        assert!(err(o).contains("github_token_env"));
        let o = AttestorOptions {
            gitlab_token_env: Some("A".repeat(257)),
            ..Default::default()
        };
        assert!(err(o).contains("gitlab_token_env: 257 bytes"));
        let o = AttestorOptions {
            gitlab_token_env: Some("CI_JOB_JWT_V2".into()),
            github_token_env: Some("_tok1".into()),
            ..Default::default()
        };
        check_options(&o).unwrap();

        let o = AttestorOptions {
            github_action_dir: Some(PathBuf::from("rel/dir")),
            ..Default::default()
        };
        assert!(err(o).contains("github_action_dir: rel/dir is not an absolute path"));
        let o = AttestorOptions {
            github_action_dir: Some(PathBuf::from(format!("/{}", "a".repeat(4096)))),
            ..Default::default()
        };
        assert!(err(o).contains("github_action_dir: 4097 bytes"));
        let o = AttestorOptions {
            github_action_ref: Some("a/b@v1\n".into()),
            ..Default::default()
        };
        assert!(err(o).contains("github_action_ref"));
    }
}
