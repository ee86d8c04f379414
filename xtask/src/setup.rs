//! `cargo xtask setup`: build prerequisites and kernel filesystems.
//!
//! 1. apt packages (installed only when missing; `apt-get update` runs only
//!    when something must be installed), among them the container engines
//!    the container tests drive (`docker.io`, `podman`, …), installed with
//!    service starts denied (`policy-rc.d`), so no system dockerd is left
//!    running: the tests start their own on private sockets; likewise the
//!    OCI registry (`docker-registry`, whose package would serve :5000) and
//!    `skopeo` of the evidence-store tests, which start their own registry
//!    on loopback;
//! 2. `rust-src` for the nightly toolchain (the nightly itself is never
//!    updated);
//! 3. `bpf-linker` 0.13.0 built against LLVM 22 (skipped when
//!    `bpf-linker --version` already reports 0.13.0);
//! 4. `clippy` and `rustfmt` for the build toolchain (the gates of
//!    `cargo xtask lint`; added only when missing);
//! 5. `cargo-fuzz` 0.13.1 (for the fuzz smoke run of `cargo xtask test`;
//!    skipped when `cargo fuzz --version` already reports it);
//! 6. `cargo-deb` 3.8.0 (for `cargo xtask deb`, which the tests' package
//!    test and the kernel matrix's systemd boots use; skipped when
//!    `cargo-deb --version` already reports it);
//! 7. tracefs at `/sys/kernel/tracing`, bpffs at `/sys/fs/bpf`, and a cgroup2
//!    hierarchy (at `/sys/fs/cgroup` when that is empty, else at
//!    `/sys/fs/cgroup/unified`), each only when missing.

use std::path::Path;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::util::{self, cmd, exec, note, output, step};

/// Packages the eBPF build and the tests need.
pub const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "pkg-config",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "libxml2-dev",
    "strace",
    "python3-cryptography",
    // `python3 -m venv` for the PyPI tools of the attestor tests
    // (cyclonedx-py, ruff, in-toto-attestation: cilock_testkit::pytools).
    "python3-venv",
    "openssl",
    "iproute2",
    // The git attestor's tests compare gix with the git CLI; the adversarial
    // and limits tests use setpriv, unshare, useradd/groupadd.
    "git",
    "util-linux",
    "passwd",
    // cargo-deb's `$auto` dependencies (dpkg-shlibdeps) for `cargo xtask deb`;
    // the package's own maintainer scripts use deb-systemd-helper.
    "dpkg-dev",
    "init-system-helpers",
    // groff renders the generated man pages in the tests (`-ww`: every
    // warning) and reads them as text (`cilock manpages`, `cilock-daemon
    // --manpage`).
    "groff-base",
    // The kernel matrix's @systemd boot runs this machine's systemd as the
    // guest's PID 1 (and D-Bus, which a user's systemctl needs).
    "systemd",
    "dbus",
];

/// Packages of the container tests: dockerd/containerd/runc and the docker
/// CLI, a static busybox for the test image, podman and the uid maps of its
/// rootless mode. Installing them must not leave a system dockerd running
/// (see [`NoServiceStarts`] and [`stop_system_dockerd`]).
pub const CONTAINER_PACKAGES: &[&str] = &["docker.io", "busybox-static", "podman", "uidmap"];

/// Packages of the evidence-store tests (issue #16): Debian's OCI registry
/// (distribution 2.8; each test starts its own on loopback) and `skopeo`,
/// and `curl`, the independent clients that read what cilock pushed, and
/// `htpasswd` (`apache2-utils`) for the registries behind Basic auth. Installing the
/// registry must not leave its system service running on :5000 (see
/// [`NoServiceStarts`] and [`stop_system_registry`]).
pub const STORE_PACKAGES: &[&str] = &["docker-registry", "skopeo", "curl", "apache2-utils"];

/// The pids of running system registries: `docker-registry` processes
/// serving the package's configuration (test registries use their own).
pub fn system_registries() -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_registry = args
            .first()
            .is_some_and(|a| a.ends_with(b"docker-registry"));
        let system_config = args
            .iter()
            .any(|a| *a == b"/etc/docker/registry/config.yml");
        if is_registry && system_config {
            out.push(pid);
        }
    }
    out
}

