//! `cargo xtask vm-test`: the capture tests on real distribution kernels.
//!
//! The matrix is [`KERNELS`] (Debian 12's 6.1 and its 6.12 kernel) plus this
//! host's kernel, run natively. For every kernel:
//!
//! 1. the kernel `.deb` is resolved and downloaded with the package tools
//!    (`apt-cache depends`/`apt-cache search`, `apt-get download`) and cached
//!    under `target/vm-kernels/<release>/`: `vmlinuz`, `config`, the
//!    uncompressed `vmlinux` (for a fast PVH boot) and the virtio/9p modules
//!    in dependency order;
//! 2. an initramfs is written (newc cpio, by hand): busybox-static,
//!    `tests/vm/init.sh` as `/init`, the modules, the test list;
//! 3. QEMU boots it (TCG unless real hardware virtualization is present),
//!    with this host's root shared read-only over virtio-9p: the guest runs
//!    the very binaries the host run uses (tests, daemon, cilock, strace,
//!    python3) on the other kernel, so every ground-truth assertion is the
//!    same on every kernel;
//! 4. results come back on a second serial port, the exit code through
//!    `isa-debug-exit`; console and results are kept under
//!    `target/vm-test/<kernel>/`.
//!
//! The tests are listed in `tests/vm/tests.list` (a line: package, test
//! binary, libtest filter, e.g. `cilock-tests e2e traced_step::`).
//! QEMU and busybox come from Debian packages extracted under
//! `target/vm-kernels/qemu/` (nothing installed) unless `qemu-system-x86_64`
//! is already on PATH (or `CILOCK_QEMU` names one).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::util::{self, cmd, exec, note, output, step};

