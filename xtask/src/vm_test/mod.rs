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
//! Steps 1 and 2 live in [`kernels`], [`modules`] and [`initramfs`], step 3
//! in [`qemu`], the verdict and the matrix in [`mod@report`]; this module holds
//! the options, the test list, the host run and the driver ([`run`]).
//!
//! The tests are listed in `tests/vm/tests.list` (one test binary a line).
//! Lines starting with `@systemd` run in a second boot of each guest kernel
//! with systemd as PID 1 (`tests/vm/init-systemd.sh`: a tmpfs overlay of the
//! host's root, a minimal `vmtest.target`), with the package to install in
//! `CILOCK_DEB` ([`package`]); the host column reports them as not
//! applicable.
//! QEMU and busybox come from Debian packages extracted under
//! `target/vm-kernels/qemu/` (nothing installed) unless `qemu-system-x86_64`
//! is already on PATH (or `CILOCK_QEMU` names one).

mod initramfs;
mod kernels;
mod modules;
mod qemu;
mod report;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::util::{self, cmd, exec, note, output, step};

use kernels::{prepare_kernel, KernelSpec, KERNELS};
use qemu::{choose_accel, run_vm, Tools};
use report::{judge, report, Column, TestResult};

/// `CILOCK_E2E_CHILDREN` in the guests (children per process loop).
const VM_CHILDREN: u32 = 10;

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
    /// The package the `@systemd` tests install (`CILOCK_DEB` in the guest).
    #[arg(skip)]
    deb: Option<PathBuf>,
}

/// One line of `tests/vm/tests.list`.
#[derive(Clone, Debug)]
struct TestEntry {
    /// An `@systemd` line: runs in the guest boot with systemd as PID 1
    /// (not on the host, where PID 1 is not systemd).
    systemd: bool,
    package: String,
    target: String,
    args: Vec<String>,
    exe: PathBuf,
}

/// Runs the matrix.
pub fn run(mut args: VmTestArgs) -> anyhow::Result<()> {
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
    if !vm_kernels.is_empty() && tests.iter().any(|t| t.systemd) {
        step("the package the @systemd tests install");
        args.deb = Some(package()?);
    }
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
        let (systemd, rest) = match line.strip_prefix("@systemd ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut words = rest.split_whitespace().map(str::to_string);
        let (Some(package), Some(target)) = (words.next(), words.next()) else {
            bail!(
                "{}: bad line {line:?} (want [@systemd] PACKAGE TEST-TARGET [ARGS...])",
                list.display()
            );
        };
        if package.starts_with('@') {
            bail!(
                "{}: unknown mode {package:?} in {line:?} (the only one is @systemd)",
                list.display()
            );
        }
        entries.push(TestEntry {
            systemd,
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

/// The `.deb` of the `@systemd` tests: `CILOCK_DEB` when set, else the
/// dev package built from the debug binaries just built
/// ([`crate::deb::build`], as `cargo xtask deb --profile dev --no-build`).
/// The guest sees the host's root except `/tmp` and `/run` (its own), so
/// the package must be elsewhere.
fn package() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("CILOCK_DEB") {
        Some(p) => PathBuf::from(p),
        None => crate::deb::build(crate::deb::Profile::Dev, true)?,
    };
    let path = std::fs::canonicalize(&path)
        .with_context(|| format!("the package {} does not exist", path.display()))?;
    if ["/tmp/", "/run/"].iter().any(|d| path.starts_with(d)) {
        bail!(
            "{}: the @systemd guest has its own /tmp and /run; put the package elsewhere",
            path.display()
        );
    }
    note(format!("CILOCK_DEB={}", path.display()));
    Ok(path)
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
        let name = if self.args.is_empty() {
            self.target.clone()
        } else {
            format!("{}:{}", self.target, self.args.join(","))
        };
        if self.systemd {
            format!("@systemd:{name}")
        } else {
            name
        }
    }

    fn command_line(&self) -> String {
        let mut s = format!("{} --test-threads=1 --show-output", self.exe.display());
        if self.systemd {
            // The @systemd tests are #[ignore]d where PID 1 is not systemd.
            s.push_str(" --ignored");
        }
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
    if let Some(deb) = &args.deb {
        env.push(("CILOCK_DEB".into(), deb.display().to_string()));
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
        if t.systemd {
            // Needs systemd as PID 1: only the guests have it.
            results.push(TestResult::not_applicable(
                &t.name(),
                "needs systemd as PID 1 (runs in the kernel matrix's @systemd boot)",
            ));
            continue;
        }
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

fn uname_r() -> String {
    output(cmd("uname").arg("-r"))
        .unwrap_or_default()
        .trim()
        .to_string()
}
