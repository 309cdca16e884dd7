//! Update: new cgroup limits for a running container, never past its policy's ceilings.

use containerd_shim_protos::api;
use tracing::info;

use super::TaskService;
use crate::error::{Result, ShimError};

impl TaskService {
    /// New cgroup limits for a running container. runsc (20240729) has no `update` command,
    /// and the host kernel enforces gVisor's limits on the host cgroup anyway, so the shim
    /// writes the container's cgroup itself, after tightening the request to the policy's
    /// ceilings exactly as Create does (an Update never loosens the policy).
    pub(super) async fn update_resources(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        self.running(&c)?;
        let any = req.resources.as_ref().ok_or_else(|| {
            ShimError::InvalidArgument(format!("update of {:?}: no resources given", req.id))
        })?;
        let mut resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| {
            ShimError::InvalidArgument(format!(
                "update of {:?}: resources ({}) are not Linux resources in JSON: {e}",
                req.id, any.type_url
            ))
        })?;
        safehouse_policy::compile::linux::tighten_resources(&c.resource_policy, &mut resources);
        if !c.is_root() {
            // A pod member's limit is the shim's to hold (the host cgroup is the pod's).
            let limit = resources.memory().as_ref().and_then(|m| m.limit());
            c.memory.update(&c.id, limit)?;
            self.watch_memory(c.clone());
        }
        let cgroup = c.cgroups_path.as_deref().ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "update of {:?}: its spec has no linux.cgroupsPath to apply limits to",
                req.id
            ))
        })?;
        let written = crate::cgroup::apply_limits(
            std::path::Path::new(crate::cgroup::ROOT),
            cgroup,
            &resources,
        )
        .map_err(|e| ShimError::FailedPrecondition(format!("update of {:?}: {e}", req.id)))?;
        info!(container = %c.id, cgroup, files = written.len(), policy = %c.policy, "resources updated");
        Ok(())
    }
}
