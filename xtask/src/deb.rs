//! `cargo xtask deb`: the Debian package `cilock`.
//!
//! 1. builds `cilock` and `cilock-daemon` for the profile (`release` by
//!    default; `--profile dev` packages the debug binaries the tests use;
//!    `--no-build` takes what is built);
//! 2. generates, with those binaries, the man pages (`cilock manpages`,
//!    `cilock-daemon --manpage`, then `gzip -9n`) and the shell completions
//!    (`cilock completions bash|zsh|fish`) into `target/debian/assets/`
//!    (one directory for both profiles: it is emptied and refilled right
//!    before every `cargo deb`);
//! 3. runs `cargo deb --no-build` (cargo-deb, pinned in [`crate::setup`]):
//!    the metadata is `[package.metadata.deb]` in `cilock-cli/Cargo.toml`,
//!    the maintainer scripts are in `dist/debian/`;
//! 4. prints the path of `target/debian[/dev]/cilock_<version>_<arch>.deb`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};

use crate::util::{self, cmd, exec, note, step};

/// The package's name.
pub const PACKAGE: &str = "cilock";

/// Build profiles a package can be made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Optimised binaries (what users install).
    Release,
    /// The debug binaries the test suite builds anyway.
    Dev,
}

impl Profile {
    /// Cargo's name of the profile.
    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "dev",
        }
    }

    /// The profile's output directory under the target directory.
    fn out_dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// `cargo xtask deb` options.
#[derive(Debug, Args)]
pub struct DebArgs {
    /// Which binaries to package.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub profile: Profile,
    /// Package the binaries already built for the profile (skip `cargo build`).
    #[arg(long)]
    pub no_build: bool,
}

/// Where the package of `profile` is written.
pub fn output_dir(profile: Profile) -> PathBuf {
    let d = util::target_dir().join("debian");
    match profile {
        Profile::Release => d,
        Profile::Dev => d.join("dev"),
    }
}

/// Where the generated man pages and completions go (the package
/// metadata's assets name `target/release/../debian/assets/`, which
/// cargo-deb resolves in the profile's directory: this one for both).
fn assets_dir() -> PathBuf {
    util::target_dir().join("debian").join("assets")
}

/// The package's file name: `cilock_<version>_<arch>.deb`.
pub fn file_name(version: &str, arch: &str) -> String {
    format!("{PACKAGE}_{version}_{arch}.deb")
}

/// Runs the task.
pub fn run(args: DebArgs) -> anyhow::Result<()> {
    let path = build(args.profile, args.no_build)?;
    println!("{}", path.display());
    Ok(())
}

/// Builds the package; returns its path.
pub fn build(profile: Profile, no_build: bool) -> anyhow::Result<PathBuf> {
    let root = util::workspace_root();
    step(format!("binaries ({} profile)", profile.cargo_name()));
    if no_build {
        note("skipped (--no-build)");
    } else {
        exec(util::cargo().current_dir(&root).args([
            "build",
            "--profile",
            profile.cargo_name(),
            "-p",
            "cilock-cli",
            "-p",
            "cilock-daemon",
        ]))?;
    }
    let bins = util::target_dir().join(profile.out_dir());
    let cilock = bins.join("cilock");
    let daemon = bins.join("cilock-daemon");
    for b in [&cilock, &daemon] {
        if !b.is_file() {
            bail!(
                "{} is not built (build it, or run without --no-build)",
                b.display()
            );
        }
    }

    step("man pages and completions");
    generate_assets(&cilock, &daemon, &assets_dir())?;

    step("cargo deb");
    if util::output(util::cargo().args(["deb", "--version"])).is_none() {
        bail!("cargo-deb is not installed: run `cargo xtask setup`");
    }
    let out = output_dir(profile);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = util::output(cmd("dpkg").arg("--print-architecture"))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .context("`dpkg --print-architecture` failed: cargo deb needs dpkg")?;
    let deb = out.join(file_name(version, &arch));
    let mut c = util::cargo();
    c.current_dir(&root).args([
        "deb",
        "--no-build",
        "-p",
        "cilock-cli",
        "--profile",
        profile.cargo_name(),
    ]);
    if profile == Profile::Dev {
        // Fast xz: ~4 s instead of ~25 s for the tests' package (CI time).
        c.arg("--fast");
    }
    c.arg("--output").arg(&deb);
    {
        // cargo-deb deletes every cilock_*_<arch>.deb in target/debian
        // before it builds, whatever --output says: the dev package would
        // take the release package with it.
        let _kept = (profile == Profile::Dev)
            .then(|| KeptAside::new(&output_dir(Profile::Release).join(file_name(version, &arch))))
            .transpose()?;
        exec(&mut c)?;
    }
    if !deb.is_file() {
        bail!("cargo deb did not write {}", deb.display());
    }
    note(format!("built {}", deb.display()));
    Ok(deb)
}

/// A file renamed to `<name>.kept` while it lives, then renamed back.
struct KeptAside {
    path: PathBuf,
    aside: PathBuf,
}

