//! Memory limits of the containers of a pod. The host kernel enforces only the sandbox's own
//! cgroup (the pod's): gVisor keeps one host process for every container of a pod, and its
//! Sentry accounts each container's memory (in its own memory cgroup, when the container has
//! a cgroup mount) but does not enforce `memory.limit_in_bytes` (runsc 20240729). So a pod
//! member's `linux.resources.memory.limit` is enforced by the shim after the fact: it polls
//! the container's usage through `runsc events --stats` every [`POLL`] and, past the limit,
//! the task layer kills the container and reports it OOM-killed (`task/memory.rs`).
//!
//! What lives here is what can be decided without runsc: the limit a spec asks, whether the
//! Sentry can account the container apart, and what a stats reply says.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::error::{Result, ShimError};

/// How often a limited pod member's usage is read. Each read is one `runsc events --stats`
/// (about 20 ms of wall time, 10 ms of CPU here).
pub const POLL: Duration = Duration::from_millis(250);

/// The memory limit of a pod member the shim watches; an Update may change it.
#[derive(Debug, Default)]
pub struct MemoryWatch {
    /// The limit in bytes; 0 when there is none.
    limit: AtomicU64,
    /// Whether the Sentry accounts the container apart (it has a cgroup mount).
    accountable: bool,
    /// Whether a watch runs (one per container).
    watching: AtomicBool,
}

impl MemoryWatch {
    /// The watch of a pod member with `limit` (`None`: none yet), accountable apart or not.
    pub fn new(limit: Option<u64>, accountable: bool) -> MemoryWatch {
        MemoryWatch {
            limit: AtomicU64::new(limit.unwrap_or(0)),
            accountable,
            watching: AtomicBool::new(false),
        }
    }

    /// The limit now, if there is one.
    pub fn limit(&self) -> Option<u64> {
        Some(self.limit.load(Ordering::SeqCst)).filter(|&b| b > 0)
    }

    /// Whether the watch can hold the limit an Update asks for (it changes nothing).
    pub fn check(&self, id: &str, limit: Option<i64>) -> Result<()> {
        match limit.filter(|&l| l > 0) {
            Some(bytes) if !self.accountable => Err(not_accountable(id, bytes as u64)),
            _ => Ok(()),
        }
    }

    /// Sets the limit an Update asks for (`None` or a non-positive value leaves it).
    pub fn update(&self, id: &str, limit: Option<i64>) -> Result<()> {
        self.check(id, limit)?;
        if let Some(bytes) = limit.filter(|&l| l > 0) {
            self.limit.store(bytes as u64, Ordering::SeqCst);
        }
        Ok(())
    }

    /// True once: the caller starts the one watch of the container.
    pub fn claim(&self) -> bool {
        self.limit().is_some() && !self.watching.swap(true, Ordering::SeqCst)
    }
}

fn not_accountable(id: &str, limit: u64) -> ShimError {
    ShimError::InvalidArgument(format!(
        "container {id:?}: linux.resources.memory.limit ({limit} bytes) on a container joining a pod needs a cgroup mount (mounts[].type \"cgroup\", as CRI adds at /sys/fs/cgroup): gVisor accounts a pod member's memory apart only in its own cgroup, and the host kernel limits only the whole pod"
    ))
}

/// A positive `linux.resources.memory.limit` (runc's -1 and 0 mean "none").
pub fn spec_limit(spec: &Value) -> Option<u64> {
    spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .filter(|&l| l > 0)
        .map(|l| l as u64)
}

/// Whether the spec mounts a cgroup filesystem: only then does the Sentry give the container
/// its own memory cgroup, and `runsc events --stats` report its own usage rather than the
/// whole sandbox's.
pub fn has_cgroup_mount(spec: &Value) -> bool {
    spec["mounts"].as_array().is_some_and(|mounts| {
        mounts
            .iter()
            .any(|m| matches!(m["type"].as_str(), Some("cgroup" | "cgroup2")))
    })
}

