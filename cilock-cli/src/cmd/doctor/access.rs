//! Whether this user can reach a daemon that can sign: the configuration
//! the daemon reads, the socket group and this process's groups, the
//! socket (a `Status` request), the signing key's permissions, and the
//! service manager.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cilock_api::client::Client;
use cilock_api::{Reply, Request, StatusReply};
use nix::unistd::{getegid, geteuid, getgroups, Gid, Group};

use super::report::{Check, Status};

/// What the doctor takes from the daemon's configuration file: where the
/// socket, the group and the key are. The daemon validates the whole file
/// (`cilock-daemon --check-config`); the doctor reads only these keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The configuration file read (or the default that was absent).
    pub config: PathBuf,
    /// Whether it existed.
    pub config_found: bool,
    /// Socket path (`--socket`, `CILOCK_SOCKET`, the file, the default).
    pub socket: PathBuf,
    /// Socket group (name or numeric gid).
    pub group: String,
    /// Signing key path.
    pub key: PathBuf,
}

impl Settings {
    /// Reads `config` (default: `/etc/cilock/cilock.toml`, which may be
    /// absent); `socket` overrides the socket as `--socket` does. A file
    /// named explicitly must exist; a file that exists must parse.
    pub fn load(config: Option<&Path>, socket: Option<&Path>) -> anyhow::Result<Settings> {
        let path = config.map_or_else(
            || PathBuf::from(cilock_api::DEFAULT_CONFIG),
            Path::to_path_buf,
        );
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.is_none() => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let table: toml::Table = match &text {
            Some(t) => t
                .parse()
                .with_context(|| format!("parsing {}", path.display()))?,
            None => toml::Table::new(),
        };
        let string = |key: &str, default: &str| -> anyhow::Result<String> {
            match table.get(key) {
                None => Ok(default.to_string()),
                Some(toml::Value::String(s)) => Ok(s.clone()),
                Some(toml::Value::Integer(i)) if key == "group" => Ok(i.to_string()),
                Some(v) => bail!(
                    "{}: `{key}` must be a string, not {}",
                    path.display(),
                    v.type_str()
                ),
            }
        };
        let socket = match socket {
            Some(s) => s.to_path_buf(),
            None => match std::env::var_os(cilock_api::SOCKET_ENV).filter(|v| !v.is_empty()) {
                Some(s) => s.into(),
                None => string("socket", cilock_api::DEFAULT_SOCKET)?.into(),
            },
        };
        let group = string("group", cilock_api::DEFAULT_GROUP)?;
        let key = string("key", cilock_api::DEFAULT_KEY)?.into();
        Ok(Settings {
            config_found: text.is_some(),
            config: path,
            socket,
            group,
            key,
        })
    }

    /// `config`: which file the settings came from.
    pub fn check(&self) -> Check {
        if self.config_found {
            Check::ok(
                "config",
                format!(
                    "{} (socket, group and key read from it)",
                    self.config.display()
                ),
            )
        } else {
            Check::costs(
                "config",
                Status::Warn,
                format!(
                    "{} absent: the daemon's defaults apply",
                    self.config.display()
                ),
                "",
            )
        }
    }
}

/// `group`: the socket's group, and whether this process is in it (its
/// current groups, as the kernel checks them at connect: a login that
/// predates `usermod -aG` does not have the group yet).
pub fn group(settings: &Settings) -> Check {
    const COST: &str = "this user cannot open the daemon's socket: `cilock step` and `cilock run` through the daemon fail";
    let gid = match settings.group.parse::<u32>() {
        Ok(n) => Ok(Some(Gid::from_raw(n))),
        Err(_) => Group::from_name(&settings.group).map(|g| g.map(|g| g.gid)),
    };
    let gid = match gid {
        Ok(Some(g)) => g,
        Ok(None) => {
            return Check::costs(
                "group",
                Status::Missing,
                format!(
                    "group {} does not exist: the daemon makes its socket root-only (0600)",
                    settings.group
                ),
                "only root can use the daemon (create the group: groupadd --system cilock)",
            )
        }
        Err(e) => {
            return Check::costs(
                "group",
                Status::NotChecked,
                format!("looking up group {}: {e}", settings.group),
                "",
            )
        }
    };
    let uid = geteuid();
    let mut groups = getgroups().unwrap_or_default();
    groups.push(getegid());
    if uid.is_root() {
        return Check::ok(
            "group",
            format!(
                "root (uid 0) needs no group; socket group {} is gid {gid}",
                settings.group
            ),
        );
    }
    if groups.contains(&gid) {
        Check::ok(
            "group",
            format!("uid {uid} is in group {} (gid {gid})", settings.group),
        )
    } else {
        let mut list: Vec<u32> = groups.iter().map(|g| g.as_raw()).collect();
        list.sort_unstable();
        list.dedup();
        let list: Vec<String> = list.iter().map(u32::to_string).collect();
        Check::costs(
            "group",
            Status::Missing,
            format!(
                "uid {uid} is not in group {} (gid {gid}); this process's groups: {} (after usermod -aG, log in again)",
                settings.group,
                list.join(",")
            ),
            COST,
        )
    }
}