impl KeptAside {
    /// Moves `path` aside if it exists (else does nothing, now or at drop).
    fn new(path: &Path) -> anyhow::Result<Option<KeptAside>> {
        if !path.is_file() {
            return Ok(None);
        }
        let mut aside = path.as_os_str().to_owned();
        aside.push(".kept");
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside)
            .with_context(|| format!("moving {} aside", path.display()))?;
        Ok(Some(KeptAside {
            path: path.to_path_buf(),
            aside,
        }))
    }
}

impl Drop for KeptAside {
    fn drop(&mut self) {
        if let Err(e) = std::fs::rename(&self.aside, &self.path) {
            eprintln!(
                "xtask: could not put {} back from {}: {e}",
                self.path.display(),
                self.aside.display()
            );
        }
    }
}

/// Writes `man1/*.1.gz`, `man8/cilock-daemon.8.gz` and
/// `completions/{cilock,_cilock,cilock.fish}` under `dir` (emptied first,
/// so no page of a removed subcommand is packaged).
fn generate_assets(cilock: &Path, daemon: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let man1 = dir.join("man1");
    let man8 = dir.join("man8");
    let completions = dir.join("completions");
    for d in [&man1, &man8, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    exec(cmd(cilock).arg("manpages").arg(&man1))?;
    exec(cmd(daemon).arg("--manpage").arg(&man8))?;
    gzip_pages(&man1, "1")?;
    gzip_pages(&man8, "8")?;
    if !man8.join("cilock-daemon.8.gz").is_file() {
        bail!("`cilock-daemon --manpage` wrote no cilock-daemon.8");
    }
    if !man1.join("cilock.1.gz").is_file() {
        bail!("`cilock manpages` wrote no cilock.1");
    }
    for (shell, name) in [
        ("bash", "cilock"),
        ("zsh", "_cilock"),
        ("fish", "cilock.fish"),
    ] {
        let out = std::process::Command::new(cilock)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {}", cilock.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "`cilock completions {shell}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let p = completions.join(name);
        std::fs::write(&p, &out.stdout).with_context(|| format!("writing {}", p.display()))?;
    }
    note(format!("into {}", dir.display()));
    Ok(())
}

/// `gzip -9n` every `*.<section>` page in `dir` (no name, no time stamp in
/// the archive: the same page gives the same bytes); fails on any other file.
fn gzip_pages(dir: &Path, section: &str) -> anyhow::Result<()> {
    let mut pages = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == section) {
            pages.push(p);
        } else {
            bail!(
                "{}: not a section {section} man page (generated into {})",
                p.display(),
                dir.display()
            );
        }
    }
    if pages.is_empty() {
        bail!(
            "no section {section} man page was generated in {}",
            dir.display()
        );
    }
    pages.sort();
    exec(cmd("gzip").args(["-9nf"]).args(&pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_places() {
        assert_eq!(file_name("0.1.0", "amd64"), "cilock_0.1.0_amd64.deb");
        assert!(output_dir(Profile::Release).ends_with("target/debian"));
        assert!(output_dir(Profile::Dev).ends_with("target/debian/dev"));
        assert!(assets_dir().ends_with("target/debian/assets"));
    }

    /// The package installs what `cargo xtask install` installs, where it
    /// does: the hooks of `install::HOOK_FILES` with their modes, the
    /// conffile, and the maintainer scripts' key and group are `install`'s.
    #[test]
    fn package_agrees_with_install() {
        use crate::install::{CONFIG_FILE, GROUP, HOOK_DIR, HOOK_FILES, KEY_FILE, UNIT};
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |p: &str| std::fs::read_to_string(repo.join(p)).unwrap();
        let manifest = read("cilock-cli/Cargo.toml");
        // Each asset is a one-line array of strings: valid JSON.
        let mut hooks: Vec<(String, u32)> = manifest
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("[\"../dist/hooks/"))
            .map(|l| {
                let a: Vec<String> = serde_json::from_str(l.trim_end_matches(',')).unwrap();
                assert_eq!(a.len(), 3, "{l}");
                assert_eq!(a[1], format!("{}/", &HOOK_DIR[1..]), "{l}");
                let name = a[0].strip_prefix("../dist/hooks/").unwrap().to_owned();
                (name, u32::from_str_radix(&a[2], 8).unwrap())
            })
            .collect();
        hooks.sort();
        let mut want: Vec<(String, u32)> = HOOK_FILES
            .iter()
            .map(|(n, m)| ((*n).to_owned(), *m))
            .collect();
        want.sort();
        assert_eq!(hooks, want);
        assert!(manifest.contains(&format!("\nconf-files = [\"{CONFIG_FILE}\"]\n")));
        assert!(manifest.contains(&format!(
            "unit-name = \"{}\"",
            UNIT.strip_suffix(".service").unwrap()
        )));

        let postinst = read("dist/debian/postinst");
        assert!(postinst.contains(&format!("\nKEY={KEY_FILE}\n")));
        assert!(postinst.contains(&format!("getent group {GROUP} ")));
        assert!(postinst.contains(&format!("groupadd --system {GROUP}\n")));
        let postrm = read("dist/debian/postrm");
        assert!(postrm.contains(&format!("rm -f {KEY_FILE} {KEY_FILE}.pub\n")));
        assert!(postrm.contains(&format!("getent group {GROUP} ")));
        assert!(postrm.contains(&format!("groupdel {GROUP} ")));
    }
}
