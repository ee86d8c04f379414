//! `cilock completions SHELL`: the bash script really completes (bash
//! sources it and runs the function it registered for `cilock`, as bash
//! does on TAB); the other shells' scripts are produced for cilock's
//! commands. (zsh, fish, elvish and PowerShell are not installed on the test
//! machines: their scripts are not run.)

use std::process::Command;

use cilock_testkit::cli::{code, text};

use crate::cilock;

fn script(shell: &str) -> String {
    let o = cilock(&["completions", shell]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(o.stderr.is_empty(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// What bash offers for the command line `words` (the last word is the one
/// being completed), through the function `complete -p cilock` names, called
/// with bash's arguments and COMP_* variables.
fn bash_complete(script_path: &std::path::Path, words: &[&str]) -> Vec<String> {
    const DRIVER: &str = r#"
set -u
source "$SCRIPT"
spec=$(complete -p cilock)
fn=${spec#*-F }
fn=${fn%% *}
shift
COMP_WORDS=("$@")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
prev=""
if (( COMP_CWORD > 0 )); then prev=${COMP_WORDS[COMP_CWORD-1]}; fi
"$fn" cilock "${COMP_WORDS[COMP_CWORD]}" "$prev"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", DRIVER, "driver", "--"])
        .args(words)
        .env("SCRIPT", script_path)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{words:?}: {}",
        text(&o)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_commands_and_flags() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cilock.bash");
    std::fs::write(&path, script("bash")).unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["cilock", "st"], &["step"]),
        (&["cilock", "step", "b"], &["begin"]),
        (&["cilock", "verify", "--po"], &["--policy"]),
        (&["cilock", "step", "begin", "--st"], &["--step"]),
        (
            &["cilock", "run", "--backend", ""],
            &["auto", "ebpf", "ptrace"],
        ),
        (
            &["cilock", "completions", ""],
            &[
                "-h",
                "--help",
                "bash",
                "elvish",
                "fish",
                "powershell",
                "zsh",
            ],
        ),
        // The hidden `manpages` command is not offered.
        (&["cilock", "ma"], &[]),
    ];
    for (words, want) in cases {
        assert_eq!(bash_complete(&path, words), *want, "{words:?}");
    }
    // The top level offers every visible command, and only those (not the
    // hidden `manpages`).
    assert_eq!(
        bash_complete(&path, &["cilock", ""]),
        [
            "-h",
            "-V",
            "--help",
            "--version",
            "step",
            "run",
            "verify",
            "sign",
            "keygen",
            "inspect",
            "push",
            "pull",
            "attestors",
            "doctor",
            "completions",
            "help",
        ]
    );
}

#[test]
fn every_shell_gets_a_script_for_cilock() {
    for (shell, marker) in [
        ("bash", "complete -F _cilock"),
        ("zsh", "#compdef cilock"),
        ("fish", "complete -c cilock"),
        ("elvish", "edit:completion:arg-completer[cilock]"),
        (
            "powershell",
            "Register-ArgumentCompleter -Native -CommandName 'cilock'",
        ),
    ] {
        let s = script(shell);
        assert!(s.contains(marker), "{shell}: no {marker:?}");
        // Nested commands and their flags are in (fish spells `--policy`
        // `-l policy`), the hidden command is not.
        for word in ["begin", "fetch", "policy", "rego-timeout"] {
            assert!(s.contains(word), "{shell}: no {word}");
        }
        assert!(!s.contains("manpages"), "{shell}");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let o = cilock(&["completions", "tcsh"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.starts_with("error: invalid value 'tcsh' for '<SHELL>'"),
        "{err}"
    );
    assert!(
        err.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{err}"
    );
}
