//! How processes end: the exit of every process (its audit event and containerd's TaskExit),
//! and the ends Safehouse itself brings about (the policy's wall-clock limit, a violation).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::topics;
use safehouse_audit::{ExitInfo, ExitReason};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{ts, TaskService};
use crate::audit::KillRequest;
use crate::container::{exit_reason, Container};
use crate::process::{ProcessRef, Status};
use crate::reaper::Exit;
use crate::runsc::KillOpts;

/// How long output copiers may take to drain after an exit.
const DRAIN: Duration = Duration::from_secs(2);

/// SIGKILL to every process of a container.
pub(super) const KILL_ALL: KillOpts = KillOpts {
    signal: 9,
    all: true,
    pid: None,
};

impl TaskService {
    /// Publishes the exit of `p` once its Start call is over and its output drained.
    pub(super) fn watch_exit(&self, c: Arc<Container>, p: ProcessRef, rx: oneshot::Receiver<Exit>) {
        let events = self.events.clone();
        let output = self.audit.clone();
        tokio::spawn(async move {
            let exit = rx.await.unwrap_or(Exit {
                code: 255,
                at: SystemTime::now(),
            });
            let init = matches!(p, ProcessRef::Init(_));
            if init && c.is_root() {
                // Known at once: a Kill or Delete that comes while the output drains finds
                // the sandbox gone rather than failing on runsc.
                c.sandbox.mark_exited();
            }
            p.wait_settled().await;
            p.io.lock().await.drain(DRAIN).await;
            if !p.mark_exited(exit) {
                return;
            }
            if init && exit.code == 137 && out_of_memory(&c) {
                warn!(container = %c.id, "out of memory: the kernel's OOM killer ended the sandbox");
                c.set_exit_reason(ExitReason::Oom);
                output.submit(c.ctx.oom(&c.id).build());
                let mut e = ev::TaskOOM::new();
                e.container_id = c.id.clone();
                events.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e));
            }
            let reason = if init {
                c.init_exit_reason(exit.code)
            } else {
                exit_reason(exit.code)
            };
            info!(container = %c.id, exec = %p.exec_id(), code = exit.code, ?reason, "exited");
            let info = if exit.code > 128 {
                ExitInfo::signaled((exit.code - 128) as i32)
            } else {
                ExitInfo::exited(exit.code as i32)
            };
            let mut b = c.ctx.exit(&c.id, info.with_reason(reason));
            if !init {
                b = b.detail("exec_id", p.exec_id().to_owned());
            }
            let mut event = b.build();
            // When it died (reaped), not when the output finished draining.
            event.time = audit_time(exit.at);
            output.submit(event);
            let mut e = ev::TaskExit::new();
            e.container_id = c.id.clone();
            e.id = if init {
                c.id.clone()
            } else {
                p.exec_id().to_owned()
            };
            e.pid = p.pid();
            e.exit_status = exit.code;
            e.exited_at = ts(exit.at);
            events.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e));
        });
    }

    /// Kills the container when its policy's wall-clock limit is reached.
    pub(super) fn enforce_timeout(&self, c: Arc<Container>, limit: Duration) {
        let output = self.audit.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(limit, c.init.wait()).await.is_ok() {
                return;
            }
            warn!(
                container = %c.id,
                policy = %c.policy,
                limit_s = limit.as_secs_f64(),
                "timeout: the policy's wall-clock limit was reached; killing the container"
            );
            c.set_exit_reason(ExitReason::Timeout);
            output.submit(c.ctx.timeout(&c.id, limit.as_secs()).build());
            if let Err(e) = c.runtime.kill(&c.id, KILL_ALL).await {
                if c.init.status() != Status::Stopped {
                    warn!(container = %c.id, "kill at timeout: {e}");
                }
            }
        });
    }

    /// After the enforcer killed a sandbox for a violation of an `onViolation: kill` policy
    /// (the kill event is already in the chain): records why its root container ended, and
    /// kills through runsc if the kill switch could not.
    pub(super) fn carry_out_violation_kills(&self, mut rx: mpsc::UnboundedReceiver<KillRequest>) {
        let containers = self.containers.clone();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let root = containers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&req.sandbox_id)
                    .cloned();
                let Some(c) = root else { continue };
                warn!(container = %c.id, reason = %req.reason, killed = req.killed, "policy violation: the sandbox is killed");
                c.set_exit_reason(ExitReason::Violation);
                if req.killed {
                    continue;
                }
                // The kill switch could not act (not armed): runsc does it.
                if let Err(e) = c.runtime.kill(&c.id, KILL_ALL).await {
                    if c.init.status() != Status::Stopped {
                        warn!(container = %c.id, "kill after violation: {e}");
                    }
                }
            }
        });
    }
}

/// An audit timestamp for a host time.
fn audit_time(at: SystemTime) -> safehouse_audit::Timestamp {
    let ns = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    safehouse_audit::Timestamp::from_unix_nanos(ns)
}

/// Whether a SIGKILLed init was ended by the host's OOM killer, as the sandbox's cgroup says.
/// In a pod every container dies with the sandbox, and each gets its TaskOOM (CRI reports
/// OOMKilled per container).
fn out_of_memory(c: &Container) -> bool {
    use std::sync::atomic::Ordering;
    let sandbox = &c.sandbox;
    let ooms = sandbox
        .cgroups_path
        .as_deref()
        .and_then(crate::cgroup::oom_kills);
    if ooms.unwrap_or(0) > 0 {
        sandbox.oom.store(true, Ordering::SeqCst);
    }
    sandbox.oom.load(Ordering::SeqCst)
}
