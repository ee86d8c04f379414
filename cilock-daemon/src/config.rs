//! The daemon's TOML configuration (`/etc/cilock/cilock.toml` by default).
//!
//! Every key is optional; a missing key takes the default below. Unknown keys
//! are an error that names the key, so a typo never silently falls back to a
//! default.
//!
//! | key                    | type                      | default                          |
//! |------------------------|---------------------------|----------------------------------|
//! | `socket`               | path                      | `/run/cilock/cilock.sock`        |
//! | `group`                | group name or numeric gid | `cilock`                         |
//! | `key`                  | path                      | `/etc/cilock/signing-key.pem`    |
//! | `backend`              | `auto`, `ebpf`, `ptrace`  | `auto`                           |
//! | `step_timeout`         | seconds, or `"6h"`, `"1h 30m"`, `"90s"` | `"6h"`             |
//! | `cgroup_parent`        | relative cgroup path      | `cilock.steps`                   |
//! | `default_attestations` | list of attestor names    | `[]`                             |
//! | `step_idle_timeout`    | duration, as above        | `"10m"`                          |
//! | `state_dir`            | absolute path             | `/var/lib/cilock`                |
//! | `log_level`            | tracing filter directive  | `info`                           |
//! | `max_steps_per_user`   | integer ≥ 1 (root exempt) | `32`                             |
//! | `max_connections_per_user` | integer ≥ 1 (root exempt) | `16`                         |
//! | `max_request`          | bytes, or `"64MiB"`, `"1GiB"` (≤ 256 MiB) | `"64MiB"`        |
//! | `max_hash_file_size`   | bytes, or `"4GiB"`, `"512MiB"`, `"1G"` | `"4GiB"`            |
//! | `hash_time_budget`     | duration, as above        | `"5m"`                           |
//! | `max_processes_per_step` | integer ≥ 1             | `100000`                         |
//! | `max_files_per_step`   | integer ≥ 1               | `1000000`                        |
//! | `run_wait_descendants` | duration, as above (0: no wait; ≤ `step_timeout`) | `"30s"`  |
//! | `stop_timeout`         | duration, as above (1 s to 1 h) | `"45s"`                    |
//! | `docker_proxy`         | absolute socket path, `""` disables | `/run/cilock/docker.sock` |
//! | `docker_socket`        | absolute socket path (the engine's) | `/var/run/docker.sock`   |
//! | `docker_buildkit_cgroup` | relative cgroup path    | `docker/buildkit`                |
//! | `store`                | list of `oci://HOST[:PORT]/REPO` or `oci+http://…` URLs (≤ 16) | `[]` |
//! | `store_timeout`        | duration, as above (1 s to 1 h) | `"60s"`                    |
//! | `store_docker_config`  | absolute directory holding `config.json` | unset: `$DOCKER_CONFIG`, else root's `~/.docker` |
//! | `store_retry`          | duration, as above (≥ 1 s) | `"5m"`                          |
//!
//! `store`: every envelope the daemon signs (step end, run, and the steps
//! it ends itself) is pushed to each of these OCI registries before the
//! client gets its reply, with the daemon's own credentials (the Docker
//! config in `store_docker_config`), each push bounded by `store_timeout`;
//! the client is told the outcome (`cilock step end`/`run` exit 3 when one
//! failed). An envelope not pushed stays in `<state_dir>/unpushed/` and is
//! retried at start and every `store_retry` ([`crate::unpushed`]). The
//! daemon pushes only to these URLs, never to one a client names.
//!
//! `docker_proxy` is the Docker API proxy ([`crate::docker`]) a step's
//! `docker` client talks to (`DOCKER_HOST=unix://<docker_proxy>`); it
//! forwards to `docker_socket`, has the main socket's group and mode, and
//! serves a peer only if that peer could open `docker_socket` itself.
//! `docker_buildkit_cgroup` is where the engine runs BuildKit RUNs (its
//! `--cgroup-parent`, default `docker`, then `buildkit`), relative to the
//! cgroup2 root: during a step's BuildKit build it is traced as the step's.
//!
//! `stop_timeout` bounds a stop (SIGTERM/SIGINT): requests in flight get a
//! third of it, ending the active steps the rest; then the daemon exits
//! whatever is still running (and logs what was cut short). Keep it below
//! the unit's `TimeoutStopSec` (60 s in the shipped unit).
//!
//! `max_hash_file_size` and `hash_time_budget` bound the hashing of the
//! files a step opened or exec'd (per file, and per step): a file beyond
//! them gets no digest and says why in `unhashedOpens`. Beyond
//! `max_processes_per_step` processes or `max_files_per_step` distinct
//! opened paths, events are counted instead of stored
//! (`trace.truncated` in the attestation).
//!
//! Table `[helper]`: the unprivileged process the attestors run in (see
//! [`crate::attest_helper`]):
//!
//! | key           | type                                   | default                          |
//! |---------------|----------------------------------------|----------------------------------|
//! | `path`        | PATH of the helper (absolute dirs, `:`) | `/usr/local/bin:/usr/bin:/bin`   |
//! | `timeout`     | duration, as above (wall clock, then killed) | `"10m"`                     |
//! | `cpu_seconds` | RLIMIT_CPU, seconds (≥ 1)              | `600`                            |
//! | `memory`      | RLIMIT_AS: bytes, or `"4GiB"`, `"512MiB"` (≥ 64 MiB) | `"4GiB"`           |
//! | `max_reply`   | largest reply read: bytes or `"64MiB"` (1 MiB to 4 GiB) | `"64MiB"`       |
//!
//! `CILOCK_SOCKET` (and the daemon's `--socket`) override `socket`; `--key`
//! overrides `key`; `RUST_LOG` overrides `log_level`.
//!
//! The module also holds [`check_key_file`], the permission check the daemon
//! applies to its signing key before loading it.

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::attest_helper::HelperConfig;
use crate::backend::BackendChoice;
use crate::engine::EngineConfig;
use cilock_api::{DEFAULT_MAX_REQUEST, DEFAULT_SOCKET, MAX_MESSAGE};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = cilock_api::DEFAULT_CONFIG;
/// Default signing key path.
pub const DEFAULT_KEY_PATH: &str = cilock_api::DEFAULT_KEY;
/// Default group whose members may use the socket.
pub const DEFAULT_GROUP: &str = cilock_api::DEFAULT_GROUP;
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The daemon's configuration file, after defaults are applied.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Unix socket the daemon listens on.
    pub socket: PathBuf,
    /// Group (name, or numeric gid) whose members may use the socket besides
    /// root. When the group does not exist the socket is root-only (0600).
    pub group: String,
    /// Signing key (PEM). Must be owned by root and not accessible to group
    /// or others.
    pub key: PathBuf,
    /// Trace backend.
    pub backend: BackendChoice,
    /// A step not ended within this time is reaped.
    #[serde(deserialize_with = "deserialize_duration")]
    pub step_timeout: Duration,
    /// Cgroup (relative to the cgroup2 root) that holds step cgroups.
    pub cgroup_parent: String,
    /// Attestors every step runs besides command-run, material and product.
    pub default_attestations: Vec<String>,
    /// A step whose processes are all gone for this long is ended by the
    /// daemon (its attestation kept in `state_dir/kept/<uid>/`, for `cilock step fetch`).
    #[serde(deserialize_with = "deserialize_duration")]
    pub step_idle_timeout: Duration,
    /// The daemon's state directory.
    pub state_dir: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// `tracing-subscriber` directive such as `info,cilock_daemon=debug`).
    pub log_level: String,
    /// Active steps one non-root uid may have at once.
    pub max_steps_per_user: usize,
    /// Connections one non-root uid may hold at once (idle ones included).
    pub max_connections_per_user: usize,
    /// Largest request accepted, in bytes.
    #[serde(deserialize_with = "deserialize_size")]
    pub max_request: u64,
    /// Largest opened/exec'd file hashed at the end of a step, in bytes.
    #[serde(deserialize_with = "deserialize_size")]
    pub max_hash_file_size: u64,
    /// Time the hashing at the end of one step may take.
    #[serde(deserialize_with = "deserialize_duration")]
    pub hash_time_budget: Duration,
    /// Processes recorded per step.
    pub max_processes_per_step: usize,
    /// Distinct opened paths recorded per step.
    pub max_files_per_step: usize,
    /// The attestor helper (`[helper]`).
    pub helper: HelperTable,
    /// `cilock run`: how long the daemon waits, after the command's root
    /// exited, for its descendants (the step cgroup becoming empty) when
    /// the client does not say (`--wait-descendants`).
    #[serde(deserialize_with = "deserialize_duration")]
    pub run_wait_descendants: Duration,
    /// A stop (SIGTERM/SIGINT) takes at most this long.
    #[serde(deserialize_with = "deserialize_duration")]
    pub stop_timeout: Duration,
    /// The Docker API proxy's socket (empty: no proxy).
    pub docker_proxy: PathBuf,
    /// The Docker engine's socket the proxy forwards to.
    pub docker_socket: PathBuf,
    /// Where the engine runs BuildKit RUNs, relative to the cgroup2 root.
    pub docker_buildkit_cgroup: String,
    /// OCI registries every signed envelope is pushed to (URLs).
    pub store: Vec<String>,
    /// Bound on each push to a store.
    #[serde(deserialize_with = "deserialize_duration")]
    pub store_timeout: Duration,
    /// The Docker config directory with the daemon's registry credentials
    /// (unset: `$DOCKER_CONFIG`, else root's `~/.docker`).
    pub store_docker_config: Option<PathBuf>,
    /// How often envelopes whose push failed are retried.
    #[serde(deserialize_with = "deserialize_duration")]
    pub store_retry: Duration,
}

