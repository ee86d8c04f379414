//! Man pages as a reader sees them: groff's own warnings (`-ww`, every
//! warning), the page rendered as plain text, its sections, and the long
//! flags a `-h` text lists (what each page must document).

use std::path::Path;
use std::process::Command;

/// groff's warnings for `page` (`groff -man -ww -z -Tutf8`: every warning
/// category, no output): empty for a clean page. groff reads the page as is,
/// without a preprocessor, so a raw non-ASCII character is a warning too.
/// Panics when groff cannot run (`cargo xtask setup` installs `groff-base`).
pub fn groff_warnings(page: &Path) -> String {
    let o = Command::new("groff")
        .args(["-man", "-ww", "-z", "-Tutf8"])
        .arg(page)
        .output()
        .expect("running groff (package groff-base: cargo xtask setup)");
    assert!(
        o.status.success(),
        "groff failed on {}: {o:?}",
        page.display()
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `page` rendered as plain ASCII text (no overstriking or colour), on lines
/// of 250 columns without hyphenation, so a flag never breaks across lines.
pub fn text(page: &Path) -> String {
    let o = Command::new("groff")
        .args(["-man", "-Tascii", "-P-cbou", "-rLL=250n", "-rHY=0"])
        .arg(page)
        .output()
        .expect("running groff (package groff-base: cargo xtask setup)");
    assert!(
        o.status.success(),
        "groff failed on {}: {o:?}",
        page.display()
    );
    String::from_utf8(o.stdout).expect("ASCII output")
}

/// The body of section `heading` of a rendered page (its lines up to the next
/// heading, a line starting in column 0), or None when the page lacks it.
pub fn section(text: &str, heading: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| *l != heading);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect();
    Some(body.join("\n"))
}

/// The long flags (`--step`, …) of a clap `-h` text: the option lines (an
/// option starts at most 6 columns in; descriptions are further in).
pub fn long_flags(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let spec = line.trim_start();
        if indent == 0 || indent > 6 || !spec.starts_with('-') {
            continue;
        }
        let spec = spec.split("  ").next().unwrap_or_default();
        for tok in spec.split([' ', ',', '=']) {
            if let Some(name) = tok.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !name.is_empty() {
                    out.push(format!("--{name}"));
                }
            }
        }
    }
    out
}

/// Whether `text` has `flag` as a whole word (`--key` is not found in
/// `--keyid` or `--key-file`).
pub fn has_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + flag.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
        !word(before) && !word(after)
    })
}

/// The pages a SEE ALSO section names: `["cilock(1)", "cilock-daemon(8)"]`.
pub fn see_also(text: &str) -> Vec<String> {
    section(text, "SEE ALSO")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}
