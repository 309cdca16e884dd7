//! How Safehouse runs runsc on a node.
//!
//! Three things live here and nothing else: the paths and names the shim and the CLI share
//! ([`paths`]), the runtime config file (`/etc/safehouse/config.toml`
//! or the file a containerd runtime handler names with `ConfigPath`), and a probe of the installed
//! `runsc` binary that the config is checked against. The shim and the `safehouse` CLI both read
//! configs through this crate, so they can never disagree about what a config means.

mod config;
pub mod paths;
mod probe;

pub use config::{
    AuditBudget, AuditSection, ConfigError, NetworkMode, PolicySection, RuntimeConfig,
    DEFAULT_CONFIG_PATH,
};
pub use probe::{ProbeError, RunscProbe, RunscVersion, OCI_SECCOMP_FLAG};
