//! The daemon's TOML configuration and the signing-key permission check.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cilock_daemon::backend::BackendChoice;
use cilock_daemon::config::{check_key_file, ConfigError, DaemonConfig, KeyFileError};

#[test]
fn defaults_match_the_engine_and_the_docs() {
    let cfg = DaemonConfig::from_toml_str("", "<empty>").unwrap();
    assert_eq!(cfg, DaemonConfig::default());
    assert_eq!(cfg.socket, Path::new("/run/cilock/cilock.sock"));
    assert_eq!(cfg.group, "cilock");
    assert_eq!(cfg.key, Path::new("/etc/cilock/signing-key.pem"));
    assert_eq!(cfg.backend, BackendChoice::Auto);
    assert_eq!(cfg.step_timeout, Duration::from_secs(6 * 3600));
    assert_eq!(cfg.cgroup_parent, "cilock.steps");
    assert!(cfg.default_attestations.is_empty());
    assert_eq!(cfg.log_level, "info");
}

#[test]
fn the_shipped_config_file_parses_to_the_defaults() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/cilock.toml");
    let cfg = DaemonConfig::load(&shipped).unwrap();
    assert_eq!(cfg, DaemonConfig::default());
}

#[test]
fn good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cilock.toml");
    std::fs::write(
        &path,
        r#"
# comment
socket = "/run/cilock-test/d.sock"
group = "ci-runners"
key = "/etc/cilock/other.pem"
backend = "ptrace"
step_timeout = "1h 30m"
cgroup_parent = "cilock.slice/steps"
default_attestations = ["environment", "git"]
log_level = "info,cilock_daemon=debug"
"#,
    )
    .unwrap();
    let cfg = DaemonConfig::load(&path).unwrap();
    assert_eq!(cfg.socket, Path::new("/run/cilock-test/d.sock"));
    assert_eq!(cfg.group, "ci-runners");
    assert_eq!(cfg.key, Path::new("/etc/cilock/other.pem"));
    assert_eq!(cfg.backend, BackendChoice::Ptrace);
    assert_eq!(cfg.step_timeout, Duration::from_secs(5400));
    let eng = cfg.engine_config();
    assert_eq!(eng.backend, BackendChoice::Ptrace);
    assert_eq!(eng.step_timeout, Duration::from_secs(5400));
    assert_eq!(eng.cgroup_parent, "cilock.slice/steps");
    assert_eq!(eng.default_attestations, vec!["environment", "git"]);
}

#[test]
fn step_timeout_in_plain_seconds() {
    for text in [
        "step_timeout = 900",
        "step_timeout = \"900\"",
        "step_timeout = \"15m\"",
    ] {
        let cfg = DaemonConfig::from_toml_str(text, "t").unwrap();
        assert_eq!(cfg.step_timeout, Duration::from_secs(900), "{text}");
    }
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err = DaemonConfig::from_toml_str("socket = \"/run/x.sock\"\nsokcet_mode = 1\n", "f.toml")
        .unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("sokcet_mode"), "{msg}");
    assert!(msg.contains("f.toml"), "{msg}");
}

#[test]
fn bad_values_are_errors_naming_the_key() {
    let cases: &[(&str, &str)] = &[
        ("backend = \"kprobe\"", "kprobe"),
        ("step_timeout = \"soon\"", "step_timeout"),
        ("step_timeout = \"5 fortnights\"", "fortnights"),
        ("step_timeout = -5", "negative"),
        ("step_timeout = 0", "step_timeout"),
        ("socket = \"relative.sock\"", "socket"),
        ("socket = 5", "socket"),
        ("group = \"bad group\"", "group"),
        ("group = \"\"", "group"),
        ("cgroup_parent = \"/abs\"", "cgroup_parent"),
        ("cgroup_parent = \"a/../b\"", "cgroup_parent"),
        (
            "default_attestations = [\"Env ironment\"]",
            "default_attestations",
        ),
        ("default_attestations = \"git\"", "default_attestations"),
        ("log_level = \"info,=[\"", "log_level"),
        ("not toml at all", "f.toml"),
    ];
    for (text, needle) in cases {
        let err = DaemonConfig::from_toml_str(text, "f.toml")
            .expect_err(&format!("{text} should be refused"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{text}: {msg:?} lacks {needle:?}");
    }
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    assert!(matches!(
        DaemonConfig::load(&path),
        Err(ConfigError::NotFound { .. })
    ));
    // The default path may be absent: defaults apply.
    let (cfg, read) = DaemonConfig::load_or_default(&path, false).unwrap();
    assert!(!read);
    assert_eq!(cfg, DaemonConfig::default());
    // An explicit --config must exist.
    let err = DaemonConfig::load_or_default(&path, true).unwrap_err();
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

fn key_with_mode(dir: &Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join(format!("key-{mode:o}.pem"));
    std::fs::write(&path, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn is_root() -> bool {
    unsafe { libc::getuid() == 0 }
}

#[test]
fn key_file_0600_root_is_accepted() {
    cilock_testkit::users::require_root();
    let dir = tempfile::tempdir().unwrap();
    check_key_file(&key_with_mode(dir.path(), 0o600)).unwrap();
    check_key_file(&key_with_mode(dir.path(), 0o400)).unwrap();
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o666] {
        let path = key_with_mode(dir.path(), mode);
        let err = check_key_file(&path).unwrap_err();
        if is_root() {
            match &err {
                KeyFileError::TooOpen { mode: m, .. } => assert_eq!(*m, mode),
                other => panic!("{mode:o}: expected TooOpen, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
        }
    }
}

#[test]
fn key_file_not_owned_by_root_is_refused() {
    if !is_root() {
        // Owned by the current (non-root) user: refused for that reason.
        let dir = tempfile::tempdir().unwrap();
        let err = check_key_file(&key_with_mode(dir.path(), 0o600)).unwrap_err();
        assert!(matches!(err, KeyFileError::NotRootOwned { .. }), "{err:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = key_with_mode(dir.path(), 0o600);
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    match check_key_file(&path) {
        Err(KeyFileError::NotRootOwned { uid, .. }) => assert_eq!(uid, 65534),
        other => panic!("expected NotRootOwned, got {other:?}"),
    }
}

#[test]
fn key_file_missing_or_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.pem");
    let err = check_key_file(&path).unwrap_err();
    assert!(matches!(err, KeyFileError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nope.pem") && msg.contains("does not exist"),
        "{msg}"
    );
    let err = check_key_file(dir.path()).unwrap_err();
    assert!(matches!(err, KeyFileError::NotRegular { .. }), "{err:?}");
}

/// Every commented-out top-level key of the shipped file, uncommented, is
/// the default it claims to be.
#[test]
fn the_shipped_files_commented_values_are_the_defaults() {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/cilock.toml"))
            .unwrap();
    let top = shipped.split("#[helper]").next().unwrap();
    let lines: Vec<&str> = top
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        })
        .collect();
    assert!(lines.len() >= 17, "{lines:?}");
    let cfg = DaemonConfig::from_toml_str(&lines.join("\n"), "shipped").unwrap();
    assert_eq!(cfg, DaemonConfig::default());
}
