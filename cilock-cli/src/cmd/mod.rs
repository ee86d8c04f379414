//! One module per subcommand; each returns the process exit code (0 ok,
//! 1 command/verification failed, 3 written but not stored) or an error
//! (exit 2).

use crate::cli::{Cli, Command, StepCommand};

mod attestors;
mod completions;
mod doctor;
mod inspect;
mod keygen;
mod manpages;
mod output;
mod run;
mod sign;
mod step;
mod store;
pub(crate) mod verify;

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Step(StepCommand::Begin(a)) => step::begin(a),
        Command::Step(StepCommand::End(a)) => step::end(a),
        Command::Step(StepCommand::Fetch(a)) => step::fetch(a),
        Command::Run(a) => run::run(a),
        Command::Verify(a) => verify::verify(a),
        Command::Sign(a) => sign::sign(a),
        Command::Keygen(a) => keygen::keygen(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Push(a) => store::push(a),
        Command::Pull(a) => store::pull(a),
        Command::Attestors(a) => attestors::attestors(a),
        Command::Completions(a) => completions::completions(a),
        Command::Manpages(a) => manpages::manpages(a),
        Command::Doctor(a) => doctor::doctor(a),
    }
}
