//! The five workloads ([`Wl`]), their sizes ([`Sizes`]; `--quick` shrinks
//! them), and the prepared workspace they run in ([`Ctx`]): the C programs
//! compiled, the key, TLS certificate, file tree and vendored crates made
//! once ([`prepare_workdir`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _};

use crate::util::{self, cmd, note, step};

use super::daemon::Servers;
use super::{rm_rf, BenchArgs};

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Wl {
    Build,
    Open,
    Fork,
    Pkg,
    Walk,
}

pub(super) const ALL_WORKLOADS: [Wl; 5] = [Wl::Build, Wl::Open, Wl::Fork, Wl::Pkg, Wl::Walk];

impl Wl {
    pub(super) fn name(self) -> &'static str {
        match self {
            Wl::Build => "build",
            Wl::Open => "open",
            Wl::Fork => "fork",
            Wl::Pkg => "pkg",
            Wl::Walk => "walk",
        }
    }
    pub(super) fn parse(s: &str) -> Option<Wl> {
        ALL_WORKLOADS.into_iter().find(|w| w.name() == s)
    }
}

/// Sizes of one suite.
#[derive(Clone, Debug)]
pub(super) struct Sizes {
    pub(super) opens: u64,
    pub(super) forks: u64,
    pub(super) packages: u64,
    /// Tree: top dirs × sub dirs × files per sub dir.
    pub(super) tree: (u64, u64, u64),
    /// `cargo build -p` selection (empty: the whole graph).
    pub(super) build_packages: Vec<&'static str>,
}

impl Sizes {
    pub(super) fn full() -> Sizes {
        Sizes {
            opens: 200_000,
            forks: 5_000,
            packages: 200,
            tree: (40, 50, 25),
            build_packages: Vec::new(),
        }
    }
    pub(super) fn quick() -> Sizes {
        Sizes {
            opens: 2_000,
            forks: 50,
            packages: 5,
            tree: (2, 5, 10),
            build_packages: vec!["memchr", "itoa"],
        }
    }
    pub(super) fn tree_files(&self) -> u64 {
        self.tree.0 * self.tree.1 * self.tree.2
    }
    pub(super) fn tree_dirs(&self) -> u64 {
        1 + self.tree.0 + self.tree.0 * self.tree.1
    }
    pub(super) fn pkg_files(&self) -> u64 {
        // 25 payload files + package.json per package, .postinstall for
        // every 10th.
        self.packages * 26 + self.packages.div_ceil(10)
    }
}

/// Everything a run needs.
pub(super) struct Ctx {
    pub(super) quick: bool,
    pub(super) sizes: Sizes,
    pub(super) work: PathBuf,
    pub(super) bin: PathBuf,
    pub(super) cilock: PathBuf,
    pub(super) daemon_bin: PathBuf,
    pub(super) key: PathBuf,
    pub(super) python: PathBuf,
    pub(super) servers: Option<Servers>,
    pub(super) true_path: String,
    pub(super) env: Vec<(String, String)>,
}

impl Ctx {
    pub(super) fn tool(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }
    pub(super) fn wd(&self, w: Wl) -> PathBuf {
        match w {
            Wl::Build => self.work.join("heavy/proj"),
            _ => self.work.join(format!("wd-{}", w.name())),
        }
    }
    pub(super) fn command(&self, w: Wl) -> Vec<String> {
        let s = &self.sizes;
        match w {
            Wl::Build => {
                let mut v: Vec<String> = ["cargo", "build", "-j2", "--offline", "--locked", "-q"]
                    .map(String::from)
                    .to_vec();
                for p in &s.build_packages {
                    v.push("-p".into());
                    v.push((*p).into());
                }
                v
            }
            Wl::Open => vec![
                self.tool("openstorm"),
                s.opens.to_string(),
                "/etc/hostname".into(),
            ],
            Wl::Fork => vec![
                self.tool("forkstorm"),
                s.forks.to_string(),
                "2".into(),
                self.true_path.clone(),
            ],
            Wl::Pkg => {
                let sv = self.servers.as_ref().expect("servers started for pkg");
                vec![
                    self.python.display().to_string(),
                    self.work.join("src/pkg_install.py").display().to_string(),
                    sv.dns.to_string(),
                    sv.tls.to_string(),
                    self.work.join("tls/cert.pem").display().to_string(),
                    s.packages.to_string(),
                    self.wd(Wl::Pkg).display().to_string(),
                ]
            }
            Wl::Walk => vec![
                "sh".into(),
                "-c".into(),
                "find \"$1\" -printf '%y %s %p\\n' > /dev/null".into(),
                "sh".into(),
                self.work.join("tree").display().to_string(),
            ],
        }
    }
    /// Resets the workload's outputs (not timed).
    pub(super) fn prepare(&self, w: Wl) -> anyhow::Result<()> {
        let wd = self.wd(w);
        match w {
            Wl::Build => rm_rf(&wd.join("target"))?,
            Wl::Pkg => rm_rf(&wd.join("node_modules"))?,
            _ => {}
        }
        std::fs::create_dir_all(&wd)?;
        Ok(())
    }
}

