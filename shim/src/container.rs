//! A container served by this shim: where it lives, which sandbox it belongs to, and the
//! host-side resources it owns (rootfs mounts, stdio, runsc state) until it is deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, ShimError};
use crate::process::Process;
use crate::runsc::{Runsc, SandboxFlags};

/// CRI's annotation saying whether a spec is a pod sandbox or a container in one.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the pod sandbox a container belongs to.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's annotation with the pod's name.
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// CRI's annotation with the pod's Kubernetes namespace.
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";

/// How a spec relates to a runsc sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxRole {
    /// Starts a new sandbox (a plain `ctr run`, or a CRI pod's sandbox container).
    Root,
    /// Joins the sandbox of the pod whose sandbox container has this id.
    Join(String),
}

/// Reads a spec's CRI annotations.
pub fn sandbox_role(spec: &Value, id: &str) -> SandboxRole {
    let ann = &spec["annotations"];
    match (
        ann[CRI_CONTAINER_TYPE].as_str(),
        ann[CRI_SANDBOX_ID].as_str(),
    ) {
        (Some("container"), Some(sb)) if !sb.is_empty() && sb != id => {
            SandboxRole::Join(sb.to_string())
        }
        _ => SandboxRole::Root,
    }
}

/// The shim process a container belongs to: all containers of one pod share one.
pub fn grouping_id(spec: &Value, id: &str) -> String {
    match sandbox_role(spec, id) {
        SandboxRole::Join(sb) => sb,
        SandboxRole::Root => id.to_string(),
    }
}

/// The network namespace the spec puts the container in, if it names one of its own.
pub fn netns_path(spec: &Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

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
    pub network: String,
    /// Network namespace entered for runsc.
    pub netns: Option<PathBuf>,
    /// Sandbox process pid.
    pub pid: u32,
    /// Whether the shim mounted the rootfs.
    pub rootfs_mounted: bool,
    /// The nftables table the shim installed in `netns` for this sandbox, if any.
    #[serde(default)]
    pub nft_table: Option<String>,
}

/// File name of [`PersistedState`] in the bundle.
pub const STATE_FILE: &str = "safehouse-state.json";

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

/// A container of this shim.
pub struct Container {
    /// containerd's id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The id of the sandbox's root container (itself when it is the root).
    pub sandbox_id: String,
    /// Global runsc flags of its sandbox.
    pub flags: SandboxFlags,
    /// The runsc driving it.
    pub runsc: Runsc,
    /// Whether the shim mounted `bundle/rootfs` (and must unmount it).
    pub rootfs_mounted: bool,
    /// The init process.
    pub init: Arc<Process>,
    /// Exec processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Name of the agent policy confining it.
    pub policy: String,
    /// `sha256:` digest of that policy.
    pub policy_digest: String,
    /// The policy's wall-clock limit.
    pub timeout: Option<std::time::Duration>,
    /// The sandbox's audit (shared by every container of a pod).
    pub audit: Arc<crate::audit::SandboxAudit>,
    /// The host cgroup runsc put the sandbox in (the `linux.cgroupsPath` of the pod's sandbox
    /// container, shared by every container of the pod).
    pub cgroups_path: Option<String>,
    /// Set once the kernel's OOM killer ended the sandbox; shared by every container of the
    /// pod, so a member whose exit is handled after the sandbox's cgroup is gone still knows.
    pub sandbox_oom: Arc<std::sync::atomic::AtomicBool>,
    /// This container's own `linux.cgroupsPath` (the sandbox's for the root container).
    pub own_cgroups_path: Option<String>,
    /// The policy's resource ceilings: an Update may tighten limits, never pass these.
    pub resource_policy: safehouse_policy::manifest::ResourcePolicy,
    /// Why Safehouse ended the container, when it did (timeout, violation).
    pub exit_reason: Mutex<Option<safehouse_audit::ExitReason>>,
    /// The spec's `startContainer` hooks (runsc skips them; the shim runs them before start).
    pub start_hooks: Vec<crate::hooks::Hook>,
    /// The spec's annotations, for the hooks' state.
    pub annotations: Value,
    /// The network filter its policy compiled to (a pod member must match its sandbox's).
    pub filter: Option<safehouse_policy::NetFilter>,
    /// The sandbox's network plumbing (table, DNS forwarder), held by the root container.
    pub network: Option<Arc<crate::netfilter::SandboxNetwork>>,
}