/// After `docker-registry` was installed by setup: disables (under
/// systemd) and stops a system registry its installation enabled or
/// started anyway.
pub fn stop_system_registry() -> anyhow::Result<()> {
    stop_system_service(
        "docker-registry",
        &["docker-registry.service"],
        system_registries,
    )
}

/// Disables (under systemd) the `units` of a service a package's
/// installation enabled, then stops what still runs of it (`running`: its
/// pids), waiting up to 10 s for it to be gone.
fn stop_system_service(
    what: &str,
    units: &[&str],
    running: impl Fn() -> Vec<u32>,
) -> anyhow::Result<()> {
    if util::systemd_is_pid1() {
        exec(cmd("systemctl").args(["disable", "--now"]).args(units))?;
    }
    for pid in running() {
        note(format!(
            "stopping the system {what} (pid {pid}) the installation started"
        ));
        exec(cmd("kill").args(["-TERM", &pid.to_string()]))?;
    }
    for _ in 0..100 {
        if running().is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!(
        "a system {what} is still running (pids {:?}): stop it; the tests start their own",
        running()
    )
}

/// Debian's hook that `invoke-rc.d` and `deb-systemd-invoke` ask before
/// starting a service from a package's maintainer scripts.
pub const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// While it lives, `path` (a `policy-rc.d`) denies every service start
/// (exit 101, "action forbidden by policy"); on drop the file that was
/// there before, if any, is put back, else the file is removed.
#[derive(Debug)]
pub struct NoServiceStarts {
    path: std::path::PathBuf,
    saved: Option<std::path::PathBuf>,
}

impl NoServiceStarts {
    /// Installs the denying policy at `path`, moving an existing one aside.
    pub fn at(path: &Path) -> anyhow::Result<NoServiceStarts> {
        use std::os::unix::fs::PermissionsExt as _;
        let saved = if path.symlink_metadata().is_ok() {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".cilock-setup-saved");
            let aside = std::path::PathBuf::from(aside);
            std::fs::rename(path, &aside)
                .with_context(|| format!("moving {} aside", path.display()))?;
            Some(aside)
        } else {
            None
        };
        let guard = NoServiceStarts {
            path: path.to_path_buf(),
            saved,
        };
        std::fs::write(
            path,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages.\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(guard)
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(saved) = &self.saved {
            if let Err(e) = std::fs::rename(saved, &self.path) {
                eprintln!(
                    "cargo xtask setup: could not put {} back from {}: {e}",
                    self.path.display(),
                    saved.display()
                );
            }
        }
    }
}

/// The pid of a running system dockerd (the one whose pid file is the
/// default `/run/docker.pid`), if any. Test dockerds use their own pid files.
pub fn system_dockerd() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string("/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "dockerd").then_some(pid)
}

/// After `docker.io` was installed by setup: stops (and, under systemd,
/// disables, with its socket unit, which would start it on the first
/// connection) a system dockerd that its installation started anyway.
pub fn stop_system_dockerd() -> anyhow::Result<()> {
    stop_system_service("dockerd", &["docker.socket", "docker.service"], || {
        system_dockerd().into_iter().collect()
    })
}

/// The bpf-linker version the eBPF build is pinned to.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// `cargo xtask setup` options.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Only report what is missing; change nothing.
    #[arg(long)]
    pub check: bool,
}

