//! What the kernel and the mounts offer, read from `/proc` and `/sys`
//! (no privilege needed): kernel version, BTF, tracefs, bpffs, the cgroup2
//! mount (and hybrid mode), seccomp.

use std::path::{Path, PathBuf};

use super::report::{Check, Status};

/// Oldest kernel the eBPF backend loads on (the ring buffer is 5.8).
const MIN_EBPF: (u32, u32) = (5, 8);

const NO_EBPF: &str =
    "no eBPF backend: the daemon traces with ptrace (every syscall of the step stops; no packet capture, no DNS answers)";

/// `kernel`: the release, against [`MIN_EBPF`].
pub fn kernel() -> Check {
    let release = match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(r) => r.trim().to_string(),
        Err(e) => {
            return Check::costs(
                "kernel",
                Status::NotChecked,
                format!("/proc/sys/kernel/osrelease: {e}"),
                "",
            )
        }
    };
    match version(&release) {
        Some(v) if v >= MIN_EBPF => Check::ok("kernel", format!("Linux {release}")),
        Some(_) => Check::costs(
            "kernel",
            Status::Missing,
            format!(
                "Linux {release}: older than {}.{} (BPF ring buffer)",
                MIN_EBPF.0, MIN_EBPF.1
            ),
            NO_EBPF,
        ),
        None => Check::costs(
            "kernel",
            Status::Warn,
            format!("Linux {release}: version not understood"),
            "",
        ),
    }
}

/// `major.minor` of a kernel release (`6.18.44-fc-v1252` → (6, 18)).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `btf`: the kernel's BTF, which the probes' offsets come from.
pub fn btf() -> Check {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    match std::fs::metadata(path) {
        Ok(m) => Check::ok("btf", format!("{} ({} bytes)", path.display(), m.len())),
        Err(e) => Check::costs(
            "btf",
            Status::Missing,
            format!(
                "{}: {e} (a kernel built without CONFIG_DEBUG_INFO_BTF)",
                path.display()
            ),
            NO_EBPF,
        ),
    }
}

/// `tracefs`: where the syscall tracepoints are named. It is root-only
/// (0700) on most systems: a user who cannot look is told so, not that it
/// is missing.
pub fn tracefs() -> Check {
    let mut denied = None;
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let events = Path::new(p).join("events");
        match std::fs::metadata(&events) {
            Ok(m) if m.is_dir() => return Check::ok("tracefs", format!("{p} (events/ present)")),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                denied.get_or_insert(p);
            }
            _ => {}
        }
    }
    match denied {
        Some(p) => Check::costs(
            "tracefs",
            Status::NotChecked,
            format!(
                "{p}: uid {} may not look inside (the daemon reads it as root)",
                nix::unistd::geteuid()
            ),
            "",
        ),
        None => Check::costs(
            "tracefs",
            Status::Missing,
            "no events/ under /sys/kernel/tracing or /sys/kernel/debug/tracing (mount -t tracefs nodev /sys/kernel/tracing)",
            NO_EBPF,
        ),
    }
}

/// One mount from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Its line number (1-based) in mountinfo.
    pub line: usize,
    /// Mount point (unescaped).
    pub point: PathBuf,
    /// Root of the mount within its filesystem.
    pub root: String,
    /// Filesystem type.
    pub fstype: String,
    /// Super options (`cgroup`: the v1 controllers).
    pub options: String,
}

/// The mounts of mountinfo text (lines that do not parse are skipped).
pub fn mounts(info: &str) -> Vec<Mount> {
    info.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let mut post = post.split_whitespace();
            let fstype = post.next()?.to_string();
            let _source = post.next();
            Some(Mount {
                line: i + 1,
                root: unescape(pre.get(3)?),
                point: PathBuf::from(unescape(pre.get(4)?)),
                fstype,
                options: post.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mountinfo() -> Result<Vec<Mount>, String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| mounts(&s))
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))
}

/// `bpffs`: not needed by cilock (it pins nothing), reported for other BPF
/// tools and for the reader's picture of the host.
pub fn bpffs() -> Check {
    match mountinfo() {
        Ok(m) => match m.iter().find(|m| m.fstype == "bpf") {
            Some(m) => Check::ok("bpffs", format!("{} (mountinfo line {})", m.point.display(), m.line)),
            None => Check::costs(
                "bpffs",
                Status::Warn,
                "no bpf filesystem mounted",
                "nothing for cilock (it pins no programs or maps); tools that inspect pinned BPF objects need it",
            ),
        },
        Err(e) => Check::costs("bpffs", Status::NotChecked, e, ""),
    }
}

