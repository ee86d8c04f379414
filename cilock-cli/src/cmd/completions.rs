//! `cilock completions SHELL`: the shell's completion script, generated from
//! the command-line definition (clap_complete), on standard output.

use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionsArgs};

/// Prints the script for `a.shell`.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = visible(Cli::command());
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "cilock", &mut script);
    print!("{}", String::from_utf8_lossy(&script));
    Ok(0)
}

/// The command without its hidden subcommands (`manpages`): clap_complete
/// offers hidden subcommands like any other, and clap cannot remove one, so
/// the top level is rebuilt from the visible parts (its name and version,
/// its arguments and subcommands, each cloned whole).
fn visible(full: clap::Command) -> clap::Command {
    let mut cmd = clap::Command::new("cilock")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(a) = full.get_about() {
        cmd = cmd.about(a.clone());
    }
    cmd
}