/// Stores (`store`) a daemon pushes to, at most.
pub const MAX_STORES: usize = 16;

/// Default of [`DaemonConfig::docker_proxy`].
pub const DEFAULT_DOCKER_PROXY: &str = "/run/cilock/docker.sock";
/// Default of [`DaemonConfig::docker_socket`].
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Default of [`DaemonConfig::docker_buildkit_cgroup`]: dockerd's default
/// `--cgroup-parent` (`docker`), then BuildKit's `buildkit`.
pub const DEFAULT_DOCKER_BUILDKIT_CGROUP: &str = "docker/buildkit";

/// Default of [`DaemonConfig::stop_timeout`]: below the shipped unit's
/// `TimeoutStopSec=60`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// The `[helper]` table: how the unprivileged attestor helper runs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HelperTable {
    /// PATH of the helper's environment (its only variable).
    pub path: String,
    /// Wall-clock limit of one helper run; it is killed beyond it.
    #[serde(deserialize_with = "deserialize_duration")]
    pub timeout: Duration,
    /// RLIMIT_CPU of the helper, in seconds.
    pub cpu_seconds: u64,
    /// RLIMIT_AS of the helper, in bytes.
    #[serde(deserialize_with = "deserialize_size")]
    pub memory: u64,
    /// Largest helper reply the daemon reads, in bytes.
    #[serde(deserialize_with = "deserialize_size")]
    pub max_reply: u64,
}

