//! Helpers for tests that run the `cilock` command line (formerly copied
//! into each of cilock-cli's test files): run it, read its exit code and
//! output, spell paths and bytes the way its arguments want them.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

/// Runs the `cilock` binary `exe` with `args` in the current directory.
pub fn run(exe: &str, args: &[&str]) -> Output {
    Command::new(exe).args(args).output().unwrap()
}

/// Runs the `cilock` binary `exe` with `args` in `dir`.
pub fn run_in(exe: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// The exit code of a run (-1 when killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// stdout then stderr of a run, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A path as a `&str` argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Standard base64 of `v`.
pub fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// Writes the policy document `doc` to `file` and signs it into `signed`
/// with `cilock sign -k KEY` (run by `cilock`, which must succeed).
pub fn sign_policy(
    cilock: impl FnOnce(&[&str]) -> Output,
    doc: &serde_json::Value,
    key: &Path,
    file: &Path,
    signed: &Path,
) {
    std::fs::write(file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let o = cilock(&["sign", "-k", p(key), "-f", p(file), "-o", p(signed)]);
    assert!(o.status.success(), "cilock sign: {}", text(&o));
}
