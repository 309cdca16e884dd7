//! The policy check on each drain of a sandbox's trace events, and the kill it brings about.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use safehouse_audit::event::DropSource;
use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::sink::{Closed, Deliver};
use safehouse_audit::{Action, AuditEvent, Category};
use safehouse_policy::ViolationAction;
use tokio::sync::mpsc;

use super::{AuditOutput, AuditRules, KillSwitch};

/// The longest a busy stream's packets may wait in the socket when a container's policy
/// restricts what runs (the sink's own interval is 3 ms): the bound on how late a flood can
/// make the tools check see an exec, at the cost of at most 1,000 wake-ups a second.
const TOOLS_PAUSE: Duration = Duration::from_millis(1);

/// How long the enforcer waits for a killed sandbox to stop before it says it did not.
const STOP_CONFIRM: Duration = Duration::from_millis(100);

/// What the enforcer tells the task service after a violation it killed (or could not kill).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    /// The sandbox.
    pub sandbox_id: String,
    /// Why.
    pub reason: String,
    /// Whether the kill switch ended the sandbox; if not, the task service kills it.
    pub killed: bool,
}

/// The rules of a sandbox's containers, by container id: each container of a pod is checked
/// against its own policy, and its events carry that policy.
pub struct RuleBook {
    sandbox_id: String,
    by_container: RwLock<HashMap<String, Arc<AuditRules>>>,
}

impl RuleBook {
    /// A book for sandbox `sandbox_id` with its root container's rules.
    pub fn new(sandbox_id: &str, root: AuditRules) -> RuleBook {
        let book = RuleBook {
            sandbox_id: sandbox_id.to_owned(),
            by_container: RwLock::default(),
        };
        book.insert(sandbox_id, root);
        book
    }

    /// Adds (or replaces) a container's rules.
    pub fn insert(&self, container_id: &str, rules: AuditRules) {
        let mut map = self.by_container.write().unwrap_or_else(|p| p.into_inner());
        map.insert(container_id.to_owned(), Arc::new(rules));
    }

    /// The rules for a container; the root's for an event naming none (or one not known).
    fn rules_for(&self, container_id: Option<&str>) -> Option<Arc<AuditRules>> {
        let map = self.by_container.read().unwrap_or_else(|p| p.into_inner());
        container_id
            .and_then(|id| map.get(id))
            .or_else(|| map.get(&self.sandbox_id))
            .cloned()
    }

    /// The strictest rules that restrict what runs (kill before record), if any container's do.
    fn restricting(&self) -> Option<Arc<AuditRules>> {
        let map = self.by_container.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Option<Arc<AuditRules>> = None;
        for r in map.values().filter(|r| r.restricts()) {
            let better = found
                .as_ref()
                .is_none_or(|f| f.on_violation != ViolationAction::Kill);
            if better {
                found = Some(r.clone());
            }
        }
        found
    }
}

/// How many trace points an event says went unseen by the enforcer: gVisor's drops and packets
/// that could not be decoded. An exec among them was never checked.
fn unchecked(event: &AuditEvent) -> Option<u64> {
    if event.category != Category::Audit || event.action != Action::Dropped {
        return None;
    }
    let d = event.dropped.as_ref()?;
    matches!(
        d.source,
        DropSource::Sentry | DropSource::Malformed | DropSource::UnknownType
    )
    .then_some(d.count)
}

/// A sandbox's policy checks, run on its trace sink's reader thread for each drain of events.
///
/// An exec a container's `process.tools` does not allow (by file or by the name it was invoked
/// under) is followed by a `policy`/`violation` event; under `onViolation: kill` the sandbox
/// is killed from right here through its [`KillSwitch`] (no runsc start-up), and a `kill`
/// event follows the violation. When `tools` is set, trace points lost before the enforcer saw
/// them are a violation too: an exec among them went unchecked, and the gateway never fails
/// open. The drain is sealed into the writer's queue up to the kill first if there is room, so
/// the chain shows exec, violation, kill in that order; the kill never waits for room.
pub struct Enforcer {
    ctx: SandboxContext,
    book: Arc<RuleBook>,
    switch: Arc<KillSwitch>,
    output: Arc<AuditOutput>,
    kills: mpsc::UnboundedSender<KillRequest>,
    killed: AtomicBool,
}

