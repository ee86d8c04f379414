//! Compiling the C test programs with the system `cc` (`-O1 -pthread`):
//! the e2e programs of `tests/programs/*.c` and the ptrace programs of
//! `cilock-daemon/tests/programs/*.c`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The checkout's root (this crate sits one level below it).
fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Compiles a C program of `tests/programs` into `dir`; returns the binary.
pub fn cc(name: &str, dir: &Path) -> PathBuf {
    compile(&workspace().join("tests/programs"), name, dir)
}

/// Compiles `<programs>/<name>.c` into `dir/<name>`; returns the binary.
/// Panics with the compiler's output on failure.
pub fn compile(programs: &Path, name: &str, dir: &Path) -> PathBuf {
    let src = programs.join(format!("{name}.c"));
    let out = dir.join(name);
    let o = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("cc");
    assert!(
        o.status.success(),
        "cc {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}