/// Compiles the C workloads, copies the scripts, makes the key, TLS cert,
/// tree and vendored crates (each only when missing or stale).
pub(super) fn prepare_workdir(
    args: &BenchArgs,
    sizes: Sizes,
    bin_dir: &Path,
) -> anyhow::Result<Ctx> {
    step(format!("bench workspace {}", args.work_dir.display()));
    let work = args.work_dir.clone();
    let src = util::workspace_root().join("bench");
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(work.join("src"))?;
    for c in ["timeit", "openstorm", "forkstorm"] {
        let from = src.join(format!("src/{c}.c"));
        let to = bin.join(c);
        let stale = match (std::fs::metadata(&from), std::fs::metadata(&to)) {
            (Ok(a), Ok(b)) => a.modified()? > b.modified()?,
            _ => true,
        };
        if stale {
            util::exec(cmd("gcc").args(["-O2", "-Wall", "-o"]).arg(&to).arg(&from))?;
        } else {
            note(format!("{} is up to date", to.display()));
        }
    }
    for f in ["pkg_install.py", "pkg_servers.py"] {
        std::fs::copy(src.join("src").join(f), work.join("src").join(f))?;
    }
    let cilock = bin_dir.join("cilock");
    let daemon_bin = bin_dir.join("cilock-daemon");
    for b in [&cilock, &daemon_bin] {
        if !b.exists() {
            bail!("{} not found", b.display());
        }
    }
    let key = work.join("signing-key.pem");
    if !key.exists() {
        util::exec(cmd(&cilock).args(["keygen", "-o"]).arg(&key))?;
    }
    let tls = work.join("tls");
    if !tls.join("cert.pem").exists() {
        std::fs::create_dir_all(&tls)?;
        util::exec(
            cmd("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "3650",
                ])
                .args([
                    "-subj",
                    "/CN=registry.bench.test",
                    "-addext",
                    "subjectAltName=DNS:*.registry.bench.test",
                ])
                .arg("-keyout")
                .arg(tls.join("key.pem"))
                .arg("-out")
                .arg(tls.join("cert.pem"))
                .stderr(Stdio::null()),
        )?;
    }
    make_tree(&work.join("tree"), sizes.tree)?;
    vendor_heavy(&src.join("heavy"), &work.join("heavy"))?;
    for w in ALL_WORKLOADS {
        std::fs::create_dir_all(work.join(format!("wd-{}", w.name())))?;
    }
    let true_path = std::fs::canonicalize("/bin/true")?.display().to_string();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("LANG".into(), "C".into()),
    ];
    for k in ["HOME", "CARGO_HOME", "RUSTUP_HOME", "USER"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.into(), v));
        }
    }
    Ok(Ctx {
        quick: args.quick,
        sizes,
        work: work.clone(),
        bin,
        cilock,
        daemon_bin,
        key,
        python: PathBuf::from("/usr/bin/python3"),
        servers: None,
        true_path,
        env,
    })
}

/// A tree of empty files: `top` dirs × `sub` dirs × `files` files.
pub(super) fn make_tree(root: &Path, (top, sub, files): (u64, u64, u64)) -> anyhow::Result<()> {
    let stamp = root.join(".complete");
    let want = format!("{top} {sub} {files}\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        note(format!("tree {} is up to date", root.display()));
        return Ok(());
    }
    rm_rf(root)?;
    note(format!(
        "generating {} files in {}",
        top * sub * files,
        root.display()
    ));
    for t in 0..top {
        for s in 0..sub {
            let d = root.join(format!("d{t:03}/s{s:03}"));
            std::fs::create_dir_all(&d)?;
            for f in 0..files {
                std::fs::write(d.join(format!("f{f:03}.txt")), format!("{t} {s} {f}\n"))?;
            }
        }
    }
    std::fs::write(stamp, want)?;
    Ok(())
}

/// Copies the heavy-build crate to `dst/proj` and vendors its dependencies
/// into `dst/vendor` (once per Cargo.lock).
pub(super) fn vendor_heavy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let proj = dst.join("proj");
    std::fs::create_dir_all(proj.join("src"))?;
    std::fs::create_dir_all(proj.join(".cargo"))?;
    for f in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        let data =
            std::fs::read(src.join(f)).with_context(|| format!("reading bench/heavy/{f}"))?;
        util::install_bytes(&data, &proj.join(f), 0o644)?;
    }
    let vendor = dst.join("vendor");
    let lock = std::fs::read(src.join("Cargo.lock"))?;
    let stamp = dst.join("vendor.stamp");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) && vendor.is_dir() {
        note(format!(
            "vendored crates in {} are up to date",
            vendor.display()
        ));
    } else {
        rm_rf(&vendor)?;
        util::exec(
            cmd("cargo")
                .args(["vendor", "--locked", "-q"])
                .arg(&vendor)
                .current_dir(&proj)
                .env_remove("CARGO_TARGET_DIR")
                .stdout(Stdio::null()),
        )?;
        std::fs::write(&stamp, &lock)?;
    }
    let config = format!(
        "[source.crates-io]\nreplace-with = \"vendored-sources\"\n\n[source.vendored-sources]\ndirectory = {:?}\n",
        vendor.display().to_string()
    );
    util::install_bytes(config.as_bytes(), &proj.join(".cargo/config.toml"), 0o644)?;
    Ok(())
}
