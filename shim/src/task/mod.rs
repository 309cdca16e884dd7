//! The containerd Task API: one file per call, each a short function over the sandbox and
//! container types.
//!
//! Every call resolves its container and process, checks the state machine, drives runsc
//! through the container's [`crate::runsc::SandboxRuntime`] and publishes the event containerd
//! expects. Errors carry the ttrpc code containerd acts on (see [`crate::error`]).

mod create;
mod delete;
mod exec;
mod exit;
mod kill;
mod memory;
mod options;
mod pause;
mod start;
#[cfg(test)]
mod tests;
mod ttrpc_service;
mod update;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::audit::{AuditOutput, KillRequest};
use crate::bundle::ADDRESS_FILE;
use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::events::Events;
use crate::node::Node;
use crate::process::Status;
use crate::reaper::Reaper;

pub use options::options_config_path;

/// How long Shutdown waits for queued events to reach containerd.
const FLUSH_EVENTS: std::time::Duration = std::time::Duration::from_secs(5);

/// The Task service of one shim process (one sandbox: a pod, or a single container).
pub struct TaskService {
    namespace: String,
    events: Events,
    reaper: Reaper,
    node: Node,
    containers: Arc<Mutex<HashMap<String, Arc<Container>>>>,
    exit: Arc<ExitSignal>,
    audit: Arc<AuditOutput>,
    kills: mpsc::UnboundedSender<KillRequest>,
}

/// A containerd timestamp.
fn ts(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut stamp = Timestamp::new();
    stamp.seconds = d.as_secs() as i64;
    stamp.nanos = d.subsec_nanos() as i32;
    MessageField::some(stamp)
}

impl TaskService {
    /// A service for containerd namespace `namespace`, publishing through `events`.
    pub fn new(
        namespace: &str,
        events: Events,
        reaper: Reaper,
        node: Node,
        exit: Arc<ExitSignal>,
        audit: AuditOutput,
    ) -> TaskService {
        let (kills, kill_rx) = mpsc::unbounded_channel();
        let service = TaskService {
            namespace: namespace.to_string(),
            events,
            reaper,
            node,
            containers: Arc::new(Mutex::new(HashMap::new())),
            exit,
            audit: Arc::new(audit),
            kills,
        };
        service.carry_out_violation_kills(kill_rx);
        service
    }

    /// Records an audit event.
    fn record(&self, event: safehouse_audit::AuditEvent) {
        self.audit.submit(event);
    }

    /// SIGTERM ends an idle shim (no container left); one that still serves containers keeps
    /// them: only containerd's Shutdown, or their deletion, ends it.
    pub fn exit_on_sigterm_when_idle(&self) {
        let containers = self.containers.clone();
        let exit = self.exit.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            while term.recv().await.is_some() {
                let left = containers.lock().unwrap_or_else(|p| p.into_inner()).len();
                if left == 0 {
                    info!("SIGTERM with no container left: exiting");
                    events.flush(FLUSH_EVENTS).await;
                    exit.signal();
                    return;
                }
                warn!(left, "SIGTERM ignored: containers still running");
            }
        });
    }

    /// SIGHUP reopens the audit destination (after a rename rotation; the writer also notices
    /// a renamed path by itself within a second).
    pub fn reopen_audit_on_sighup(&self) {
        let audit = self.audit.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                let reopened = audit.reopen();
                info!(reopened, "SIGHUP: audit destination reopened");
            }
        });
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id:?} not found")))
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event);
    }

    /// Fails unless the container's init runs (or is paused).
    fn running(&self, c: &Container) -> Result<()> {
        match c.init.status() {
            Status::Running | Status::Paused => Ok(()),
            other => Err(ShimError::FailedPrecondition(format!(
                "container {:?} is {other:?}",
                c.id
            ))),
        }
    }

    /// Registers a created container (its bundle's `address` file names this shim's socket),
    /// for `safehouse stop`.
    fn register(&self, id: &str, bundle: &Path) {
        let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) else {
            return;
        };
        let file = self.node.registry_file(&self.namespace, id);
        let written = file
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::write(&file, address.trim()));
        if let Err(e) = written {
            warn!(container = %id, "cannot register in {}: {e}", file.display());
        }
    }

    /// Removes a deleted container's registration.
    fn unregister(&self, id: &str) {
        unregister(&self.node, &self.namespace, id);
    }
}

/// Removes a container's registration (the namespace's directory goes with its last one).
pub fn unregister(node: &Node, namespace: &str, id: &str) {
    let file = node.registry_file(namespace, id);
    let _ = std::fs::remove_file(&file);
    if let Some(dir) = file.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}
