//! The guest's initramfs, a newc cpio written by hand ([`Cpio`]):
//! busybox-static, `tests/vm/init.sh` as `/init`, the modules, the test list
//! and the host directories the guest mounts over 9p ([`NOT_SHARED`] stay
//! out).

use anyhow::{bail, Context as _};

use crate::util;

use super::kernels::Kernel;
use super::qemu::{Mode, Tools};
use super::TestEntry;

/// Host top-level directories that are not shared into the guest (the
/// guest mounts its own, or they are irrelevant).
pub(super) const NOT_SHARED: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "boot",
    "lost+found",
    "mnt",
    "media",
    "old_root",
];

/// A newc cpio archive being written.
pub(super) struct Cpio {
    pub(super) out: Vec<u8>,
    pub(super) ino: u32,
}

impl Cpio {
    pub(super) fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    pub(super) fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(hdr.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    pub(super) fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub(super) fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    pub(super) fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }

    pub(super) fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// Writes the guest's initramfs.
pub(super) fn initramfs(
    kernel: &Kernel,
    tools: &Tools,
    tests: &[TestEntry],
    env: &[(String, String)],
    test_timeout: u64,
    mode: Mode,
) -> anyhow::Result<Vec<u8>> {
    let root = util::workspace_root();
    let init = std::fs::read(root.join("tests/vm/init.sh")).context("reading tests/vm/init.sh")?;
    let busybox = std::fs::read(&tools.busybox)
        .with_context(|| format!("reading {}", tools.busybox.display()))?;
    let mut c = Cpio::new();
    c.file("init", 0o755, &init);
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        ".vm",
        ".vm/host",
        ".vm/modules",
    ] {
        c.dir(d);
    }
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.file(".vm/busybox", 0o755, &busybox);
    // The test loop init.sh and run-systemd.sh share.
    let run_tests = std::fs::read(root.join("tests/vm/run-tests.sh"))
        .context("reading tests/vm/run-tests.sh")?;
    c.file(".vm/run-tests.sh", 0o644, &run_tests);
    let mut order = String::new();
    let extra: &[std::path::PathBuf] = match mode {
        Mode::Busybox => &[],
        Mode::Systemd => {
            for f in ["init-systemd.sh", "run-systemd.sh"] {
                let text = std::fs::read(root.join("tests/vm").join(f))
                    .with_context(|| format!("reading tests/vm/{f}"))?;
                c.file(&format!(".vm/{f}"), 0o644, &text);
            }
            &kernel.systemd_modules
        }
    };
    c.file(".vm/mode", 0o644, format!("{}\n", mode.name()).as_bytes());
    for m in kernel.modules.iter().chain(extra) {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        c.file(&format!(".vm/modules/{name}"), 0o644, &std::fs::read(m)?);
        order.push_str(&name);
        order.push('\n');
    }
    c.file(".vm/modules.order", 0o644, order.as_bytes());
    // The host's top level: its symlinks (bin → usr/bin, ...) as they are,
    // its directories as bind mounts of the 9p share.
    let mut binds = String::new();
    let mut names: Vec<_> = std::fs::read_dir("/")?.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type()?;
        if ft.is_symlink() {
            let target = std::fs::read_link(e.path())?;
            c.symlink(&name, &target.to_string_lossy());
        } else if ft.is_dir()
            && !NOT_SHARED.contains(&name.as_str())
            && !name.contains(char::is_whitespace)
        {
            c.dir(&name);
            binds.push_str(&name);
            binds.push('\n');
        }
    }
    // A checkout (or target dir) under a directory the guest does not share
    // (/tmp, /run) is bound on its own, after those are mounted fresh.
    let mut extra: Vec<std::path::PathBuf> = Vec::new();
    for dir in [root.clone(), util::target_dir()] {
        let Ok(rel) = dir.strip_prefix("/") else {
            continue;
        };
        let top = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let inside_known = extra.iter().any(|e| dir.starts_with(e));
        if NOT_SHARED.contains(&top.as_str()) && !inside_known {
            if rel.to_string_lossy().contains(char::is_whitespace) {
                bail!(
                    "{} contains white space; the guest cannot bind it",
                    dir.display()
                );
            }
            binds.push_str(&rel.to_string_lossy());
            binds.push('\n');
            extra.push(dir);
        }
    }
    c.file(".vm/binds", 0o644, binds.as_bytes());
    let mut list = String::new();
    for t in tests {
        let first = t
            .exe
            .components()
            .nth(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if NOT_SHARED.contains(&first.as_str()) && !extra.iter().any(|e| t.exe.starts_with(e)) {
            bail!(
                "{} is under /{first}, which the guest does not share; use a CARGO_TARGET_DIR elsewhere",
                t.exe.display()
            );
        }
        list.push_str(&format!("{}\t{}\n", t.name(), t.command_line()));
    }
    c.file(".vm/tests.list", 0o644, list.as_bytes());
    let env_text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    c.file(".vm/env", 0o644, env_text.as_bytes());
    c.file(
        ".vm/test-timeout",
        0o644,
        format!("{test_timeout}\n").as_bytes(),
    );
    Ok(c.finish())
}
