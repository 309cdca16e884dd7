//! Events the shim itself emits (create, start, exec, exit, delete, pause,
//! resume, kill, oom, timeout, violation, dropped), and the sandbox-wide
//! fields stamped on every event of a sandbox.
//!
//! ```
//! use safehouse_audit::lifecycle::SandboxContext;
//! use safehouse_audit::{ExitInfo, ExitReason};
//!
//! let sb = SandboxContext::new("sb-1")
//!     .with_namespace("k8s.io")
//!     .with_pod("agent-7", "agents")
//!     .with_policy("coding-agent", Some("sha256:ab12".into()));
//! let created = sb.create("c-1", vec!["rootfs read-only".into()]).build();
//! let exited = sb
//!     .exit("c-1", ExitInfo::exited(7).with_reason(ExitReason::Normal))
//!     .build();
//! assert_eq!(created.policy.as_ref().map(|p| p.name.as_str()), Some("coding-agent"));
//! assert_eq!(exited.exit.and_then(|e| e.code), Some(7));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::event::{
    Action, AuditEvent, Category, DropInfo, DropSource, ExitInfo, ExitReason, PodInfo, PolicyRef,
    ProcessInfo, Violation,
};
use crate::timestamp::Timestamp;

/// What every event of one sandbox carries: ids, pod and policy (shared with each event, not
/// copied into it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SandboxContext {
    /// The sandbox (pod) id; chains are per sandbox.
    pub sandbox_id: String,
    /// containerd namespace.
    pub namespace: Option<Arc<str>>,
    /// Kubernetes pod, when CRI annotations name it.
    pub pod: Option<Arc<PodInfo>>,
    /// The policy in force.
    pub policy: Option<Arc<PolicyRef>>,
}

impl SandboxContext {
    /// A context for `sandbox_id` with nothing else known yet.
    pub fn new(sandbox_id: impl Into<String>) -> Self {
        Self {
            sandbox_id: sandbox_id.into(),
            ..Self::default()
        }
    }

    /// Sets the containerd namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(Arc::from(namespace.into()));
        self
    }

    /// Sets the pod name and namespace.
    pub fn with_pod(mut self, name: impl Into<String>, namespace: impl Into<String>) -> Self {
        let pod = Arc::make_mut(self.pod.get_or_insert_with(Arc::default));
        pod.name = Some(name.into());
        pod.namespace = Some(namespace.into());
        self
    }

    /// Sets the policy name and digest.
    pub fn with_policy(mut self, name: impl Into<String>, digest: Option<String>) -> Self {
        self.policy = Some(Arc::new(PolicyRef {
            changes: None,
            digest,
            name: name.into(),
        }));
        self
    }

    /// Fills the sandbox-wide fields of `event` that are still empty.
    pub fn stamp(&self, event: &mut AuditEvent) {
        if event.sandbox_id.is_empty() {
            event.sandbox_id.clone_from(&self.sandbox_id);
        }
        if event.namespace.is_none() {
            event.namespace.clone_from(&self.namespace);
        }
        if event.pod.is_none() {
            event.pod.clone_from(&self.pod);
        }
        if event.policy.is_none() {
            event.policy.clone_from(&self.policy);
        }
    }

    /// A builder for any event of this sandbox, timed now.
    pub fn event(&self, category: Category, action: Action) -> EventBuilder {
        let mut event = AuditEvent {
            category,
            action,
            time: Timestamp::now(),
            ..AuditEvent::default()
        };
        self.stamp(&mut event);
        EventBuilder { event }
    }

    fn lifecycle(&self, action: Action, container_id: &str) -> EventBuilder {
        self.event(Category::Lifecycle, action)
            .container(container_id)
    }

    /// The shim created a container; `changes` says what the policy changed.
    pub fn create(&self, container_id: &str, changes: Vec<String>) -> EventBuilder {
        let mut b = self.lifecycle(Action::Create, container_id);
        if let Some(policy) = b.event.policy.as_mut() {
            Arc::make_mut(policy).changes = Some(changes);
        } else if !changes.is_empty() {
            b = b.detail("changes", changes);
        }
        b
    }

    /// The container's init process started (host pid of the sandbox, if known).
    pub fn start(&self, container_id: &str) -> EventBuilder {
        self.lifecycle(Action::Start, container_id)
    }

    /// An exec into the container through containerd (`ctr exec`, `kubectl exec`).
    pub fn exec(&self, container_id: &str, exec_id: &str, argv: Vec<String>) -> EventBuilder {
        self.lifecycle(Action::Exec, container_id)
            .detail("exec_id", exec_id)
            .process(ProcessInfo {
                argv: Some(argv),
                ..ProcessInfo::default()
            })
    }

    /// The container (or an exec) ended.
    pub fn exit(&self, container_id: &str, exit: ExitInfo) -> EventBuilder {
        let mut b = self.lifecycle(Action::Exit, container_id);
        b.event.exit = Some(exit);
        b
    }

    /// The container was deleted; its chain may end here.
    pub fn delete(&self, container_id: &str) -> EventBuilder {
        self.lifecycle(Action::Delete, container_id)
    }

    /// The container was paused.
    pub fn pause(&self, container_id: &str) -> EventBuilder {
        self.lifecycle(Action::Pause, container_id)
    }

    /// The container was resumed.
    pub fn resume(&self, container_id: &str) -> EventBuilder {
        self.lifecycle(Action::Resume, container_id)
    }

    /// Someone (`actor`) asked to send `signal` to the container's processes.
    pub fn kill(&self, container_id: &str, signal: i32, all: bool, actor: &str) -> EventBuilder {
        self.lifecycle(Action::Kill, container_id)
            .actor(actor)
            .detail("signal", signal)
            .detail("all", all)
    }

    /// The shim ran OCI hook `path` (of `kind`, e.g. `createContainer`) for the container on
    /// the host; `failure` says why it failed, if it did.
    pub fn hook(
        &self,
        container_id: &str,
        kind: &str,
        path: &str,
        duration: std::time::Duration,
        failure: Option<&str>,
    ) -> EventBuilder {
        let b = self
            .lifecycle(Action::Hook, container_id)
            .actor("safehouse")
            .detail("kind", kind)
            .detail("path", path)
            .detail("duration_ms", duration.as_millis() as u64)
            .detail("ok", failure.is_none());
        match failure {
            Some(why) => b.message(why),
            None => b,
        }
    }

    /// The container hit its memory limit.
    pub fn oom(&self, container_id: &str) -> EventBuilder {
        self.lifecycle(Action::Oom, container_id)
    }

    /// The container ran past its time limit of `limit_secs`.
    pub fn timeout(&self, container_id: &str, limit_secs: u64) -> EventBuilder {
        self.lifecycle(Action::Timeout, container_id)
            .detail("limit_secs", limit_secs)
    }

    /// A policy violation (`policy`/`violation`); `enforcement` is `audit` or `kill`.
    pub fn violation(
        &self,
        container_id: &str,
        rule: &str,
        reason: &str,
        enforcement: &str,
    ) -> EventBuilder {
        let mut b = self
            .event(Category::Policy, Action::Violation)
            .container(container_id);
        b.event.violation = Some(Violation {
            enforcement: enforcement.to_owned(),
            reason: reason.to_owned(),
            rule: rule.to_owned(),
        });
        b
    }

    /// `count` events lost at `source` (`audit`/`dropped`).
    pub fn dropped(&self, count: u64, source: DropSource) -> EventBuilder {
        let mut b = self.event(Category::Audit, Action::Dropped);
        b.event.dropped = Some(DropInfo { count, source });
        b
    }
}