/// How a matrix kernel's package is found.
#[derive(Clone, Copy, Debug)]
enum Resolve {
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
struct KernelSpec {
    /// Short name (report column, `--kernel` value, log directory).
    name: &'static str,
    /// How its package is found.
    resolve: Resolve,
    /// The file-open hook the daemon must choose there (`fexit`, `tracepoint`).
    expect_file_open_hook: &'static str,
}

/// The kernels booted under QEMU. To add one, add an entry (see
/// `tests/vm/README.md`).
const KERNELS: &[KernelSpec] = &[
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

/// `CILOCK_E2E_CHILDREN` in the guests (children per process loop).
const VM_CHILDREN: u32 = 10;

/// Modules the guest needs for the 9p share (with their dependencies).
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Host top-level directories that are not shared into the guest (the
/// guest mounts its own, or they are irrelevant).
const NOT_SHARED: &[&str] = &[
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

/// `cargo xtask vm-test` options.
#[derive(Debug, Args)]
pub struct VmTestArgs {
    /// Run only these matrix columns (`host`, `debian-6.1`, `debian-6.12`);
    /// repeatable. Default: all.
    #[arg(long = "kernel")]
    kernels: Vec<String>,
    /// Inject a fault that the tests must catch on every kernel:
    /// `wrong-offset` corrupts one BTF offset in the daemon's loader (test
    /// builds only). The run then fails, naming each test and kernel.
    #[arg(long, value_parser = ["wrong-offset"])]
    inject_fault: Option<String>,
    /// Timeout of one test binary, in seconds (TCG is slow).
    #[arg(long, default_value_t = 600)]
    test_timeout: u64,
    /// Use KVM: `auto` (only with vmx/svm in /proc/cpuinfo and no PVM
    /// hypervisor module), `on`, `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    kvm: String,
}

/// One line of `tests/vm/tests.list`.
#[derive(Clone, Debug)]
struct TestEntry {
    package: String,
    target: String,
    args: Vec<String>,
    exe: PathBuf,
}

/// Outcome of one test binary on one kernel.
#[derive(Clone, Debug)]
struct TestResult {
    test: String,
    pass: bool,
    detail: String,
    secs: f64,
    hook: String,
}

/// Outcome of one matrix column.
#[derive(Debug)]
struct Column {
    name: String,
    release: String,
    results: Vec<TestResult>,
    /// Problems outside the tests (boot failure, timeout, kernel BUG).
    problems: Vec<String>,
    secs: f64,
    logs: PathBuf,
}

impl Column {
    fn pass(&self) -> bool {
        self.problems.is_empty() && !self.results.is_empty() && self.results.iter().all(|r| r.pass)
    }
}

/// Runs the matrix.
pub fn run(args: VmTestArgs) -> anyhow::Result<()> {
    util::require_root("vm-test")?;
    let t_all = Instant::now();
    let known: Vec<&str> = std::iter::once("host")
        .chain(KERNELS.iter().map(|k| k.name))
        .collect();
    for k in &args.kernels {
        if !known.contains(&k.as_str()) {
            bail!("unknown kernel {k:?}; the matrix has {}", known.join(", "));
        }
    }
    let wanted = |name: &str| args.kernels.is_empty() || args.kernels.iter().any(|k| k == name);
    let root = util::workspace_root();
    let cache = root.join("target/vm-kernels");
    let logs = root.join("target/vm-test");

    step("building the capture tests (debug: the fault switch exists only there)");
    let t = Instant::now();
    let tests = build_tests(&root)?;
    let build_secs = t.elapsed().as_secs_f64();
    note(format!("built in {build_secs:.1}s"));

    let vm_kernels: Vec<&KernelSpec> = KERNELS.iter().filter(|k| wanted(k.name)).collect();
    let mut prep_secs = 0.0;
    let mut prepared = Vec::new();
    let mut tools = None;
    if !vm_kernels.is_empty() {
        step("preparing QEMU, busybox and the kernels");
        let t = Instant::now();
        let tl = Tools::find_or_fetch(&cache)?;
        for k in &vm_kernels {
            prepared.push((*k, prepare_kernel(k, &cache)?));
        }
        tools = Some(tl);
        prep_secs = t.elapsed().as_secs_f64();
        note(format!("ready in {prep_secs:.1}s"));
    }

    let mut columns = Vec::new();
    if wanted("host") {
        step("host kernel (native)");
        columns.push(run_host(&tests, &args, &logs.join("host"))?);
    }
    if let Some(tools) = &tools {
        let accel = choose_accel(&args.kvm)?;
        note(format!("accelerator: {accel}"));
        // Each guest is one host thread (single-threaded TCG): boot them side
        // by side, one per CPU, and report in matrix order.
        let names: Vec<String> = prepared
            .iter()
            .map(|(spec, kernel)| format!("{} ({})", spec.name, kernel.release))
            .collect();
        step(format!("under QEMU, in parallel: {}", names.join(", ")));
        let results: Vec<anyhow::Result<Column>> = std::thread::scope(|s| {
            let handles: Vec<_> = prepared
                .iter()
                .map(|(spec, kernel)| {
                    let (tests, args, accel, cache, logs) = (&tests, &args, &accel, &cache, &logs);
                    s.spawn(move || run_vm(spec, kernel, tools, tests, args, accel, cache, logs))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the VM runner panicked")))
                })
                .collect()
        });
        for r in results {
            columns.push(r?);
        }
    }

    report(
        &columns,
        &args,
        build_secs,
        prep_secs,
        t_all.elapsed().as_secs_f64(),
    );
    let failed: Vec<&Column> = columns.iter().filter(|c| !c.pass()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "kernel matrix failed on {} (logs: {})",
            failed
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            failed
                .iter()
                .map(|c| c.logs.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Builds the daemon, the CLI and every listed test binary; returns the
/// tests with their executables.
fn build_tests(root: &Path) -> anyhow::Result<Vec<TestEntry>> {
    let list = root.join("tests/vm/tests.list");
    let text =
        std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace().map(str::to_string);
        let (Some(package), Some(target)) = (words.next(), words.next()) else {
            bail!(
                "{}: bad line {line:?} (want PACKAGE TEST-TARGET [ARGS...])",
                list.display()
            );
        };
        entries.push(TestEntry {
            package,
            target,
            args: words.collect(),
            exe: PathBuf::new(),
        });
    }
    if entries.is_empty() {
        bail!("{} lists no tests", list.display());
    }
    exec(util::cargo().args(["build", "-p", "cilock-cli", "-p", "cilock-daemon"]))?;
    let mut c = util::cargo();
    c.args(["test", "--no-run", "--message-format=json"]);
    for e in &entries {
        c.args(["-p", &e.package, "--test", &e.target]);
    }
    note(format!("$ {}", util::show(&c)));
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or("");
        let pkg = v["package_id"].as_str().unwrap_or("");
        for e in entries.iter_mut() {
            if e.target == name && package_id_matches(pkg, &e.package) {
                e.exe = PathBuf::from(exe);
            }
        }
    }
    for e in &entries {
        if e.exe.as_os_str().is_empty() {
            bail!(
                "cargo did not report a test binary for {} --test {}",
                e.package,
                e.target
            );
        }
        note(format!("{} {} → {}", e.package, e.target, e.exe.display()));
    }
    Ok(entries)
}

/// Whether a cargo `package_id` (`path+file:///…/dir#name@0.1.0` or
/// `name 0.1.0 (…)`) names `package`.
fn package_id_matches(id: &str, package: &str) -> bool {
    id.starts_with(&format!("{package} "))
        || id.contains(&format!("#{package}@"))
        || id
            .rsplit('/')
            .next()
            .is_some_and(|tail| tail.starts_with(&format!("{package}#")))
}

impl TestEntry {
    fn name(&self) -> String {
        if self.args.is_empty() {
            self.target.clone()
        } else {
            format!("{}:{}", self.target, self.args.join(","))
        }
    }

    fn command_line(&self) -> String {
        let mut s = format!("{} --test-threads=1 --show-output", self.exe.display());
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Environment of a test run (the same natively and in the guest, plus
/// the hook expectation for VM kernels).
fn test_env(args: &VmTestArgs, expect_hook: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        ("TMPDIR".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("RUST_BACKTRACE".into(), "1".into()),
        ("CILOCK_E2E_PREBUILT".into(), "1".into()),
    ];
    if let Some(h) = expect_hook {
        env.push(("CILOCK_E2E_EXPECT_FILE_OPEN_HOOK".into(), h.into()));
        // An exec costs ~80 ms under TCG: fewer children per loop, same
        // assertions (the host column keeps each test's full count).
        env.push(("CILOCK_E2E_CHILDREN".into(), VM_CHILDREN.to_string()));
    }
    if let Some(f) = &args.inject_fault {
        env.push(("CILOCK_TEST_FAULT".into(), f.clone()));
    }
    env
}

/// The host column: the same binaries, natively.
fn run_host(tests: &[TestEntry], args: &VmTestArgs, logs: &Path) -> anyhow::Result<Column> {
    std::fs::create_dir_all(logs)?;
    let release = uname_r();
    let t_col = Instant::now();
    let mut results = Vec::new();
    let mut all = String::new();
    for t in tests {
        let t0 = Instant::now();
        let mut c = cmd("timeout");
        c.args([
            "-s",
            "KILL",
            &args.test_timeout.to_string(),
            "sh",
            "-c",
            &t.command_line(),
        ]);
        c.env_clear().current_dir("/tmp");
        for (k, v) in test_env(args, None) {
            c.env(k, v);
        }
        note(format!("$ {}", t.command_line()));
        let out = c.output().context("running a test binary")?;
        let secs = t0.elapsed().as_secs_f64();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        all.push_str(&format!(
            "VMTEST-BEGIN {}\n{text}VMTEST-RESULT {} rc={} secs={secs:.1}\n",
            t.name(),
            t.name(),
            out.status.code().unwrap_or(-1)
        ));
        results.push(judge(
            &t.name(),
            out.status.code().unwrap_or(-1),
            secs,
            &text,
        ));
    }
    std::fs::write(logs.join("results.txt"), &all)?;
    Ok(Column {
        name: "host".into(),
        release,
        results,
        problems: Vec::new(),
        secs: t_col.elapsed().as_secs_f64(),
        logs: logs.to_path_buf(),
    })
}

/// A test's result from its exit code and output.
fn judge(name: &str, rc: i32, secs: f64, text: &str) -> TestResult {
    let hook = text
        .lines()
        .filter_map(|l| {
            l.split_once("CILOCK-HOOK file-open=")
                .map(|x| x.1.trim().to_string())
        })
        .next()
        .unwrap_or_default();
    let detail = if rc == 0 {
        summary_line(text).unwrap_or_default()
    } else if rc == 137 || rc == -1 {
        "killed (timeout)".to_string()
    } else {
        first_failure(text)
    };
    TestResult {
        test: name.to_string(),
        pass: rc == 0,
        detail,
        secs,
        hook,
    }
}

/// libtest's `test result: ...` line.
fn summary_line(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("test result:"))
        .map(|l| l.trim_start_matches("test result: ").to_string())
}

/// The first failing test and its panic message, from libtest output.
fn first_failure(text: &str) -> String {
    let failed: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("test ")
                .and_then(|r| r.strip_suffix(" ... FAILED"))
        })
        .collect();
    let panic = text
        .lines()
        .skip_while(|l| !l.contains("panicked at"))
        .nth(1)
        .map(|l| l.chars().take(240).collect::<String>())
        .unwrap_or_default();
    if failed.is_empty() {
        format!("failed: {}", panic)
    } else {
        format!("FAILED {}: {}", failed.join(", "), panic)
    }
}

fn uname_r() -> String {
    output(cmd("uname").arg("-r"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------
// Tools: QEMU and busybox.

/// QEMU (and how to call it) and a static busybox.
struct Tools {
    qemu: PathBuf,
    /// Extra `-L` firmware directories (extracted QEMU).
    firmware: Vec<PathBuf>,
    /// `LD_LIBRARY_PATH` for an extracted QEMU.
    lib_path: Option<String>,
    busybox: PathBuf,
}

impl Tools {
    fn find_or_fetch(cache: &Path) -> anyhow::Result<Tools> {
        let root = cache.join("qemu/root");
        let busybox_candidates = [PathBuf::from("/bin/busybox"), root.join("bin/busybox")];
        let system_qemu = std::env::var_os("CILOCK_QEMU")
            .map(PathBuf::from)
            .or_else(|| which("qemu-system-x86_64"));
        let static_busybox = busybox_candidates.iter().find(|p| is_static(p)).cloned();
        if let (Some(qemu), Some(busybox)) = (&system_qemu, &static_busybox) {
            note(format!(
                "QEMU {} (system), busybox {}",
                qemu.display(),
                busybox.display()
            ));
            return Ok(Tools {
                qemu: qemu.clone(),
                firmware: Vec::new(),
                lib_path: None,
                busybox: busybox.clone(),
            });
        }
        let done = cache.join("qemu/.complete");
        if !done.exists() {
            fetch_qemu(cache)?;
            std::fs::write(&done, b"")?;
        }
        let libs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
            .iter()
            .map(|d| root.join(d).display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let (qemu, firmware, lib_path) = match system_qemu {
            Some(q) => (q, Vec::new(), None),
            None => (
                root.join("usr/bin/qemu-system-x86_64"),
                vec![root.join("usr/share/seabios"), root.join("usr/share/qemu")],
                Some(libs),
            ),
        };
        let busybox = static_busybox.unwrap_or_else(|| root.join("bin/busybox"));
        note(format!(
            "QEMU {}, busybox {}",
            qemu.display(),
            busybox.display()
        ));
        Ok(Tools {
            qemu,
            firmware,
            lib_path,
            busybox,
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        if let Some(l) = &self.lib_path {
            c.env("LD_LIBRARY_PATH", l);
        }
        for f in &self.firmware {
            c.arg("-L").arg(f);
        }
        c
    }
}

/// Downloads qemu-system-x86, busybox-static and whatever of their
/// dependencies is not installed, and extracts them (never installs: the
/// packaged QEMU may conflict with what the machine has, e.g. a backports
/// `qemu-utils`).
fn fetch_qemu(cache: &Path) -> anyhow::Result<()> {
    let debs = cache.join("qemu/debs");
    let root = cache.join("qemu/root");
    std::fs::create_dir_all(&debs)?;
    std::fs::create_dir_all(&root)?;
    note("resolving qemu-system-x86 + busybox-static with apt-get -s (nothing is installed)");
    let sim = Command::new("apt-get")
        .args([
            "-s",
            "install",
            "--no-install-recommends",
            "qemu-system-x86",
            "busybox-static",
        ])
        .output()
        .context("running apt-get -s")?;
    let text = String::from_utf8_lossy(&sim.stdout);
    let pkgs: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if pkgs.is_empty() {
        bail!(
            "apt-get -s install qemu-system-x86 busybox-static listed nothing to fetch:\n{}{}",
            text,
            String::from_utf8_lossy(&sim.stderr)
        );
    }
    note(format!(
        "fetching {} packages: {}",
        pkgs.len(),
        pkgs.join(" ")
    ));
    exec(
        Command::new("apt-get")
            .arg("download")
            .args(&pkgs)
            .current_dir(&debs),
    )?;
    for e in std::fs::read_dir(&debs)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            exec(Command::new("dpkg-deb").arg("-x").arg(&p).arg(&root))?;
        }
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Whether `path` is a statically linked ELF (no `PT_INTERP`).
fn is_static(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8])) as usize;
    let (phoff, phentsize, phnum) = (u64at(0x20), u16at(0x36), u16at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) != 3
    })
}

// ---------------------------------------------------------------------------
// Kernels.

/// A cached kernel.
#[derive(Debug)]
struct Kernel {
    release: String,
    /// The image QEMU boots (`vmlinux` for PVH when possible, else `vmlinuz`).
    image: PathBuf,
    /// Module files in load order.
    modules: Vec<PathBuf>,
}

/// Resolves, downloads and unpacks one kernel (once; cached).
fn prepare_kernel(spec: &KernelSpec, cache: &Path) -> anyhow::Result<Kernel> {
    let pkg = resolve_package(spec)?;
    let release = pkg
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_string();
    let dir = cache.join(&release);
    let done = dir.join(".complete");
    if !done.exists() {
        note(format!("{}: fetching {pkg}", spec.name));
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs)?;
        exec(
            Command::new("apt-get")
                .args(["download", &pkg])
                .current_dir(&debs),
        )?;
        let deb = std::fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
            })
            .with_context(|| {
                format!("apt-get download {pkg} left no .deb in {}", debs.display())
            })?;
        unpack_kernel(&deb, &release, &dir)?;
        // The .deb is large and everything needed is unpacked.
        std::fs::remove_file(&deb)?;
        std::fs::write(&done, b"")?;
    }
    let vmlinux = dir.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        dir.join("vmlinuz")
    };
    let order = std::fs::read_to_string(dir.join("modules/order")).unwrap_or_default();
    let modules = order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| dir.join("modules").join(l))
        .collect();
    note(format!("{}: {release} ({})", spec.name, image.display()));
    Ok(Kernel {
        release,
        image,
        modules,
    })
}

fn resolve_package(spec: &KernelSpec) -> anyhow::Result<String> {
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
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Unpacks `vmlinuz`, `config`, `vmlinux` and the guest modules of a kernel
/// `.deb` into `dir`.
fn unpack_kernel(deb: &Path, release: &str, dir: &Path) -> anyhow::Result<()> {
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
        let order = module_order(&moddir, &config)?;
        let mut names = Vec::new();
        for (name, path) in order {
            let file = format!("{name}.ko");
            let out = dir.join("modules").join(&file);
            decompress_module(&path, &out)?;
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
        std::fs::write(dir.join("modules/order"), names.join("\n") + "\n")?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Finds the compressed payload in a bzImage (XZ or zstd) and decompresses
/// it: the ELF `vmlinux`, which QEMU boots directly through its PVH note.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> anyhow::Result<()> {
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

/// The module files for [`GUEST_MODULES`], dependencies first; modules that
/// are built into the kernel are left out.
fn module_order(moddir: &Path, config: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = BTreeMap::new();
    collect_modules(&moddir.join("kernel"), &mut files)?;
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        order: &mut Vec<(String, PathBuf)>,
        depth: u32,
    ) -> anyhow::Result<()> {
        if order.iter().any(|(n, _)| n == name) || depth > 32 {
            return Ok(());
        }
        let Some(path) = files.get(name) else {
            return Ok(());
        };
        for dep in module_depends(path)? {
            visit(&dep, files, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for m in GUEST_MODULES {
        if !files.contains_key(*m) {
            // Built in (or missing: then mounting 9p fails in the guest
            // with a clear message).
            let _ = config;
            continue;
        }
        visit(m, &files, &mut order, 0)?;
    }
    Ok(order)
}

fn collect_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            collect_modules(&p, out)?;
        } else if let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) {
            for ext in [".ko", ".ko.xz", ".ko.zst"] {
                if let Some(stem) = name.strip_suffix(ext) {
                    out.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    Ok(())
}

fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => Ok(std::fs::read(path)?),
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running {t} for {}", path.display()))?;
            if !out.status.success() {
                bail!("{t} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// `depends=` of a module's `.modinfo`.
fn module_depends(path: &Path) -> anyhow::Result<Vec<String>> {
    let data = read_module(path)?;
    let key = b"depends=";
    let Some(at) = data.windows(key.len()).position(|w| w == key) else {
        return Ok(Vec::new());
    };
    let rest = &data[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Ok(String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect())
}

fn decompress_module(src: &Path, out: &Path) -> anyhow::Result<()> {
    std::fs::write(out, read_module(src)?)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Guest.

/// `-accel` arguments: KVM only on real hardware virtualization.
fn choose_accel(mode: &str) -> anyhow::Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let kvm_ok = hw && !pvm && Path::new("/dev/kvm").exists();
    Ok(match mode {
        "on" => "kvm".into(),
        "off" => "tcg".into(),
        _ if kvm_ok => "kvm".into(),
        _ => {
            note(format!(
                "TCG: {}",
                if pvm {
                    "/dev/kvm is PVM here (/sys/module/kvm_pvm), which cannot run a stock kernel"
                } else {
                    "no vmx/svm in /proc/cpuinfo"
                }
            ));
            "tcg".into()
        }
    })
}

/// A newc cpio archive being written.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
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

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while self.out.len() % 512 != 0 {
            self.out.push(0);
        }
        self.out
    }
}

/// Writes the guest's initramfs.
fn initramfs(
    kernel: &Kernel,
    tools: &Tools,
    tests: &[TestEntry],
    env: &[(String, String)],
    test_timeout: u64,
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
    let mut order = String::new();
    for m in &kernel.modules {
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

/// Boots one kernel and runs the tests in it.
#[allow(clippy::too_many_arguments)]
fn run_vm(
    spec: &KernelSpec,
    kernel: &Kernel,
    tools: &Tools,
    tests: &[TestEntry],
    args: &VmTestArgs,
    accel: &str,
    cache: &Path,
    logs: &Path,
) -> anyhow::Result<Column> {
    let dir = logs.join(spec.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let env = test_env(args, Some(spec.expect_file_open_hook));
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(
        &initrd,
        initramfs(kernel, tools, tests, &env, args.test_timeout)?,
    )?;
    let _ = cache;
    let console = dir.join("console.log");
    let results = dir.join("results.txt");
    let mut c = tools.command();
    c.args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-net",
        "none",
        "-m",
        "2G",
        "-smp",
        "2",
    ]);
    if accel == "kvm" {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // Single-threaded TCG: with one host thread per vCPU (MTTCG),
        // Debian's 6.12 dies early with an int3 Oops in code being patched
        // by text_poke_bp (cross-modifying code); round-robin vCPUs do not.
        c.args(["-accel", "tcg,thread=single", "-cpu", "max"]);
    }
    c.arg("-serial").arg(format!("file:{}", console.display()));
    c.arg("-serial").arg(format!("file:{}", results.display()));
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    c.args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ]);
    c.arg("-kernel").arg(&kernel.image);
    c.arg("-initrd").arg(&initrd);
    c.args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"]);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    c.stderr(std::fs::File::create(dir.join("qemu.stderr"))?);
    note(format!("$ {}", util::show(&c)));
    let t0 = Instant::now();
    let mut child = c.spawn().context("starting QEMU")?;
    let limit = Duration::from_secs(args.test_timeout * tests.len() as u64 + 120);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&initrd);
    let res_text =
        String::from_utf8_lossy(&std::fs::read(&results).unwrap_or_default()).replace('\r', "");
    let con_text =
        String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).replace('\r', "");
    let mut problems = Vec::new();
    match status {
        None => problems.push(format!("QEMU timed out after {}s", limit.as_secs())),
        Some(st) => match st.code() {
            Some(1) | Some(3) => {}
            Some(0) => problems.push("the guest powered off without reporting".into()),
            Some(n) if n % 2 == 1 && n / 2 == 99 => problems.push(format!(
                "guest setup failed: {}",
                con_text
                    .lines()
                    .find(|l| l.contains("vmtest: FATAL"))
                    .unwrap_or("see console.log")
            )),
            Some(n) => problems.push(format!("QEMU exited {n} (see qemu.stderr)")),
            None => problems.push("QEMU was killed by a signal".into()),
        },
    }
    for bad in ["Kernel panic", "BUG:", "Oops:", "RCU stall"] {
        if let Some(l) = con_text.lines().find(|l| l.contains(bad)) {
            problems.push(format!("kernel: {}", l.trim()));
        }
    }
    let mut results_v = Vec::new();
    for t in tests {
        let name = t.name();
        let begin = format!("VMTEST-BEGIN {name}");
        let Some(start) = res_text.find(&begin) else {
            results_v.push(TestResult {
                test: name,
                pass: false,
                detail: "did not run".into(),
                secs: 0.0,
                hook: String::new(),
            });
            continue;
        };
        let body = &res_text[start + begin.len()..];
        let marker = format!("VMTEST-RESULT {name} ");
        let (text, rc, tsecs) = match body.find(&marker) {
            Some(end) => {
                let tail = body[end + marker.len()..].lines().next().unwrap_or("");
                let rc = tail
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("rc="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(-1);
                let s = tail
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("secs="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                (&body[..end], rc, s)
            }
            None => (body, -1, 0.0),
        };
        results_v.push(judge(&name, rc, tsecs, text));
    }
    Ok(Column {
        name: spec.name.to_string(),
        release: kernel.release.clone(),
        results: results_v,
        problems,
        secs,
        logs: dir,
    })
}

fn report(columns: &[Column], args: &VmTestArgs, build: f64, prep: f64, total: f64) {
    println!();
    println!(
        "kernel matrix{}:",
        match &args.inject_fault {
            Some(f) => format!(" (fault injected: {f})"),
            None => String::new(),
        }
    );
    for c in columns {
        println!(
            "  {:<12} {:<28} {}  ({:.1}s; logs {})",
            c.name,
            c.release,
            if c.pass() { "PASS" } else { "FAIL" },
            c.secs,
            c.logs.display()
        );
        for p in &c.problems {
            println!("      problem: {p}");
        }
        for r in &c.results {
            println!(
                "      {:<22} {}  {:>6.1}s  file-open={}  {}",
                r.test,
                if r.pass { "PASS" } else { "FAIL" },
                r.secs,
                if r.hook.is_empty() { "?" } else { &r.hook },
                r.detail
            );
        }
    }
    println!("  time: build {build:.1}s, kernels/QEMU {prep:.1}s, total {total:.1}s");
}