impl Enforcer {
    /// Checks `ctx`'s events against `book`, killing through `switch`, writing to `output`
    /// and telling `kills`.
    pub fn new(
        ctx: SandboxContext,
        book: Arc<RuleBook>,
        switch: Arc<KillSwitch>,
        output: Arc<AuditOutput>,
        kills: mpsc::UnboundedSender<KillRequest>,
    ) -> Self {
        Self {
            ctx,
            book,
            switch,
            output,
            kills,
            killed: AtomicBool::new(false),
        }
    }

    /// Labels each event with its container's policy, drops process events a container's
    /// policy does not record, and inserts a violation after every offence (and a kill event
    /// after the first one that kills). Returns the kill request with the index just after
    /// its kill event.
    fn check(&self, batch: &mut Vec<AuditEvent>) -> Option<(usize, KillRequest)> {
        let mut request = None;
        let mut i = 0;
        while i < batch.len() {
            let container = batch[i].container_id.clone();
            let rules = self.book.rules_for(container.as_deref());
            let offence = match unchecked(&batch[i]) {
                Some(lost) => self.book.restricting().map(|r| {
                    let why = format!("{lost} trace points were lost before the policy check: an exec among them went unchecked");
                    (r, why)
                }),
                None => rules
                    .as_ref()
                    .and_then(|r| r.offense(&batch[i]).map(|why| (r.clone(), why))),
            };
            if let Some(r) = &rules {
                if !r.policy.name.is_empty() && batch[i].category != Category::Audit {
                    batch[i].policy = Some(r.policy.clone());
                }
                if batch[i].category == Category::Process && !r.records_process && offence.is_none()
                {
                    batch.remove(i);
                    continue;
                }
            }
            let Some((rules, why)) = offence else {
                i += 1;
                continue;
            };
            let container = container.unwrap_or_else(|| self.ctx.sandbox_id.clone());
            let kill = rules.on_violation == ViolationAction::Kill;
            let mut v = self
                .ctx
                .violation(
                    &container,
                    "process.tools",
                    &why,
                    if kill { "kill" } else { "record" },
                )
                .build();
            v.policy = Some(rules.policy.clone());
            batch.insert(i + 1, v);
            i += 2;
            if kill && request.is_none() && !self.killed.swap(true, Ordering::SeqCst) {
                let reason = format!("{why} (process.tools)");
                let k = self
                    .ctx
                    .kill(&container, 9, true, "safehouse (policy violation)")
                    .message(&reason)
                    .build();
                batch.insert(i, k);
                i += 1;
                request = Some((
                    i,
                    KillRequest {
                        sandbox_id: self.ctx.sandbox_id.clone(),
                        reason,
                        killed: false,
                    },
                ));
            }
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
        let Some((cut, mut request)) = self.check(batch) else {
            self.output.submit_batch(batch, stopping);
            return Ok(());
        };
        // The kill leaves before anything is written: sealing costs time the agent could use.
        // Its event is already in the drain, after the offence and its violation, so the
        // chain's order is the same.
        let decided = Instant::now();
        request.killed = self.switch.kill();
        let stopped = if request.killed {
            self.switch
                .wait_stopped(STOP_CONFIRM)
                .map(|_| decided.elapsed())
        } else {
            None
        };
        let mut rest = batch.split_off(cut.min(batch.len()));
        if let Some(kill) = batch.last_mut().filter(|e| e.action == Action::Kill) {
            // How long from the decision until no thread of the sandbox could run again.
            let detail = kill.detail.get_or_insert_with(Default::default);
            match stopped {
                Some(after) => detail.insert(
                    "stopped_after_us".into(),
                    u64::try_from(after.as_micros()).unwrap_or(u64::MAX).into(),
                ),
                None => detail.insert("stopped".into(), false.into()),
            };
        }
        if request.killed && stopped.is_none() {
            tracing::warn!(
                sandbox = %request.sandbox_id,
                "the sandbox was sent SIGKILL but had not stopped {} ms later",
                STOP_CONFIRM.as_millis()
            );
        }
        // Up to the kill now if there is room.
        let sealed = self.output.try_submit_batch(batch);
        let _ = self.kills.send(request);
        if !sealed {
            self.output.submit_batch(batch, stopping);
        }
        self.output.submit_batch(&mut rest, stopping);
        Ok(())
    }

    fn pause_limit(&self) -> Option<Duration> {
        self.book.restricting().map(|_| TOOLS_PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn exec(container: &str, binary: &str, argv0: &str) -> AuditEvent {
        AuditEvent {
            category: Category::Process,
            action: Action::Exec,
            container_id: Some(container.into()),
            point: Some("sentry/execve".into()),
            process: Some(safehouse_audit::ProcessInfo {
                argv: Some(vec![argv0.into()]),
                binary: Some(safehouse_audit::BinaryInfo {
                    path: binary.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rules(tools: &[&str], on: ViolationAction, policy: &str) -> AuditRules {
        let mut r = AuditRules::new(tools.iter().map(PathBuf::from).collect(), on, None, |_| {
            None
        });
        r.policy = Arc::new(safehouse_audit::event::PolicyRef {
            name: policy.into(),
            ..Default::default()
        });
        r
    }

    fn enforcer(book: RuleBook) -> (Enforcer, mpsc::UnboundedReceiver<KillRequest>) {
        let (kills, asked) = mpsc::unbounded_channel();
        let e = Enforcer::new(
            SandboxContext::new("sb"),
            Arc::new(book),
            Arc::new(KillSwitch::default()),
            Arc::new(AuditOutput::default()),
            kills,
        );
        (e, asked)
    }

    fn actions(batch: &[AuditEvent]) -> Vec<(Action, Option<String>)> {
        batch
            .iter()
            .map(|e| (e.action, e.executed_binary().map(str::to_owned)))
            .collect()
    }

    #[test]
    fn each_offence_is_followed_by_its_violation_and_the_first_by_the_kill() {
        let (enforcer, mut asked) = enforcer(RuleBook::new(
            "sb",
            rules(&["/bin/sh"], ViolationAction::Kill, "p"),
        ));
        let mut batch = vec![
            exec("sb", "/bin/sh", "sh"),
            exec("sb", "/bin/nc", "nc"),
            exec("sb", "/bin/sh", "sh"),
            exec("sb", "/bin/dd", "dd"),
        ];
        let (cut, first) = enforcer.check(&mut batch).expect("a kill");
        assert_eq!(cut, 4, "sealed up to the kill before it leaves");
        use Action::{Exec, Kill, Violation};
        assert_eq!(
            actions(&batch),
            vec![
                (Exec, Some("/bin/sh".into())),
                (Exec, Some("/bin/nc".into())),
                (Violation, None),
                (Kill, None),
                (Exec, Some("/bin/sh".into())),
                (Exec, Some("/bin/dd".into())),
                (Violation, None),
            ]
        );
        assert_eq!(batch[2].container_id.as_deref(), Some("sb"));
        assert!(first.reason.contains("/bin/nc"), "{}", first.reason);
        // One kill per sandbox: later drains record violations only.
        let mut later = vec![exec("sb", "/bin/nc", "nc")];
        assert!(enforcer.check(&mut later).is_none());
        assert_eq!(later.len(), 2);
        assert!(asked.try_recv().is_err(), "check itself sends nothing");
    }

    #[test]
    fn delivered_a_kill_is_reported_even_when_the_switch_is_not_armed() {
        let (enforcer, mut asked) = enforcer(RuleBook::new(
            "sb",
            rules(&["/bin/sh"], ViolationAction::Kill, "p"),
        ));
        let mut drain = vec![exec("sb", "/bin/nc", "nc"), exec("sb", "/bin/sh", "sh")];
        enforcer.deliver(&mut drain, &|| false).expect("delivered");
        assert!(drain.is_empty());
        let req = asked.try_recv().expect("told");
        assert_eq!(req.sandbox_id, "sb");
        assert!(!req.killed, "no switch armed: the task service kills");
    }

    #[test]
    fn a_pod_member_is_checked_and_labelled_under_its_own_policy() {
        let book = RuleBook::new("sb", rules(&[], ViolationAction::Record, "pod-policy"));
        book.insert(
            "app",
            rules(&["/bin/sh"], ViolationAction::Record, "app-policy"),
        );
        let (enforcer, _asked) = enforcer(book);
        let mut batch = vec![
            exec("sb", "/bin/nc", "nc"),
            exec("app", "/bin/sh", "sh"),
            exec("app", "/bin/nc", "nc"),
        ];
        assert!(enforcer.check(&mut batch).is_none(), "record only");
        let labels: Vec<(Action, String)> = batch
            .iter()
            .map(|e| {
                (
                    e.action,
                    e.policy
                        .as_ref()
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            labels,
            vec![
                (Action::Exec, "pod-policy".into()),
                (Action::Exec, "app-policy".into()),
                (Action::Exec, "app-policy".into()),
                (Action::Violation, "app-policy".into()),
            ],
            "the pod's own rules allow nc; the member's do not"
        );
        assert_eq!(batch[3].container_id.as_deref(), Some("app"));
    }

    #[test]
    fn a_sandbox_with_tools_asks_for_short_pauses() {
        let (open, _) = enforcer(RuleBook::new("sb", rules(&[], ViolationAction::Kill, "p")));
        assert_eq!(
            open.pause_limit(),
            None,
            "nothing restricts: the sink's own interval"
        );
        let book = RuleBook::new("sb", rules(&[], ViolationAction::Kill, "p"));
        book.insert("app", rules(&["/bin/sh"], ViolationAction::Kill, "q"));
        let (tooled, _) = enforcer(book);
        assert_eq!(
            tooled.pause_limit(),
            Some(TOOLS_PAUSE),
            "a member with tools"
        );
    }

    #[test]
    fn lost_trace_points_are_a_violation_when_tools_are_set() {
        let dropped = |source| SandboxContext::new("sb").dropped(3, source).build();
        let (e, _asked) = enforcer(RuleBook::new(
            "sb",
            rules(&["/bin/sh"], ViolationAction::Kill, "p"),
        ));
        let mut batch = vec![dropped(DropSource::Queue)];
        assert!(
            e.check(&mut batch).is_none(),
            "the writer's own queue is not a blind spot"
        );
        // gVisor's own drops, and packets the sink could not decode or did not know: an exec
        // may be among any of them.
        for source in [
            DropSource::Sentry,
            DropSource::Malformed,
            DropSource::UnknownType,
        ] {
            // A fresh enforcer each: one that has asked for the kill asks no more.
            let (e, _asked) = enforcer(RuleBook::new(
                "sb",
                rules(&["/bin/sh"], ViolationAction::Kill, "p"),
            ));
            let mut batch = vec![dropped(source)];
            let (_, req) = e.check(&mut batch).expect("fails closed");
            assert!(req.reason.contains("went unchecked"), "{}", req.reason);
            assert_eq!(batch[1].action, Action::Violation);
        }
        let (open, _) = enforcer(RuleBook::new("sb", rules(&[], ViolationAction::Kill, "p")));
        let mut batch = vec![dropped(DropSource::Sentry)];
        assert!(
            open.check(&mut batch).is_none(),
            "nothing to enforce, nothing to fail"
        );
    }
}
