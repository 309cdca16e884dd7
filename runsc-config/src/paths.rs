//! Paths and names the shim and the `safehouse` CLI must agree on, declared once.

use std::path::{Path, PathBuf};

/// Where Safehouse keeps its runtime state on a node (trace sockets, console sockets, the shim
/// registry, the runsc probe cache).
pub const STATE_DIR: &str = "/run/safehouse";

/// ttrpc metadata key naming who asked for a Kill (set by `safehouse stop`, read by the shim).
pub const ACTOR_METADATA: &str = "safehouse-actor";

/// The directory under a state directory where shims register their containers.
pub const SHIM_REGISTRY: &str = "shims";

/// The registry file of container `id` in containerd namespace `namespace` under `state_dir`:
/// it holds the ttrpc address of the shim serving it, for `safehouse stop`.
pub fn registry_file(state_dir: &Path, namespace: &str, id: &str) -> PathBuf {
    state_dir.join(SHIM_REGISTRY).join(namespace).join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_layout() {
        assert_eq!(
            registry_file(Path::new(STATE_DIR), "k8s.io", "abc"),
            PathBuf::from("/run/safehouse/shims/k8s.io/abc")
        );
    }
}
