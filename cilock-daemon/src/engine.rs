//! Steps: begin, end, reap; turning a trace into a signed attestation.
//! (Being written; the types below are the contract the daemon's main and
//! the CLI rely on.)

use std::time::Duration;

use crate::backend::BackendChoice;

/// Engine settings (the daemon reads them from its TOML config).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Which backend to use.
    pub backend: BackendChoice,
    /// A step that is not ended within this time is reaped.
    pub step_timeout: Duration,
    /// Name of the cgroup (under the cgroup2 root) that holds step cgroups.
    pub cgroup_parent: String,
    /// Attestors every step runs besides command-run, material and product.
    pub default_attestations: Vec<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            backend: BackendChoice::Auto,
            step_timeout: Duration::from_secs(6 * 3600),
            cgroup_parent: "cilock.steps".to_string(),
            default_attestations: Vec::new(),
        }
    }
}
