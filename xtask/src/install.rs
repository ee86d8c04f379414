//! `cargo xtask install`: the daemon as a systemd service.
//!
//! Builds release binaries, then (each step idempotent and printed):
//! installs `cilock` and `cilock-daemon` into `<prefix>/bin`; creates the
//! `cilock` group (`groupadd --system`) if missing; installs
//! `/etc/cilock/cilock.toml` unless present; generates
//! `/etc/cilock/signing-key.pem` (0600 root) and `.pem.pub` with
//! `cilock keygen` unless present; installs the unit as
//! `/etc/systemd/system/cilock.service` (ExecStart pointing into `<prefix>`)
//! and the runner hooks into `/usr/libexec/cilock/`; then, when systemd is
//! PID 1, `systemctl daemon-reload` and `enable --now` (restart when it was
//! already running), unless `--no-start`.
//!
//! Refuses to run over the Debian package `cilock` (`cargo xtask deb`).
//!
//! `--destdir DIR` stages every file under DIR instead (for packaging or a
//! dry run): no group is created and systemctl is not called.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::util::{self, cmd, exec, note, step, under};

/// Config directory.
pub const ETC_DIR: &str = "/etc/cilock";
/// Config file.
pub const CONFIG_FILE: &str = "/etc/cilock/cilock.toml";
/// Signing key.
pub const KEY_FILE: &str = "/etc/cilock/signing-key.pem";
/// Unit file.
pub const UNIT_FILE: &str = "/etc/systemd/system/cilock.service";
/// Hook scripts directory.
pub const HOOK_DIR: &str = "/usr/libexec/cilock";
/// Socket group.
pub const GROUP: &str = "cilock";
/// Unit name.
pub const UNIT: &str = "cilock.service";
/// The hook files shipped in `dist/hooks` (name, mode).
pub const HOOK_FILES: &[(&str, u32)] = &[
    ("gha-job-started.sh", 0o755),
    ("gha-job-completed.sh", 0o755),
    ("gitlab-pre-build.sh", 0o755),
    ("gitlab-post-build.sh", 0o755),
    // Sourced into the job's shell (it exports DOCKER_HOST there), not run.
    ("gitlab-pre-build-env.sh", 0o644),
    ("cilock-hook-common.sh", 0o644),
    ("README.md", 0o644),
];

/// `cargo xtask install` options.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Installation prefix for the binaries.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Install and enable, but do not start (or restart) the service.
    #[arg(long)]
    pub no_start: bool,
    /// Stage all files under this directory (no group, no systemctl).
    #[arg(long)]
    pub destdir: Option<PathBuf>,
    /// Use already built release binaries (skip `cargo build --release`).
    #[arg(long)]
    pub no_build: bool,
}

