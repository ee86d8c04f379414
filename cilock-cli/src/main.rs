//! `cilock`: records signed evidence of what a CI step did and verifies it
//! against signed policy. Exit codes: 0 success, 1 the wrapped command or a
//! verification failed, 2 usage or input error.

mod attestor_flags;
mod cli;
mod cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CILOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cmd::dispatch(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cilock: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
