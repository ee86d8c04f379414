//! The kernels of the matrix ([`KERNELS`]) and how one becomes files in the
//! cache: the Debian package resolved and downloaded with the package tools,
//! unpacked to `vmlinuz` and `config`, and `vmlinux` extracted for a fast PVH
//! boot ([`prepare_kernel`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::util::{exec, note, output};

use super::modules::{decompress_module, module_order, GUEST_MODULES, SYSTEMD_MODULES};

/// How a matrix kernel's package is found.
#[derive(Clone, Copy, Debug)]
pub(super) enum Resolve {
    /// The package a metapackage depends on (`apt-cache depends`).
    Metapackage(&'static str),
    /// The newest package whose name matches (`apt-cache search
    /// --names-only`), preferring the first alternative suffix.
    Search {
        /// Regular expression for `apt-cache search --names-only`.
        pattern: &'static str,
    },
}

/// A kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub(super) struct KernelSpec {
    /// Short name (report column, `--kernel` value, log directory).
    pub(super) name: &'static str,
    /// How its package is found.
    pub(super) resolve: Resolve,
    /// The file-open hook the daemon must choose there (`fexit`, `tracepoint`).
    pub(super) expect_file_open_hook: &'static str,
}

/// The kernels booted under QEMU. To add one, add an entry (see
/// `tests/vm/README.md`).
pub(super) const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "debian-6.1",
        resolve: Resolve::Metapackage("linux-image-amd64"),
        expect_file_open_hook: "fexit",
    },
    KernelSpec {
        name: "debian-6.12",
        resolve: Resolve::Search {
            pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64(-unsigned)?$",
        },
        expect_file_open_hook: "fexit",
    },
];

/// A cached kernel.
#[derive(Debug)]
pub(super) struct Kernel {
    pub(super) release: String,
    /// The image QEMU boots (`vmlinux` for PVH when possible, else `vmlinuz`).
    pub(super) image: PathBuf,
    /// Module files in load order.
    pub(super) modules: Vec<PathBuf>,
    /// What the `@systemd` boot loads after them (overlay), in load order.
    pub(super) systemd_modules: Vec<PathBuf>,
}

/// Resolves, downloads and unpacks one kernel (once; cached).
pub(super) fn prepare_kernel(spec: &KernelSpec, cache: &Path) -> anyhow::Result<Kernel> {
    let pkg = resolve_package(spec)?;
    let release = pkg
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_string();
    let dir = cache.join(&release);
    let done = dir.join(".complete");
    if !done.exists() {
        note(format!("{}: fetching {pkg}", spec.name));
        let deb = download(&pkg, cache)?;
        unpack_kernel(&deb, &release, &dir)?;
        // The .deb is large and everything needed is unpacked.
        std::fs::remove_file(&deb)?;
        std::fs::write(&done, b"")?;
    }
    let sd_dir = dir.join("systemd-modules");
    if !sd_dir.join("order").exists() {
        // A kernel cached before the @systemd mode: only its extra modules
        // are added (nothing cached is rewritten).
        note(format!(
            "{}: fetching {pkg} for the @systemd modules",
            spec.name
        ));
        let deb = download(&pkg, cache)?;
        let tmp = cache.join(format!("{release}.unpack-systemd"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let r = exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp)).and_then(|_| {
            let config = std::fs::read_to_string(dir.join("config"))?;
            unpack_modules(
                &tmp.join(format!("lib/modules/{release}")),
                &config,
                SYSTEMD_MODULES,
                &sd_dir,
            )
        });
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::remove_file(&deb)?;
        r?;
    }
    let vmlinux = dir.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        dir.join("vmlinuz")
    };
    let listed = |sub: &str| -> Vec<PathBuf> {
        std::fs::read_to_string(dir.join(sub).join("order"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| dir.join(sub).join(l))
            .collect()
    };
    note(format!("{}: {release} ({})", spec.name, image.display()));
    Ok(Kernel {
        release,
        image,
        modules: listed("modules"),
        systemd_modules: listed("systemd-modules"),
    })
}

/// `apt-get download pkg` into `cache/debs`; the `.deb`'s path.
fn download(pkg: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    exec(
        Command::new("apt-get")
            .args(["download", pkg])
            .current_dir(&debs),
    )?;
    std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .with_context(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))
}

