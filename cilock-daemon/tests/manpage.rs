//! `cilock-daemon --manpage DIR`: cilock-daemon.8, rendered by groff without
//! a warning, with every long flag of `-h`, the FILES the daemon uses, and
//! no configuration read to write it.

use std::process::Command;

use cilock_testkit::manpage;

const BIN: &str = env!("CARGO_BIN_EXE_cilock-daemon");

#[test]
fn section_8_page_with_flags_and_files() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man8");
    // A configuration that does not exist: writing the page reads none.
    let o = Command::new(BIN)
        .arg("--manpage")
        .arg(&dir)
        .env("CILOCK_CONFIG", d.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let page = dir.join("cilock-daemon.8");
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        format!("{}\n", page.display())
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["cilock-daemon.8"]);

    assert_eq!(manpage::groff_warnings(&page), "");
    let t = manpage::text(&page);
    assert!(t.starts_with("CILOCK-DAEMON(8)"), "{t}");
    let synopsis = manpage::section(&t, "SYNOPSIS").unwrap();
    assert!(
        synopsis.trim_start().starts_with("cilock-daemon "),
        "{synopsis}"
    );

    let o = Command::new(BIN).arg("-h").output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let flags = manpage::long_flags(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(
        flags,
        [
            "--config",
            "--socket",
            "--key",
            "--check-config",
            "--help",
            "--version"
        ]
    );
    let options = manpage::section(&t, "OPTIONS").unwrap();
    for flag in &flags {
        assert!(manpage::has_flag(&options, flag), "no {flag}:\n{options}");
    }
    // The packaging flag stays hidden, on the page too.
    assert!(!t.contains("manpage"), "{t}");

    // FILES: each path as a tag line, in this order.
    let files = manpage::section(&t, "FILES").unwrap();
    let tags: Vec<&str> = files
        .lines()
        .filter(|l| l.starts_with("       /"))
        .map(str::trim)
        .collect();
    assert_eq!(
        tags,
        [
            "/etc/cilock/cilock.toml",
            "/etc/cilock/signing-key.pem",
            "/run/cilock/cilock.sock",
            "/var/lib/cilock"
        ]
    );
    assert_eq!(
        manpage::section(&t, "VERSION").unwrap().trim(),
        format!("cilock {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        manpage::see_also(&t),
        [
            "cilock(1)",
            "cilock-step(1)",
            "cilock-run(1)",
            "cilock-keygen(1)"
        ]
    );
}

#[test]
fn an_unwritable_directory_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, "").unwrap();
    let o = Command::new(BIN)
        .arg("--manpage")
        .arg(file.join("man8"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(
        err,
        format!(
            "cilock-daemon: creating the man page directory {}: Not a directory (os error 20)\n",
            file.join("man8").display()
        )
    );
}
