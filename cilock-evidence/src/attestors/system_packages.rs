//! The system-packages attestor: the operating system and the packages
//! installed on the runner, in Witness's shape (`attestation/system-packages`):
//! `os` (`linux`), `distribution` (os-release `ID`), `version` (os-release
//! `VERSION_ID`), `packages` (`name`, `version`) and `digest` (of those four
//! fields as JSON). cilock adds `architecture` to each package (a package
//! may be installed for two architectures) and `backend` (`dpkg` or `rpm`).
//!
//! Where the list comes from:
//! - dpkg systems: `/var/lib/dpkg/status` is read and parsed directly
//!   (stanzas' `Package`, `Version`, `Architecture`, `Status`); only packages
//!   whose status is `install ok installed` are listed (Witness runs
//!   `dpkg-query -W`, which also lists removed packages whose configuration
//!   files remain, with their old version). No program runs.
//! - rpm systems: `/usr/bin/rpm -qa --queryformat …` at that absolute path
//!   only (never through `PATH`), with an empty environment, stdin closed,
//!   its output bounded ([`MAX_RPM_OUTPUT`]) and a timeout ([`RPM_TIMEOUT`]).
//!   The version is `[epoch:]version-release` (Witness records `%{VERSION}`
//!   alone, so two builds of one version look the same).
//!
//! Which one: os-release `ID`/`ID_LIKE` naming an rpm distribution (Witness's
//! list: fedora, rhel, centos, rocky, alma, oracle, suse, opensuse, amazon)
//! selects rpm; otherwise dpkg when its status file exists, else rpm when
//! `/usr/bin/rpm` exists; neither: [`AttestError::Absent`].
//!
//! These are the runner's own files, not the job's: the daemon runs this
//! in its attest helper as the job's owner, who can read them anyway.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::lifecycle::AttestorOptions;
use super::{AttestError, AttestationContext, Attestor, Stage};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "system-packages";

/// The dpkg database.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// The only rpm run.
pub const RPM_PATH: &str = "/usr/bin/rpm";
/// os-release, then its fallback (os-release(5)).
pub const OS_RELEASE: &[&str] = &["/etc/os-release", "/usr/lib/os-release"];
/// Largest dpkg status file read.
pub const MAX_DPKG_STATUS: u64 = 256 << 20;
/// Largest rpm output read.
pub const MAX_RPM_OUTPUT: u64 = 64 << 20;
/// Longest rpm run.
pub const RPM_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest os-release read.
const MAX_OS_RELEASE: u64 = 64 << 10;

const RPM_IDS: &[&str] = &[
    "fedora", "rhel", "centos", "rocky", "alma", "oracle", "suse", "opensuse", "amazon",
];

/// One installed package.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version (dpkg: as in the database; rpm: `[epoch:]version-release`).
    pub version: String,
    /// Architecture (cilock addition).
    pub architecture: String,
}

#[derive(Serialize)]
struct Digestable<'a> {
    os: &'a str,
    distribution: &'a str,
    version: &'a str,
    packages: &'a [Package],
}

/// The system-packages attestor.
#[derive(Debug, Default)]
pub struct SystemPackagesAttestor {}

impl SystemPackagesAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(SystemPackagesAttestor {})
    }
}

/// `KEY=value` pairs of an os-release text (quotes removed).
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (b, more) = super::safeio::read_capped(f, max)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if more {
        return Err(format!(
            "{}: more than the {max}-byte limit",
            path.display()
        ));
    }
    Ok(b)
}

/// The packages of a dpkg status file whose status is `install ok
/// installed`, sorted by name then architecture.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut status) = (None, None, None, None);
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "Package" => name = Some(v),
                "Version" => version = Some(v),
                "Architecture" => arch = Some(v),
                "Status" => status = Some(v),
                _ => {}
            }
        }
        if let (Some(n), Some(s)) = (name, status) {
            if s.split_whitespace().collect::<Vec<_>>() == ["install", "ok", "installed"] {
                out.push(Package {
                    name: n.to_string(),
                    version: version.unwrap_or("").to_string(),
                    architecture: arch.unwrap_or("").to_string(),
                });
            }
        }
    }
    out.sort();
    out
}

/// The rpm query format: name, `[epoch:]version-release`, arch.
pub const RPM_QUERYFORMAT: &str =
    "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\n";