impl Container {
    /// Records why Safehouse is about to end the container.
    pub fn set_exit_reason(&self, reason: safehouse_audit::ExitReason) {
        *self.exit_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Why a process of this container ended, for the audit stream.
    pub fn exit_reason_for(&self, p: &Process, code: u32) -> safehouse_audit::ExitReason {
        use safehouse_audit::ExitReason;
        if p.exec_id.is_empty() {
            if let Some(r) = *self.exit_reason.lock().unwrap_or_else(|e| e.into_inner()) {
                return r;
            }
        }
        if code > 128 {
            ExitReason::Killed
        } else {
            ExitReason::Normal
        }
    }

    /// The state a hook reads on stdin.
    pub fn hook_state(&self, status: &'static str, pid: u32) -> crate::hooks::HookState {
        crate::hooks::HookState {
            id: self.id.clone(),
            status,
            pid,
            bundle: self.bundle.clone(),
            annotations: self.annotations.clone(),
        }
    }

    /// Whether this container started its sandbox.
    pub fn is_root(&self) -> bool {
        self.sandbox_id == self.id
    }

    /// The init (`exec_id` empty) or an exec process.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                ShimError::NotFound(format!(
                    "exec {exec_id:?} of container {:?} not found",
                    self.id
                ))
            })
    }
}

/// Mounts containerd's rootfs mounts at `bundle/rootfs`.
pub async fn mount_rootfs(
    bundle: &Path,
    mounts: &[containerd_shim_protos::api::Mount],
) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| ShimError::io(format!("create {}", target.display()), e))?;
    for m in mounts {
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, &target).await {
            unmount_rootfs(bundle);
            return Err(ShimError::Internal(format!(
                "mount rootfs ({} {}) at {}: {e}",
                m.type_,
                m.source,
                target.display()
            )));
        }
    }
    Ok(true)
}

/// Releases what the shim mounted on the host for a bundle: the rootfs (if it mounted it) and
/// the read-only host binds.
pub fn release_host_mounts(bundle: &Path, rootfs_mounted: bool) {
    if rootfs_mounted {
        unmount_rootfs(bundle);
    }
    crate::hostbind::release(bundle);
}

/// Replaces the bundle's `config.json` atomically (write aside, then rename).
pub fn write_spec(bundle: &Path, spec: &impl Serialize) -> Result<()> {
    let path = bundle.join("config.json");
    let out = serde_json::to_vec_pretty(spec)
        .map_err(|e| ShimError::Internal(format!("serialise {}: {e}", path.display())))?;
    let tmp = bundle.join(".config.json.safehouse");
    std::fs::write(&tmp, out).map_err(|e| ShimError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| ShimError::io(format!("replace {}", path.display()), e))
}

/// Unmounts everything under `bundle/rootfs` (lazily: a busy mount must not block delete).
pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    if let Some(t) = target.to_str() {
        if let Err(e) = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH) {
            tracing::warn!("unmount {t}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cri_annotations_decide_the_sandbox() {
        let plain = json!({"annotations": {}});
        assert_eq!(sandbox_role(&plain, "c1"), SandboxRole::Root);
        assert_eq!(grouping_id(&plain, "c1"), "c1");
        let pod = json!({"annotations": {CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: "pod1"}});
        assert_eq!(sandbox_role(&pod, "pod1"), SandboxRole::Root);
        let member =
            json!({"annotations": {CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod1"}});
        assert_eq!(
            sandbox_role(&member, "c2"),
            SandboxRole::Join("pod1".into())
        );
        assert_eq!(grouping_id(&member, "c2"), "pod1");
        // A spec naming itself as its own sandbox is a root, not a loop.
        let selfish =
            json!({"annotations": {CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "c3"}});
        assert_eq!(sandbox_role(&selfish, "c3"), SandboxRole::Root);
    }

    #[test]
    fn netns_only_when_a_path_is_given() {
        let none = json!({"linux": {"namespaces": [{"type": "network"}, {"type": "pid"}]}});
        assert_eq!(netns_path(&none), None);
        let given =
            json!({"linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/p"}]}});
        assert_eq!(netns_path(&given), Some(PathBuf::from("/var/run/netns/p")));
        assert_eq!(netns_path(&json!({})), None);
    }
}
