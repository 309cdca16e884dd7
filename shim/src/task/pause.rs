//! Pause and Resume: freeze or thaw a container (`runsc pause` / `runsc resume`).

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::topics;

use super::TaskService;
use crate::error::{Result, ShimError};
use crate::process::Status;

impl TaskService {
    pub(super) async fn set_paused(&self, id: &str, resume: bool) -> Result<()> {
        let c = self.get(id)?;
        let want = if resume {
            Status::Paused
        } else {
            Status::Running
        };
        if c.init.status() != want {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot {} container {id:?}: it is {:?}",
                if resume { "resume" } else { "pause" },
                c.init.status()
            )));
        }
        c.runtime.pause(id, resume).await?;
        c.init.mark_paused(!resume)?;
        let ctx = &c.ctx;
        if resume {
            self.record(ctx.resume(id).build());
            let mut e = ev::TaskResumed::new();
            e.container_id = id.into();
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e));
        } else {
            self.record(ctx.pause(id).build());
            let mut e = ev::TaskPaused::new();
            e.container_id = id.into();
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e));
        }
        Ok(())
    }
}
