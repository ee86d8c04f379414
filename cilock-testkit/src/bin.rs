//! Paths of the built cilock binaries (built on demand unless
//! `CILOCK_E2E_PREBUILT=1`), and the temporary directories tests work in.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of a workspace binary, built on demand (integration tests of this
/// package do not get other packages' binaries built for them).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let p = dir.join(name);
    static BUILD: std::sync::Once = std::sync::Once::new();
    // CILOCK_E2E_PREBUILT=1: the binaries were built beforehand (the kernel
    // matrix runs these tests in VMs, where there is no cargo).
    let prebuilt = std::env::var_os("CILOCK_E2E_PREBUILT").is_some_and(|v| v == "1");
    BUILD.call_once(|| {
        if prebuilt {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile_release = dir.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(cargo);
        c.args(["build", "-p", "cilock-cli", "-p", "cilock-daemon"]);
        if profile_release {
            c.arg("--release");
        }
        let st = c.status().expect("cargo build");
        assert!(st.success(), "building cilock binaries failed");
    });
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// A temporary directory that is removed at drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cilock-e2e.")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// The per-binary shared directory (see [`shared_dir`]).
static SHARED_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn remove_shared_dir() {
    if let Some(d) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A directory every user can traverse (0755), shared by the tests of one
/// test binary and removed when the binary exits. (A `TempDir` kept in a
/// static is never dropped: it would be left in /tmp after every run.)
pub fn shared_dir() -> &'static Path {
    SHARED_DIR.get_or_init(|| {
        let d = tempdir().keep();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod shared dir");
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(remove_shared_dir) };
        d
    })
}

/// A copy of `cilock` every user can execute, in [`shared_dir`] (the
/// checkout may sit in a directory other users cannot traverse).
pub fn shared_cilock() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let p = shared_dir().join("cilock");
        std::fs::copy(bin("cilock"), &p).expect("copy cilock");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod cilock");
        p
    })
    .clone()
}