/// `socket` and `daemon`: a `Status` request on the socket. Returns the
/// reply when the daemon answered.
pub fn socket(settings: &Settings) -> (Check, Check, Option<StatusReply>) {
    let path = &settings.socket;
    let socket_detail = match std::fs::metadata(path) {
        Ok(m) => {
            let group = nix::unistd::Group::from_gid(Gid::from_raw(m.gid()))
                .ok()
                .flatten()
                .map_or_else(|| m.gid().to_string(), |g| g.name);
            format!(
                "{} (mode {:04o}, group {group})",
                path.display(),
                m.mode() & 0o7777
            )
        }
        // The client's error below says what is wrong with the path.
        Err(_) => path.display().to_string(),
    };
    match Client::new(path).request(&Request::Status) {
        Ok(Reply::Status(s)) => {
            let socket = Check::ok(
                "socket",
                format!("{socket_detail}: the daemon answered Status"),
            );
            let daemon = Check::ok(
                "daemon",
                format!(
                    "cilock-daemon {}, backend {}, key {}, {} active step(s) visible",
                    s.version,
                    s.backend,
                    s.keyid,
                    s.steps.len()
                ),
            );
            (socket, daemon, Some(s))
        }
        Ok(other) => {
            let why = format!("{socket_detail}: unexpected reply to Status: {other:?}");
            (
                Check::costs("socket", Status::Missing, why, "no daemon to trace steps"),
                Check::costs("daemon", Status::NotChecked, "no Status reply", ""),
                None,
            )
        }
        Err(e) => {
            let socket = Check::costs(
                "socket",
                Status::Missing,
                format!("{socket_detail}; {e}"),
                if cfg!(feature = "embedded") {
                    "`cilock step` cannot work; `cilock run` falls back to its embedded engine (root only)"
                } else {
                    "`cilock step` and `cilock run` cannot work (this cilock has no embedded engine)"
                },
            );
            let daemon = Check::costs(
                "daemon",
                Status::NotChecked,
                "the socket did not answer (see socket)",
                "",
            );
            (socket, daemon, None)
        }
    }
}

/// `key`: the signing key is a regular file, owned by root, not readable
/// or writable by group or others (the rule the daemon enforces at start).
pub fn key(settings: &Settings) -> Check {
    const COST: &str = "the daemon refuses to start: no attestation can be signed";
    let path = &settings.key;
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Check::costs(
                "key",
                Status::NotChecked,
                format!(
                    "{}: {e} (uid {} cannot look; the daemon checks it at start)",
                    path.display(),
                    geteuid()
                ),
                "",
            )
        }
        Err(e) => {
            return Check::costs(
                "key",
                Status::Missing,
                format!("{}: {e}", path.display()),
                COST,
            )
        }
    };
    let mode = m.mode() & 0o7777;
    let what = format!("{} (mode {mode:04o}, uid {})", path.display(), m.uid());
    if !m.is_file() {
        Check::costs(
            "key",
            Status::Missing,
            format!("{what}: not a regular file"),
            COST,
        )
    } else if m.uid() != 0 {
        Check::costs(
            "key",
            Status::Missing,
            format!("{what}: not owned by root"),
            COST,
        )
    } else if mode & 0o066 != 0 {
        Check::costs(
            "key",
            Status::Missing,
            format!("{what}: group or others may read or write it (chmod 0600)"),
            COST,
        )
    } else {
        Check::ok("key", what)
    }
}

/// Where systemd installs `systemctl` (merged `/usr`, then the older `/bin`).
const SYSTEMCTL: [&str; 2] = ["/usr/bin/systemctl", "/bin/systemctl"];

/// `service`: the unit's state when systemd is PID 1 (`/run/systemd/system`
/// exists, as `sd_booted` checks); otherwise what runs as PID 1.
pub fn service() -> Check {
    if !Path::new("/run/systemd/system").is_dir() {
        let init = std::fs::read_to_string("/proc/1/comm")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        return Check::costs(
            "service",
            Status::NotChecked,
            format!("systemd is not PID 1 (PID 1 is {init}): cilock.service is not managed here; start cilock-daemon yourself"),
            "",
        );
    }
    // By absolute path, not through PATH: root runs the doctor too, and a
    // PATH a job set must not choose what root executes.
    let Some(systemctl) = SYSTEMCTL.iter().copied().find(|p| Path::new(p).is_file()) else {
        return Check::costs(
            "service",
            Status::NotChecked,
            format!(
                "systemd is PID 1 but none of {} exists",
                SYSTEMCTL.join(", ")
            ),
            "",
        );
    };
    let state = |verb: &str| {
        std::process::Command::new(systemctl)
            .args([verb, "cilock.service"])
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| match String::from_utf8_lossy(&o.stdout).trim() {
                // `is-enabled` prints nothing for a unit systemd does not know.
                "" => "not installed".to_string(),
                state => state.to_string(),
            })
    };
    match (state("is-active"), state("is-enabled")) {
        (Ok(active), Ok(enabled)) if active == "active" => {
            Check::ok("service", format!("cilock.service active, {enabled}"))
        }
        (Ok(active), Ok(enabled)) => Check::costs(
            "service",
            Status::Missing,
            format!("cilock.service {active}, {enabled} (systemctl enable --now cilock)"),
            "no daemon: steps cannot be traced through it",
        ),
        (Err(e), _) | (_, Err(e)) => Check::costs(
            "service",
            Status::NotChecked,
            format!("{systemctl}: {e}"),
            "",
        ),
    }
}
