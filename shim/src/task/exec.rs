//! Exec: add a process to a running container, confined like the container itself (the exec
//! request's user, capabilities and the like are replaced by the container's confined values,
//! and its command starts through the seccomp helper when the container has a profile).

use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::topics;
use serde_json::Value;

use super::TaskService;
use crate::bundle::{confined_process, exec_file};
use crate::confine;
use crate::error::{Result, ShimError};
use crate::process::{ExecProcess, Status};
use crate::seccomp;
use crate::stdio::IoPaths;

impl TaskService {
    pub(super) async fn add_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if req.exec_id.is_empty() || req.exec_id.contains('/') {
            return Err(ShimError::InvalidArgument(format!(
                "invalid exec id {:?}",
                req.exec_id
            )));
        }
        if c.init.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {:?} is {:?}, not running",
                c.id,
                c.init.status()
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec request has no process spec".into()))?;
        let process: Value = serde_json::from_slice(&spec.value).map_err(|e| {
            ShimError::InvalidArgument(format!("exec process spec is not valid JSON: {e}"))
        })?;
        if process["args"].as_array().is_none_or(|a| a.is_empty()) {
            return Err(ShimError::InvalidArgument(
                "exec process spec has no args".into(),
            ));
        }
        // The container's spec as the policy left it (Create rewrote config.json).
        let container_process = confined_process(&c.bundle).ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "exec in {:?}: cannot read the container's confined spec in {}",
                c.id,
                c.bundle.display()
            ))
        })?;
        if c.tools {
            confine::check_exec_loader_env(&c.policy, &container_process, &process)?;
        }
        {
            let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {:?} already exists in {:?}",
                    req.exec_id, c.id
                )));
            }
            let file = exec_file(&c.bundle, &req.exec_id, "process.json");
            let mut confined = confine::confine_exec(&container_process, &process);
            // runsc gives an exec'd process no seccomp filter: the helper installs the
            // container's (zero cost for a container without a profile).
            if seccomp::exec::has_helper(&c.bundle) {
                seccomp::exec::wrap_args(&mut confined);
            }
            let bytes = serde_json::to_vec(&confined)
                .map_err(|e| ShimError::Internal(format!("encode exec process spec: {e}")))?;
            std::fs::write(&file, bytes)
                .map_err(|e| ShimError::io(format!("write {}", file.display()), e))?;
            let paths = IoPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let p = ExecProcess::new(&req.exec_id, paths);
            execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        let mut e = ev::TaskExecAdded::new();
        e.container_id = c.id.clone();
        e.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e));
        Ok(())
    }
}