/// Runs the install.
pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    if !args.prefix.is_absolute() {
        bail!("--prefix must be an absolute path");
    }
    let staged = args.destdir.is_some();
    if !staged {
        util::require_root("install")?;
        refuse_over_package("install")?;
    }
    let root = args.destdir.clone().unwrap_or_default();
    let dist = util::workspace_root().join("dist");

    step("building release binaries");
    if args.no_build {
        note("skipped (--no-build)");
    } else {
        if std::env::var_os("CILOCK_SKIP_EBPF").is_some_and(|v| v == "1") {
            note("warning: CILOCK_SKIP_EBPF=1: the daemon is built without eBPF probes (ptrace only)");
        }
        exec(util::cargo().current_dir(util::workspace_root()).args([
            "build",
            "--release",
            "-p",
            "cilock-cli",
            "-p",
            "cilock-daemon",
        ]))?;
    }
    let release = util::target_dir().join("release");

    step(format!("binaries into {}/bin", args.prefix.display()));
    let bindir = under(&root, &args.prefix.join("bin"));
    for name in ["cilock", "cilock-daemon"] {
        let src = release.join(name);
        if !src.is_file() {
            bail!("{} was not built (run without --no-build)", src.display());
        }
        util::install_file(&src, &bindir.join(name), 0o755)?;
    }

    step(format!("group {GROUP}"));
    if staged {
        note("skipped (--destdir)");
    } else if util::group_exists(GROUP) {
        note("exists");
    } else {
        exec(cmd("groupadd").args(["--system", GROUP]))?;
    }

    step(format!("configuration {CONFIG_FILE}"));
    let etc = under(&root, Path::new(ETC_DIR));
    util::mkdir(&etc, 0o755)?;
    let config = under(&root, Path::new(CONFIG_FILE));
    if config.exists() {
        note("present; left unchanged (the shipped default is dist/cilock.toml)");
    } else {
        util::install_file(&dist.join("cilock.toml"), &config, 0o644)?;
    }

    step(format!("signing key {KEY_FILE}"));
    let key = under(&root, Path::new(KEY_FILE));
    if key.exists() {
        note("present; left unchanged");
    } else {
        exec(cmd(bindir.join("cilock")).arg("keygen").arg("-o").arg(&key))?;
    }
    secure_key(&key, staged)?;

    step(format!("unit {UNIT_FILE}"));
    let unit_src = std::fs::read_to_string(dist.join("cilock.service"))
        .context("reading dist/cilock.service")?;
    let unit = render_unit(&unit_src, &args.prefix);
    let unit_dest = under(&root, Path::new(UNIT_FILE));
    let unit_changed = util::install_bytes(unit.as_bytes(), &unit_dest, 0o644)?;
    note(if unit_changed {
        format!("installed {}", unit_dest.display())
    } else {
        format!("{} is up to date", unit_dest.display())
    });

    step(format!("runner hooks into {HOOK_DIR}"));
    let hooks = under(&root, Path::new(HOOK_DIR));
    util::mkdir(&hooks, 0o755)?;
    for (name, mode) in HOOK_FILES {
        util::install_file(&dist.join("hooks").join(name), &hooks.join(name), *mode)?;
    }

    step("service");
    let daemon = args.prefix.join("bin/cilock-daemon");
    if staged {
        note("skipped (--destdir)");
    } else if util::systemd_is_pid1() {
        exec(cmd("systemctl").arg("daemon-reload"))?;
        if args.no_start {
            exec(cmd("systemctl").args(["enable", UNIT]))?;
            note("enabled; not started (--no-start): systemctl start cilock");
        } else {
            let active = util::output(cmd("systemctl").args(["is-active", UNIT]))
                .is_some_and(|s| s.trim() == "active");
            exec(cmd("systemctl").args(["enable", UNIT]))?;
            if active {
                exec(cmd("systemctl").args(["restart", UNIT]))?;
            } else {
                exec(cmd("systemctl").args(["start", UNIT]))?;
            }
            let _ = exec(cmd("systemctl").args(["--no-pager", "--lines=0", "status", UNIT]));
        }
    } else {
        note("systemd is not PID 1 here: the unit was installed but not enabled.");
        note(format!(
            "Start the daemon by hand (as root): {} --config {CONFIG_FILE}",
            daemon.display()
        ));
        note(format!(
            "Check the setup first with: {} --check-config",
            daemon.display()
        ));
    }

    step("next steps");
    note(format!("add the CI runner's user to the group: usermod -aG {GROUP} <runner-user> (then restart the runner)"));
    note(format!("GitHub: in <runner>/.env set ACTIONS_RUNNER_HOOK_JOB_STARTED={HOOK_DIR}/gha-job-started.sh"));
    note(format!(
        "        and ACTIONS_RUNNER_HOOK_JOB_COMPLETED={HOOK_DIR}/gha-job-completed.sh"
    ));
    note(format!(
        "GitLab: pre_build_script = \". {HOOK_DIR}/gitlab-pre-build-env.sh\" (sourced: it also points the job's docker at cilock's Docker proxy; see {HOOK_DIR}/README.md)"
    ));
    note(format!("verifiers need the public key: {KEY_FILE}.pub"));
    Ok(())
}

