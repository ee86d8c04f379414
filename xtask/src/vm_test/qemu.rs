//! QEMU and busybox ([`Tools`]: found on the host or extracted from Debian
//! packages, nothing installed), the accelerator ([`choose_accel`]), and one
//! guest run ([`run_vm`]): boot, collect results from the second serial port
//! and the exit code from `isa-debug-exit`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::util::{self, exec, note};

use super::initramfs::initramfs;
use super::kernels::{Kernel, KernelSpec};
use super::report::{judge, Column, TestResult};
use super::{test_env, TestEntry, VmTestArgs};

/// QEMU (and how to call it) and a static busybox.
pub(super) struct Tools {
    pub(super) qemu: PathBuf,
    /// Extra `-L` firmware directories (extracted QEMU).
    pub(super) firmware: Vec<PathBuf>,
    /// `LD_LIBRARY_PATH` for an extracted QEMU.
    pub(super) lib_path: Option<String>,
    pub(super) busybox: PathBuf,
}

impl Tools {
    pub(super) fn find_or_fetch(cache: &Path) -> anyhow::Result<Tools> {
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

    pub(super) fn command(&self) -> Command {
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
pub(super) fn fetch_qemu(cache: &Path) -> anyhow::Result<()> {
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

pub(super) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Whether `path` is a statically linked ELF (no `PT_INTERP`).
pub(super) fn is_static(path: &Path) -> bool {
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

/// `-accel` arguments: KVM only on real hardware virtualization.
pub(super) fn choose_accel(mode: &str) -> anyhow::Result<String> {
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

/// How a guest boots: busybox `/init` runs the tests, or it hands over to
/// systemd as PID 1 on an overlay of the host's root (`@systemd` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Busybox,
    Systemd,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Busybox => "busybox",
            Mode::Systemd => "systemd",
        }
    }
}

/// Boots one kernel and runs the tests in it: one boot for the plain lines
/// of the list, another with systemd as PID 1 for the `@systemd` lines.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per piece of the run; a struct would only rename them"
)]
pub(super) fn run_vm(
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
    let _ = cache;
    let mut column = Column {
        name: spec.name.to_string(),
        release: kernel.release.clone(),
        results: Vec::new(),
        problems: Vec::new(),
        secs: 0.0,
        logs: dir.clone(),
    };
    for mode in [Mode::Busybox, Mode::Systemd] {
        let mine: Vec<TestEntry> = tests
            .iter()
            .filter(|t| t.systemd == (mode == Mode::Systemd))
            .cloned()
            .collect();
        if mine.is_empty() {
            continue;
        }
        // The busybox boot logs in <kernel>/ as before; the systemd boot in
        // <kernel>/systemd/.
        let bdir = match mode {
            Mode::Busybox => dir.clone(),
            Mode::Systemd => dir.join("systemd"),
        };
        std::fs::create_dir_all(&bdir)?;
        let (results, problems, secs) = boot(spec, kernel, tools, &mine, args, accel, mode, &bdir)?;
        note(format!(
            "{}: {} boot + tests {secs:.1}s",
            spec.name,
            mode.name()
        ));
        column.results.extend(results);
        column.problems.extend(
            problems
                .into_iter()
                .map(|p| format!("{} boot: {p}", mode.name())),
        );
        column.secs += secs;
    }
    Ok(column)
}

/// One boot of a kernel in `mode` running `tests`: their results, the
/// problems outside them, the boot's wall time.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per piece of the run; a struct would only rename them"
)]
fn boot(
    spec: &KernelSpec,
    kernel: &Kernel,
    tools: &Tools,
    tests: &[TestEntry],
    args: &VmTestArgs,
    accel: &str,
    mode: Mode,
    dir: &Path,
) -> anyhow::Result<(Vec<TestResult>, Vec<String>, f64)> {
    let env = test_env(args, Some(spec.expect_file_open_hook));
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(
        &initrd,
        initramfs(kernel, tools, tests, &env, args.test_timeout, mode)?,
    )?;
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
                not_applicable: false,
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
    Ok((results_v, problems, secs))
}
