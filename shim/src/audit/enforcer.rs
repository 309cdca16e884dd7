//! The policy check on each drain of a sandbox's trace events, and the kill it asks for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::sink::{Closed, Deliver};
use safehouse_audit::AuditEvent;
use safehouse_policy::ViolationAction;
use tokio::sync::mpsc;

use super::{AuditOutput, AuditRules};

/// What the enforcer asks the task service to do about a violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    /// The sandbox to end.
    pub sandbox_id: String,
    /// Why.
    pub reason: String,
}

/// A sandbox's policy checks, run on its trace sink's reader thread for each drain of events:
/// an exec the policy's `process.tools` does not allow is followed by a `policy`/`violation`
/// event and, under `onViolation: kill`, one kill request to the task service. The drain is
/// sealed into the writer's queue up to the violation first, so the audit shows the exec and
/// the violation before the kill they caused; if the queue is full at that moment the kill
/// leaves first (enforcement never waits on the audit destination).
pub struct Enforcer {
    ctx: SandboxContext,
    rules: AuditRules,
    output: Arc<AuditOutput>,
    kills: mpsc::UnboundedSender<KillRequest>,
    killed: AtomicBool,
}

impl Enforcer {
    /// Checks `ctx`'s events against `rules`, writing them to `output` and asking `kills`.
    pub fn new(
        ctx: SandboxContext,
        rules: AuditRules,
        output: Arc<AuditOutput>,
        kills: mpsc::UnboundedSender<KillRequest>,
    ) -> Self {
        Self {
            ctx,
            rules,
            output,
            kills,
            killed: AtomicBool::new(false),
        }
    }

    /// Inserts a violation event after every offending exec of `batch`. Returns the sandbox's
    /// kill request (once per sandbox) with the index just after the violation that asks it.
    fn check(&self, batch: &mut Vec<AuditEvent>) -> Option<(usize, KillRequest)> {
        let mut request = None;
        let mut i = 0;
        while i < batch.len() {
            if let Some(binary) = self.rules.offending_binary(&batch[i]) {
                let kill = self.rules.on_violation == ViolationAction::Kill;
                let container = batch[i].container_id.clone().unwrap_or_default();
                let v = self
                    .ctx
                    .violation(
                        &container,
                        "process.tools",
                        &format!("exec of {binary}, which is not in the policy's tools list"),
                        if kill { "kill" } else { "record" },
                    )
                    .build();
                batch.insert(i + 1, v);
                i += 1;
                if kill && request.is_none() && !self.killed.swap(true, Ordering::SeqCst) {
                    request = Some((
                        i + 1,
                        KillRequest {
                            sandbox_id: self.ctx.sandbox_id.clone(),
                            reason: format!("exec of {binary} violates process.tools"),
                        },
                    ));
                }
            }
            i += 1;
        }
        request
    }
}

impl Deliver for Enforcer {
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        stopping: &dyn Fn() -> bool,
    ) -> std::result::Result<(), Closed> {
        let Some((cut, request)) = self.check(batch) else {
            self.output.submit_batch(batch, stopping);
            return Ok(());
        };
        let mut rest = batch.split_off(cut.min(batch.len()));
        // Up to the violation now if there is room; the kill never waits for room.
        let sealed = self.output.try_submit_batch(batch);
        let _ = self.kills.send(request);
        if !sealed {
            self.output.submit_batch(batch, stopping);
        }
        self.output.submit_batch(&mut rest, stopping);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn exec(binary: &str) -> AuditEvent {
        AuditEvent {
            category: safehouse_audit::Category::Process,
            action: safehouse_audit::Action::Exec,
            container_id: Some("c1".into()),
            point: Some("sentry/execve".into()),
            process: Some(safehouse_audit::ProcessInfo {
                binary: Some(safehouse_audit::BinaryInfo {
                    path: binary.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn enforcer_follows_each_offending_exec_with_a_violation_and_asks_one_kill() {
        let (kills, mut asked) = mpsc::unbounded_channel();
        let rules = AuditRules {
            tools: vec![PathBuf::from("/bin/sh")],
            on_violation: ViolationAction::Kill,
            init_binary: None,
        };
        let enforcer = Enforcer::new(
            SandboxContext::new("sb"),
            rules,
            Arc::new(AuditOutput::default()),
            kills,
        );
        let mut batch = vec![
            exec("/bin/sh"),
            exec("/bin/nc"),
            exec("/bin/sh"),
            exec("/bin/dd"),
        ];
        let (cut, first) = enforcer.check(&mut batch).expect("a kill request");
        // The drain is written up to the first violation before the kill leaves.
        assert_eq!(cut, 3);
        let actions: Vec<_> = batch
            .iter()
            .map(|e| (e.action, e.executed_binary().map(str::to_owned)))
            .collect();
        use safehouse_audit::Action::{Exec, Violation};
        assert_eq!(
            actions,
            vec![
                (Exec, Some("/bin/sh".into())),
                (Exec, Some("/bin/nc".into())),
                (Violation, None),
                (Exec, Some("/bin/sh".into())),
                (Exec, Some("/bin/dd".into())),
                (Violation, None),
            ]
        );
        assert_eq!(batch[2].container_id.as_deref(), Some("c1"));
        assert_eq!(first.sandbox_id, "sb");
        assert!(first.reason.contains("/bin/nc"), "{}", first.reason);
        // One kill request per sandbox: later drains record violations only.
        let mut later = vec![exec("/bin/nc")];
        assert!(enforcer.check(&mut later).is_none());
        assert_eq!(later.len(), 2);
        assert!(asked.try_recv().is_err(), "check itself sends nothing");

        // Delivered (no writer open yet: the drain is dropped, not kept), the kill is sent.
        let fresh = Enforcer::new(
            SandboxContext::new("sb2"),
            AuditRules {
                tools: vec![PathBuf::from("/bin/sh")],
                on_violation: ViolationAction::Kill,
                init_binary: None,
            },
            Arc::new(AuditOutput::default()),
            enforcer.kills.clone(),
        );
        let mut drain = vec![exec("/bin/nc"), exec("/bin/sh")];
        fresh.deliver(&mut drain, &|| false).expect("delivered");
        assert!(drain.is_empty());
        let sent = asked.try_recv().map(|r| r.sandbox_id).ok();
        assert_eq!(sent.as_deref(), Some("sb2"));
    }
}
