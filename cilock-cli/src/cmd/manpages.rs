//! `cilock manpages DIR` (hidden; packaging): one man page per command,
//! generated from the command-line definition (clap_mangen): `cilock.1`,
//! `cilock-verify.1`, nested ones as `cilock-step-begin.1`. Each page has the
//! command's long help, its options, its subcommands, the version and a SEE
//! ALSO of related pages.

use std::path::Path;

use anyhow::Context as _;
use cilock_api::manpage::{finish_page, title_line};
use clap::CommandFactory as _;
use clap_mangen::roff::{bold, roman, Inline, Roff};
use clap_mangen::Man;

use crate::cli::{Cli, ManpagesArgs};

/// Section of every cilock page.
const SECTION: &str = "1";
/// The daemon's page (written by `cilock-daemon --manpage`).
const DAEMON_PAGE: (&str, &str) = ("cilock-daemon", "8");

/// Pages related to a page beyond its parent, siblings and children (by page
/// name, without section: all of them are in section 1).
const RELATED: &[(&str, &[&str])] = &[
    (
        "cilock-run",
        &["cilock-step", "cilock-verify", "cilock-push"],
    ),
    (
        "cilock-verify",
        &[
            "cilock-sign",
            "cilock-keygen",
            "cilock-inspect",
            "cilock-pull",
        ],
    ),
    ("cilock-sign", &["cilock-keygen", "cilock-verify"]),
    (
        "cilock-keygen",
        &["cilock-sign", "cilock-verify", "cilock-inspect"],
    ),
    ("cilock-inspect", &["cilock-verify"]),
    (
        "cilock-push",
        &["cilock-pull", "cilock-step-end", "cilock-run"],
    ),
    ("cilock-pull", &["cilock-push", "cilock-verify"]),
    ("cilock-attestors", &["cilock-run", "cilock-step-begin"]),
    ("cilock-step", &["cilock-run"]),
];

/// Pages that also refer to the daemon's page: it does their work, or they
/// check it (`cilock doctor`).
const USES_DAEMON: &[&str] = &["cilock", "cilock-step", "cilock-run", "cilock-doctor"];

/// Writes every page into `a.dir` (created if missing), one path per line on
/// standard output.
pub fn manpages(a: ManpagesArgs) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("creating the man page directory {}", a.dir.display()))?;
    for (name, page) in pages()? {
        let path = a.dir.join(format!("{name}.{SECTION}"));
        write_page(&path, &page)?;
        println!("{}", path.display());
    }
    Ok(0)
}

fn write_page(path: &Path, page: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

/// One page of the tree: its name (`cilock-step-begin`), its command, its
/// parent's name and its children's names.
struct Node {
    name: String,
    cmd: clap::Command,
    parent: Option<String>,
    children: Vec<String>,
}

/// Every visible command of the tree, parents before children.
fn walk(cmd: &clap::Command, parent: Option<&str>, out: &mut Vec<Node>) {
    let name = match parent {
        Some(p) => format!("{p}-{}", cmd.get_name()),
        None => cmd.get_name().to_owned(),
    };
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    out.push(Node {
        name: name.clone(),
        cmd: cmd.clone(),
        parent: parent.map(str::to_owned),
        children: subs
            .iter()
            .map(|s| format!("{name}-{}", s.get_name()))
            .collect(),
    });
    for s in subs {
        walk(s, Some(&name), out);
    }
}

/// The pages, by name (without the section suffix), rendered.
pub fn pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    // No `help` subcommand on the pages (each has `--help`); built, so every
    // subcommand knows its display name (`cilock-step-begin`) and bin name
    // (`cilock step begin`, the synopsis).
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut nodes = Vec::new();
    walk(&root, None, &mut nodes);
    let version = root.get_version().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    for node in &nodes {
        let mut see_also: Vec<(String, &str)> = Vec::new();
        let mut add = |page: &str, section: &'static str| {
            if page != node.name && !see_also.iter().any(|(p, _)| p == page) {
                see_also.push((page.to_owned(), section));
            }
        };
        // Ancestors, root first.
        let mut ancestors = Vec::new();
        let mut p = node.parent.clone();
        while let Some(name) = p {
            p = nodes
                .iter()
                .find(|n| n.name == name)
                .and_then(|n| n.parent.clone());
            ancestors.push(name);
        }
        for a in ancestors.iter().rev() {
            add(a, SECTION);
        }
        // Siblings of a nested command (`cilock step end` for `step begin`);
        // the top level's are on cilock(1).
        if let Some(parent) = ancestors.first().filter(|_| ancestors.len() > 1) {
            if let Some(pn) = nodes.iter().find(|n| &n.name == parent) {
                for s in &pn.children {
                    add(s, SECTION);
                }
            }
        }
        for c in &node.children {
            add(c, SECTION);
        }
        if let Some((_, rel)) = RELATED.iter().find(|(n, _)| *n == node.name) {
            for r in *rel {
                add(r, SECTION);
            }
        }
        if USES_DAEMON.contains(&node.name.as_str()) || ancestors.iter().any(|a| a == "cilock-step")
        {
            add(DAEMON_PAGE.0, DAEMON_PAGE.1);
        }
        let extra = Extra {
            version: &version,
            exit_status: node.parent.is_none(),
            see_also: &see_also,
        };
        out.push((node.name.clone(), render(&node.cmd, &node.name, &extra)?));
    }
    Ok(out)
}

/// Sections added after clap_mangen's.
struct Extra<'a> {
    version: &'a str,
    exit_status: bool,
    see_also: &'a [(String, &'static str)],
}

/// The page of `cmd`, named `name`.
fn render(cmd: &clap::Command, name: &str, extra: &Extra<'_>) -> anyhow::Result<Vec<u8>> {
    let man = Man::new(cmd.clone()).section(SECTION);
    let mut w = Vec::new();
    w.extend_from_slice(title_line(&name.to_uppercase(), SECTION, extra.version).as_bytes());
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut w)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut w)?;
    }
    if cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some() {
        man.render_extra_section(&mut w)?;
    }
    let mut roff = Roff::new();
    if extra.exit_status {
        roff.control("SH", ["EXIT STATUS"]);
        for (code, what) in [
            ("0", "Success."),
            (
                "1",
                "The traced command failed, a verification failed, an attestor failed the \
                 step (secretscan with fail-on-detection), or cilock pull found nothing.",
            ),
            (
                "2",
                "A usage or input error (the message says which), or a store that verify \
                 --store or pull cannot search.",
            ),
            (
                "3",
                "The attestation was written but could not be stored in a registry (--store, \
                 the daemon's store, cilock push; for run, the command's own non-zero status \
                 wins).",
            ),
        ] {
            roff.control("TP", []);
            roff.text([bold(code)]);
            roff.text([roman(what)]);
        }
    }
    roff.control("SH", ["VERSION"]);
    roff.text([roman(format!("cilock {}", extra.version))]);
    see_also_section(&mut roff, extra.see_also);
    roff.to_writer(&mut w)?;
    Ok(finish_page(&w))
}

/// `SEE ALSO`: `cilock(1), cilock-step(1), …`.
fn see_also_section(roff: &mut Roff, pages: &[(String, &str)]) {
    if pages.is_empty() {
        return;
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut line: Vec<Inline> = Vec::new();
    for (i, (page, section)) in pages.iter().enumerate() {
        line.push(bold(page.as_str()));
        let sep = if i + 1 < pages.len() { ", " } else { "" };
        line.push(roman(format!("({section}){sep}")));
    }
    roff.text(line);
}
