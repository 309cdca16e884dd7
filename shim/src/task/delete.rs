//! Delete: an exec's record, or a container with everything it holds (and, for a sandbox's
//! root container, the sandbox's network and trace sink). A sandbox that has died is deleted
//! without asking runsc to stop it: its state files are removed directly.

use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::topics;
use tracing::{info, warn};

use super::{ts, TaskService};
use crate::bundle::exec_file;
use crate::container::Container;
use crate::error::Result;
use crate::process::{ExecProcess, ProcessRef, Status};
use crate::reaper::Exit;
use crate::sandbox::undo::Teardown;

/// How long Delete waits for the exit of a process whose sandbox has died.
const DEAD_SANDBOX_EXIT: Duration = Duration::from_secs(5);

impl TaskService {
    pub(super) async fn delete_process(
        &self,
        req: api::DeleteRequest,
    ) -> Result<api::DeleteResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if c.sandbox.is_gone() && matches!(p.status(), Status::Running | Status::Paused) {
            // Its exit is on its way (the output drains first): a dead sandbox is deletable.
            let _ = tokio::time::timeout(DEAD_SANDBOX_EXIT, p.wait()).await;
        }
        p.check_deletable()?;
        let exit = match &p {
            ProcessRef::Exec(exec) => self.delete_exec(&c, exec).await,
            ProcessRef::Init(_) => self.delete_container(&c).await?,
        };
        Ok(api::DeleteResponse {
            pid: p.pid(),
            exit_status: exit.code,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    async fn delete_exec(&self, c: &Container, exec: &ExecProcess) -> Exit {
        c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&exec.exec_id);
        exec.io.lock().await.shutdown().await;
        for f in ["process.json", "pid"] {
            let _ = std::fs::remove_file(exec_file(&c.bundle, &exec.exec_id, f));
        }
        exec.exit().unwrap_or(Exit {
            code: 0,
            at: SystemTime::now(),
        })
    }

    async fn delete_container(&self, c: &Container) -> Result<Exit> {
        if c.is_root() {
            let members: Vec<String> = self
                .map()
                .values()
                .filter(|o| o.sandbox.id == c.id && o.id != c.id)
                .map(|o| o.id.clone())
                .collect();
            if !members.is_empty() {
                warn!(container = %c.id, "deleting pod sandbox while containers remain: {members:?}");
            }
        }
        let how = Teardown {
            reaper: &self.reaper,
            sandbox_gone: c.sandbox.is_gone(),
            strict: true,
        };
        c.teardown(&how).await?;
        // A created-but-never-started container has no exit yet: deleting it is its end.
        let p = &c.init;
        p.settle();
        let exit = p.exit().unwrap_or_else(|| {
            let e = Exit {
                code: 137,
                at: SystemTime::now(),
            };
            p.mark_exited(e);
            e
        });
        if let Some(cgroup) = &c.cgroups_path {
            let removed = crate::cgroup::remove_leftover(Path::new(crate::cgroup::ROOT), cgroup);
            if !removed.is_empty() {
                info!(container = %c.id, cgroup, "removed the cgroup runsc left (its sandbox had died)");
            }
        }
        self.record(c.ctx.delete(&c.id).build());
        if c.is_root() {
            let how = Teardown {
                strict: false,
                ..how
            };
            let _ = c.sandbox.teardown(&how).await;
        }
        self.map().remove(&c.id);
        self.unregister(&c.id);
        info!(container = %c.id, code = exit.code, "deleted");
        let mut e = ev::TaskDelete::new();
        e.container_id = c.id.clone();
        e.id = c.id.clone();
        e.pid = p.pid();
        e.exit_status = exit.code;
        e.exited_at = ts(exit.at);
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(e));
        Ok(exit)
    }
}