impl Default for HelperTable {
    fn default() -> Self {
        let h = HelperConfig::default();
        HelperTable {
            path: h.path,
            timeout: h.timeout,
            cpu_seconds: h.cpu_seconds,
            memory: h.memory,
            max_reply: h.max_reply,
        }
    }
}

impl HelperTable {
    /// The engine's helper settings.
    pub fn helper_config(&self) -> HelperConfig {
        HelperConfig {
            path: self.path.clone(),
            timeout: self.timeout,
            cpu_seconds: self.cpu_seconds,
            memory: self.memory,
            max_reply: self.max_reply,
            ..HelperConfig::default()
        }
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.path.is_empty() || self.path.len() > 4096 {
            return Err(("helper.path", "must have 1 to 4096 characters".into()));
        }
        for dir in self.path.split(':') {
            if !dir.starts_with('/') || dir.contains('\0') {
                return Err((
                    "helper.path",
                    format!(
                        "{dir:?} is not an absolute directory (PATH entries are separated by ':')"
                    ),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(("helper.timeout", "must be greater than zero".into()));
        }
        if self.cpu_seconds == 0 {
            return Err(("helper.cpu_seconds", "must be at least 1".into()));
        }
        if self.memory < 64 << 20 {
            return Err((
                "helper.memory",
                format!(
                    "{} bytes is less than the 64 MiB the helper needs",
                    self.memory
                ),
            ));
        }
        if !(1 << 20..=4 << 30).contains(&self.max_reply) {
            return Err((
                "helper.max_reply",
                format!("{} bytes is outside 1 MiB to 4 GiB", self.max_reply),
            ));
        }
        Ok(())
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        let engine = EngineConfig::default();
        DaemonConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            group: DEFAULT_GROUP.to_string(),
            key: PathBuf::from(DEFAULT_KEY_PATH),
            backend: engine.backend,
            step_timeout: engine.step_timeout,
            cgroup_parent: engine.cgroup_parent,
            step_idle_timeout: engine.idle_timeout,
            state_dir: engine.state_dir,
            default_attestations: engine.default_attestations,
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            max_hash_file_size: engine.trace_limits.max_hash_file_size,
            hash_time_budget: engine.trace_limits.hash_time_budget,
            max_processes_per_step: engine.trace_limits.max_processes,
            max_files_per_step: engine.trace_limits.max_files,
            helper: HelperTable::default(),
            max_steps_per_user: engine.max_steps_per_user,
            max_connections_per_user: 16,
            max_request: DEFAULT_MAX_REQUEST as u64,
            run_wait_descendants: engine.run_wait_descendants,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            docker_proxy: PathBuf::from(DEFAULT_DOCKER_PROXY),
            docker_socket: PathBuf::from(DEFAULT_DOCKER_SOCKET),
            docker_buildkit_cgroup: DEFAULT_DOCKER_BUILDKIT_CGROUP.to_string(),
            store: Vec::new(),
            store_timeout: crate::unpushed::DEFAULT_STORE_TIMEOUT,
            store_docker_config: None,
            store_retry: crate::unpushed::DEFAULT_STORE_RETRY,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("configuration file {} does not exist", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong
    /// type. The message names the key and the line.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or `<string>`).
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{origin}: invalid value for `{key}`: {message}")]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
}

impl DaemonConfig {
    /// Parses and validates a configuration from TOML text. `origin` names
    /// the source in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: DaemonConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Loads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Loads `path`; when the file does not exist and `required` is false
    /// (the default path, not an explicit `--config`), returns the defaults.
    /// The boolean tells whether a file was read.
    pub fn load_or_default(path: &Path, required: bool) -> Result<(Self, bool), ConfigError> {
        match Self::load(path) {
            Ok(cfg) => Ok((cfg, true)),
            Err(ConfigError::NotFound { .. }) if !required => Ok((Self::default(), false)),
            Err(e) => Err(e),
        }
    }

    /// Checks values the types alone do not constrain.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        if self.socket.as_os_str().is_empty() {
            return Err(invalid("socket", "must not be empty".into()));
        }
        if !self.socket.is_absolute() {
            return Err(invalid(
                "socket",
                format!("{} is not an absolute path", self.socket.display()),
            ));
        }
        if self.socket.file_name().is_none() {
            return Err(invalid(
                "socket",
                format!("{} does not name a file", self.socket.display()),
            ));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err(invalid(
                "socket",
                format!(
                    "{} is longer than the 107 bytes a Unix socket path may have",
                    self.socket.display()
                ),
            ));
        }
        if !valid_group(&self.group) {
            return Err(invalid(
                "group",
                format!(
                    "{:?} is not a group name (letters, digits, '_', '-', '.'; not starting with '-') or a gid",
                    self.group
                ),
            ));
        }
        if self.key.as_os_str().is_empty() {
            return Err(invalid("key", "must not be empty".into()));
        }
        if self.step_timeout.is_zero() {
            return Err(invalid("step_timeout", "must be greater than zero".into()));
        }
        if self.run_wait_descendants > self.step_timeout {
            return Err(invalid(
                "run_wait_descendants",
                "must not exceed step_timeout".into(),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.stop_timeout) {
            return Err(invalid(
                "stop_timeout",
                "must be between 1 s and 1 h".into(),
            ));
        }
        if self.step_idle_timeout.is_zero() {
            return Err(invalid(
                "step_idle_timeout",
                "must be greater than zero".into(),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                format!("{} is not an absolute path", self.state_dir.display()),
            ));
        }
        if let Err(m) = valid_cgroup_parent(&self.cgroup_parent) {
            return Err(invalid("cgroup_parent", m));
        }
        for name in &self.default_attestations {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !ok {
                return Err(invalid(
                    "default_attestations",
                    format!("{name:?} is not an attestor name (lowercase letters, digits, '-')"),
                ));
            }
        }
        if self.max_hash_file_size == 0 {
            return Err(invalid(
                "max_hash_file_size",
                "must be greater than zero".into(),
            ));
        }
        if self.hash_time_budget.is_zero() {
            return Err(invalid(
                "hash_time_budget",
                "must be greater than zero".into(),
            ));
        }
        if self.max_processes_per_step == 0 {
            return Err(invalid(
                "max_processes_per_step",
                "must be at least 1".into(),
            ));
        }
        if self.max_files_per_step == 0 {
            return Err(invalid("max_files_per_step", "must be at least 1".into()));
        }
        if let Err((key, m)) = self.helper.validate() {
            return Err(invalid(key, m));
        }
        if self.max_steps_per_user == 0 || self.max_steps_per_user > crate::engine::MAX_STEPS {
            return Err(invalid(
                "max_steps_per_user",
                format!("must be between 1 and {}", crate::engine::MAX_STEPS),
            ));
        }
        if self.max_connections_per_user == 0 || self.max_connections_per_user > 100_000 {
            return Err(invalid(
                "max_connections_per_user",
                "must be between 1 and 100000".into(),
            ));
        }
        if self.max_request < 4096 || self.max_request > MAX_MESSAGE as u64 {
            return Err(invalid(
                "max_request",
                format!("must be between 4096 bytes and {MAX_MESSAGE} bytes (256MiB)"),
            ));
        }
        if !self.docker_proxy.as_os_str().is_empty() {
            if let Err(m) = valid_socket_path(&self.docker_proxy) {
                return Err(invalid("docker_proxy", m));
            }
            if self.docker_proxy == self.socket {
                return Err(invalid(
                    "docker_proxy",
                    "must differ from socket (the daemon's own socket)".into(),
                ));
            }
            if self.docker_proxy == self.docker_socket {
                return Err(invalid(
                    "docker_proxy",
                    "must differ from docker_socket (the engine's socket)".into(),
                ));
            }
        }
        if let Err(m) = valid_socket_path(&self.docker_socket) {
            return Err(invalid("docker_socket", m));
        }
        if let Err(m) = valid_cgroup_parent(&self.docker_buildkit_cgroup) {
            return Err(invalid("docker_buildkit_cgroup", m));
        }
        if self.store.len() > MAX_STORES {
            return Err(invalid(
                "store",
                format!("{} stores: at most {MAX_STORES}", self.store.len()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &self.store {
            let url = u
                .parse::<cilock_store::StoreUrl>()
                .map_err(|e| invalid("store", e.to_string()))?;
            if !seen.insert(url.to_string()) {
                return Err(invalid("store", format!("{u:?} is listed twice")));
            }
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.store_timeout) {
            return Err(invalid(
                "store_timeout",
                "must be between 1 s and 1 h".into(),
            ));
        }
        if self.store_retry < Duration::from_secs(1) {
            return Err(invalid("store_retry", "must be at least 1 s".into()));
        }
        if let Some(d) = &self.store_docker_config {
            if !d.is_absolute() {
                return Err(invalid(
                    "store_docker_config",
                    format!("{} is not an absolute path", d.display()),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return Err(invalid(
                "log_level",
                format!("{:?} is not a log filter: {e}", self.log_level),
            ));
        }
        Ok(())
    }

    /// The engine settings this configuration selects.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            backend: self.backend,
            step_timeout: self.step_timeout,
            cgroup_parent: self.cgroup_parent.clone(),
            default_attestations: self.default_attestations.clone(),
            idle_timeout: self.step_idle_timeout,
            state_dir: self.state_dir.clone(),
            trace_limits: cilock_trace::fold::TraceLimits {
                max_hash_file_size: self.max_hash_file_size,
                hash_time_budget: self.hash_time_budget,
                max_processes: self.max_processes_per_step,
                max_files: self.max_files_per_step,
            },
            helper: Some(self.helper.helper_config()),
            max_steps_per_user: self.max_steps_per_user,
            run_wait_descendants: self.run_wait_descendants,
            step_records: true,
        }
    }

    /// The socket server settings this configuration selects.
    pub fn server_config(&self) -> crate::server::ServerConfig {
        let mut s = crate::server::ServerConfig::new(self.socket.clone(), self.group.clone());
        s.max_connections_per_user = self.max_connections_per_user;
        s.max_message = usize::try_from(self.max_request).unwrap_or(MAX_MESSAGE);
        // Requests in flight get a third of a stop; ending steps the rest.
        s.shutdown_grace = self.stop_timeout / 3;
        s
    }

    /// The stores the daemon pushes to (validated URLs).
    pub fn store_settings(&self) -> crate::unpushed::StoreSettings {
        crate::unpushed::StoreSettings {
            urls: self.store.iter().filter_map(|u| u.parse().ok()).collect(),
            timeout: self.store_timeout,
            docker_config: self.store_docker_config.clone(),
            retry_every: self.store_retry,
        }
    }

    /// The Docker API proxy's settings (None: `docker_proxy` is empty).
    pub fn docker_proxy_config(&self) -> Option<crate::docker::ProxyConfig> {
        (!self.docker_proxy.as_os_str().is_empty()).then(|| crate::docker::ProxyConfig {
            socket: self.docker_proxy.clone(),
            engine: self.docker_socket.clone(),
            buildkit_cgroup: self.docker_buildkit_cgroup.clone(),
            group: self.group.clone(),
        })
    }
}

/// An absolute path a Unix socket can have.
fn valid_socket_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if p.file_name().is_none() {
        return Err(format!("{} does not name a file", p.display()));
    }
    if p.as_os_str().len() > 107 {
        return Err(format!(
            "{} is longer than the 107 bytes a Unix socket path may have",
            p.display()
        ));
    }
    Ok(())
}

fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 256
        && !g.starts_with('-')
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
}

fn valid_cgroup_parent(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    if p.starts_with('/') {
        return Err(format!(
            "{p:?} must be relative to the cgroup2 root (no leading '/')"
        ));
    }
    for comp in p.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(format!("{p:?} has an empty, '.' or '..' component"));
        }
        if comp.contains(['\n', '\0']) {
            return Err(format!("{p:?} contains a control character"));
        }
    }
    Ok(())
}

fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number of seconds or a duration such as \"6h\" or \"1h 30m\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            cilock_api::timefmt::parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Parses a size: a number of bytes (`"1048576"`), or a number with a unit
/// `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) or `KB`, `MB`, `GB`,
/// `TB` (powers of 1000), optionally separated by a space (`"4GiB"`,
/// `"64 MiB"`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!(
            "{text:?}: expected a number of bytes or e.g. \"64MiB\""
        ));
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("{text:?}: number too large"))?;
    let mult: u64 = match s[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?}: size too large"))
}

fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number of bytes or a size such as \"64MiB\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Why a signing key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file does not exist.
    #[error("signing key {} does not exist (generate one with `cilock keygen -o {}`)", path.display(), path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file's metadata could not be read.
    #[error("cannot inspect signing key {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a regular file.
    #[error("signing key {} is not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Not owned by root.
    #[error("signing key {} is owned by uid {uid}, not root (fix: chown root:root {})", path.display(), path.display())]
    NotRootOwned {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Readable or writable by group or others.
    #[error("signing key {} has mode {mode:04o}: it must not be readable or writable by group or others (fix: chmod 600 {})", path.display(), path.display())]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Refuses a signing key that is not a regular file owned by root with no
/// read or write permission for group or others (e.g. mode 0600 or 0400).
/// Symlinks are followed: the target is checked.
pub fn check_key_file(path: &Path) -> Result<(), KeyFileError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyFileError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(KeyFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != 0 {
        return Err(KeyFileError::NotRootOwned {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o066 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_trace_limits() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("64 MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        let c = DaemonConfig::from_toml_str(
            "max_hash_file_size = \"1GiB\"\nhash_time_budget = \"90s\"\n\
             max_processes_per_step = 10\nmax_files_per_step = 20\n",
            "t",
        )
        .unwrap();
        let l = c.engine_config().trace_limits;
        assert_eq!(l.max_hash_file_size, 1 << 30);
        assert_eq!(l.hash_time_budget, Duration::from_secs(90));
        assert_eq!((l.max_processes, l.max_files), (10, 20));
        let c = DaemonConfig::from_toml_str("max_hash_file_size = 4096\n", "t").unwrap();
        assert_eq!(c.max_hash_file_size, 4096);
        assert_eq!(
            DaemonConfig::default().engine_config().trace_limits,
            cilock_trace::fold::TraceLimits::default()
        );
        for bad in [
            "max_hash_file_size = 0",
            "hash_time_budget = 0",
            "max_processes_per_step = 0",
            "max_files_per_step = 0",
            "max_hash_file_size = -1",
        ] {
            assert!(DaemonConfig::from_toml_str(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("64 MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn helper_table() {
        let c = DaemonConfig::from_toml_str(
            "[helper]\npath = \"/usr/bin:/bin\"\ntimeout = \"30s\"\ncpu_seconds = 5\nmemory = \"1GiB\"\nmax_reply = 2097152\n",
            "t",
        )
        .unwrap();
        let h = c.engine_config().helper.unwrap();
        assert_eq!(h.path, "/usr/bin:/bin");
        assert_eq!(h.timeout, Duration::from_secs(30));
        assert_eq!(
            (h.cpu_seconds, h.memory, h.max_reply),
            (5, 1 << 30, 2 << 20)
        );
        assert_eq!(
            DaemonConfig::default()
                .engine_config()
                .helper
                .unwrap()
                .timeout,
            Duration::from_secs(600)
        );
        // The shipped file's [helper] block, uncommented, is the defaults.
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/cilock.toml"))
                .unwrap();
        let block: String = shipped
            .split("#[helper]")
            .nth(1)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(block.lines().count(), 5, "{block}");
        let c = DaemonConfig::from_toml_str(&format!("[helper]\n{block}"), "shipped").unwrap();
        assert_eq!(c.helper, HelperTable::default());
        for bad in [
            "[helper]\npath = \"bin:/usr/bin\"",
            "[helper]\npath = \"\"",
            "[helper]\ntimeout = 0",
            "[helper]\ncpu_seconds = 0",
            "[helper]\nmemory = \"1MiB\"",
            "[helper]\nmax_reply = 10",
            "[helper]\nmax_reply = \"8GiB\"",
            "[helper]\nnope = 1",
        ] {
            let e = DaemonConfig::from_toml_str(bad, "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains("helper") || e.contains("nope"), "{bad}: {e}");
        }
    }

    #[test]
    fn run_wait_descendants_key() {
        // The shipped file's commented value is the default.
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/cilock.toml"))
                .unwrap();
        let line = shipped
            .lines()
            .find_map(|l| l.strip_prefix("#run_wait_descendants = "))
            .expect("run_wait_descendants in dist/cilock.toml");
        let c =
            DaemonConfig::from_toml_str(&format!("run_wait_descendants = {line}"), "t").unwrap();
        assert_eq!(c, DaemonConfig::default());
        assert_eq!(
            DaemonConfig::default().engine_config().run_wait_descendants,
            Duration::from_secs(30)
        );
        let c = DaemonConfig::from_toml_str("run_wait_descendants = 0", "t").unwrap();
        assert_eq!(c.engine_config().run_wait_descendants, Duration::ZERO);
        let c = DaemonConfig::from_toml_str("run_wait_descendants = \"2m\"", "t").unwrap();
        assert_eq!(c.run_wait_descendants, Duration::from_secs(120));
        let e = DaemonConfig::from_toml_str(
            "step_timeout = \"1m\"\nrun_wait_descendants = \"2m\"",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("run_wait_descendants"), "{e}");
        assert!(DaemonConfig::from_toml_str("run_wait_descendants = \"x\"", "t").is_err());
    }

    #[test]
    fn docker_keys() {
        let d = DaemonConfig::default();
        let p = d.docker_proxy_config().unwrap();
        assert_eq!(p.socket, Path::new("/run/cilock/docker.sock"));
        assert_eq!(p.engine, Path::new("/var/run/docker.sock"));
        assert_eq!(p.buildkit_cgroup, "docker/buildkit");
        assert_eq!(p.group, "cilock");
        // The shipped file's commented values are the defaults.
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/cilock.toml"))
                .unwrap();
        let keys: Vec<&str> = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.starts_with("docker_"))
            .collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert_eq!(
            DaemonConfig::from_toml_str(&keys.join("\n"), "t").unwrap(),
            d
        );
        let off = DaemonConfig::from_toml_str("docker_proxy = \"\"", "t").unwrap();
        assert!(off.docker_proxy_config().is_none());
        let c = DaemonConfig::from_toml_str(
            "docker_proxy = \"/tmp/p.sock\"\ndocker_socket = \"/tmp/d.sock\"\ndocker_buildkit_cgroup = \"system.slice/buildkit\"",
            "t",
        )
        .unwrap();
        let p = c.docker_proxy_config().unwrap();
        assert_eq!(p.engine, Path::new("/tmp/d.sock"));
        assert_eq!(p.buildkit_cgroup, "system.slice/buildkit");
        for (bad, key) in [
            ("docker_proxy = \"rel.sock\"", "docker_proxy"),
            ("docker_proxy = \"/run/cilock/cilock.sock\"", "docker_proxy"),
            ("docker_proxy = \"/var/run/docker.sock\"", "docker_proxy"),
            ("docker_socket = \"\"", "docker_socket"),
            (
                "docker_buildkit_cgroup = \"/docker/buildkit\"",
                "docker_buildkit_cgroup",
            ),
            (
                "docker_buildkit_cgroup = \"docker/../x\"",
                "docker_buildkit_cgroup",
            ),
        ] {
            let e = DaemonConfig::from_toml_str(bad, "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes_and_limits() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1 gib").unwrap(), 1 << 30);
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        let c = DaemonConfig::from_toml_str(
            "max_request = \"1MiB\"\nmax_steps_per_user = 3\nmax_connections_per_user = 2\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.max_request, 1 << 20);
        assert_eq!(c.engine_config().max_steps_per_user, 3);
        let s = c.server_config();
        assert_eq!((s.max_message, s.max_connections_per_user), (1 << 20, 2));
        let d = DaemonConfig::default();
        assert_eq!(
            (
                d.max_request,
                d.max_steps_per_user,
                d.max_connections_per_user
            ),
            (64 << 20, 32, 16)
        );
        assert!(DaemonConfig::from_toml_str("max_request = \"1GiB\"", "t").is_err());
        assert!(DaemonConfig::from_toml_str("max_steps_per_user = 0", "t").is_err());
    }

    #[test]
    fn store_keys() {
        let d = DaemonConfig::default();
        assert!(d.store.is_empty());
        assert_eq!(d.store_timeout, Duration::from_secs(60));
        assert_eq!(d.store_retry, Duration::from_secs(300));
        assert_eq!(d.store_docker_config, None);
        // The shipped file's commented values are the defaults.
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/cilock.toml"))
                .unwrap();
        let keys: Vec<&str> = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.starts_with("store_timeout") || l.starts_with("store_retry"))
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(
            DaemonConfig::from_toml_str(&keys.join("\n"), "t").unwrap(),
            d
        );
        let c = DaemonConfig::from_toml_str(
            "store = [\"oci://ghcr.io/acme/evidence\", \"oci+http://127.0.0.1:5000/ev\"]\nstore_timeout = \"5s\"\nstore_retry = 2\nstore_docker_config = \"/etc/cilock/docker\"",
            "t",
        )
        .unwrap();
        let s = c.store_settings();
        assert_eq!(s.urls.len(), 2);
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.retry_every, Duration::from_secs(2));
        assert_eq!(
            s.docker_config.as_deref(),
            Some(Path::new("/etc/cilock/docker"))
        );
        for bad in [
            "store = [\"https://ghcr.io/acme\"]",
            "store = [\"oci://ghcr.io/a\", \"oci://ghcr.io/a\"]",
            "store = \"oci://ghcr.io/a\"",
            "store_timeout = 0",
            "store_timeout = \"2h\"",
            "store_retry = 0",
            "store_docker_config = \"rel\"",
        ] {
            let e = DaemonConfig::from_toml_str(bad, "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains("store"), "{bad}: {e}");
        }
    }

    #[test]
    fn cgroup_parents() {
        assert!(valid_cgroup_parent("cilock.steps").is_ok());
        assert!(valid_cgroup_parent("cilock.slice/steps").is_ok());
        assert!(valid_cgroup_parent("/abs").is_err());
        assert!(valid_cgroup_parent("a/../b").is_err());
        assert!(valid_cgroup_parent("a//b").is_err());
    }

    #[test]
    fn stop_timeout_key() {
        // The shipped file's commented value is the default, and it is
        // below the shipped unit's TimeoutStopSec.
        let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/");
        let shipped = std::fs::read_to_string(format!("{dist}cilock.toml")).unwrap();
        let line = shipped
            .lines()
            .find_map(|l| l.strip_prefix("#stop_timeout = "))
            .expect("stop_timeout in dist/cilock.toml");
        let c = DaemonConfig::from_toml_str(&format!("stop_timeout = {line}"), "t").unwrap();
        assert_eq!(c, DaemonConfig::default());
        let unit = std::fs::read_to_string(format!("{dist}cilock.service")).unwrap();
        let stop: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("TimeoutStopSec in dist/cilock.service")
            .trim()
            .parse()
            .unwrap();
        assert!(DEFAULT_STOP_TIMEOUT < Duration::from_secs(stop));
        let c = DaemonConfig::from_toml_str("stop_timeout = \"6s\"", "t").unwrap();
        assert_eq!(c.server_config().shutdown_grace, Duration::from_secs(2));
        for bad in [
            "stop_timeout = 0",
            "stop_timeout = \"2h\"",
            "stop_timeout = \"x\"",
        ] {
            let e = DaemonConfig::from_toml_str(bad, "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains("stop_timeout"), "{bad}: {e}");
        }
    }
}
