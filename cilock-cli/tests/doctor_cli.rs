//! `cilock doctor`'s input errors (exit 2, a clear message, no probing).
//! What it finds on a real host is tested end to end, as root, as a member
//! of the daemon's group and as a stranger, in the e2e module `doctor`.

use crate::cilock;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_config_named_but_absent_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("absent.toml");
    let o = cilock(&["doctor", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "cilock: error: reading {}: No such file or directory (os error 2)\n",
            path.display()
        )
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn a_config_that_does_not_parse_or_has_a_wrong_type_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, "socket = \n").unwrap();
    let o = cilock(&["doctor", "--json", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!(
            "cilock: error: parsing {}: TOML parse error",
            bad.display()
        )),
        "{}",
        stderr(&o)
    );
    std::fs::write(&bad, "socket = 5\n").unwrap();
    let o = cilock(&["doctor", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        format!(
            "cilock: error: {}: `socket` must be a string, not integer\n",
            bad.display()
        )
    );
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let o = cilock(&["doctor", "--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unexpected argument '--frobnicate'"),
        "{}",
        stderr(&o)
    );
}
