//! What the `delete` action needs to clean up after a shim that died: written into the bundle
//! at Create, read back by a new shim process in the bundle.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::STATE_FILE;
use crate::error::{Result, ShimError};
use crate::runsc::NetworkMode;

/// What the `delete` action needs when the shim process is gone (written into the bundle).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersistedState {
    /// runsc binary.
    pub binary: PathBuf,
    /// runsc root for the namespace.
    pub root: PathBuf,
    /// Global flags.
    pub global: Vec<String>,
    /// `--network=` value.
    pub network: NetworkMode,
    /// Network namespace entered for runsc.
    pub netns: Option<PathBuf>,
    /// Sandbox process pid.
    pub pid: u32,
    /// Whether the shim mounted the rootfs.
    pub rootfs_mounted: bool,
    /// The nftables table the shim installed in `netns` for this sandbox, if any.
    #[serde(default)]
    pub nft_table: Option<String>,
    /// The audit destination its sandbox's chain is written to (root containers only): a
    /// `delete` action after the shim died closes that chain there.
    #[serde(default)]
    pub audit_output: Option<PathBuf>,
}

impl PersistedState {
    /// Writes the state into the bundle.
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let data = serde_json::to_vec(self).map_err(|e| ShimError::Internal(e.to_string()))?;
        std::fs::write(bundle.join(STATE_FILE), data)
            .map_err(|e| ShimError::io(format!("write {}", bundle.join(STATE_FILE).display()), e))
    }

    /// Reads it back (the `delete` action).
    pub fn load(bundle: &Path) -> Option<PersistedState> {
        let data = std::fs::read(bundle.join(STATE_FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }
}
