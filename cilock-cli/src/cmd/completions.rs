//! `cilock completions SHELL`: the shell's completion script, generated from
//! the command-line definition (clap_complete), on standard output.

use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionsArgs};

/// Prints the script for `a.shell`.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "cilock", &mut script);
    print!("{}", String::from_utf8_lossy(&script));
    Ok(0)
}
