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
        let memory_limit = |r: &oci_spec::runtime::LinuxResources| {
            r.memory()
                .as_ref()
                .and_then(|m| m.limit())
                .filter(|&l| l > 0)
        };
        let asked = memory_limit(&resources);
        safehouse_policy::compile::linux::tighten_resources(&c.resource_policy, &mut resources);
        // A pod member's own limit is the shim's to hold (the host cgroup is the pod's): the
        // one the update asks for, as the policy narrowed it (tightening also fills in the
        // policy's ceiling for an update that asks none, which is not the member's).
        let member_limit = asked.and(memory_limit(&resources));
        if !c.is_root() {
            c.memory.check(&c.id, member_limit)?;
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
        if !c.is_root() {
            c.memory.update(&c.id, member_limit)?;
            self.watch_memory(c.clone());
        }
        info!(container = %c.id, cgroup, files = written.len(), policy = %c.policy, "resources updated");
        Ok(())
    }
}
