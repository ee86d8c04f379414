//! `cilock`: records signed evidence of what a CI step did and verifies it
//! against signed policy. Exit codes: 0 success, 1 the wrapped command or a
//! verification failed, 2 usage or input error, 3 the attestation was
//! written but could not be stored (`--store`, `cilock push`).

// Standard output or error closed early (`cilock verify --json | head -c 1`)
// must not panic, as std's `print!` family does on EPIPE. SIGPIPE stays
// ignored (a default SIGPIPE would kill `cilock run`, or a client whose
// daemon closed its socket, before its evidence is written), so these
// crate-wide replacements write and ignore a broken pipe: the command goes
// on and exits with its own status. Any other write error still panics, as
// std's macros do.
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::write_stream(&mut ::std::io::stdout().lock(), ::std::format_args!($($arg)*), "stdout")
    };
}
macro_rules! println {
    () => { print!("\n") };
    ($($arg:tt)*) => {
        print!("{}\n", ::std::format_args!($($arg)*))
    };
}
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::write_stream(&mut ::std::io::stderr().lock(), ::std::format_args!($($arg)*), "stderr")
    };
}
macro_rules! eprintln {
    () => { eprint!("\n") };
    ($($arg:tt)*) => {
        eprint!("{}\n", ::std::format_args!($($arg)*))
    };
}

mod attestor_flags;
mod cli;
mod cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// Writes to a standard stream; a closed pipe is not an error.
fn write_stream(w: &mut dyn std::io::Write, args: std::fmt::Arguments<'_>, name: &str) {
    if let Err(e) = w.write_fmt(args).and_then(|_| w.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            panic!("failed printing to {name}: {e}");
        }
    }
}

/// The error and its causes, each printed once: a cause whose text is
/// already part of the message (errors that repeat their source in their
/// own text) is not appended again.
fn error_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn main() -> ExitCode {
    if let Some(code) = cmd::verify::rego_child_main() {
        return code;
    }
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
            eprintln!("cilock: error: {}", error_message(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("reading key file k: No such file");
        let e = e.context("loading policy public key k");
        assert_eq!(
            super::error_message(&e),
            "loading policy public key k: reading key file k: No such file"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_message(&e), "outer: inner");
    }
}
