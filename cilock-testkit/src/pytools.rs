//! Real tools from PyPI in a virtual environment, for the attestor tests:
//! `cyclonedx-py` (cyclonedx-bom) writes an SBOM, `ruff` a SARIF report,
//! and the `in-toto-attestation` package checks statements and predicates
//! with the in-toto attestation framework's own bindings.
//!
//! The environment is made once per machine and version set, in
//! `/var/tmp/cilock-pytools-<pins hash>` (0755: steps run as other users
//! can execute the tools), under an exclusive lock so test binaries
//! running at once share it; it is built in a temporary directory and
//! renamed into place, so a half-made environment is never used.

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages, pinned.
pub const PINS: &[&str] = &[
    "cyclonedx-bom==7.5.0",
    "ruff==0.17.6",
    "in-toto-attestation==0.9.3",
];

/// The environment's directory (made on first use); its `bin/` holds
/// `python`, `cyclonedx-py`, `ruff`.
pub fn venv() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(make).clone()
}

/// `bin/<name>` of the environment.
pub fn tool(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

fn pins_hash() -> String {
    // FNV-1a: a stable name for the version set (not a security boundary).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in PINS.join("\n").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn make() -> PathBuf {
    let dir = PathBuf::from(format!("/var/tmp/cilock-pytools-{}", pins_hash()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{}.lock", dir.display()))
        .expect("open the pytools lock");
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    if dir.join(".complete").exists() {
        return dir;
    }
    let tmp = PathBuf::from(format!("{}.tmp", dir.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("python3").args(["-m", "venv"]).arg(&tmp));
    run(Command::new(tmp.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PINS));
    // The shebangs name the temporary path: rewrite them for the final one.
    for e in std::fs::read_dir(tmp.join("bin"))
        .expect("read venv bin")
        .flatten()
    {
        let p = e.path();
        if let Ok(text) = std::fs::read_to_string(&p) {
            if text.starts_with("#!") && text.contains(tmp.to_str().unwrap()) {
                let fixed = text.replace(tmp.to_str().unwrap(), dir.to_str().unwrap());
                std::fs::write(&p, fixed).expect("rewrite a shebang");
            }
        }
    }
    for f in ["pyvenv.cfg", "bin/activate"] {
        let p = tmp.join(f);
        if let Ok(text) = std::fs::read_to_string(&p) {
            std::fs::write(
                &p,
                text.replace(tmp.to_str().unwrap(), dir.to_str().unwrap()),
            )
            .expect("rewrite venv paths");
        }
    }
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&tmp));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).expect("rename the venv into place");
    std::fs::File::create(dir.join(".complete"))
        .and_then(|mut f| f.write_all(PINS.join("\n").as_bytes()))
        .expect("mark the venv complete");
    check(&dir);
    dir
}

fn check(dir: &Path) {
    for t in ["cyclonedx-py", "ruff"] {
        let out = Command::new(dir.join("bin").join(t))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{t} --version: {e}"));
        assert!(out.status.success(), "{t} --version failed: {out:?}");
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
