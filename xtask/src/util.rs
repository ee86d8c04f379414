//! Helpers shared by the tasks: printing steps, running commands, paths.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// Prints a step heading.
pub fn step(msg: impl AsRef<str>) {
    println!("==> {}", msg.as_ref());
}

/// Prints a detail line under a step.
pub fn note(msg: impl AsRef<str>) {
    println!("    {}", msg.as_ref());
}

/// Renders a command for printing.
pub fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` (printing it), failing unless it exits 0.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    note(format!("$ {}", show(cmd)));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout when it exits 0.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command builder.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    Command::new(program)
}

/// Whether the effective user is root (owner of `/proc/self`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Fails with a clear message unless running as root.
pub fn require_root(task: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("`cargo xtask {task}` must run as root (e.g. sudo -E cargo xtask {task})");
    }
    Ok(())
}

/// Whether systemd is PID 1 (as `sd_booted(3)` decides).
pub fn systemd_is_pid1() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo target directory in effect.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The cargo executable running us (or `cargo`).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `root` + absolute `path` (`root` empty: `path` itself).
pub fn under(root: &Path, path: &Path) -> PathBuf {
    if root.as_os_str().is_empty() || root == Path::new("/") {
        path.to_path_buf()
    } else {
        root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// Creates `dir` (and parents) and sets its mode.
pub fn mkdir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Writes `data` to `dest` with `mode` atomically (temp file + rename, so a
/// running binary is replaced, not overwritten). Returns false when `dest`
/// already had exactly this content and mode.
pub fn install_bytes(data: &[u8], dest: &Path, mode: u32) -> anyhow::Result<bool> {
    if let (Ok(old), Ok(meta)) = (std::fs::read(dest), std::fs::metadata(dest)) {
        if old == data && meta.mode() & 0o7777 == mode {
            return Ok(false);
        }
    }
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent", dest.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?;
    let tmp = dir.join(format!(".{}.xtask-tmp", name.to_string_lossy()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    Ok(true)
}

/// Copies `src` to `dest` with `mode` (see [`install_bytes`]) and prints it.
pub fn install_file(src: &Path, dest: &Path, mode: u32) -> anyhow::Result<()> {
    let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    if install_bytes(&data, dest, mode)? {
        note(format!("installed {} ({mode:04o})", dest.display()));
    } else {
        note(format!("{} is up to date", dest.display()));
    }
    Ok(())
}

/// Removes a file if present, printing what happened.
pub fn remove_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            note(format!("removed {}", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            note(format!("{} not present", path.display()));
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Whether a group exists (`getent group NAME`).
pub fn group_exists(name: &str) -> bool {
    output(cmd("getent").args(["group", name])).is_some_and(|o| !o.trim().is_empty())
}