/// `cgroup2`: the mount the daemon creates step cgroups under; hybrid when
/// cgroup v1 hierarchies are mounted too. Returns the check and whether a
/// cgroup2 mount was found.
pub fn cgroup2() -> (Check, bool) {
    match mountinfo() {
        Ok(m) => {
            let check = cgroup2_of(&m);
            let found = check.status == Status::Ok;
            (check, found)
        }
        Err(e) => (Check::costs("cgroup2", Status::NotChecked, e, ""), false),
    }
}

/// [`cgroup2`] over parsed mounts: prefers a cgroup2 mount of the
/// hierarchy root, as the daemon does.
pub fn cgroup2_of(mounts: &[Mount]) -> Check {
    let v2 = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .min_by_key(|m| m.root != "/");
    let Some(v2) = v2 else {
        return Check::costs(
            "cgroup2",
            Status::Missing,
            "no cgroup2 mount in /proc/self/mountinfo (mount -t cgroup2 none /sys/fs/cgroup/unified)",
            "no step can be traced: steps are cgroups (the daemon refuses to start)",
        );
    };
    let v1: Vec<&str> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .map(|m| {
            m.options
                .split(',')
                .find(|o| !matches!(*o, "rw" | "ro"))
                .unwrap_or("?")
        })
        .collect();
    let mode = if v1.is_empty() {
        "unified".to_string()
    } else {
        format!(
            "hybrid: cgroup v1 hierarchies {} also mounted",
            v1.join(",")
        )
    };
    Check::ok(
        "cgroup2",
        format!(
            "{} (mountinfo line {}), {mode}",
            v2.point.display(),
            v2.line
        ),
    )
}

/// `seccomp`: the kernel's seccomp with `SECCOMP_RET_TRACE`, which the
/// ptrace backend's filter returns.
pub fn seccomp() -> Check {
    const COST: &str = "no ptrace fallback: where eBPF is unavailable no step can be traced";
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => s,
        Err(e) => {
            return Check::costs(
                "seccomp",
                Status::NotChecked,
                format!("/proc/self/status: {e}"),
                "",
            )
        }
    };
    let Some(mode) = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
    else {
        return Check::costs(
            "seccomp",
            Status::Missing,
            "kernel without CONFIG_SECCOMP (no Seccomp: line in /proc/self/status)",
            COST,
        );
    };
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if !actions.split_whitespace().any(|a| a == "trace") {
        return Check::costs(
            "seccomp",
            Status::Missing,
            format!(
                "SECCOMP_RET_TRACE not in /proc/sys/kernel/seccomp/actions_avail ({})",
                actions.trim()
            ),
            COST,
        );
    }
    let own = match mode {
        "0" => "this process runs unfiltered",
        "2" => "this process already runs under a seccomp filter (a container profile?)",
        _ => "this process runs in strict mode",
    };
    Check::ok(
        "seccomp",
        format!("filters with the trace action available; {own}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mounts of this kind of host: cgroup v1 controllers at
    /// /sys/fs/cgroup/* and cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
46 23 0:40 / /sys/fs/b\\040pf rw,relatime - bpf bpffs rw
";

    #[test]
    fn hybrid_mode_names_the_cgroup2_mount_and_the_v1_hierarchies() {
        let c = cgroup2_of(&mounts(HYBRID));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "/sys/fs/cgroup/unified (mountinfo line 5), hybrid: cgroup v1 hierarchies cpu,memory,name=systemd also mounted"
        );
    }

    #[test]
    fn a_unified_host_and_a_host_without_cgroup2() {
        let unified = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_of(&mounts(unified)).detail,
            "/sys/fs/cgroup (mountinfo line 1), unified"
        );
        let none = cgroup2_of(&mounts("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"));
        assert_eq!(none.status, Status::Missing);
        assert!(
            none.cost.starts_with("no step can be traced"),
            "{}",
            none.cost
        );
    }

    #[test]
    fn mount_points_are_unescaped() {
        let m = mounts(HYBRID);
        assert_eq!(m[5].point, PathBuf::from("/sys/fs/b pf"));
        assert_eq!(m[5].fstype, "bpf");
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(version("6.18.44-fc-v1252"), Some((6, 18)));
        assert_eq!(version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(version("x"), None);
    }
}