/// The packages of `rpm -qa --queryformat RPM_QUERYFORMAT` output; a line
/// without three tab-separated fields is an error.
pub fn parse_rpm_output(text: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [name, version, arch] = f[..] else {
            return Err(format!(
                "rpm output line {} is not name, version, arch",
                i + 1
            ));
        };
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            // Packages without an architecture (gpg-pubkey) print "(none)".
            architecture: if arch == "(none)" { "" } else { arch }.to_string(),
        });
    }
    out.sort();
    Ok(out)
}

/// Runs `prog` (an absolute path) with `args`, an empty environment but
/// `LC_ALL=C`, stdin closed, stderr dropped; its stdout up to `max` bytes.
/// Killed past `timeout`; more output than `max`, a kill or a non-zero
/// exit is an error.
pub fn run_bounded(
    prog: &str,
    args: &[&str],
    max: u64,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut child = Command::new(prog)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{prog}: cannot run: {e}"))?;
    let out = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = out.take(max + 1).read_to_end(&mut buf);
        (buf, r)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{prog}: cannot wait: {e}")),
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "{prog}: still running after {} s, killed",
            timeout.as_secs()
        ));
    };
    // The reader ends at EOF (every writer gone) or at the limit; a
    // grandchild holding the pipe open past the exit would block it, so
    // the same deadline applies.
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{prog}: output still open after {} s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (buf, r) = reader
        .join()
        .map_err(|_| format!("{prog}: reader failed"))?;
    r.map_err(|e| format!("{prog}: cannot read its output: {e}"))?;
    if buf.len() as u64 > max {
        return Err(format!("{prog}: more than {max} bytes of output"));
    }
    if !status.success() {
        return Err(format!("{prog}: {status}"));
    }
    Ok(buf)
}

/// Which package database this system uses, from os-release and what exists.
fn backend(os: &[(String, String)]) -> Option<&'static str> {
    let get = |k: &str| {
        os.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let rpm_family = std::iter::once(get("ID"))
        .chain(get("ID_LIKE").split_whitespace())
        .any(|id| RPM_IDS.contains(&id));
    if rpm_family && Path::new(RPM_PATH).exists() {
        return Some("rpm");
    }
    if Path::new(DPKG_STATUS).exists() {
        return Some("dpkg");
    }
    Path::new(RPM_PATH).exists().then_some("rpm")
}

