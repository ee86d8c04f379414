//! Helpers shared by the ptrace_* integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use cilock_daemon::backend::ptrace::{self, PtraceConfig};
use cilock_trace::TraceEvent;

/// Compiles `tests/programs/<name>.c` into `dir`, returns the binary path.
pub fn compile(name: &str, dir: &Path) -> PathBuf {
    let programs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs");
    cilock_testkit::programs::compile(&programs, name, dir)
}

/// Runs `cmd` under ptrace::run, collecting events and stdout.
pub fn trace(cmd: Command, cfg: &PtraceConfig) -> (i32, Vec<TraceEvent>, String) {
    let mut cmd = cmd;
    cmd.stdout(std::process::Stdio::piped());
    let mut events = Vec::new();
    let mut reader: Option<std::thread::JoinHandle<String>> = None;
    let code = ptrace::run(
        cmd,
        cfg,
        |child| {
            let mut out = child.stdout.take().expect("stdout pipe");
            reader = Some(std::thread::spawn(move || {
                let mut s = String::new();
                use std::io::Read;
                let _ = out.read_to_string(&mut s);
                s
            }));
        },
        |e| events.push(e),
    )
    .expect("ptrace::run");
    let out = reader.map(|r| r.join().unwrap()).unwrap_or_default();
    (code, events, out)
}

/// Replaces `/proc/<digits>` by `/proc/PID` so per-run pids compare equal.
pub fn norm_proc(p: &str) -> String {
    let mut out = String::new();
    let mut rest = p;
    while let Some(i) = rest.find("/proc/") {
        out.push_str(&rest[..i + 6]);
        rest = &rest[i + 6..];
        let d = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if d > 0 {
            out.push_str("PID");
            rest = &rest[d..];
        }
    }
    out.push_str(rest);
    out
}
