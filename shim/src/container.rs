//! A container served by this shim: where it lives, which sandbox it belongs to, and the
//! host-side resources it owns (rootfs mounts, stdio, runsc state) until it is deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use safehouse_audit::ExitReason;
use serde_json::Value;

use crate::error::{Result, ShimError};
use crate::process::{ExecProcess, InitProcess, ProcessRef};
use crate::runsc::SandboxRuntime;
use crate::sandbox::undo::{Teardown, Undo};
use crate::sandbox::Sandbox;

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

/// The network namespace a spec gives a new sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecNetns {
    /// No network namespace entry: the runtime's own (for the shim's runsc, the node's).
    Shared,
    /// An existing namespace at this path (CRI, `ctr run --with-ns network:PATH`).
    Path(PathBuf),
    /// A new namespace of the container's own, without a path: runsc makes it at create
    /// (verified with runsc 20240729: its sandbox process starts in a fresh namespace) and
    /// the spec's createRuntime hooks configure it (nerdctl's CNI set-up).
    New,
}

/// The network namespace entry of a spec.
pub fn spec_netns(spec: &Value) -> SpecNetns {
    let entry = spec["linux"]["namespaces"]
        .as_array()
        .and_then(|nss| nss.iter().find(|ns| ns["type"] == "network"));
    match entry {
        None => SpecNetns::Shared,
        Some(ns) => match ns["path"].as_str().filter(|p| !p.is_empty()) {
            Some(p) => SpecNetns::Path(PathBuf::from(p)),
            None => SpecNetns::New,
        },
    }
}

/// Why a process ended, from its exit code alone: killed by a signal, or not.
pub fn exit_reason(code: u32) -> ExitReason {
    if code > 128 {
        ExitReason::Killed
    } else {
        ExitReason::Normal
    }
}

/// A container of this shim: its own state. What it shares with the other containers of its
/// pod is its [`Sandbox`].
pub struct Container {
    /// containerd's id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The sandbox it runs in.
    pub sandbox: Arc<Sandbox>,
    /// Its runsc: the sandbox's flags, logging into its own bundle.
    pub runtime: Arc<dyn SandboxRuntime>,
    /// The init process.
    pub init: Arc<InitProcess>,
    /// Exec processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
    /// The audit fields its lifecycle events carry: its sandbox's, with its own policy.
    pub ctx: safehouse_audit::lifecycle::SandboxContext,
    /// Name of the agent policy confining it.
    pub policy: String,
    /// `sha256:` digest of that policy.
    pub policy_digest: String,
    /// Whether the policy sets `process.tools` (an exec then brings no loader variables).
    pub tools: bool,
    /// The policy's wall-clock limit.
    pub timeout: Option<std::time::Duration>,
    /// Its own `linux.cgroupsPath` (the sandbox's, for the sandbox's root container).
    pub cgroups_path: Option<String>,
    /// The policy's resource ceilings: an Update may tighten limits, never pass these.
    pub resource_policy: safehouse_policy::manifest::ResourcePolicy,
    /// Why Safehouse ended the container, when it did (timeout, violation).
    pub exit_reason: Mutex<Option<ExitReason>>,
    /// Its memory limit inside a pod, which the shim enforces (none for a sandbox's root).
    pub memory: crate::sandbox::memory::MemoryWatch,
    /// The spec's `startContainer` hooks (runsc skips them; the shim runs them before start).
    pub start_hooks: Vec<crate::hooks::Hook>,
    /// The spec's annotations, for the hooks' state.
    pub annotations: Value,
    /// What it holds on the host, released by its teardown.
    pub undo: tokio::sync::Mutex<Undo>,
}

impl Container {
    /// Records why Safehouse is about to end the container.
    pub fn set_exit_reason(&self, reason: ExitReason) {
        *self.exit_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Why its init ended with `code`, for the audit stream. A container whose sandbox the
    /// enforcer's kill switch ended (the pod's root and every member: the switch kills the
    /// whole sandbox) was killed for a violation, even when its exit is handled before the
    /// task service heard of the kill (the switch acts first and tells after).
    pub fn init_exit_reason(&self, code: u32) -> ExitReason {
        if let Some(r) = *self.exit_reason.lock().unwrap_or_else(|e| e.into_inner()) {
            return r;
        }
        if code > 128 && self.sandbox.audit.switch.thrown() {
            return ExitReason::Violation;
        }
        exit_reason(code)
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
        self.sandbox.id == self.id
    }

    /// The init (`exec_id` empty) or an exec process.
    pub fn process(&self, exec_id: &str) -> Result<ProcessRef> {
        if exec_id.is_empty() {
            return Ok(ProcessRef::Init(self.init.clone()));
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .map(ProcessRef::Exec)
            .ok_or_else(|| {
                ShimError::NotFound(format!(
                    "exec {exec_id:?} of container {:?} not found",
                    self.id
                ))
            })
    }

    /// Releases what the container holds on the host (see [`Undo`]).
    pub async fn teardown(&self, how: &Teardown<'_>) -> Result<()> {
        self.undo.lock().await.run(how).await
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
    fn a_network_entry_without_a_path_is_a_new_namespace() {
        let new = json!({"linux": {"namespaces": [{"type": "network"}, {"type": "pid"}]}});
        assert_eq!(spec_netns(&new), SpecNetns::New);
        let empty = json!({"linux": {"namespaces": [{"type": "network", "path": ""}]}});
        assert_eq!(spec_netns(&empty), SpecNetns::New);
        let given =
            json!({"linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/p"}]}});
        assert_eq!(
            spec_netns(&given),
            SpecNetns::Path(PathBuf::from("/var/run/netns/p"))
        );
        let shared = json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert_eq!(spec_netns(&shared), SpecNetns::Shared);
        assert_eq!(spec_netns(&json!({})), SpecNetns::Shared);
    }
}