/// Runs every setup step.
pub fn run(args: SetupArgs) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    apt(&args, &mut missing)?;
    rust_src(&args, &mut missing)?;
    bpf_linker(&args, &mut missing)?;
    lint_tools(&args, &mut missing)?;
    cargo_tool(&args, &mut missing, "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    cargo_tool(&args, &mut missing, "cargo-deb", CARGO_DEB_VERSION)?;
    mounts(&args, &mut missing)?;
    if args.check {
        if missing.is_empty() {
            step("everything is in place");
        } else {
            step("missing (run `cargo xtask setup`):");
            for m in &missing {
                note(m);
            }
            bail!("{} item(s) missing", missing.len());
        }
    } else {
        step("setup complete");
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(cmd("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn apt(args: &SetupArgs, missing: &mut Vec<String>) -> anyhow::Result<()> {
    step("apt packages");
    if output(cmd("dpkg-query").arg("--version")).is_none() {
        note("dpkg-query not found: not a Debian/Ubuntu host; install these by hand:");
        note(APT_PACKAGES.join(" "));
        note(format!(
            "{} (without leaving a system dockerd running)",
            CONTAINER_PACKAGES.join(" ")
        ));
        note(format!(
            "{} (without leaving a system registry running)",
            STORE_PACKAGES.join(" ")
        ));
        return Ok(());
    }
    let absent: Vec<&str> = APT_PACKAGES
        .iter()
        .chain(CONTAINER_PACKAGES)
        .chain(STORE_PACKAGES)
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if absent.is_empty() {
        note("all installed");
        return Ok(());
    }
    note(format!("missing: {}", absent.join(" ")));
    if args.check {
        missing.extend(absent.iter().map(|p| format!("apt package {p}")));
        return Ok(());
    }
    util::require_root("setup")?;
    exec(cmd("apt-get").arg("update"))?;
    let docker = absent.contains(&"docker.io");
    let registry = absent.contains(&"docker-registry");
    {
        // The maintainer scripts of docker.io, containerd and
        // docker-registry start their services; nothing installed here
        // needs a service running.
        let _no_starts = NoServiceStarts::at(Path::new(POLICY_RC_D))?;
        exec(
            cmd("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&absent)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if docker {
        stop_system_dockerd()?;
    }
    if registry {
        stop_system_registry()?;
    }
    Ok(())
}

fn rust_src(args: &SetupArgs, missing: &mut Vec<String>) -> anyhow::Result<()> {
    step("rust-src for the nightly toolchain");
    let toolchains = output(cmd("rustup").args(["toolchain", "list"]))
        .context("rustup is required (https://rustup.rs)")?;
    let have_nightly = toolchains.lines().any(|l| l.starts_with("nightly"));
    if !have_nightly {
        note("no nightly toolchain is installed");
        if args.check {
            missing.push("nightly toolchain with rust-src".into());
            return Ok(());
        }
        // Installing a missing nightly is not updating an existing one.
        return exec(cmd("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let installed =
        output(cmd("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        note("already installed");
        return Ok(());
    }
    if args.check {
        missing.push("rust-src (nightly)".into());
        return Ok(());
    }
    exec(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// `clippy` and `rustfmt` for the active (build) toolchain: `cargo xtask
/// lint` runs them, and a minimal rustup profile has neither.
fn lint_tools(args: &SetupArgs, missing: &mut Vec<String>) -> anyhow::Result<()> {
    step("clippy and rustfmt for the build toolchain");
    let installed =
        output(cmd("rustup").args(["component", "list", "--installed"])).unwrap_or_default();
    let absent: Vec<&str> = ["clippy", "rustfmt"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.trim().starts_with(c)))
        .collect();
    if absent.is_empty() {
        note("already installed");
        return Ok(());
    }
    if args.check {
        missing.extend(absent.iter().map(|c| format!("{c} (rustup component)")));
        return Ok(());
    }
    exec(cmd("rustup").args(["component", "add"]).args(&absent))
}

fn bpf_linker(args: &SetupArgs, missing: &mut Vec<String>) -> anyhow::Result<()> {
    step(format!("bpf-linker {BPF_LINKER_VERSION}"));
    let current = output(cmd("bpf-linker").arg("--version"));
    if let Some(v) = &current {
        if v.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
            note(format!("already installed: {}", v.trim()));
            return Ok(());
        }
        note(format!("found {}, want {BPF_LINKER_VERSION}", v.trim()));
    } else {
        note("not installed");
    }
    if args.check {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
        return Ok(());
    }
    let llvm_bin = Path::new(LLVM_PREFIX).join("bin");
    if !llvm_bin.is_dir() {
        bail!(
            "{} is missing: install llvm-22-dev first (cargo xtask setup installs it on Debian/Ubuntu)",
            llvm_bin.display()
        );
    }
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![llvm_bin.clone()];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs).context("building PATH")?
        }
        None => llvm_bin.clone().into_os_string(),
    };
    exec(
        util::cargo()
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("PATH", path),
    )
}

/// The cargo-fuzz version the fuzz smoke run is pinned to (builds with the
/// stable toolchain; runs the targets with the nightly).
pub const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// `cargo install <tool>@<version> --locked` unless `<tool> --version`
/// (which answers without going through a toolchain, as `<tool> <version>`)
/// already reports that version.
fn cargo_tool(
    args: &SetupArgs,
    missing: &mut Vec<String>,
    tool: &str,
    version: &str,
) -> anyhow::Result<()> {
    step(format!("{tool} {version}"));
    let current = output(cmd(tool).arg("--version"));
    if let Some(v) = &current {
        if v.split_whitespace().any(|w| w == version) {
            note(format!("already installed: {}", v.trim()));
            return Ok(());
        }
        note(format!("found {}, want {version}", v.trim()));
    } else {
        note("not installed");
    }
    if args.check {
        missing.push(format!("{tool} {version}"));
        return Ok(());
    }
    exec(util::cargo().args(["install", &format!("{tool}@{version}"), "--locked"]))
}

/// The cargo-deb version `cargo xtask deb` is pinned to.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// A mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point (octal escapes decoded).
    pub mount_point: String,
    /// Filesystem type.
    pub fs_type: String,
}

/// Parses `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fs_type = fields.get(sep + 1)?;
            Some(MountEntry {
                mount_point: unescape_mount(mount_point),
                fs_type: (*fs_type).to_string(),
            })
        })
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts(args: &SetupArgs, missing: &mut Vec<String>) -> anyhow::Result<()> {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let entries = parse_mountinfo(&table);
    let mounted = |fs: &str, at: &str| {
        entries
            .iter()
            .any(|e| e.fs_type == fs && e.mount_point == at)
    };

    step("tracefs at /sys/kernel/tracing");
    if mounted("tracefs", "/sys/kernel/tracing") {
        note("already mounted");
    } else if args.check {
        missing.push("tracefs mount at /sys/kernel/tracing".into());
    } else {
        util::require_root("setup")?;
        exec(cmd("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))?;
    }

    step("bpffs at /sys/fs/bpf");
    if mounted("bpf", "/sys/fs/bpf") {
        note("already mounted");
    } else if args.check {
        missing.push("bpffs mount at /sys/fs/bpf".into());
    } else {
        util::require_root("setup")?;
        if !Path::new("/sys/fs/bpf").is_dir() {
            exec(cmd("mkdir").args(["-p", "/sys/fs/bpf"]))?;
        }
        exec(cmd("mount").args(["-t", "bpf", "bpffs", "/sys/fs/bpf"]))?;
    }

    step("cgroup2 hierarchy");
    if let Some(e) = entries.iter().find(|e| e.fs_type == "cgroup2") {
        note(format!("already mounted at {}", e.mount_point));
    } else {
        let root = Path::new("/sys/fs/cgroup");
        let empty = std::fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        let at = if empty {
            root.to_path_buf()
        } else {
            root.join("unified")
        };
        if args.check {
            missing.push(format!("cgroup2 mount (would be at {})", at.display()));
        } else {
            util::require_root("setup")?;
            if !at.is_dir() {
                std::fs::create_dir_all(&at).with_context(|| {
                    format!(
                        "creating {} (if /sys/fs/cgroup is a read-only tmpfs, remount it rw first)",
                        at.display()
                    )
                })?;
            }
            exec(cmd("mount").args(["-t", "cgroup2", "cgroup2"]).arg(&at))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_service_starts_denies_then_restores() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policy-rc.d");
        // None before: ours denies (exit 101 when run), then it is gone.
        {
            let _g = NoServiceStarts::at(&p).unwrap();
            let st = std::process::Command::new("sh").arg(&p).status().unwrap();
            assert_eq!(st.code(), Some(101));
        }
        assert!(p.symlink_metadata().is_err());
        // An existing one (the admin's) is put back byte for byte, mode too.
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        {
            let _g = NoServiceStarts::at(&p).unwrap();
            assert_eq!(
                std::process::Command::new("sh")
                    .arg(&p)
                    .status()
                    .unwrap()
                    .code(),
                Some(101)
            );
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "#!/bin/sh\nexit 0\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn mountinfo() {
        let t = "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n\
                 35 22 0:30 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n\
                 40 22 0:12 / /sys/kernel/tracing rw - tracefs tracefs rw\n\
                 41 22 0:13 / /mnt/with\\040space rw - ext4 /dev/sda1 rw\n";
        let e = parse_mountinfo(t);
        assert_eq!(e.len(), 4);
        assert_eq!(e[1].fs_type, "cgroup2");
        assert_eq!(e[1].mount_point, "/sys/fs/cgroup/unified");
        assert_eq!(e[2].fs_type, "tracefs");
        assert_eq!(e[3].mount_point, "/mnt/with space");
    }
}