/// Decompresses `wanted` (and their dependencies) from an unpacked
/// `lib/modules/<release>` into `out`, with their load order in
/// `out/order`.
fn unpack_modules(moddir: &Path, config: &str, wanted: &[&str], out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut names = Vec::new();
    for (name, path) in module_order(moddir, config, wanted)? {
        let file = format!("{name}.ko");
        decompress_module(&path, &out.join(&file))?;
        names.push(file);
    }
    note(format!(
        "modules: {}",
        if names.is_empty() {
            "(all built in)".into()
        } else {
            names.join(" ")
        }
    ));
    std::fs::write(out.join("order"), names.join("\n") + "\n")?;
    Ok(())
}

pub(super) fn resolve_package(spec: &KernelSpec) -> anyhow::Result<String> {
    match spec.resolve {
        Resolve::Metapackage(meta) => {
            let out = output(Command::new("apt-cache").args(["depends", meta]))
                .with_context(|| format!("apt-cache depends {meta} failed (apt-get update?)"))?;
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .map(str::trim)
                .find(|p| p.starts_with("linux-image-"))
                .map(str::to_string)
                .with_context(|| format!("{meta} depends on no linux-image package:\n{out}"))
        }
        Resolve::Search { pattern } => {
            let out = output(Command::new("apt-cache").args(["search", "--names-only", pattern]))
                .context("apt-cache search failed")?;
            let mut names: Vec<String> = out
                .lines()
                .filter_map(|l| l.split(" - ").next())
                .map(|n| n.trim().to_string())
                .collect();
            if names.is_empty() {
                bail!(
                    "no package matches {pattern:?} for {}. On Debian 12 it comes from \
                     bookworm-security or bookworm-backports; enable one, e.g.\n  \
                     echo 'deb http://deb.debian.org/debian bookworm-backports main' > \
                     /etc/apt/sources.list.d/bookworm-backports.list && apt-get update",
                    spec.name
                );
            }
            // Newest version first; the signed image before `-unsigned`.
            names.sort_by(|a, b| {
                version_key(b)
                    .cmp(&version_key(a))
                    .then(a.len().cmp(&b.len()))
            });
            Ok(names.remove(0))
        }
    }
}

/// Numeric components of a package name, for ordering versions.
pub(super) fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Unpacks `vmlinuz`, `config`, `vmlinux` and the guest modules of a kernel
/// `.deb` into `dir`.
pub(super) fn unpack_kernel(deb: &Path, release: &str, dir: &Path) -> anyhow::Result<()> {
    let tmp = dir.with_extension("unpack");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
        std::fs::create_dir_all(dir.join("modules"))?;
        let boot = tmp.join("boot");
        std::fs::copy(boot.join(format!("vmlinuz-{release}")), dir.join("vmlinuz"))
            .with_context(|| format!("no boot/vmlinuz-{release} in {}", deb.display()))?;
        let config = std::fs::read_to_string(boot.join(format!("config-{release}")))
            .with_context(|| format!("no boot/config-{release} in {}", deb.display()))?;
        std::fs::write(dir.join("config"), &config)?;
        if config.lines().any(|l| l == "CONFIG_PVH=y") {
            match extract_vmlinux(&dir.join("vmlinuz"), &dir.join("vmlinux")) {
                Ok(()) => note("extracted vmlinux for a PVH boot"),
                Err(e) => note(format!("no PVH boot (booting the bzImage): {e:#}")),
            }
        }
        let moddir = tmp.join(format!("lib/modules/{release}"));
        unpack_modules(&moddir, &config, GUEST_MODULES, &dir.join("modules"))?;
        unpack_modules(
            &moddir,
            &config,
            SYSTEMD_MODULES,
            &dir.join("systemd-modules"),
        )?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Finds the compressed payload in a bzImage (XZ or zstd) and decompresses
/// it: the ELF `vmlinux`, which QEMU boots directly through its PVH note.
pub(super) fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(vmlinuz)?;
    let formats: [(&[u8], &str, &[&str]); 2] = [
        (
            &[0xfd, b'7', b'z', b'X', b'Z', 0],
            "xz",
            &["-dc", "--single-stream"],
        ),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", &["-dcq"]),
    ];
    let (at, tool, args) = formats
        .iter()
        .find_map(|(magic, tool, args)| {
            data.windows(magic.len())
                .position(|w| w == *magic)
                .map(|at| (at, *tool, *args))
        })
        .context("no XZ or zstd stream in the bzImage")?;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    let tail = data[at..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&tail));
    let res = child.wait_with_output()?;
    let _ = writer.join();
    // The payload is followed by other bytes: a decompressor may complain
    // about trailing data after producing the whole image.
    if res.stdout.len() < 4 || &res.stdout[..4] != b"\x7fELF" {
        bail!("the {tool} stream is not an ELF vmlinux");
    }
    std::fs::write(out, &res.stdout)?;
    Ok(())
}
