//! The memory limit of a pod member, enforced after the fact: the Sentry accounts each
//! container of a pod apart but does not hold it to its limit (see `sandbox::memory`), so the
//! shim reads the container's usage every [`POLL`] and, once it is past the limit, reports the
//! container OOM-killed (audit `oom`, containerd's TaskOOM) and SIGKILLs its processes; the
//! other containers of the pod run on. Its exit (137) follows through `watch_exit`.

use std::sync::Arc;

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::topics;
use safehouse_audit::ExitReason;
use tracing::{debug, warn};

use super::exit::KILL_ALL;
use super::TaskService;
use crate::container::Container;
use crate::process::Status;
use crate::sandbox::memory::{over_limit, POLL};

impl TaskService {
    /// Starts the memory watch of a pod member, unless it has no limit or is watched already.
    pub(super) fn watch_memory(&self, c: Arc<Container>) {
        if c.is_root() || !c.memory.claim() {
            return;
        }
        let events = self.events.clone();
        let output = self.audit.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = c.init.wait() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
                let Some(limit) = c.memory.limit() else {
                    continue;
                };
                let stats = match c.runtime.stats(&c.id).await {
                    Ok(s) => s,
                    Err(e) => {
                        // It may have exited between the wait and the read.
                        debug!(container = %c.id, "memory watch: {e}");
                        continue;
                    }
                };
                let Some(usage) = over_limit(&stats, limit) else {
                    continue;
                };
                if c.init.status() == Status::Stopped {
                    return;
                }
                warn!(container = %c.id, usage, limit, "out of memory: the container is past its memory limit; killing it");
                c.set_exit_reason(ExitReason::Oom);
                output.submit(
                    c.ctx
                        .oom(&c.id)
                        .detail("usage_bytes", usage)
                        .detail("limit_bytes", limit)
                        .detail("enforced_by", "shim")
                        .build(),
                );
                // Before the exit: CRI reports OOMKilled only for a TaskOOM it got first.
                let mut e = ev::TaskOOM::new();
                e.container_id = c.id.clone();
                events.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e));
                if let Err(e) = c.runtime.kill(&c.id, KILL_ALL).await {
                    if c.init.status() != Status::Stopped {
                        warn!(container = %c.id, "kill past the memory limit: {e}");
                    }
                }
                return;
            }
        });
    }
}
