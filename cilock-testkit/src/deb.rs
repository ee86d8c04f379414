//! The Debian package `cilock` of the debug binaries (`cargo xtask deb
//! --profile dev --no-build`), for the tests that install it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of the dev package `target/debian/dev/cilock_<version>_<arch>.deb`.
///
/// `CILOCK_DEB` set: that file (the kernel matrix and `cargo xtask test`
/// build the package once and pass it). Else the package is built once per
/// test binary with `cargo xtask deb --profile dev --no-build` (from the
/// debug binaries, built on demand by [`crate::bin::bin`]), unless
/// `CILOCK_E2E_PREBUILT=1`, where it must already be there.
pub fn package() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("CILOCK_DEB").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "CILOCK_DEB={} is not a file", p.display());
            return p;
        }
        let prebuilt = std::env::var_os("CILOCK_E2E_PREBUILT").is_some_and(|v| v == "1");
        if prebuilt {
            let p = expected_path();
            assert!(
                p.is_file(),
                "{} is not built (CILOCK_E2E_PREBUILT=1: run `cargo xtask deb --profile dev --no-build` first)",
                p.display()
            );
            return p;
        }
        // The binaries the package holds.
        crate::bin::bin("cilock");
        crate::bin::bin("cilock-daemon");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["xtask", "deb", "--profile", "dev", "--no-build"])
            .output()
            .expect("running cargo xtask deb");
        assert!(
            out.status.success(),
            "cargo xtask deb --profile dev --no-build failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The task prints the package's path last.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let p = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        assert_eq!(p, expected_path(), "cargo xtask deb printed another path");
        assert!(p.is_file(), "{} was not written", p.display());
        p
    })
    .clone()
}

/// `target/debian/dev/cilock_<version>_<arch>.deb` of this workspace: in
/// the target directory [`crate::bin::bin`] finds the binaries in.
pub fn expected_path() -> PathBuf {
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .expect("dpkg --print-architecture");
    assert!(arch.status.success(), "dpkg --print-architecture failed");
    let arch = String::from_utf8_lossy(&arch.stdout).trim().to_owned();
    // target/<profile>/cilock → target
    let cilock = crate::bin::bin("cilock");
    let target = cilock
        .parent()
        .and_then(Path::parent)
        .expect("the target directory");
    target
        .join("debian/dev")
        .join(format!("cilock_{}_{arch}.deb", env!("CARGO_PKG_VERSION")))
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}