/// Adds optional fields to an event before it is queued.
#[derive(Clone, Debug)]
#[must_use = "call build() to get the event"]
pub struct EventBuilder {
    event: AuditEvent,
}

impl EventBuilder {
    /// Sets the container id.
    pub fn container(mut self, container_id: &str) -> Self {
        self.event.container_id = (!container_id.is_empty()).then(|| container_id.to_owned());
        self
    }

    /// Sets who asked for the action.
    pub fn actor(mut self, actor: &str) -> Self {
        self.event.actor = Some(actor.to_owned());
        self
    }

    /// Sets a human-readable note.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.event.message = Some(message.into());
        self
    }

    /// Adds a key to `detail`.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.event
            .detail
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.into());
        self
    }

    /// Sets the process.
    pub fn process(mut self, process: ProcessInfo) -> Self {
        self.event.process = Some(process);
        self
    }

    /// Sets the time (default: when the builder was made).
    pub fn time(mut self, time: Timestamp) -> Self {
        self.event.time = time;
        self
    }

    /// The event.
    pub fn build(self) -> AuditEvent {
        self.event
    }
}

impl ExitInfo {
    /// A normal exit with `code`.
    pub fn exited(code: i32) -> Self {
        Self {
            code: Some(code),
            ..Self::default()
        }
    }

    /// Death by `signal`.
    pub fn signaled(signal: i32) -> Self {
        Self {
            signal: Some(signal),
            ..Self::default()
        }
    }

    /// Sets why it ended.
    pub fn with_reason(mut self, reason: ExitReason) -> Self {
        self.reason = Some(reason);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_sandbox_fields_and_categories() {
        let sb = SandboxContext::new("sb")
            .with_namespace("default")
            .with_policy("p", None);
        let v = sb
            .violation("c", "process.tools", "exec of /usr/bin/curl", "kill")
            .build();
        assert_eq!(
            (v.category, v.action),
            (Category::Policy, Action::Violation)
        );
        assert_eq!(v.namespace.as_deref(), Some("default"));
        let k = sb.kill("c", 9, true, "safehouse stop (uid 0)").build();
        assert_eq!(k.actor.as_deref(), Some("safehouse stop (uid 0)"));
        assert_eq!(
            k.detail.and_then(|d| d.get("signal").cloned()),
            Some(9.into())
        );
        let d = sb.dropped(5, DropSource::Queue).build();
        assert_eq!(
            (d.category, d.dropped.map(|d| d.count)),
            (Category::Audit, Some(5))
        );
        let c = sb.create("c", vec!["network none".into()]).build();
        assert_eq!(
            c.policy.and_then(|p| p.changes.clone()),
            Some(vec!["network none".to_owned()])
        );
        for b in [
            sb.start("c"),
            sb.delete("c"),
            sb.pause("c"),
            sb.resume("c"),
            sb.oom("c"),
            sb.timeout("c", 60),
        ] {
            let e = b.build();
            assert_eq!(
                (e.category, e.sandbox_id.as_str()),
                (Category::Lifecycle, "sb")
            );
        }
    }
}