impl Attestor for SystemPackagesAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::PreMaterial
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError> {
        let bad = |e: String| AttestError::Invalid(format!("system-packages: {e}"));
        let os = OS_RELEASE
            .iter()
            .find_map(|p| read_bounded(Path::new(p), MAX_OS_RELEASE).ok())
            .map(|b| parse_os_release(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        let get = |k: &str| {
            os.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (distribution, version) = (get("ID"), get("VERSION_ID"));
        let Some(be) = backend(&os) else {
            return Err(AttestError::Absent(format!(
                "system-packages: neither {DPKG_STATUS} nor {RPM_PATH} on this system"
            )));
        };
        let packages = match be {
            "dpkg" => {
                let b = read_bounded(Path::new(DPKG_STATUS), MAX_DPKG_STATUS).map_err(bad)?;
                parse_dpkg_status(&String::from_utf8_lossy(&b))
            }
            _ => {
                let b = run_bounded(
                    RPM_PATH,
                    &["-qa", "--queryformat", RPM_QUERYFORMAT],
                    MAX_RPM_OUTPUT,
                    RPM_TIMEOUT,
                )
                .map_err(bad)?;
                parse_rpm_output(&String::from_utf8_lossy(&b)).map_err(bad)?
            }
        };
        let d = Digestable {
            os: "linux",
            distribution: &distribution,
            version: &version,
            packages: &packages,
        };
        let bytes = serde_json::to_vec(&d).map_err(|e| bad(e.to_string()))?;
        let digest = DigestSet::from_bytes(&bytes, &ctx.hashes);
        Ok(serde_json::json!({
            "os": "linux",
            "distribution": distribution,
            "version": version,
            "packages": packages,
            "digest": digest,
            "backend": be,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_fields() {
        let kv = parse_os_release(
            "# c\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID='12'\nbad\n",
        );
        assert_eq!(
            kv,
            [
                (
                    "PRETTY_NAME".into(),
                    "Debian GNU/Linux 12 (bookworm)".into()
                ),
                ("ID".into(), "debian".into()),
                ("VERSION_ID".into(), "12".into())
            ]
        );
    }

    #[test]
    fn dpkg_stanzas_installed_only() {
        let text = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\n\
Version: 1:1.2.13.dfsg-1\nDescription: x\n Package: fake\n\n\
Package: oldpkg\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36-9\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n\
Package: half\nStatus: install reinstreq half-installed\nVersion: 2\n";
        let p = parse_dpkg_status(text);
        let got: Vec<(&str, &str, &str)> = p
            .iter()
            .map(|p| (&*p.name, &*p.version, &*p.architecture))
            .collect();
        assert_eq!(
            got,
            [
                ("libc6", "2.36-9", "amd64"),
                ("libc6", "2.36-9", "i386"),
                ("zlib1g", "1:1.2.13.dfsg-1", "amd64")
            ]
        );
    }

    #[test]
    fn rpm_lines() {
        let p = parse_rpm_output("bash\t5.2.26-3.fc40\tx86_64\ngpg-pubkey\ta15b79cc-63d04c2c\t(none)\nperl-Carp\t0:1.54-502.fc40\tnoarch\n").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "gpg-pubkey");
        assert_eq!(p[1].architecture, "");
        assert_eq!(p[2].version, "0:1.54-502.fc40");
        let e = parse_rpm_output("bash 5.2\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn bounded_runs() {
        let out = run_bounded("/bin/sh", &["-c", "printf 'a\\tb\\n'"], 100, RPM_TIMEOUT).unwrap();
        assert_eq!(out, b"a\tb\n");
        let e = run_bounded(
            "/bin/sh",
            &["-c", "head -c 1000 /dev/zero"],
            100,
            RPM_TIMEOUT,
        )
        .unwrap_err();
        assert!(e.contains("more than 100 bytes"), "{e}");
        let e = run_bounded("/bin/sh", &["-c", "exit 3"], 100, RPM_TIMEOUT).unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        let e = run_bounded(
            "/bin/sh",
            &["-c", "sleep 30"],
            100,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("killed"), "{e}");
        let e = run_bounded("/nonexistent/rpm", &[], 100, RPM_TIMEOUT).unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
        // The environment is empty but LC_ALL.
        let out = run_bounded("/usr/bin/env", &[], 100, RPM_TIMEOUT).unwrap();
        assert_eq!(out, b"LC_ALL=C\n");
    }

    /// On this machine (Debian), the list equals what dpkg-query reports
    /// for installed packages.
    #[test]
    fn matches_dpkg_query_on_this_machine() {
        if !Path::new(DPKG_STATUS).exists() {
            panic!("this test needs a dpkg system ({DPKG_STATUS})");
        }
        let q = Command::new("dpkg-query")
            .args([
                "-W",
                "-f=${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n",
            ])
            .output()
            .unwrap();
        assert!(q.status.success());
        let want: std::collections::BTreeSet<(String, String, String)> =
            String::from_utf8(q.stdout)
                .unwrap()
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split('\t').collect();
                    (f[0] == "installed").then(|| (f[1].into(), f[2].into(), f[3].into()))
                })
                .collect();
        let ctx = AttestationContext::new(std::env::temp_dir(), Vec::new());
        let v = SystemPackagesAttestor::default().attest(&ctx).unwrap();
        assert_eq!(v["backend"], "dpkg");
        assert_eq!(v["os"], "linux");
        let os = parse_os_release(&std::fs::read_to_string("/etc/os-release").unwrap());
        let id = os.iter().find(|(k, _)| k == "ID").unwrap().1.clone();
        assert_eq!(v["distribution"], id.as_str());
        let got: std::collections::BTreeSet<(String, String, String)> = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().into(),
                    p["version"].as_str().unwrap().into(),
                    p["architecture"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert!(want.len() > 10, "{}", want.len());
        assert_eq!(got, want);
        assert_eq!(got.len(), v["packages"].as_array().unwrap().len());
        let sha = v["digest"]["sha256"].as_str().unwrap();
        assert_eq!(sha.len(), 64);
    }
}