/// Fails when the Debian package `cilock` is installed: `install` would
/// overwrite its hooks and shadow its unit, `uninstall` would remove its
/// files, and `uninstall --purge` its conffile, key and group, behind
/// dpkg's back.
pub fn refuse_over_package(task: &str) -> anyhow::Result<()> {
    let status = util::output(cmd("dpkg-query").args(["-W", "-f=${Status}", crate::deb::PACKAGE]));
    if status.is_some_and(|s| s.trim() == "install ok installed") {
        bail!(
            "the Debian package {0} is installed: manage it with dpkg/apt, not `cargo xtask {task}` (dpkg -r {0}, or dpkg --purge {0})",
            crate::deb::PACKAGE
        );
    }
    Ok(())
}

/// The daemon's path in `dist/cilock.service` (where the Debian package
/// puts it).
pub const UNIT_DAEMON: &str = "/usr/bin/cilock-daemon";

/// The unit text with the daemon's path under `prefix`.
pub fn render_unit(unit: &str, prefix: &Path) -> String {
    let daemon = prefix.join("bin/cilock-daemon");
    unit.replace(
        &format!("ExecStart={UNIT_DAEMON} "),
        &format!("ExecStart={} ", daemon.to_string_lossy()),
    )
}

/// Makes the key 0600 root:root and its public half 0644.
fn secure_key(key: &Path, staged: bool) -> anyhow::Result<()> {
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", key.display()))?;
    if !staged {
        std::os::unix::fs::chown(key, Some(0), Some(0))
            .with_context(|| format!("chown root:root {}", key.display()))?;
    }
    note(format!(
        "{} is 0600{}",
        key.display(),
        if staged { "" } else { " root:root" }
    ));
    let mut public = key.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    if public.exists() {
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod 644 {}", public.display()))?;
        note(format!("public key {}", public.display()));
    } else {
        note(format!(
            "no public key next to it; derive one with: openssl pkey -in {} -pubout -out {}",
            key.display(),
            public.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_prefix() {
        let u = "ExecStart=/usr/bin/cilock-daemon --config /etc/cilock/cilock.toml\n";
        assert_eq!(
            render_unit(u, Path::new("/opt/cilock")),
            "ExecStart=/opt/cilock/bin/cilock-daemon --config /etc/cilock/cilock.toml\n"
        );
        assert_eq!(
            render_unit(u, Path::new("/usr/local")),
            "ExecStart=/usr/local/bin/cilock-daemon --config /etc/cilock/cilock.toml\n"
        );
        assert_eq!(render_unit(u, Path::new("/usr")), u);
    }

    /// The shipped unit starts the daemon from /usr/bin (the package's
    /// path), exactly once, so `install` rewrites exactly that line.
    #[test]
    fn shipped_unit_execstart() {
        let unit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/cilock.service"),
        )
        .unwrap();
        let exec: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(
            exec,
            ["ExecStart=/usr/bin/cilock-daemon --config /etc/cilock/cilock.toml"]
        );
        let rendered = render_unit(&unit, Path::new("/usr/local"));
        assert_eq!(
            rendered.matches("/usr/local/bin/cilock-daemon").count(),
            1,
            "only ExecStart= names the binary"
        );
    }

    /// Every file in `dist/hooks` is installed, and the sourced ones are
    /// not executable.
    #[test]
    fn every_hook_file_is_installed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/hooks");
        let mut shipped: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        shipped.sort();
        let mut installed: Vec<String> = HOOK_FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        installed.sort();
        assert_eq!(shipped, installed);
        for (name, mode) in HOOK_FILES {
            let sourced = *name == "cilock-hook-common.sh" || *name == "gitlab-pre-build-env.sh";
            if sourced || name.ends_with(".md") {
                assert_eq!(*mode, 0o644, "{name}");
            } else {
                assert_eq!(*mode, 0o755, "{name}");
            }
        }
    }
}
