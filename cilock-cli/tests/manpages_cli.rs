//! `cilock manpages DIR`: a page per command of the command tree (the tree as
//! `--help` shows it), each rendered by groff without a warning and listing
//! every long flag of its command.

use std::collections::BTreeSet;
use std::path::Path;

use cilock_testkit::cli::{code, text};
use cilock_testkit::manpage;

use crate::cilock;

/// The subcommands `cilock PATH --help` lists (without `help`).
fn subcommands(path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let o = cilock(&args);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    out.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .filter(|n| n != "help")
        .collect()
}

/// Every command of the tree as (page name, command path), parents first.
fn tree(path: Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
    let mut name = String::from("cilock");
    for p in &path {
        name.push('-');
        name.push_str(p);
    }
    out.push((name, path.clone()));
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    for sub in subcommands(&args) {
        let mut p = path.clone();
        p.push(sub);
        tree(p, out);
    }
}

fn generate(dir: &Path) -> String {
    let o = cilock(&["manpages", dir.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_clean_page_per_command_with_each_long_flag() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man1");
    let listed = generate(&dir);

    let mut commands = Vec::new();
    tree(Vec::new(), &mut commands);
    let expected: BTreeSet<String> = commands
        .iter()
        .map(|(name, _)| format!("{name}.1"))
        .collect();
    // The tree as --help shows it has the nested pages, and not the hidden
    // `manpages` command.
    for page in [
        "cilock.1",
        "cilock-step.1",
        "cilock-step-begin.1",
        "cilock-step-end.1",
        "cilock-step-fetch.1",
        "cilock-verify.1",
        "cilock-completions.1",
    ] {
        assert!(expected.contains(page), "{page} not in {expected:?}");
    }
    assert!(!expected.contains("cilock-manpages.1"));
    let written: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written, expected);
    // Standard output lists each written path once.
    let listed: BTreeSet<String> = listed.lines().map(str::to_owned).collect();
    let paths: BTreeSet<String> = expected
        .iter()
        .map(|p| dir.join(p).to_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, paths);

    let version = format!("cilock {}", env!("CARGO_PKG_VERSION"));
    let mut all_see_also = BTreeSet::new();
    for (name, path) in &commands {
        let page = dir.join(format!("{name}.1"));
        assert_eq!(manpage::groff_warnings(&page), "", "{name}.1");
        let t = manpage::text(&page);
        let head = t.lines().find(|l| !l.is_empty()).unwrap();
        // Header: title, manual; footer: source (the version), title.
        let title = format!("{}(1)", name.to_uppercase());
        let words: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(words, [&title, "cilock", "Manual", &title], "{name}");
        let foot = t.lines().rfind(|l| !l.is_empty()).unwrap();
        let words: Vec<&str> = foot.split_whitespace().collect();
        assert_eq!(
            words,
            ["cilock", env!("CARGO_PKG_VERSION"), &title],
            "{name}"
        );
        // Justified text: words apart by one space or more.
        let synopsis = manpage::section(&t, "SYNOPSIS")
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let invocation = std::iter::once("cilock")
            .chain(path.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            synopsis.starts_with(&format!("{invocation} ")),
            "{name}: {synopsis}"
        );
        assert_eq!(
            manpage::section(&t, "VERSION").unwrap().trim(),
            version,
            "{name}"
        );

        // Every long flag of `-h` is documented under OPTIONS.
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("-h");
        let o = cilock(&args);
        assert_eq!(code(&o), 0, "{}", text(&o));
        let flags = manpage::long_flags(&String::from_utf8(o.stdout).unwrap());
        assert!(flags.contains(&"--help".to_owned()), "{name}: {flags:?}");
        let options = manpage::section(&t, "OPTIONS").unwrap();
        for flag in &flags {
            assert!(
                manpage::has_flag(&options, flag),
                "{name}.1 lacks {flag}:\n{options}"
            );
        }
        let see_also = manpage::see_also(&t);
        assert!(!see_also.is_empty(), "{name}: no SEE ALSO");
        all_see_also.extend(see_also);
    }

    // Every page SEE ALSO names exists (the daemon's is cilock-daemon --manpage's).
    for r in &all_see_also {
        let (page, section) = r.trim_end_matches(')').split_once('(').unwrap();
        match section {
            "1" => assert!(expected.contains(&format!("{page}.1")), "{r}"),
            "8" => assert_eq!(page, "cilock-daemon"),
            other => panic!("section {other} in {r}"),
        }
    }

    // A nested page: parents, siblings and the daemon, exactly.
    let t = manpage::text(&dir.join("cilock-step-begin.1"));
    assert_eq!(
        manpage::see_also(&t),
        [
            "cilock(1)",
            "cilock-step(1)",
            "cilock-step-end(1)",
            "cilock-step-fetch(1)",
            "cilock-daemon(8)"
        ]
    );
    assert!(
        manpage::section(&t, "NAME")
            .unwrap()
            .trim()
            .starts_with("cilock-step-begin - Start tracing a step"),
        "{t}"
    );
    // A NAME line is the about sentence only (whatis and apropos list it):
    // doctor's long help starts in the description.
    let t = manpage::text(&dir.join("cilock-doctor.1"));
    assert_eq!(
        manpage::section(&t, "NAME").unwrap().trim(),
        "cilock-doctor - Check whether a traced step can run on this host"
    );
    // The long help (a second paragraph only `--help` shows), not the short one.
    let t = manpage::text(&dir.join("cilock-completions.1"));
    let description = manpage::section(&t, "DESCRIPTION").unwrap();
    assert!(
        description.contains("/usr/share/bash-completion/completions/cilock"),
        "{description}"
    );
    // The top page: its subcommands (hidden ones not), exit statuses.
    let t = manpage::text(&dir.join("cilock.1"));
    let subs = manpage::section(&t, "SUBCOMMANDS").unwrap();
    assert!(subs.contains("cilock-step(1)"), "{subs}");
    assert!(!subs.contains("manpages"), "{subs}");
    let exit = manpage::section(&t, "EXIT STATUS").unwrap();
    for c in ["0", "1", "2", "3"] {
        assert!(
            exit.lines().any(|l| l.split_whitespace().next() == Some(c)),
            "{exit}"
        );
    }
}

#[test]
fn an_unwritable_directory_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, "").unwrap();
    let o = cilock(&["manpages", file.join("man1").to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "cilock: error: creating the man page directory {}",
            file.join("man1").display()
        )),
        "{err}"
    );
}
