//! `cargo xtask uninstall`: removes what `install` put in place.
//!
//! Stops and disables the service (when systemd is PID 1), removes the unit,
//! the binaries under `<prefix>/bin` and the hooks in `/usr/libexec/cilock`.
//! The configuration, the signing key and the `cilock` group are kept
//! unless `--purge` (the key signed attestations others may still verify).
//! Refuses to run when the Debian package `cilock` is installed (its files
//! are dpkg's).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::install::{
    CONFIG_FILE, ETC_DIR, GROUP, HOOK_DIR, HOOK_FILES, KEY_FILE, UNIT, UNIT_FILE,
};
use crate::util::{self, cmd, exec, note, step, under};

/// `cargo xtask uninstall` options.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The prefix given to `install`.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Also remove /etc/cilock (config and signing key!) and the group.
    #[arg(long)]
    pub purge: bool,
    /// Remove files staged under this directory instead.
    #[arg(long)]
    pub destdir: Option<PathBuf>,
}

/// Runs the uninstall.
pub fn run(args: UninstallArgs) -> anyhow::Result<()> {
    let staged = args.destdir.is_some();
    if !staged {
        util::require_root("uninstall")?;
        crate::install::refuse_over_package("uninstall")?;
    }
    let root = args.destdir.clone().unwrap_or_default();

    step("service");
    let unit_path = under(&root, Path::new(UNIT_FILE));
    if staged {
        note("skipped (--destdir)");
    } else if util::systemd_is_pid1() && unit_path.exists() {
        // Both fail harmlessly when the unit is not loaded or not enabled.
        let _ = exec(cmd("systemctl").args(["disable", "--now", UNIT]));
    } else {
        note("systemd is not PID 1 or the unit is absent; stop a hand-started cilock-daemon with SIGTERM");
    }

    step("unit");
    util::remove_file(&unit_path)?;
    if !staged && util::systemd_is_pid1() {
        exec(cmd("systemctl").arg("daemon-reload"))?;
    }

    step("binaries");
    for name in ["cilock", "cilock-daemon"] {
        util::remove_file(&under(&root, &args.prefix.join("bin").join(name)))?;
    }

    step("runner hooks");
    let hooks = under(&root, Path::new(HOOK_DIR));
    for (name, _) in HOOK_FILES {
        util::remove_file(&hooks.join(name))?;
    }
    match std::fs::remove_dir(&hooks) {
        Ok(()) => note(format!("removed {}", hooks.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => note(format!("kept {}: {e}", hooks.display())),
    }
    note("runner configurations that point at these hooks must be edited by hand");

    step("configuration, key and group");
    let etc = under(&root, Path::new(ETC_DIR));
    if args.purge {
        if etc.exists() {
            std::fs::remove_dir_all(&etc).with_context(|| format!("removing {}", etc.display()))?;
            note(format!(
                "removed {} (config and signing key)",
                etc.display()
            ));
        }
        if staged {
            note("group left alone (--destdir)");
        } else if util::group_exists(GROUP) {
            exec(cmd("groupdel").arg(GROUP))?;
        }
    } else {
        note(format!(
            "kept {CONFIG_FILE}, {KEY_FILE} and group {GROUP} (use --purge to remove them)"
        ));
    }
    step("uninstalled");
    Ok(())
}