/// The memory watch of a container joining a pod. It watches the limit the container's own
/// spec asks for (`requested`, as containerd gave it), as the policy narrowed it (`compiled`);
/// a member that asks for none is held only by the pod's host cgroup. A limit the Sentry
/// cannot account apart is refused: without the container's own memory cgroup, runsc reports
/// the pod's usage and the watch would kill it for its neighbours' memory.
pub fn member_watch(id: &str, requested: &Value, compiled: &Value) -> Result<MemoryWatch> {
    let limit = spec_limit(requested).and(spec_limit(compiled));
    let accountable = has_cgroup_mount(compiled);
    if let (Some(l), false) = (limit, accountable) {
        return Err(not_accountable(id, l));
    }
    Ok(MemoryWatch::new(limit, accountable))
}

/// The memory usage in a `runsc events --stats` reply (`data.memory.usage.usage`).
pub fn usage(stats: &Value) -> Option<u64> {
    let data = stats.get("data").unwrap_or(stats);
    data["memory"]["usage"]["usage"].as_u64()
}

/// The usage a stats reply shows when it is past `limit`.
pub fn over_limit(stats: &Value, limit: u64) -> Option<u64> {
    usage(stats).filter(|&u| u > limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;
    use serde_json::json;

    const MIB: u64 = 1024 * 1024;

    fn spec(limit: Value, mounts: Value) -> Value {
        json!({"mounts": mounts, "linux": {"resources": {"memory": {"limit": limit}}}})
    }

    fn cgroup_mount() -> Value {
        json!([{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}])
    }

    #[test]
    fn a_member_limit_is_watched_only_with_its_own_cgroup() {
        let asked = spec(json!(256 * MIB), cgroup_mount());
        // As the policy narrowed it.
        let compiled = spec(json!(64 * MIB), cgroup_mount());
        let w = member_watch("c", &asked, &compiled).expect("limit");
        assert_eq!(w.limit(), Some(64 * MIB));
        assert!(w.claim(), "the first claim starts the watch");
        assert!(!w.claim(), "one watch per container");
        // No limit, or "unlimited": nothing to watch, nothing refused.
        for none in [json!(null), json!(0), json!(-1)] {
            let w = member_watch(
                "c",
                &spec(none, json!([])),
                &spec(json!(64 * MIB), json!([])),
            )
            .expect("none");
            assert_eq!(
                w.limit(),
                None,
                "only the policy's ceiling: the pod cgroup holds it"
            );
            assert!(!w.claim());
        }
        // A limit the Sentry cannot account apart is refused, naming the field.
        let blind = spec(json!(64 * MIB), json!([{"type": "proc"}]));
        let err = member_watch("c", &blind, &blind).expect_err("refused");
        assert!(
            err.to_string().contains("linux.resources.memory.limit"),
            "{err}"
        );
        assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn reads_the_usage_of_runsc_stats() {
        // As runsc 20240729 prints it for a pod member with a cgroup mount.
        let stats: Value = serde_json::from_str(
            r#"{"type":"stats","id":"c2","data":{"memory":{"usage":{"limit":0,"usage":106868736,"failcnt":0}},"pids":{"current":1}}}"#,
        )
        .expect("json");
        assert_eq!(usage(&stats), Some(106868736));
        assert_eq!(over_limit(&stats, 64 * MIB), Some(106868736));
        assert_eq!(over_limit(&stats, 128 * MIB), None);
        // At the limit is not past it; no usage is never past it.
        assert_eq!(over_limit(&stats, 106868736), None);
        assert_eq!(over_limit(&json!({"data": {"memory": {}}}), 1), None);
    }

    #[test]
    fn an_update_changes_the_watched_limit() {
        let none = spec(json!(null), cgroup_mount());
        let w = member_watch("c", &none, &none).expect("watch");
        assert_eq!(w.limit(), None);
        w.update("c", Some(32 * MIB as i64)).expect("update");
        assert_eq!(w.limit(), Some(32 * MIB));
        w.update("c", None).expect("no memory in the update");
        w.update("c", Some(-1)).expect("unlimited in the update");
        assert_eq!(w.limit(), Some(32 * MIB));
        // Without its own cgroup, an Update cannot bring a limit the watch cannot hold.
        let none = spec(json!(null), json!([]));
        let blind = member_watch("c", &none, &none).expect("watch");
        let err = blind
            .update("c", Some(32 * MIB as i64))
            .expect_err("refused");
        assert_eq!(err.code(), Code::INVALID_ARGUMENT);
        assert_eq!(blind.limit(), None);
    }
}
