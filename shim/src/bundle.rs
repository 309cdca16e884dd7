//! A container's bundle: the spec containerd wrote, read once at Create, and the files the shim
//! and runsc keep beside it, each named here.
//!
//! Create edits the spec in memory (policy, DNS resolver mount, read-only host binds, masked
//! and read-only paths) and
//! writes the confined spec once, just before `runsc create` reads it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, ShimError};

/// The OCI spec.
pub const CONFIG: &str = "config.json";
/// Where the confined spec is written before it replaces [`CONFIG`].
const CONFIG_TMP: &str = ".config.json.safehouse";
/// What the `delete` action needs when the shim process is gone.
pub const STATE_FILE: &str = "safehouse-state.json";
/// The trace session runsc reads (`--pod-init-config`).
pub const POD_INIT_CONFIG: &str = "safehouse-pod-init.json";
/// The resolv.conf pointing at the sandbox's DNS forwarder.
pub const RESOLV_CONF: &str = "safehouse-resolv.conf";
/// Where runsc writes the sandbox process's pid.
pub const INIT_PID_FILE: &str = "init.pid";
/// The directory of read-only host bind mounts.
pub const RO_BINDS_DIR: &str = ".safehouse-ro";
/// The empty read-only file masked files are covered with (see `masked`).
pub const MASKED_FILE: &str = ".safehouse-masked";
/// The directory of the views `process.tools` needs (see `tools`).
pub const TOOLS_DIR: &str = ".safehouse-tools";
/// The directory of the seccomp exec helper and its filters (see `seccomp::exec`).
pub const SECCOMP_EXEC_DIR: &str = ".safehouse-seccomp";
/// The shim's ttrpc address (written by containerd's `start` protocol).
pub const ADDRESS_FILE: &str = "address";
/// The container's root filesystem, when the shim mounts it.
pub const ROOTFS: &str = "rootfs";

/// A file of exec `exec_id`: `process.json` (its spec) or `pid` (its pid inside the sandbox).
pub fn exec_file(bundle: &Path, exec_id: &str, what: &str) -> PathBuf {
    bundle.join(format!("exec-{exec_id}.{what}"))
}

/// A bundle and the spec containerd gave it (untrusted: the tenant wrote it).
pub struct Bundle {
    /// The directory.
    pub dir: PathBuf,
    /// The spec as read.
    pub spec: Value,
}

impl Bundle {
    /// Reads the bundle's spec.
    pub fn read(dir: &Path) -> Result<Bundle> {
        let path = dir.join(CONFIG);
        let text = std::fs::read(&path)
            .map_err(|e| ShimError::io(format!("read {}", path.display()), e))?;
        let spec = serde_json::from_slice(&text).map_err(|e| {
            ShimError::InvalidArgument(format!("{}: not a valid OCI spec: {e}", path.display()))
        })?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            spec,
        })
    }

    /// A file of the bundle.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The spec's annotations (null when it has none).
    pub fn annotations(&self) -> &Value {
        &self.spec["annotations"]
    }

    /// Replaces the bundle's spec with `spec` atomically (write aside, then rename).
    pub fn write_spec(&self, spec: &impl Serialize) -> Result<()> {
        let path = self.file(CONFIG);
        let out = serde_json::to_vec_pretty(spec)
            .map_err(|e| ShimError::Internal(format!("serialise {}: {e}", path.display())))?;
        let tmp = self.file(CONFIG_TMP);
        std::fs::write(&tmp, out)
            .map_err(|e| ShimError::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| ShimError::io(format!("replace {}", path.display()), e))
    }
}

/// The confined spec's `process` (what an exec into the container inherits), read back.
pub fn confined_process(bundle: &Path) -> Option<Value> {
    std::fs::read(bundle.join(CONFIG))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| v["process"].clone())
        .filter(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_once_and_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CONFIG), br#"{"process":{"args":["sh"]}}"#).expect("w");
        let b = Bundle::read(dir.path()).expect("read");
        assert_eq!(b.spec["process"]["args"][0], "sh");
        b.write_spec(&serde_json::json!({"process": {"args": ["true"]}}))
            .expect("write");
        assert_eq!(
            confined_process(dir.path()).expect("process")["args"][0],
            "true"
        );
        assert!(!dir.path().join(CONFIG_TMP).exists());
        std::fs::write(dir.path().join(CONFIG), b"{not json").expect("w");
        let err = Bundle::read(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("not a valid OCI spec"), "{err}");
    }
}
