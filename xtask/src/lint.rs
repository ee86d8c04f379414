//! `cargo xtask lint`: the static gates CI runs before any test (also the
//! first thing `cargo xtask test` does):
//!
//! 1. `cargo fmt --all --check`;
//! 2. `cargo clippy --all-targets -- -D warnings` over the default members
//!    (the lint table is the root Cargo.toml's `[workspace.lints]`);
//! 3. the same for the verify-only CLI (`cilock-cli --no-default-features`,
//!    no in-process engine), and a check that it links no aya and no
//!    cilock-daemon (`cargo tree`);
//! 4. `cargo doc --no-deps` with `-D warnings` (broken intra-doc links,
//!    missing docs where a crate denies them).

use clap::Args;

use crate::util::{cargo, exec, output, step};

/// `cargo xtask lint` options.
#[derive(Debug, Args)]
pub struct LintArgs {}

/// Crates a verify-only CLI must not link: the engine and the eBPF loader.
const ENGINE_CRATES: [&str; 3] = ["cilock-daemon", "aya", "aya-log"];

/// Runs every gate; stops at the first that fails.
pub fn run(_args: LintArgs) -> anyhow::Result<()> {
    step("lint: formatting (cargo fmt --check)");
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    step("lint: clippy, warnings are errors");
    exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    step("lint: the verify-only CLI (no default features)");
    exec(cargo().args([
        "clippy",
        "-p",
        "cilock-cli",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    verify_only_links_no_engine()?;
    step("lint: documentation, warnings are errors");
    exec(
        cargo()
            .args(["doc", "--no-deps", "--document-private-items"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    Ok(())
}

/// `cargo tree` of the verify-only CLI (normal dependencies): none of
/// [`ENGINE_CRATES`] may appear.
fn verify_only_links_no_engine() -> anyhow::Result<()> {
    let tree = output(cargo().args([
        "tree",
        "-p",
        "cilock-cli",
        "--no-default-features",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]))
    .ok_or_else(|| anyhow::anyhow!("`cargo tree -p cilock-cli` failed"))?;
    let linked = engine_crates_in(&tree);
    anyhow::ensure!(
        linked.is_empty(),
        "the verify-only CLI (cilock-cli --no-default-features) links {}: only the `embedded` feature may pull in the engine",
        linked.join(", ")
    );
    Ok(())
}

/// The [`ENGINE_CRATES`] named in a `cargo tree --prefix none` listing
/// (one `name vX.Y.Z …` per line).
fn engine_crates_in(tree: &str) -> Vec<&'static str> {
    ENGINE_CRATES
        .into_iter()
        .filter(|c| {
            tree.lines()
                .any(|l| l.split_whitespace().next() == Some(*c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::engine_crates_in;

    #[test]
    fn finds_engine_crates_by_exact_name() {
        let tree = "cilock-cli v0.1.0 (/w/cilock-cli)\ncilock-api v0.1.0 (/w/cilock-api)\naya-obj v0.2.1\n";
        assert!(engine_crates_in(tree).is_empty());
        let tree = "cilock-cli v0.1.0\ncilock-daemon v0.1.0 (/w)\naya v0.14.0\n";
        assert_eq!(engine_crates_in(tree), ["cilock-daemon", "aya"]);
    }
}
