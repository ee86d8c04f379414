//! Runs a command under the ptrace backend and prints every event as a JSON
//! line on stdout (or only counts with `--count`).
//!
//! ```text
//! ptrace_run [--count] [--no-egress] -- CMD [ARGS...]
//! ptrace_run [--count] --follow PID --seconds N
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cilock_daemon::backend::ptrace::{self, PtraceConfig};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut count = false;
    let mut cfg = PtraceConfig::default();
    let mut follow: Option<u32> = None;
    let mut seconds = 5u64;
    while let Some(a) = args.first().cloned() {
        match a.as_str() {
            "--count" => count = true,
            "--no-egress" => cfg.capture_egress = false,
            "--follow" => {
                args.remove(0);
                follow = args.first().and_then(|s| s.parse().ok());
            }
            "--seconds" => {
                args.remove(0);
                seconds = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
            }
            "--" => {
                args.remove(0);
                break;
            }
            _ => break,
        }
        args.remove(0);
    }
    let mut n = 0u64;
    let mut on_event = |e: cilock_trace::TraceEvent| {
        n += 1;
        if !count {
            println!("{}", ptrace::event_to_json(&e));
        }
    };
    if let Some(pid) = follow {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            s2.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        if let Err(e) = ptrace::follow(pid, &cfg, stop, &mut on_event) {
            eprintln!("ptrace_run: {e}");
            std::process::exit(125);
        }
        if count {
            eprintln!("events: {n}");
        }
        return;
    }
    if args.is_empty() {
        eprintln!("usage: ptrace_run [--count] [--no-egress] -- CMD [ARGS...]");
        std::process::exit(2);
    }
    let mut cmd = std::process::Command::new(&args[0]);
    cmd.args(&args[1..]);
    match ptrace::run(cmd, &cfg, |_| {}, &mut on_event) {
        Ok(code) => {
            if count {
                eprintln!("events: {n}");
            }
            std::process::exit(code)
        }
        Err(e) => {
            eprintln!("ptrace_run: {e}");
            std::process::exit(125);
        }
    }
}
